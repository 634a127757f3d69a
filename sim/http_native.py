"""Ollama's native generation endpoints: /api/generate, /api/chat, /api/embed, /api/embeddings."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from sim.backend import Job, JobKind
from sim.driver import Emulator
from sim.gotime import rfc3339
from sim.http_common import (
    JSON,
    NDJSON,
    ApiError,
    Head,
    LazyResponse,
    decode_body,
    encode,
    json_response,
    native_error,
)
from sim.requests import (
    ChatRequest,
    EmbeddingsRequest,
    EmbedRequest,
    GenerateRequest,
    Options,
    Reply,
    chat_prompt,
    counters,
    find_model,
    paced_pieces,
    parse_keep_alive,
    plan_generation,
    submit,
)
from sim.textgen import count_tokens, embedding


def _emu(request: Request) -> Emulator:
    emu: Emulator = request.app.state.emulator
    return emu


def _created(emu: Emulator) -> str:
    return rfc3339(emu.wall(emu.now()))


async def _load_or_unload(
    emu: Emulator, name: str, options: Options | None, keep_alive: float, shape: Callable[[], dict[str, Any]],
) -> Response | LazyResponse:
    """Empty prompt/messages: load the model (done_reason "load"), or with keep_alive 0 unload it."""
    spec = find_model(emu, name)
    if keep_alive == 0:
        emu.unload(spec)
        return json_response({**shape(), "done_reason": "unload", "done": True} | {"created_at": _created(emu)})
    job = submit(emu, spec, "load", options=options, keep_alive=keep_alive)

    async def produce(gone: asyncio.Future[None]) -> AsyncIterator[Head | bytes]:
        if await emu.wait_started(job, gone):
            yield Head(200, JSON)
            yield encode({**shape(), "created_at": _created(emu), "done_reason": "load", "done": True})

    return LazyResponse(produce)


def _stream_reply(
    emu: Emulator, reply: Reply, stream: bool, chunk: Callable[[str], dict[str, Any]],
    final: Callable[[str], dict[str, Any]],
) -> LazyResponse:
    """Chunks at the emulated token rate after prompt evaluation; or one object at the end."""
    job = reply.job

    async def produce(gone: asyncio.Future[None]) -> AsyncIterator[Head | bytes]:
        if not await emu.wait_started(job, gone):
            return
        yield Head(200, NDJSON if stream else JSON)
        if stream:
            async for piece in paced_pieces(emu, reply, gone):
                yield encode(chunk(piece)) + b"\n"
        assert job.done_at is not None
        if not await emu.sleep_until(job, job.done_at, gone):
            return
        text = "" if stream else "".join(reply.pieces)
        yield encode(final(text)) + (b"\n" if stream else b"")

    return LazyResponse(produce)


async def generate(request: Request) -> Response | LazyResponse:
    emu = _emu(request)
    try:
        body = await decode_body(request, GenerateRequest)
        keep_alive = parse_keep_alive(emu, body.keep_alive)
        if not body.prompt and not body.images:
            return await _load_or_unload(emu, body.model, body.options, keep_alive,
                                         lambda: {"model": body.model, "response": ""})
        spec = find_model(emu, body.model)
        if spec.embedding:
            raise ApiError(400, f'"{body.model}" does not support generate')
        text = body.system + body.prompt + body.suffix
        prompt_tokens = count_tokens(text) + len(body.context) + 2
        reply = plan_generation(emu, spec, text, prompt_tokens, body.options, keep_alive)
    except ApiError as exc:
        return native_error(exc.status, exc.message)

    def chunk(piece: str) -> dict[str, Any]:
        return {"model": body.model, "created_at": _created(emu), "response": piece, "done": False}

    def final(text: str) -> dict[str, Any]:
        return {
            "model": body.model, "created_at": _created(emu), "response": text, "done": True,
            "done_reason": reply.done_reason, "context": reply.context,
            **counters(emu, reply.job, len(reply.pieces)),
        }

    return _stream_reply(emu, reply, body.stream is not False, chunk, final)


async def chat(request: Request) -> Response | LazyResponse:
    emu = _emu(request)
    try:
        body = await decode_body(request, ChatRequest)
        keep_alive = parse_keep_alive(emu, body.keep_alive)
        if not body.messages:
            return await _load_or_unload(
                emu, body.model, body.options, keep_alive,
                lambda: {"model": body.model, "message": {"role": "assistant", "content": ""}},
            )
        spec = find_model(emu, body.model)
        if spec.embedding:
            raise ApiError(400, f'"{body.model}" does not support chat')
        text, prompt_tokens = chat_prompt(body.messages)
        reply = plan_generation(emu, spec, text, prompt_tokens, body.options, keep_alive)
    except ApiError as exc:
        return native_error(exc.status, exc.message)

    def chunk(piece: str) -> dict[str, Any]:
        return {"model": body.model, "created_at": _created(emu),
                "message": {"role": "assistant", "content": piece}, "done": False}

    def final(text: str) -> dict[str, Any]:
        return {
            "model": body.model, "created_at": _created(emu),
            "message": {"role": "assistant", "content": text},
            "done_reason": reply.done_reason, "done": True,
            **counters(emu, reply.job, len(reply.pieces)),
        }

    return _stream_reply(emu, reply, body.stream is not False, chunk, final)


def embed_job(emu: Emulator, name: str, inputs: list[str], options: Options | None, keep_alive: float) -> Job:
    spec = find_model(emu, name, embed=True)
    kind: JobKind = "embed" if inputs else "load"
    prompt_tokens = sum(count_tokens(text) for text in inputs) or 1
    return submit(emu, spec, kind, prompt_tokens=prompt_tokens, options=options, keep_alive=keep_alive)


def embed_when_done(
    emu: Emulator, job: Job, render: Callable[[], dict[str, Any]],
) -> LazyResponse:
    async def produce(gone: asyncio.Future[None]) -> AsyncIterator[Head | bytes]:
        if not await emu.wait_started(job, gone):
            return
        assert job.done_at is not None
        if await emu.sleep_until(job, job.done_at, gone):
            yield Head(200, JSON)
            yield encode(render())

    return LazyResponse(produce)


def vectors(emu: Emulator, name: str, inputs: list[str], dimensions: int | None) -> list[list[float]]:
    spec = find_model(emu, name, embed=True)
    dims = min(dimensions or spec.embedding_length, spec.embedding_length)
    return [embedding(spec.name, text, dims) for text in inputs]


async def embed(request: Request) -> Response | LazyResponse:
    emu = _emu(request)
    try:
        body = await decode_body(request, EmbedRequest)
        inputs = [body.input] if isinstance(body.input, str) else list(body.input or [])
        if all(not text for text in inputs):
            inputs = []  # nothing to embed: Ollama just loads the model
        job = embed_job(emu, body.model, inputs, body.options,
                        parse_keep_alive(emu, body.keep_alive))
    except ApiError as exc:
        return native_error(exc.status, exc.message)

    def render() -> dict[str, Any]:
        out: dict[str, Any] = {"model": body.model,
                               "embeddings": vectors(emu, body.model, inputs, body.dimensions)}
        assert job.ready_at is not None and job.done_at is not None
        timing = {"total_duration": round((job.done_at - job.arrival) * 1e9),
                  "load_duration": round((job.ready_at - job.arrival) * 1e9),
                  "prompt_eval_count": job.prompt_tokens if inputs else 0}
        return out | {k: v for k, v in timing.items() if v}

    return embed_when_done(emu, job, render)


async def embeddings(request: Request) -> Response | LazyResponse:
    emu = _emu(request)
    try:
        body = await decode_body(request, EmbeddingsRequest)
        inputs = [body.prompt] if body.prompt else []
        job = embed_job(emu, body.model, inputs, body.options,
                        parse_keep_alive(emu, body.keep_alive))
    except ApiError as exc:
        return native_error(exc.status, exc.message)

    def render() -> dict[str, Any]:
        found = vectors(emu, body.model, inputs, None)
        return {"embedding": found[0] if found else []}

    return embed_when_done(emu, job, render)
