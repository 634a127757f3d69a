"""A replayable request trace: one JSON object per line (JSON Lines), oldest arrival first.

`smart-proxy trace export` writes it from the journal; the emulator's offline replay
(`smart-proxy simulate`) reads it. Each line is one request as it arrived at the sidecar:

    {"arrival": 0.0, "at": 1767225600.0, "client": "alice", "class": "interactive",
     "model": "llama3:8b", "endpoint": "/api/chat", "prompt_tokens": 42, "output_tokens": 310}

- `arrival`: seconds after the first request of the trace (so a trace replays from 0).
- `at`: the original arrival time, seconds since the Unix epoch (UTC), kept for reference.
- `client`, `class`, `model`, `endpoint`: as the sidecar identified them.
- `prompt_tokens`, `output_tokens`: Ollama's prompt_eval_count and eval_count; null when the
  request never produced them (rejected, cancelled, failed), and a replay then has to estimate.
- `status`: how the original request ended, so a replay can choose to skip rejected ones.
- `num_ctx`: the `options.num_ctx` the client asked for; null for the server's default.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from schemas.common import Strict
from schemas.journal import Status


class TraceRecord(Strict, frozen=True):
    """One arrival in a replayable trace."""

    arrival: Annotated[float, Meta(ge=0)]
    at: Annotated[float, Meta(ge=0)]
    client: str
    model: str | None
    endpoint: str
    request_class: str | None = msgspec.field(default=None, name="class")
    prompt_tokens: Annotated[int, Meta(ge=0)] | None = None
    output_tokens: Annotated[int, Meta(ge=0)] | None = None
    status: Status = "completed"
    num_ctx: Annotated[int, Meta(ge=1, le=1 << 24)] | None = None  # as a request's options allow


__all__ = ["TraceRecord"]
