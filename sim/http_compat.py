"""Ollama's newer compatibility routes: `/v1/responses` (OpenAI's Responses API, served
statelessly), `/v1/messages` (Anthropic's Messages API) and `/v1/audio/transcriptions` (a
multipart form whose model is a form field). Each is a generation on the same backend model as the
other routes, so loads, slots and timing behave alike; only the wire shapes differ.

Streaming: the Responses API and the Messages API both frame Server-Sent Events with an `event:`
line naming the event type and a `data:` line whose JSON repeats it. Errors: the Responses API
uses the OpenAI error object, the Messages API Anthropic's `{"type": "error", "error": {...}}`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from schemas.multipart import FormError, form_field, part_size
from sim.driver import Emulator
from sim.http_common import (
    JSON,
    SSE,
    ApiError,
    Head,
    LazyResponse,
    decode_body,
    encode,
    json_response,
    openai_error,
)
from sim.requests import Options, Reply, find_model, paced_pieces, plan_generation
from sim.textgen import count_tokens

ANTHROPIC_ERRORS = {400: "invalid_request_error", 401: "authentication_error",
                    403: "permission_error", 404: "not_found_error", 413: "request_too_large",
                    429: "rate_limit_error", 503: "overloaded_error"}


def anthropic_error(status: int, message: str) -> Response:
    kind = ANTHROPIC_ERRORS.get(status, "api_error")
    return json_response({"type": "error", "error": {"type": kind, "message": message}}, status)


def _emu(request: Request) -> Emulator:
    emu: Emulator = request.app.state.emulator
    return emu


def _event(kind: str, body: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + encode({"type": kind} | body) + b"\n\n"


def _text(content: Any) -> str:
    """Text of a message's content: a string, or a list of text parts ({"type": ..., "text"})."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _stream(
    emu: Emulator, reply: Reply, stream: bool, *, first: Callable[[], list[bytes]],
    delta: Callable[[str], bytes], last: Callable[[str], list[bytes]],
    whole: Callable[[str], dict[str, Any]],
) -> LazyResponse:
    job = reply.job

    async def produce(gone: asyncio.Future[None]) -> AsyncIterator[Head | bytes]:
        if not await emu.wait_started(job, gone):
            return
        yield Head(200, SSE if stream else JSON)
        if stream:
            for head in first():
                yield head
            async for piece in paced_pieces(emu, reply, gone):
                yield delta(piece)
        assert job.done_at is not None
        if not await emu.sleep_until(job, job.done_at, gone):
            return
        text = "".join(reply.pieces)
        if not stream:
            yield encode(whole(text))
            return
        for tail in last(text):
            yield tail

    return LazyResponse(produce)


# -- /v1/responses ------------------------------------------------------------------------------


class ResponsesRequest(msgspec.Struct):
    model: str = ""
    input: str | list[dict[str, Any]] = ""
    instructions: str | None = None
    stream: bool = False
    max_output_tokens: int | None = None
    seed: int | None = None


async def responses(request: Request) -> Response | LazyResponse:
    emu = _emu(request)
    try:
        body = await decode_body(request, ResponsesRequest)
        spec = find_model(emu, body.model)
        items = [{"role": "user", "content": body.input}] if isinstance(body.input, str) else body.input
        if not items:
            raise ApiError(400, "input is required")
        lines = ([f"system: {body.instructions}"] if body.instructions else []) + [
            f"{i.get('role', 'user')}: {_text(i.get('content'))}" for i in items
        ]
        text = "\n".join(lines)
        options = Options(num_predict=body.max_output_tokens, seed=body.seed)
        reply = plan_generation(emu, spec, text, count_tokens(text) + 2 * len(lines), options, None)
    except ApiError as exc:
        return openai_error(exc.status, exc.message)
    job = reply.job
    rid, mid = f"resp_{job.id}", f"msg_{job.id}"
    created = int(emu.wall(emu.now()))
    counter = iter(range(1_000_000))

    def envelope(status: str, output: list[dict[str, Any]], usage: dict[str, int] | None) -> dict[str, Any]:
        return {"id": rid, "object": "response", "created_at": created, "status": status,
                "model": body.model, "output": output, "usage": usage, "error": None,
                "incomplete_details": None, "instructions": body.instructions,
                "max_output_tokens": body.max_output_tokens, "parallel_tool_calls": False,
                "tool_choice": "auto", "tools": [], "text": {"format": {"type": "text"}}}

    def message(text: str, status: str) -> dict[str, Any]:
        content = [{"type": "output_text", "text": text, "annotations": []}] if status == "completed" else []
        return {"id": mid, "type": "message", "status": status, "role": "assistant", "content": content}

    def usage() -> dict[str, int]:
        out = len(reply.pieces)
        return {"input_tokens": job.prompt_tokens, "output_tokens": out,
                "total_tokens": job.prompt_tokens + out}

    def event(kind: str, fields: dict[str, Any]) -> bytes:
        return _event(kind, {"sequence_number": next(counter)} | fields)

    def first() -> list[bytes]:
        part = {"type": "output_text", "text": "", "annotations": []}
        return [
            event("response.created", {"response": envelope("in_progress", [], None)}),
            event("response.in_progress", {"response": envelope("in_progress", [], None)}),
            event("response.output_item.added", {"output_index": 0, "item": message("", "in_progress")}),
            event("response.content_part.added", {"item_id": mid, "output_index": 0,
                                                  "content_index": 0, "part": part}),
        ]

    def delta(piece: str) -> bytes:
        return event("response.output_text.delta", {"item_id": mid, "output_index": 0,
                                                    "content_index": 0, "delta": piece})

    def last(text: str) -> list[bytes]:
        done = message(text, "completed")
        return [
            event("response.output_text.done", {"item_id": mid, "output_index": 0,
                                               "content_index": 0, "text": text}),
            event("response.content_part.done", {"item_id": mid, "output_index": 0,
                                                 "content_index": 0, "part": done["content"][0]}),
            event("response.output_item.done", {"output_index": 0, "item": done}),
            event("response.completed", {"response": envelope("completed", [done], usage())}),
        ]

    def whole(text: str) -> dict[str, Any]:
        return envelope("completed", [message(text, "completed")], usage())

    return _stream(emu, reply, body.stream, first=first, delta=delta, last=last, whole=whole)


