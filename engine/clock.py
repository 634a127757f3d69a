"""Clocks. The engine never reads time itself: it is handed a clock, so tests are deterministic."""

from __future__ import annotations

from collections.abc import Callable

Clock = Callable[[], float]


class ManualClock:
    """A clock that moves only when told to (tests, scenarios, offline replay)."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError("a clock never goes backwards")
        self.now += seconds
        return self.now

    def set(self, when: float) -> None:
        if when < self.now:
            raise ValueError("a clock never goes backwards")
        self.now = when
