"""What every emulated endpoint shares: body decoding with Go-like messages, both error dialects,
and a response that sends nothing — not even the status line — until its first chunk exists."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

T = TypeVar("T")

QUEUE_FULL = "server busy, please try again.  maximum pending requests exceeded"
NDJSON = "application/x-ndjson"
SSE = "text/event-stream"
JSON = "application/json; charset=utf-8"

_encoder = msgspec.json.Encoder()


class ApiError(Exception):
    """An error Ollama answers before streaming starts: status + message, rendered per dialect."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def native_error(status: int, message: str) -> Response:
    return JSONResponse({"error": message}, status_code=status, media_type=JSON)


def openai_error(status: int, message: str) -> Response:
    kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
    body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return JSONResponse(body, status_code=status, media_type=JSON)


def json_response(body: Any, status: int = 200) -> Response:
    return Response(_encoder.encode(body), status_code=status, media_type=JSON)


def encode(body: Any) -> bytes:
    return _encoder.encode(body)


def _go_decode_message(body: bytes) -> str:
    """Go's encoding/json wording for malformed input (Ollama relays it verbatim)."""
    try:
        json.loads(body)
    except json.JSONDecodeError as exc:
        if exc.pos >= len(body.rstrip()):
            return "unexpected EOF"
        char = body[exc.pos : exc.pos + 1].decode("utf-8", "replace")
        context = "looking for beginning of value" if exc.pos == 0 else "in JSON input"
        return f"invalid character '{char}' {context}"
    except UnicodeDecodeError:
        return "invalid character in JSON input"
    return "invalid JSON"


def _go_type_message(message: str, struct: str) -> str:
    """msgspec's "Expected `bool`, got `str` - at `$.stream`" in Go's words."""
    match = re.match(r"Expected `(.+?)`, got `(.+?)` - at `\$\.?(.*)`", message)
    if match is None:
        return message
    go_names = {"str": "string", "int": "number", "float": "number", "array": "array",
                "object": "object", "bool": "bool", "null": "null"}
    expected, got, path = match.groups()
    expected = expected.replace(" | null", "")  # Go's zero values make every field nullable
    if not path:
        return f"json: cannot unmarshal {go_names.get(got, got)} into Go value of type {struct}"
    return (
        f"json: cannot unmarshal {go_names.get(got, got)} into Go struct field "
        f"{struct}.{path} of type {go_names.get(expected, expected)}"
    )


async def decode_body(request: Request, kind: type[T]) -> T:
    """The request body as `kind`; ApiError(400) as Ollama words it. Unknown fields are ignored,
    as Go's decoder does — clients send many options the emulator has no use for."""
    body = await request.body()
    if not body.strip():
        raise ApiError(400, "missing request body")
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as exc:
        # Go checks the whole document is JSON before it maps any field, so syntax errors win.
        try:
            msgspec.json.decode(body)
        except msgspec.DecodeError:
            raise ApiError(400, _go_decode_message(body)) from None
        raise ApiError(400, _go_type_message(str(exc), kind.__name__)) from None
    except msgspec.DecodeError:
        raise ApiError(400, _go_decode_message(body)) from None


@dataclass(frozen=True, slots=True)
class Head:
    """Status and media type, yielded by a producer before its first chunk."""

    status: int
    media_type: str


Producer = Callable[[asyncio.Future[None]], AsyncIterator[Head | bytes]]


class LazyResponse:
    """An ASGI response whose status line and headers go out with the first chunk.

    The producer gets a `gone` future that completes when the client disconnects; it should stop
    (and cancel its job) when it does. While it waits, nothing reaches the wire — exactly the long
    time to first byte a client sees while Ollama loads a model.
    """

    def __init__(self, produce: Producer) -> None:
        self._produce = produce

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        watcher = asyncio.create_task(_watch_disconnect(receive, gone))
        stream = self._produce(gone)  # an async generator: closed below, whatever happens
        head: Head | None = None
        started = False
        try:
            async for part in stream:
                if isinstance(part, Head):
                    head = part
                    continue
                if gone.done():
                    break
                if not started:
                    assert head is not None, "a producer yields its Head first"
                    await send(_start(head))
                    started = True
                await send({"type": "http.response.body", "body": part, "more_body": True})
            if started and not gone.done():
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            elif not started and head is not None and not gone.done():
                await send(_start(head))
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher


def _start(head: Head) -> dict[str, Any]:
    headers = [(b"content-type", head.media_type.encode())]
    if head.media_type in (NDJSON, SSE):
        headers.append((b"cache-control", b"no-cache"))
    return {"type": "http.response.start", "status": head.status, "headers": headers}


async def _watch_disconnect(receive: Receive, gone: asyncio.Future[None]) -> None:
    # The body has been read already, so the next message can only be the disconnect.
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            if not gone.done():
                gone.set_result(None)
            return
