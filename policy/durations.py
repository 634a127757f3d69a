"""Durations as operators write them: 90, "500ms", "30s", "5m", "1h30m", "7d"."""

from __future__ import annotations

import math
import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")

DURATION_RULE = 'is not a duration; write seconds as a number or a string like "500ms", "30s", "5m", "1h30m", "7d"'


def parse_duration(value: float | str) -> float:
    """Seconds for a duration value; ValueError (with DURATION_RULE) if it is not one."""
    if isinstance(value, bool):
        raise ValueError(DURATION_RULE)
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip()
        pos, seconds = 0, 0.0
        for match in _PART.finditer(text):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * _UNITS[match.group(2)]
            pos = match.end()
        if pos != len(text) or not text:
            raise ValueError(DURATION_RULE)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError("is not a duration; it must be zero or more seconds")
    return seconds
