"""Request bodies the emulator reads (msgspec Structs, unknown fields ignored like Go's decoder)
and the step from a request to a scheduled job: model lookup, keep_alive, token plan."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import msgspec

from sim.backend import CloudBusy, CloudUnreachable, Job, JobKind, QueueFull
from sim.catalog import ModelSpec
from sim.driver import Emulator
from sim.gotime import keep_alive_seconds
from sim.http_common import QUEUE_FULL, ApiError
from sim.textgen import context_ids, count_tokens, plan_reply, seeded, tokens


class Options(msgspec.Struct):
    num_ctx: int | None = None
    num_predict: int | None = None
    seed: int | None = None


class GenerateRequest(msgspec.Struct):
    model: str = ""
    prompt: str = ""
    system: str = ""
    suffix: str = ""
    context: list[int] = []
    images: list[str] = []
    stream: bool | None = None
    keep_alive: float | str | None = None
    options: Options | None = None


class Message(msgspec.Struct):
    role: str = ""
    content: str = ""
    images: list[str] = []


class ChatRequest(msgspec.Struct):
    model: str = ""
    messages: list[Message] = []
    stream: bool | None = None
    keep_alive: float | str | None = None
    options: Options | None = None
    tools: Any = None


class EmbedRequest(msgspec.Struct):
    model: str = ""
    input: str | list[str] | None = None
    dimensions: int | None = None
    truncate: bool | None = None
    keep_alive: float | str | None = None
    options: Options | None = None


class EmbeddingsRequest(msgspec.Struct):
    model: str = ""
    prompt: str = ""
    keep_alive: float | str | None = None
    options: Options | None = None


@dataclass(slots=True)
class Reply:
    """A scheduled generation: the job plus the words it will stream."""

    job: Job
    pieces: list[str]
    done_reason: str
    context: list[int]  # token ids of prompt + reply, for /api/generate


async def paced_pieces(
    emu: Emulator, reply: Reply, gone: asyncio.Future[None]
) -> AsyncIterator[str]:
    """The reply's pieces at the emulated token rate, after prompt evaluation. Stops early if the
    client goes away (the caller then sees `gone` done and sends nothing more)."""
    job = reply.job
    step = job.eval_seconds / max(len(reply.pieces), 1)
    first = job.started_at + job.prompt_seconds  # type: ignore[operator]
    for index, piece in enumerate(reply.pieces):
        if not await emu.sleep_until(job, first + step * (index + 1), gone):
            return
        yield piece


def find_model(emu: Emulator, name: str, *, embed: bool = False) -> ModelSpec:
    """The installed model, or Ollama's 400/404 (the wording differs for embeddings)."""
    if not name:
        raise ApiError(400, "model is required")
    spec = emu.catalog.get(name)
    if spec is None:
        if embed:
            raise ApiError(404, f'model "{name}" not found, try pulling it first')
        raise ApiError(404, f"model '{name}' not found")
    return spec


def parse_keep_alive(emu: Emulator, value: float | str | None) -> float:
    try:
        return keep_alive_seconds(value, emu.settings.keep_alive)
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None


# What the hosted service says, through Ollama, when it takes no more of this server's requests.
CLOUD_BUSY = "too many concurrent requests to the cloud model, please try again later"
CLOUD_UNREACHABLE = "cannot reach the cloud service for this model"  # the emulator's wording


def submit(
    emu: Emulator, spec: ModelSpec, kind: JobKind, *, prompt_tokens: int = 1,
    output_tokens: int = 0, options: Options | None = None, keep_alive: float | None = None,
) -> Job:
    try:
        return emu.submit(
            spec, kind=kind, prompt_tokens=prompt_tokens, output_tokens=output_tokens,
            num_ctx=options.num_ctx if options else None, keep_alive=keep_alive,
        )
    except QueueFull:
        raise ApiError(503, QUEUE_FULL) from None
    except CloudBusy:
        raise ApiError(429, CLOUD_BUSY) from None
    except CloudUnreachable:
        raise ApiError(502, CLOUD_UNREACHABLE) from None


def plan_generation(
    emu: Emulator, spec: ModelSpec, prompt_text: str, prompt_tokens: int,
    options: Options | None, keep_alive: float | None,
) -> Reply:
    """Seeded by model, prompt and options.seed: the same request always gets the same reply."""
    rng = seeded(spec.name, prompt_text, options.seed if options else None)
    count, reason = plan_reply(rng, options.num_predict if options else None)
    pieces = tokens(rng, count)
    job = submit(emu, spec, "generate", prompt_tokens=prompt_tokens, output_tokens=count,
                 options=options, keep_alive=keep_alive)
    return Reply(job, pieces, reason, context_ids(rng, prompt_tokens + count))


def chat_prompt(messages: list[Message]) -> tuple[str, int]:
    """The text a chat template would produce and its token count (≈4 tokens of framing each)."""
    text = "\n".join(f"{m.role}: {m.content}" for m in messages)
    return text, sum(count_tokens(m.content) + 4 for m in messages) + 2


def counters(emu: Emulator, job: Job, eval_count: int) -> dict[str, int]:
    """Ollama's final-chunk counters in integer nanoseconds; zero ones are omitted as Ollama does."""
    assert job.started_at is not None and job.ready_at is not None
    end = job.done_at if job.done_at is not None else emu.now()
    values = {
        "total_duration": round((end - job.arrival) * 1e9),
        "load_duration": round((job.ready_at - job.arrival) * 1e9),
        "prompt_eval_count": job.prompt_tokens,
        "prompt_eval_duration": round(job.prompt_seconds * 1e9),
        "eval_count": eval_count,
        "eval_duration": round(job.eval_seconds * 1e9),
    }
    return {key: value for key, value in values.items() if value}
