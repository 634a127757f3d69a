"""Event-loop lag, sampled: how late a timer fires. Every relayed stream waits on this loop, so
lag is what a CPU-heavy call made on it costs everyone else (`smart_proxy_event_loop_lag_seconds`;
bench/loop_lag.py reads it)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

INTERVAL = 0.05  # seconds between samples: 20 a second, a negligible load on the loop


class LoopLagProbe:
    def __init__(self, observe: Callable[[float], None], interval: float = INTERVAL) -> None:
        self._observe = observe
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="loop-lag-probe")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self._interval
            await asyncio.sleep(self._interval)
            self._observe(max(0.0, loop.time() - due))
