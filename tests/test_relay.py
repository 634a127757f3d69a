"""relay(): Ollama's answer streamed to the client, with a bounded read-ahead (backpressure)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from starlette.types import Message

from server.http.forward import relay

pytestmark = pytest.mark.anyio

CHUNK = 4096


class Streamed:
    """Ollama's answer as relay() reads it (status, headers, chunks): a stream, no length."""

    status_code = 200
    raw_headers = ((b"content-type", b"application/x-ndjson"),)
    has_length = False

    def chunks(self) -> AsyncIterator[bytes]:
        raise NotImplementedError


class Endless(Streamed):
    """An upstream that writes as fast as it is read, for ever."""

    def __init__(self) -> None:
        self.read = 0

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            self.read += CHUNK
            yield b"x" * CHUNK
            await asyncio.sleep(0)


async def test_a_client_that_stops_reading_stops_the_upstream_read() -> None:
    upstream = upstream_stream = Endless()
    bodies: list[bytes] = []
    stalled = asyncio.Event()  # never set: the client takes one write, then reads no more

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body":
            bodies.append(message["body"])
            if len(bodies) > 1:
                await stalled.wait()

    task = asyncio.ensure_future(relay(upstream, send, [], buffer=64 * 1024))
    try:
        for _ in range(5000):  # turns of the loop: ample for an unbounded reader to run away
            await asyncio.sleep(0)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    taken = sum(len(b) for b in bodies)
    # What the client took, plus at most the buffer and the chunk that filled it.
    assert upstream_stream.read - taken <= 64 * 1024 + CHUNK, (upstream_stream.read, taken)


async def test_every_byte_arrives_in_order_through_a_small_buffer() -> None:
    data = [bytes([i % 251]) * (i * 97 % 5000 + 1) for i in range(300)]

    class Finite(Streamed):
        async def chunks(self) -> AsyncIterator[bytes]:
            for chunk in data:
                yield chunk
                await asyncio.sleep(0)

    upstream = Finite()
    out: list[bytes] = []
    ends: list[bool] = []

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body":
            out.append(message["body"])
            ends.append(not message.get("more_body", False))
            await asyncio.sleep(0)

    await relay(upstream, send, [], buffer=1024)
    assert b"".join(out) == b"".join(data)
    assert ends[-1] and not any(ends[:-1])