# -- /v1/messages -------------------------------------------------------------------------------


class AnthropicMessage(msgspec.Struct):
    role: str = ""
    content: str | list[dict[str, Any]] = ""


class MessagesRequest(msgspec.Struct):
    model: str = ""
    messages: list[AnthropicMessage] = []
    system: str | list[dict[str, Any]] | None = None
    max_tokens: int | None = None
    stream: bool = False


async def messages(request: Request) -> Response | LazyResponse:
    emu = _emu(request)
    try:
        body = await decode_body(request, MessagesRequest)
        if body.max_tokens is None:
            raise ApiError(400, "max_tokens is required")
        if not body.messages:
            raise ApiError(400, "messages is required")
        spec = find_model(emu, body.model)
        lines = ([f"system: {_text(body.system)}"] if body.system else []) + [
            f"{m.role}: {_text(m.content)}" for m in body.messages
        ]
        text = "\n".join(lines)
        options = Options(num_predict=body.max_tokens)
        reply = plan_generation(emu, spec, text, count_tokens(text) + 4 * len(lines), options, None)
    except ApiError as exc:
        return anthropic_error(exc.status, exc.message)
    job = reply.job
    mid = f"msg_{job.id}"
    stop = "max_tokens" if reply.done_reason == "length" else "end_turn"

    def envelope(content: list[dict[str, Any]], stop_reason: str | None, output: int) -> dict[str, Any]:
        return {"id": mid, "type": "message", "role": "assistant", "model": body.model,
                "content": content, "stop_reason": stop_reason, "stop_sequence": None,
                "usage": {"input_tokens": job.prompt_tokens, "output_tokens": output}}

    def first() -> list[bytes]:
        return [
            _event("message_start", {"message": envelope([], None, 0)}),
            _event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
            _event("ping", {}),
        ]

    def delta(piece: str) -> bytes:
        return _event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": piece}})

    def last(text: str) -> list[bytes]:
        return [
            _event("content_block_stop", {"index": 0}),
            _event("message_delta", {"delta": {"stop_reason": stop, "stop_sequence": None},
                                     "usage": {"output_tokens": len(reply.pieces)}}),
            _event("message_stop", {}),
        ]

    def whole(text: str) -> dict[str, Any]:
        return envelope([{"type": "text", "text": text}], stop, len(reply.pieces))

    return _stream(emu, reply, body.stream, first=first, delta=delta, last=last, whole=whole)


# -- /v1/audio/transcriptions -------------------------------------------------------------------

AUDIO_BYTES_PER_TOKEN = 2000  # ~16 kHz 16-bit mono: a word every ~3 s of audio, roughly


async def transcriptions(request: Request) -> Response | LazyResponse:
    emu = _emu(request)
    try:
        raw = await request.body()
        content_type = request.headers.get("content-type", "")
        try:
            model = form_field(raw, content_type, "model")
            size = part_size(raw, content_type, "file")
        except FormError as exc:
            raise ApiError(400, str(exc)) from None
        if not model:
            raise ApiError(400, "model is required")
        if not size:
            raise ApiError(400, "file is required")
        spec = find_model(emu, model)
        tokens = size // AUDIO_BYTES_PER_TOKEN + 1
        options = Options(num_predict=max(1, min(tokens, 448)))
        reply = plan_generation(emu, spec, f"audio:{size}", tokens, options, None)
    except ApiError as exc:
        return openai_error(exc.status, exc.message)

    def whole(text: str) -> dict[str, Any]:
        return {"text": text.strip(), "usage": {"type": "tokens", "input_tokens": reply.job.prompt_tokens,
                                                "output_tokens": len(reply.pieces),
                                                "total_tokens": reply.job.prompt_tokens + len(reply.pieces)}}

    return _stream(emu, reply, False, first=list, delta=lambda _: b"", last=lambda _: [], whole=whole)
