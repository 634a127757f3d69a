"""Go's time conventions as Ollama shows them: `time.ParseDuration` and RFC 3339 timestamps."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_BARE_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)")

# Ollama turns a negative keep_alive into "forever" by clamping to Go's largest duration
# (~292 years), which is why `expires_at` of a pinned model reads like a date in the 2300s.
FOREVER = float(2**63 - 1) / 1e9


def parse_go_duration(text: str) -> float:
    """Seconds for a Go duration string ("10m", "1h30m", "-1s", "0"); ValueError with Go's message."""
    quoted = '"' + text + '"'
    body = text
    sign = 1.0
    if body[:1] in "+-" and body:
        sign = -1.0 if body[0] == "-" else 1.0
        body = body[1:]
    if body == "0":
        return 0.0
    if not body:
        raise ValueError(f"time: invalid duration {quoted}")
    pos, seconds = 0, 0.0
    for match in _PART.finditer(body):
        if match.start() != pos:
            break
        seconds += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(body):
        # Go distinguishes a number with no unit ("-1") from plain garbage; Ollama relays the text.
        if _BARE_NUMBER.fullmatch(body[pos:]) and pos == 0:
            raise ValueError(f"time: missing unit in duration {quoted}")
        raise ValueError(f"time: invalid duration {quoted}")
    return sign * seconds


def keep_alive_seconds(value: float | str | None, default: float) -> float:
    """A request's keep_alive as seconds: None → default, negative → FOREVER (Ollama's rule)."""
    if value is None:
        return default
    seconds = parse_go_duration(value) if isinstance(value, str) else float(value)
    if not math.isfinite(seconds) or seconds < 0:
        return FOREVER
    return seconds


def rfc3339(epoch: float) -> str:
    """An RFC 3339 timestamp with nanosecond digits, the way Go marshals time.Time in UTC."""
    epoch = min(epoch, 253402300799.0)  # year 9999: beyond it datetime cannot count
    whole = math.floor(epoch)
    nanos = round((epoch - whole) * 1e9)
    if nanos >= 1_000_000_000:
        whole, nanos = whole + 1, nanos - 1_000_000_000
    stamp = datetime.fromtimestamp(whole, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f".{nanos:09d}".rstrip("0").rstrip(".")
    return f"{stamp}{fraction}Z"
