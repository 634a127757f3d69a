"""The asyncio driver: runs the pure backend on the event loop's clock for the HTTP app.

Backend time is `loop.time() - t0` seconds. One timer handle (no background task) fires at the
backend's next event; every submit or cancel re-arms it. Handlers wait on per-job futures, always
raced against a `gone` future that completes when their client disconnects.
"""

from __future__ import annotations

import asyncio
import time

from sim.backend import Backend, Job
from sim.catalog import Catalog, ModelSpec
from sim.config import Settings


class Emulator:
    """Catalog + backend + clock mapping: everything the HTTP layer needs."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.catalog = Catalog(list(settings.models))
        self.backend = Backend(settings)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._t0 = 0.0
        self._wall0 = time.time()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = 0.0
        self._waiters: dict[int, asyncio.Future[None]] = {}

    # --- clocks -------------------------------------------------------------------------------

    def _bind(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            # The first request fixes the loop; the backend's clock starts there.
            self._loop, self._t0, self._wall0 = loop, loop.time(), time.time()
        elif loop is not self._loop:
            raise RuntimeError("an Emulator serves one event loop; build one per loop")
        return loop

    def now(self) -> float:
        """Backend time; before the first request the clock has not started (0)."""
        return 0.0 if self._loop is None else self._loop.time() - self._t0

    def wall(self, backend_time: float) -> float:
        """Epoch seconds for a backend instant (for created_at and expires_at)."""
        return self._wall0 + backend_time

    # --- jobs ---------------------------------------------------------------------------------

    def submit(self, spec: ModelSpec, **kwargs: object) -> Job:
        """Backend.submit on the loop's clock; raises QueueFull."""
        self._bind()
        job = self.backend.submit(self.now(), spec, **kwargs)  # type: ignore[arg-type]
        self._pump()
        return job

    def unload(self, spec: ModelSpec) -> None:
        self._bind()
        self.backend.unload(self.now(), spec)
        self._pump()

    def cancel(self, job: Job) -> None:
        self._bind()
        self.backend.cancel(self.now(), job)
        self._waiters.pop(job.id, None)
        self._pump()

    async def wait_started(self, job: Job, gone: asyncio.Future[None]) -> bool:
        """True once the job has its runner (and slot); False, with the job cancelled, if the
        client went away first — which aborts a load nobody else waits for."""
        loop = self._bind()
        if job.started_at is None and job.state not in ("done", "cancelled"):
            ready = self._waiters.setdefault(job.id, loop.create_future())
            await asyncio.wait((ready, gone), return_when=asyncio.FIRST_COMPLETED)
        if job.started_at is not None and not gone.done():
            return True
        self.cancel(job)
        return False

    async def sleep_until(self, job: Job, at: float, gone: asyncio.Future[None]) -> bool:
        """Wait for backend time `at`; False (job cancelled) if the client left meanwhile."""
        delay = at - self.now()
        if delay > 0 and not gone.done():
            await asyncio.wait((gone,), timeout=delay)
        if gone.done():
            self.cancel(job)
            return False
        return True

    # --- timer --------------------------------------------------------------------------------

    def _pump(self) -> None:
        for job in self.backend.take_started():
            waiter = self._waiters.pop(job.id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        due = self.backend.next_event_time()
        if due is not None and self._loop is not None:
            self._timer_due = due
            self._timer = self._loop.call_at(self._t0 + due, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        # The loop may fire a hair early (clock resolution); the event is due by definition.
        self.backend.advance(max(self.now(), self._timer_due))
        self._pump()

    def tick(self) -> None:
        """Bring the backend up to now (before reading /api/ps or the counters)."""
        if self._loop is not None:
            self.backend.advance(self.now())
            self._pump()

    def close(self) -> None:
        """Stop the timer; the owner calls this when the server shuts down."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
