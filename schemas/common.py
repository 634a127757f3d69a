"""Building blocks shared by every schema: the strict base Struct and semantic scalar types.

Semantic scalars (durations, networks, environment variable names) are plain TOML strings whose
meaning is checked while decoding, so an error can name the exact path of the bad value. They are
marked with `Meta(extra={"kind": ...})`; the policy decoder looks the kind up.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta


class Strict(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Base for every file-facing struct: a misspelt key is an error, never silently ignored.

    Subclasses inherit `frozen`; they repeat `frozen=True` because type checkers (which see
    msgspec structs as dataclasses) do not infer it."""


# A duration: a number of seconds, or a string with units such as "500ms", "30s", "5m", "1h30m",
# "7d". Kept as written so `policy show` echoes the operator's own spelling.
Duration = Annotated[float | str, Meta(extra={"kind": "duration"})]
# An IPv4 or IPv6 network in CIDR notation, or a single address ("10.0.0.0/8", "::1").
Cidr = Annotated[str, Meta(extra={"kind": "cidr"})]
# The NAME of an environment variable that holds a secret; never the secret itself.
EnvName = Annotated[str, Meta(extra={"kind": "env_name"})]
# An http:// or https:// URL with a host (and a port from 1 to 65535 if one is given).
HttpUrl = Annotated[str, Meta(extra={"kind": "http_url"})]

# Counts and sizes are bounded: a typo of extra digits is an error, not a limit nobody meant.
PositiveInt = Annotated[int, Meta(ge=1, le=2**31 - 1)]
NonNegativeInt = Annotated[int, Meta(ge=0, le=2**31 - 1)]
PositiveFloat = Annotated[float, Meta(gt=0)]
NonNegativeFloat = Annotated[float, Meta(ge=0)]
# A term's weight in points. Bounded so that weight × count (or × seconds waited), summed over the
# terms, stays finite: 1e308 × 2 is inf, and inf - inf is a NaN that leaves the order undefined.
Points = Annotated[float, Meta(ge=-1e9, le=1e9)]
NonNegativePoints = Annotated[float, Meta(ge=0, le=1e9)]
