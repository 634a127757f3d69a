"""Request bodies read whole, bounded: a client learns at once (413) when it sends too much."""

from __future__ import annotations

from starlette.requests import ClientDisconnect, Request

from server.http.dialects import ProxyError


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing with 413 as soon as it is known to exceed `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ProxyError(413, f"request body is larger than the limit of {limit} bytes")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ProxyError(413, f"request body is larger than the limit of {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise ProxyError(400, "the client disconnected while sending the body") from None
    return b"".join(chunks)
