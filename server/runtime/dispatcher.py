"""The asyncio side of the scheduler: one Future per waiting ticket, resolved when it is granted.

The engine is synchronous bookkeeping; this class calls `dispatch()` after every event (arrival,
finish, cancel, first byte, poll, reload, resume) and resolves the futures of the tickets it
granted — event-driven, no polling loop. Every request ends in `release`, whichever way it
ends, so every granted ticket is finished exactly once and in-flight always returns to zero.
The scheduler keeps the counts (waiting, in flight); this class keeps only the futures.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Literal

from engine.scheduler import Grant, Scheduler
from engine.service import Usage
from schemas.ticket import Ticket

log = logging.getLogger("smart_proxy.dispatch")


class ShuttingDown(Exception):
    """The sidecar is stopping: queued requests are answered with 503."""


class Removed(Exception):
    """A waiting ticket was taken out of the queue: its request answers 503 at once."""

    status: Literal["cancelled", "rejected"] = "cancelled"  # what the journal records

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message, self.retry_after = message, retry_after


class RemovedByAdmin(Removed):
    """An administrator deleted the ticket from the queue."""

    def __init__(self) -> None:
        super().__init__("an administrator removed this request from the queue")


class Shed(Removed):
    """The queue was full and a more urgent request took this waiting one's place (its class
    waits longest: engine/admission.py). Recorded as rejected: there was no room for it."""

    status = "rejected"


class Dispatcher:
    def __init__(
        self,
        scheduler: Scheduler,
        on_grant: Callable[[Grant], None],
        on_enqueue: Callable[[Ticket], None] = lambda ticket: None,
    ) -> None:
        self.scheduler = scheduler
        self._on_grant = on_grant
        self._on_enqueue = on_enqueue  # before the pump: an arrival is told before its grant
        self._futures: dict[str, asyncio.Future[Grant]] = {}
        # Removed by an admin, still answering its client: the id stays in use until release(),
        # so a new request reusing it is refused rather than cancelled by the old one's release.
        self._removed: set[str] = set()
        self.closed = False  # the sidecar is stopping: no new tickets

    def submit(
        self, *, request_id: str, model: str, client: str, cls: str, endpoint: str, variant: str = ""
    ) -> tuple[Ticket, asyncio.Future[Grant]]:
        if self.closed:
            raise ShuttingDown
        ticket = self.scheduler.enqueue(
            request_id=request_id, model=model, client=client, cls=cls, endpoint=endpoint,
            variant=variant,
        )
        fut: asyncio.Future[Grant] = asyncio.get_running_loop().create_future()
        self._futures[request_id] = fut
        self._on_enqueue(ticket)
        self.pump()
        return ticket, fut

    def pump(self) -> None:
        """Grant what the policy chooses now. Call after every event."""
        for grant in self.scheduler.dispatch():
            rid = grant.ticket.id
            fut = self._futures.pop(rid, None)
            if fut is None or fut.done():
                # Cannot happen while release() cancels before dropping the future; if it ever
                # does, free the slot rather than leak it.
                log.error("granted with nobody waiting; releasing its slot", extra={"request_id": rid})
                self.finish(rid)
                continue
            self._on_grant(grant)
            fut.set_result(grant)

    def release(self, request_id: str, usage: Usage | None = None) -> None:
        """The request has ended, however it ended (answered, failed, timed out in the queue,
        client gone, removed by an admin): drop its waiting ticket or free its slot. `usage`:
        Ollama's counters for it, what the fair_share term charges."""
        self._removed.discard(request_id)
        fut = self._futures.pop(request_id, None)
        if self.scheduler.cancel(request_id):
            if fut is not None and not fut.done():
                fut.cancel()
            self.pump()  # a cancelled ticket may have been what blocked the others' order
        else:
            self.finish(request_id, usage)

    def requeue(self, request_id: str) -> asyncio.Future[Grant] | None:
        """A granted request whose backend refused the connection waits again, in its old place
        (engine: `Scheduler.requeue`): the future of its next grant. None: it cannot (it began,
        or the sidecar is stopping)."""
        if self.closed or (ticket := self.scheduler.requeue(request_id)) is None:
            return None
        fut: asyncio.Future[Grant] = asyncio.get_running_loop().create_future()
        self._futures[request_id] = fut
        self._on_enqueue(ticket)  # waiting again: the event stream and dashboards see it
        self.pump()
        return fut

    def known(self, request_id: str) -> bool:
        """Whether a request with this id is waiting or in flight."""
        return (
            request_id in self._futures or request_id in self._removed
            or self.scheduler.holds_slot(request_id)
        )

    def remove(self, request_id: str, why: Removed | None = None) -> bool:
        """Fail a waiting ticket's future so its request answers at once: an admin's cancel
        (RemovedByAdmin), or `why` (Shed)."""
        fut = self._futures.get(request_id)
        if fut is None or fut.done() or not self.scheduler.cancel(request_id):
            return False
        del self._futures[request_id]
        self._removed.add(request_id)
        fut.set_exception(why or RemovedByAdmin())
        self.pump()
        return True

    def clear(self) -> int:
        """Admin: remove every waiting ticket (each request answers 503); how many there were."""
        removed = 0
        for rid in [rid for rid, fut in self._futures.items() if not fut.done()]:
            if self.scheduler.cancel(rid):
                self._futures.pop(rid).set_exception(RemovedByAdmin())
                self._removed.add(rid)
                removed += 1
        return removed

    def started(self, request_id: str) -> None:
        """Ollama began answering: the model is resident, tickets held behind its load may go."""
        self.scheduler.first_byte(request_id)
        self.pump()

    def finish(self, request_id: str, usage: Usage | None = None) -> None:
        """Free the slot of a granted ticket; a second call for the same id does nothing."""
        if self.scheduler.finish(request_id, usage):
            self.pump()

    def pause(self) -> None:
        self.scheduler.pause()

    def resume(self) -> None:
        self.scheduler.resume()
        self.pump()

    def close(self) -> int:
        """Stop admitting and fail every waiting ticket with ShuttingDown; returns how many."""
        self.closed = True
        waiting = list(self._futures.items())
        self._futures.clear()
        for rid, fut in waiting:
            self.scheduler.cancel(rid)
            if not fut.done():
                fut.set_exception(ShuttingDown())
        return len(waiting)

    @property
    def in_flight(self) -> int:
        return self.scheduler.in_flight_count
