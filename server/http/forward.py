"""Forwarding one request to Ollama and streaming its answer back byte for byte.

The body goes out unchanged; `Host` is rewritten (Ollama refuses foreign hosts on loopback) by
letting the upstream client set it from Ollama's URL; hop-by-hop headers and the sidecar's own
credentials never leave. The answer comes back raw — Ollama's status, content type, framing and encoding.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Protocol

from starlette.datastructures import Headers
from starlette.types import Send

from server.http.identity import ADMIN_HEADERS

# RFC 9110 §7.6.1 plus the ones every proxy drops; `host` and `content-length` are recomputed.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# X-Backend picks the sidecar's backend; Ollama (or a sidecar behind) never sees it.
_NOT_FORWARDED = _HOP_BY_HOP | ADMIN_HEADERS | {"host", "content-length", "cookie", "x-backend"}
# The ASGI server writes its own framing and date.
_NOT_RETURNED = _HOP_BY_HOP | {"date", "server", "x-request-id", "x-backend"}


def request_headers(headers: Headers, *, keep_length: bool = False) -> list[tuple[bytes, bytes]]:
    """The client's headers minus hop-by-hop and credentials, as the raw bytes that came (a value
    may hold any byte above 0x7f). `keep_length`: the body is streamed through, so its declared
    length must go with it (the upstream client cannot count it)."""
    dropped = set(_NOT_FORWARDED)
    if keep_length:
        dropped.discard("content-length")
    for value in headers.getlist("connection"):  # headers the client marked hop-by-hop
        dropped.update(v.strip().lower() for v in value.split(","))
    return [(k, v) for k, v in headers.raw if k.decode("latin-1").lower() not in dropped]


def response_headers(raw: tuple[tuple[bytes, bytes], ...]) -> list[tuple[bytes, bytes]]:
    dropped = set(_NOT_RETURNED)
    for key, value in raw:
        if key.lower() == b"connection":  # headers Ollama marked hop-by-hop
            dropped.update(v.strip().lower() for v in value.decode("latin-1").split(","))
    return [(k, v) for k, v in raw if k.decode("latin-1").lower() not in dropped]


class Answer(Protocol):
    """What `relay` reads of Ollama's answer (server/http/upstream_hop.py's UpstreamAnswer)."""

    status_code: int
    raw_headers: tuple[tuple[bytes, bytes], ...]
    has_length: bool  # a Content-Length: a whole answer, not a stream

    def chunks(self) -> AsyncIterator[bytes]: ...


WHOLE_LIMIT = 256 * 1024  # a whole answer up to this size goes to the client in one message


async def relay(
    upstream: Answer,
    send: Send,
    extra_headers: list[tuple[bytes, bytes]],
    tap: Callable[[bytes], None] | None = None,
    whole_limit: int = WHOLE_LIMIT,
) -> None:
    """Stream Ollama's answer to the client as it arrives. Raises UpstreamBroken mid-stream.

    Each write sends everything the upstream connection has received since the last one: the
    upstream client reads ahead into a bounded buffer (server/http/upstream_hop.py, READ_AHEAD)
    while a write to the client is under way, and `chunks()` hands over all of it at once. A
    chunk is never held back waiting for another, so latency is unchanged; under load, the
    per-write cost is paid per batch instead of per token. The bytes are exactly Ollama's; only
    the transfer framing differs.

    A client reading slower than Ollama writes leaves that buffer full; the upstream client then
    stops reading that connection, TCP slows Ollama's writes for that request alone, and the
    sidecar's memory stays bounded.
    """
    await send(
        {
            "type": "http.response.start",
            "status": upstream.status_code,
            "headers": response_headers(upstream.raw_headers) + extra_headers,
        }
    )
    if upstream.has_length:  # a whole answer (not a stream)
        # Sent as one body message when it is small (most are: a chat answer, an embedding):
        # one write and one end-of-body event instead of two per read; a large one goes on in
        # pieces of at most `whole_limit` bytes.
        pieces: list[bytes] = []
        size = 0
        async for chunk in upstream.chunks():
            if tap is not None:
                tap(chunk)
            pieces.append(chunk)
            size += len(chunk)
            if size >= whole_limit:
                await send({"type": "http.response.body", "body": b"".join(pieces), "more_body": True})
                pieces, size = [], 0
        await send({"type": "http.response.body", "body": b"".join(pieces), "more_body": False})
        return
    async for data in upstream.chunks():
        if tap is not None:
            tap(data)
        await send({"type": "http.response.body", "body": data, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})
