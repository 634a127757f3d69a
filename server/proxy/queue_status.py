"""Queue status for a waiting client, in band: `: queued, position 3 of 12, est 40s` comment lines
on an event stream, which SSE clients ignore and which keep proxies between the client and the
sidecar from timing the request out during a long wait in the queue. (Once the request is
dispatched the lines stop: the wait for Ollama's first byte — a model load — is not covered.)

Opt-in (`[queue_status] enabled`), for streamed requests on the event-stream routes only: a native
NDJSON stream has no comment syntax. The trade-off: the 200 status line goes out with the first
comment, before Ollama has answered, so an error Ollama (or the queue) gives later reaches the
client as an error event in the stream's framing rather than as its HTTP status.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable

from engine.eta import ServiceTimes, wait_estimate
from engine.scheduler import Grant, Scheduler

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
    if scheduler.is_cloud(model):  # its own slots; everything ahead of it in them is cloud too
        eta = wait_estimate(ranked.position, scheduler.cloud_max_parallel, times.mean(model))
    else:
        eta = wait_estimate(ranked.position, scheduler.max_parallel, times.mean())
    text = f": queued, position {ranked.position} of {scheduler.depth}, est {math.ceil(eta)}s\n\n"
    return text.encode()


async def wait_with_status(
    fut: asyncio.Future[Grant], every: float, say: Callable[[], Awaitable[None]]
) -> Grant:
    """The grant; every `every` seconds until it comes, `say()` (which sends a status line)."""
    while True:
        done, _ = await asyncio.wait({fut}, timeout=every)
        if done:
            return fut.result()
        await say()
