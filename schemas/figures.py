"""Figures computed the same way wherever the project reports them: the journal's analytics and
the simulator's report both give nearest-rank percentiles, so their p95 mean the same thing."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile: the smallest value with at least q (0–1) of the data at or below
    it; None for no data."""
    if not sorted_values:
        return None
    index = max(0, math.ceil(q * len(sorted_values)) - 1)
    return sorted_values[min(index, len(sorted_values) - 1)]


__all__ = ["percentile"]
