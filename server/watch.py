"""Noticing that the client went away, whatever the request is doing at the time.

After the body is read the only message an ASGI server still delivers is `http.disconnect`, so one
task per request waits for it; the request races every long step (waiting for a grant, waiting
for Ollama, streaming) against that task.
"""

from __future__ import annotations

import asyncio
from typing import TypeVar

from starlette.types import Receive

T = TypeVar("T")


class ClientGone(Exception):
    """The client disconnected; nobody is left to answer."""


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class DisconnectWatch:
    def __init__(self, receive: Receive) -> None:
        self._task: asyncio.Task[None] = asyncio.ensure_future(_wait_disconnect(receive))

    @property
    def gone(self) -> bool:
        return self._task.done()

    async def first(self, fut: asyncio.Future[T], within: float | None = None) -> T:
        """`fut`'s result; ClientGone if the client left first, TimeoutError after `within` seconds.

        `fut` is left as it is on ClientGone and timeout: the caller owns it and cleans it up.
        """
        if not fut.done():
            await asyncio.wait(
                {fut, self._task}, timeout=within, return_when=asyncio.FIRST_COMPLETED
            )
        if fut.done():
            return fut.result()
        if self._task.done():
            raise ClientGone
        raise TimeoutError

    def close(self) -> None:
        self._task.cancel()
        # Retrieve any error so asyncio never reports it: a receive channel may fail once the
        # connection is torn down, and nobody is waiting for the answer any more.
        self._task.add_done_callback(_consume)


def _consume(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()
