"""Ollama's OpenAI-compatible endpoints: /v1/chat/completions, /v1/completions, /v1/embeddings,
/v1/models. SSE framing `data: {json}\\n\\n` ending with `data: [DONE]\\n\\n`; keep_alive is not
honoured here (Ollama ignores it on these paths), so the server default applies."""

from __future__ import annotations

import asyncio
import base64
import struct
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

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
from sim.http_native import embed_job, embed_when_done, vectors
from sim.requests import (
    Message,
    Options,
    Reply,
    chat_prompt,
    find_model,
    paced_pieces,
    plan_generation,
)
from sim.textgen import count_tokens

FINGERPRINT = "fp_ollama"


class StreamOptions(msgspec.Struct):
    include_usage: bool = False


class ChatCompletionRequest(msgspec.Struct):
    model: str = ""
    messages: list[Message] = []
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    seed: int | None = None


class CompletionRequest(msgspec.Struct):
    model: str = ""
    prompt: str | list[str] = ""
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    seed: int | None = None


class EmbeddingRequest(msgspec.Struct):
    model: str = ""
    input: str | list[str] | None = None
    dimensions: int | None = None
    encoding_format: str | None = None


def _emu(request: Request) -> Emulator:
    emu: Emulator = request.app.state.emulator
    return emu


def _sse(body: Any) -> bytes:
    return b"data: " + encode(body) + b"\n\n"


def _usage(reply: Reply) -> dict[str, int]:
    prompt, completion = reply.job.prompt_tokens, len(reply.pieces)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _respond(
    emu: Emulator, reply: Reply, stream: bool, usage: bool,
    chunk: Callable[[str, str | None], dict[str, Any]], whole: Callable[[str], dict[str, Any]],
) -> LazyResponse:
    job = reply.job
    finish = "length" if reply.done_reason == "length" else "stop"

    async def produce(gone: asyncio.Future[None]) -> AsyncIterator[Head | bytes]:
        if not await emu.wait_started(job, gone):
            return
        yield Head(200, SSE if stream else JSON)
        if stream:
            async for piece in paced_pieces(emu, reply, gone):
                yield _sse(chunk(piece, None))
        assert job.done_at is not None
        if not await emu.sleep_until(job, job.done_at, gone):
            return
        if not stream:
            yield encode(whole("".join(reply.pieces)) | {"usage": _usage(reply)})
            return
        yield _sse(chunk("", finish))
        if usage:
            yield _sse(chunk("", None) | {"choices": [], "usage": _usage(reply)})
        yield b"data: [DONE]\n\n"

    return LazyResponse(produce)


def _header(emu: Emulator, kind: str, model: str, job_id: int) -> dict[str, Any]:
    prefix = "chatcmpl" if kind.startswith("chat") else "cmpl"
    return {"id": f"{prefix}-{job_id}", "object": kind, "created": int(emu.wall(emu.now())),
            "model": model, "system_fingerprint": FINGERPRINT}


async def chat_completions(request: Request) -> Response | LazyResponse:
    emu = _emu(request)
    try:
        body = await decode_body(request, ChatCompletionRequest)
        if not body.messages:
            raise ApiError(400, "[] is too short - 'messages'")
        spec = find_model(emu, body.model)
        text, prompt_tokens = chat_prompt(body.messages)
        limit = body.max_completion_tokens or body.max_tokens
        options = Options(num_predict=limit, seed=body.seed)
        reply = plan_generation(emu, spec, text, prompt_tokens, options, None)
    except ApiError as exc:
        return openai_error(exc.status, exc.message)

    def chunk(piece: str, finish: str | None) -> dict[str, Any]:
        delta = {"role": "assistant", "content": piece}
        return _header(emu, "chat.completion.chunk", body.model, reply.job.id) | {
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    def whole(text: str) -> dict[str, Any]:
        finish = "length" if reply.done_reason == "length" else "stop"
        message = {"role": "assistant", "content": text}
        return _header(emu, "chat.completion", body.model, reply.job.id) | {
            "choices": [{"index": 0, "message": message, "finish_reason": finish}]}

    include = bool(body.stream_options and body.stream_options.include_usage)
    return _respond(emu, reply, body.stream, include, chunk, whole)


async def completions(request: Request) -> Response | LazyResponse:
    emu = _emu(request)
    try:
        body = await decode_body(request, CompletionRequest)
        spec = find_model(emu, body.model)
        prompt = body.prompt if isinstance(body.prompt, str) else "".join(body.prompt)
        options = Options(num_predict=body.max_tokens, seed=body.seed)
        reply = plan_generation(emu, spec, prompt, count_tokens(prompt) + 1, options, None)
    except ApiError as exc:
        return openai_error(exc.status, exc.message)

    def chunk(piece: str, finish: str | None) -> dict[str, Any]:
        return _header(emu, "text_completion", body.model, reply.job.id) | {
            "choices": [{"text": piece, "index": 0, "finish_reason": finish}]}

    def whole(text: str) -> dict[str, Any]:
        finish = "length" if reply.done_reason == "length" else "stop"
        return _header(emu, "text_completion", body.model, reply.job.id) | {
            "choices": [{"text": text, "index": 0, "finish_reason": finish, "logprobs": None}]}

    include = bool(body.stream_options and body.stream_options.include_usage)
    return _respond(emu, reply, body.stream, include, chunk, whole)


async def embeddings(request: Request) -> Response | LazyResponse:
    emu = _emu(request)
    try:
        body = await decode_body(request, EmbeddingRequest)
        inputs = [body.input] if isinstance(body.input, str) else list(body.input or [])
        if not inputs or any(not text for text in inputs):
            raise ApiError(400, "invalid input")
        job = embed_job(emu, body.model, inputs, None, emu.settings.keep_alive)
    except ApiError as exc:
        return openai_error(exc.status, exc.message)

    def render() -> dict[str, Any]:
        found: list[Any] = vectors(emu, body.model, inputs, body.dimensions)
        if body.encoding_format == "base64":
            # What the openai client asks for by default: little-endian float32, base64-encoded.
            found = [base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode() for v in found]
        return {
            "object": "list",
            "data": [{"object": "embedding", "embedding": v, "index": i} for i, v in enumerate(found)],
            "model": body.model,
            "usage": {"prompt_tokens": job.prompt_tokens, "total_tokens": job.prompt_tokens},
        }

    return embed_when_done(emu, job, render)


def _model_entry(name: str, modified_at: float) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": int(modified_at), "owned_by": "library"}


async def models(request: Request) -> Response:
    specs = _emu(request).catalog.all()
    return json_response({"object": "list", "data": [_model_entry(s.name, s.modified_at) for s in specs]})


async def model(request: Request) -> Response:
    name = request.path_params["model"]
    spec = _emu(request).catalog.get(name)
    if spec is None:
        return openai_error(404, f'model "{name}" not found')
    return json_response(_model_entry(name, spec.modified_at))
