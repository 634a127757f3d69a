"""relay(): Ollama's answer streamed to the client, with a bounded read-ahead (backpressure)."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator

import pytest
from starlette.types import Message

from server.http.forward import relay
from server.http.upstream_hop import UpstreamHop

pytestmark = pytest.mark.anyio

CHUNK = 4096


class Streamed:
    """Ollama's answer as relay() reads it (status, headers, chunks): a stream, no length."""

    status_code = 200
    raw_headers = ((b"content-type", b"application/x-ndjson"),)
    has_length = False

    def chunks(self) -> AsyncIterator[bytes]:
        raise NotImplementedError


def _endless_server() -> tuple[socket.socket, list[int], threading.Event]:
    """A real HTTP/1.1 server on loopback that streams a chunked answer for ever, as fast as its
    socket takes it, counting the bytes its sends were allowed to hand to the kernel."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    sent = [0]
    stop = threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n"
                     b"transfer-encoding: chunked\r\n\r\n")
        piece = b"%x\r\n%s\r\n" % (CHUNK, b"x" * CHUNK)
        conn.settimeout(0.2)
        while not stop.is_set():
            try:
                conn.sendall(piece)  # blocks once the sidecar stops reading and TCP fills up
            except TimeoutError:
                continue
            except OSError:
                break
            sent[0] += CHUNK
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    return listener, sent, stop


async def test_a_client_that_stops_reading_stops_the_upstream_read() -> None:
    """Against a real upstream connection: once the client stops taking writes, the sidecar's
    reading stops too (its buffer is bounded), so Ollama's writes stall instead of piling up in
    the sidecar's memory."""
    listener, sent, stop = _endless_server()
    hop = UpstreamHop()
    stalled = asyncio.Event()  # never set: the client takes one write, then reads no more
    writes = 0

    async def send(message: Message) -> None:
        nonlocal writes
        if message["type"] == "http.response.body":
            writes += 1
            if writes > 1:
                await stalled.wait()

    try:
        port = listener.getsockname()[1]
        answer = await hop.open(method="POST", url=f"http://127.0.0.1:{port}/api/chat", headers=[],
                                content=b"{}", upstream_timeout=30.0)
        task = asyncio.ensure_future(relay(answer, send, []))
        await asyncio.sleep(1.0)
        first = sent[0]
        await asyncio.sleep(1.0)
        second = sent[0]
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await answer.aclose()
    finally:
        stop.set()
        await hop.aclose()
        listener.close()
    # Stalled: nothing more got out in the second second. What did get out sits in the two
    # sockets' kernel buffers (a few MB on loopback) and the sidecar's bounded read-ahead.
    assert second == first, (first, second)
    assert first < 64 * 1024 * 1024, first


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

    await relay(upstream, send, [], whole_limit=1024)
    assert b"".join(out) == b"".join(data)
    assert ends[-1] and not any(ends[:-1])
