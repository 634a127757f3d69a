"""Queue status for a waiting client, in band: `: queued, position 3 of 12, est 40s` comment lines
on an event stream, which SSE clients ignore and which keep proxies between the client and the
sidecar from timing the request out during a long wait in the queue — and, once it is dispatched,
during the wait for Ollama's first byte (a 70B model loading: `: dispatched, loading MODEL`).

Opt-in (`[queue_status] enabled`), for streamed requests on the event-stream routes only: a native
NDJSON stream has no comment syntax. The trade-off: the 200 status line goes out with the first
comment, before Ollama has answered, so an error Ollama (or the queue) gives later reaches the
client as an error event in the stream's framing rather than as its HTTP status.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import TypeVar

from engine.eta import ServiceTimes, wait_estimate
from engine.scheduler import Scheduler

T = TypeVar("T")
ROUTES = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/messages"})
START_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


def line(scheduler: Scheduler, times: ServiceTimes, request_id: str) -> bytes:
    """The comment for a waiting request: its place, the queue's length, the wait estimate."""
    ranked = scheduler.position(request_id)  # cached ranking: no whole-queue scoring per line
    if ranked is None:
        return b": queued\n\n"
    model = ranked.ticket.model
    # Cloud and local requests wait for different slots, but the ranking places them together:
    # only those of its own kind are ahead of it, at most.
    if scheduler.is_cloud(model):
        ahead = min(ranked.position, scheduler.cloud_waiting)
        eta = wait_estimate(ahead, scheduler.cloud_max_parallel, times.mean(model))
    else:
        ahead = min(ranked.position, scheduler.depth - scheduler.cloud_waiting)
        eta = wait_estimate(ahead, scheduler.max_parallel, times.mean())
    text = f": queued, position {ranked.position} of {scheduler.depth}, est {math.ceil(eta)}s\n\n"
    return text.encode()


def dispatched_line(model: str | None, resident: bool | None) -> bytes:
    """The comment while Ollama prepares a dispatched request's answer."""
    if resident is False and model:
        # The client's own string: no line break may end the comment and start an event.
        shown = "".join(c if c.isprintable() else "?" for c in model)
        return f": dispatched, loading {shown}\n\n".encode()
    return b": dispatched, waiting for Ollama\n\n"


async def await_with_status(
    aw: Awaitable[T], every: float | None, say: Callable[[], Awaitable[None]],
    discard: Callable[[T], Awaitable[None]] | None = None,
) -> T:
    """`aw`'s result; every `every` seconds until it comes, `say()` (which sends a status line).
    A future passed in is left alone if this is cancelled (its owner decides its fate); a
    coroutine is run as a task that is cancelled with this one, and a result it produced all the
    same (it finished in the same step as the cancel) goes to `discard` — an answer nobody reads
    must still give its connection back."""
    if every is None:
        return await aw
    task = asyncio.ensure_future(aw)
    handed = False
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=every)
            if done:
                handed = True
                return task.result()
            await say()
    finally:
        if task is not aw and not handed:
            task.cancel()
            (outcome,) = await asyncio.gather(task, return_exceptions=True)
            if discard is not None and not isinstance(outcome, BaseException):
                await discard(outcome)
