"""Noticing that the client went away, whatever the request is doing at the time.

After the body is read the only message an ASGI server still delivers is `http.disconnect`, so one
task per request waits for it. Inside `guard()`, a disconnect cancels the request's own task at
the await it is parked on (waiting for a grant, for Ollama, or streaming) and surfaces there as
ClientGone; outside, it is only noted, so cleanup code is never interrupted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from starlette.types import Receive


class ClientGone(Exception):
    """The client disconnected; nobody is left to answer."""


class DisconnectWatch:
    def __init__(self, receive: Receive) -> None:
        owner = asyncio.current_task()
        assert owner is not None, "a DisconnectWatch belongs to the task serving the request"
        self._owner = owner
        self._armed = False
        self.gone = False
        self._task: asyncio.Task[None] = asyncio.ensure_future(self._watch(receive))

    async def _watch(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.gone = True
                if self._armed:
                    self._owner.cancel()
                return

    @contextmanager
    def guard(self) -> Iterator[None]:
        """A region a disconnect interrupts, with ClientGone. Other cancellations pass through."""
        if self.gone:
            raise ClientGone
        self._armed = True
        try:
            yield
        except asyncio.CancelledError:
            # Ours only if the client is gone and nobody else (a shutdown) cancelled too.
            if self.gone and self._owner.uncancel() == 0:
                raise ClientGone from None
            raise
        finally:
            self._armed = False

    def close(self) -> None:
        self._task.cancel()
        # Retrieve any error so asyncio never reports it: a receive channel may fail once the
        # connection is torn down, and nobody is waiting for the answer any more.
        self._task.add_done_callback(_consume)


def _consume(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()
