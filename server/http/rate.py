"""Per-caller token buckets for public routes a client may poll (the queue position)."""

from __future__ import annotations

import math
from collections.abc import Callable

_SWEEP_AT = 10_000  # tracked callers before full (idle) buckets are forgotten


class TokenBuckets:
    """`rate` requests a second per key, in bursts of up to `burst`."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float]) -> None:
        self.rate, self.burst, self._clock = rate, burst, clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, as of)

    def take(self, key: str) -> float | None:
        """Spend one token: None if there was one, else the seconds until there is."""
        now = self._clock()
        if len(self._buckets) > _SWEEP_AT:
            self._buckets = {
                k: (t, at) for k, (t, at) in self._buckets.items()
                if t + (now - at) * self.rate < self.burst
            }
        tokens, at = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return math.ceil((1.0 - tokens) / self.rate * 1000) / 1000
        self._buckets[key] = (tokens - 1.0, now)
        return None
