"""Scale a policy file's scheduling time by a factor, for replays at a compressed time scale.

The emulator's `--time-scale 0.01` makes every emulated duration 100× shorter, but the policy's
terms count real seconds. `scale_policy_text(text, file, 0.01)` returns the same policy file with
every scheduling duration multiplied by 0.01 and every per-second rate divided by it, so a replay
against the compressed emulator orders the queue as the real file would in real time.

Durations are found through the schema (every field typed `Duration`), so a new one is scaled
without an edit here; the few that are not about scheduling time are listed in `UNSCALED`.
Durations the file leaves at their default are written out, scaled: a default is still a
duration the scheduler uses. Scaled values are written as seconds (numbers, 9 significant digits).
Comments and the file's layout are lost (the result is written by tomli-w, under a two-line
header comment saying how it was made).
"""

from __future__ import annotations

import math
import types
import typing
from typing import Annotated, Any

import msgspec
import tomli_w

from policy.decode import parse_toml
from policy.durations import parse_duration
from policy.errors import PolicyError, Problem, join_path
from policy.load import CompiledFile, load_policy_text

# Durations that are not scheduling time, as schema paths ("*" stands for any table key):
# a session token, the journal's retention or how often a waiting client hears its place means
# the same in a replay as in production.
UNSCALED = frozenset({"admin.session_lifetime", "journal.retention", "queue_status.every"})
# Rates per second of each term type: divided by the factor (a compressed second is shorter).
PER_SECOND: dict[str, tuple[str, ...]] = {"aging": ("per_second",), "swap_cost": ("per_second",)}
WHOLE_SECONDS_RULE = (
    "cannot be scaled: whole seconds of the compressed clock are not whole seconds of the real "
    "one, so no per_second gives the same scores; set whole_seconds = false in this term (or "
    "drop this policy) before scaling"
)
SIGNIFICANT_DIGITS = 9


def scale_policy_text(text: str, file: str, factor: float) -> str:
    """`text` (a policy file named `file`) with its scheduling time scaled by `factor`, as TOML.

    ValueError for a factor that is not positive and finite; PolicyError (file, path, value and
    rule of every problem) for a file that does not load, or that cannot be scaled faithfully.
    The result is compiled before it is returned, so it is always a valid policy file."""
    name = " ".join(file.splitlines())  # a comment line must stay one line
    out = (
        f"# {name}, scaled by {factor!r} with `smart-proxy policy scale`: durations × {factor!r},"
        f" per-second rates ÷ {factor!r}.\n# The original's comments are not kept.\n\n"
        + tomli_w.dumps(scale_policy(text, file, factor))
    )
    load_policy_text(out.encode("utf-8"), f"{file} (scaled by {factor!r})")
    return out


def scale_policy(text: str, file: str, factor: float) -> dict[str, Any]:
    """The scaled document as TOML data (see `scale_policy_text`)."""
    if isinstance(factor, bool) or not math.isfinite(factor) or factor <= 0:
        raise ValueError(f"the factor must be a positive, finite number, not {factor!r}")
    compiled = load_policy_text(text.encode("utf-8"), file)  # every problem of the input first
    raw, _ = parse_toml(text)
    assert raw is not None  # it loaded, so it parses
    refusals = [
        Problem(join_path(term.path, "whole_seconds"), True, WHOLE_SECONDS_RULE)
        for terms in compiled.terms.values()
        for term in terms
        if getattr(term.params, "whole_seconds", False) is True
    ]
    if refusals:
        raise PolicyError(file, refusals)
    _merge(raw, _scaled_durations(compiled.raw, "", factor))
    if raw.get("backends"):  # the defaults of [backend] were written too: one form per file
        raw.pop("backend", None)
    _scale_terms(compiled, raw, factor)
    return raw


def _scale_terms(compiled: CompiledFile, raw: dict[str, Any], factor: float) -> None:
    for policy, terms in compiled.terms.items():
        for term in terms:
            table = raw["policies"][policy]["terms"][term.name]
            _merge(table, _scaled_durations(term.params, f"terms.{term.type.name}", factor))
            for name in PER_SECOND.get(term.type.name, ()):
                table[name] = _rounded(getattr(term.params, name) / factor)


def _scaled_durations(value: msgspec.Struct, pattern: str, factor: float) -> dict[str, Any]:
    """The scaled durations of a decoded struct, nested as in the file (defaults included)."""
    out: dict[str, Any] = {}
    for field in msgspec.structs.fields(value):
        key, sub = field.encode_name, _sub(pattern, field.encode_name)
        item = getattr(value, field.name)
        if is_duration(field.type):
            if item is not None and sub not in UNSCALED:
                out[key] = _rounded(parse_duration(item) * factor)
        elif isinstance(item, msgspec.Struct):
            if inner := _scaled_durations(item, sub, factor):
                out[key] = inner
        elif isinstance(item, dict) and _duration_values(field.type):
            if item and _sub(sub, "*") not in UNSCALED:
                out[key] = {name: _rounded(parse_duration(v) * factor) for name, v in item.items()}
        elif isinstance(item, dict):
            table = {
                name: changes
                for name, entry in item.items()
                if isinstance(entry, msgspec.Struct)
                and (changes := _scaled_durations(entry, _sub(sub, "*"), factor))
            }
            if table:
                out[key] = table
    return out


def is_duration(tp: Any) -> bool:
    """A field typed `Duration` (or `Duration | None`)."""
    if typing.get_origin(tp) is Annotated:
        return any(
            isinstance(meta, msgspec.Meta) and (meta.extra or {}).get("kind") == "duration"
            for meta in typing.get_args(tp)[1:]
        )
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return any(is_duration(arg) for arg in typing.get_args(tp))
    return False


def duration_fields(tp: Any, pattern: str = "") -> list[str]:
    """Schema paths of every `Duration` field reachable from `tp` ("*" for a table key, "[]" for
    an array item); what `scale_policy` scales, less `UNSCALED`."""
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        found: list[str] = []
        for field in msgspec.structs.fields(tp):
            sub = _sub(pattern, field.encode_name)
            found.extend([sub] if is_duration(field.type) else duration_fields(field.type, sub))
        return found
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is dict:
        if is_duration(args[1]):
            return [_sub(pattern, "*")]
        return duration_fields(args[1], _sub(pattern, "*"))
    if origin is list:
        return duration_fields(args[0], f"{pattern}[]")
    return [p for arg in args if origin is not Annotated for p in duration_fields(arg, pattern)]


def _duration_values(tp: Any) -> bool:
    """A `dict[str, Duration]` field (such as aging's max_wait_by_class)."""
    return typing.get_origin(tp) is dict and is_duration(typing.get_args(tp)[1])


def _sub(pattern: str, key: str) -> str:
    return f"{pattern}.{key}" if pattern else key


def _rounded(seconds: float) -> float:
    return float(f"{seconds:.{SIGNIFICANT_DIGITS}g}")


def _merge(target: dict[str, Any], changes: dict[str, Any]) -> None:
    for key, value in changes.items():
        if isinstance(value, dict):
            _merge(target.setdefault(key, {}), value)
        else:
            target[key] = value
