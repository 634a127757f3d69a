"""The requests the sidecar is holding, so a shutdown can wait for them and then cut the rest.

Every `Exchange` (scheduled or passed through) holds one `Hold` for its whole trip. On SIGTERM the
runner waits, up to the grace, for the holds to empty; when the grace runs out, `cut_all()` marks
each hold cut and cancels its request's task at the await it is parked on (waiting for Ollama's
first byte, or streaming), where it surfaces as `Cut` — as a disconnect surfaces as ClientGone in
server.proxy.disconnect. The exchange then answers its client in the dialect (a 503, or an error chunk
mid-stream) instead of the ASGI server's own cancellation leaving an empty 500 or a cut stream.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

# Once cut, a request needs only to close its upstream request and write a few bytes; this bounds
# the wait for a client that stopped reading (the ASGI server's own timeout then closes it).
CUT_WAIT_S = 2.0


class Cut(Exception):
    """The shutdown grace ran out while this request was in progress, or an administrator
    cancelled it (`Hold.by_admin`)."""


class Hold:
    """One request in progress: the task serving it, and whether the shutdown cut it."""

    def __init__(self, owner: asyncio.Task[object], request_id: str | None = None) -> None:
        self._owner = owner
        self.request_id = request_id
        self._armed = False
        self._cancelled = False  # the cut cancelled the task (it was armed)
        self.cut = False
        self.by_admin = False  # the cut was `POST /proxy/requests/{id}/cancel`, not a shutdown
        # False once the request is answering on its own (its end, an error): past the last
        # place a cut could reach, so an admin's cancel would change nothing and says so.
        self.cancellable = True
        self.interrupted = False  # the cut reached the request (it raised Cut)

    @contextlib.contextmanager
    def armed(self) -> Iterator[None]:
        """A region the cut interrupts, with Cut; outside one a cut is only noted (and raised on
        entering the next), so cleanup code is never interrupted. Other cancellations pass."""
        if self.cut:
            self.interrupted = True
            raise Cut
        self._armed = True
        try:
            yield
        except asyncio.CancelledError:
            # Ours only if the cut cancelled and nobody else (the ASGI server) cancelled too.
            if self._cancelled and self._owner.uncancel() == 0:
                self._cancelled = False
                self.interrupted = True
                raise Cut from None
            raise
        finally:
            self._armed = False

    def _cut(self) -> None:
        if self.cut:
            return
        self.cut = True
        if self._armed:
            self._cancelled = True
            self._owner.cancel()


class Holds:
    def __init__(self) -> None:
        self._held: set[Hold] = set()
        self._by_id: dict[str, Hold] = {}  # scheduled requests, for an admin's cancel
        self.empty = asyncio.Event()  # set while no request is held
        self.empty.set()
        self._cut: list[Hold] = []

    def __len__(self) -> int:
        return len(self._held)

    @contextlib.contextmanager
    def hold(self, request_id: str | None = None) -> Iterator[Hold]:
        """Hold the current task's request for the duration of the block; with a `request_id`,
        an administrator may cancel it by that id."""
        owner = asyncio.current_task()
        assert owner is not None, "a Hold belongs to the task serving the request"
        held = Hold(owner, request_id)
        self._held.add(held)
        if request_id is not None:
            self._by_id.setdefault(request_id, held)
        self.empty.clear()
        try:
            yield held
        finally:
            self._held.discard(held)
            if request_id is not None and self._by_id.get(request_id) is held:
                del self._by_id[request_id]
            if not self._held:
                self.empty.set()

    def cancel(self, request_id: str) -> bool:
        """An administrator stops this request where it is: it raises Cut at its next armed
        await, closes its upstream request and answers its client. False: no such request."""
        held = self._by_id.get(request_id)
        if held is None or held.cut or not held.cancellable:
            return False
        held.by_admin = True
        held._cut()
        return True

    async def wait_empty(self, within: float) -> bool:
        """Wait up to `within` seconds for every held request to end; whether they all did."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await self.empty.wait()
        return self.empty.is_set()

    def cut_all(self) -> int:
        """Cut every held request (each answers its client and ends); returns how many were held.
        One already on its way out (a queued request being refused) just ends as it would."""
        held = list(self._held)
        for one in held:
            one._cut()
        self._cut += held
        return len(held)

    def interrupted(self) -> int:
        """How many requests the cut has interrupted so far."""
        return sum(one.interrupted for one in self._cut)
