"""Payloads of the sidecar's own endpoints (`/proxy/*`). Data only; the server fills them in.

Responses are encoded with msgspec; the one request body (`POST /proxy/auth`) is decoded strictly,
so a misspelt key is a 400, not a silently ignored field.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from schemas.common import Strict


class UpstreamHealth(msgspec.Struct, frozen=True, kw_only=True):
    up: bool
    last_error: str | None = None
    last_poll_age_s: float | None = None  # None: no poll has succeeded yet


class BackendHealth(msgspec.Struct, frozen=True, kw_only=True):
    """One Ollama server of the policy's backends: whether it answers, and its slots in use."""

    name: str
    up: bool  # its last poll succeeded and no request since failed to connect to it
    last_error: str | None = None
    last_poll_age_s: float | None = None  # None: no poll has succeeded yet
    in_flight: int  # local requests running there
    max_parallel: int
    retiring: bool = False  # removed by a reload: finishes what it runs, takes nothing new


class PolicyInfo(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    version: str
    last_reload_error: str | None = None


class Health(msgspec.Struct, frozen=True, kw_only=True):
    """`GET /proxy/health`: public, so it names no client and no model."""

    status: Literal["ok", "degraded", "stopping"]
    queue_depth: int
    in_flight: int
    max_parallel: int
    paused: bool
    upstream: UpstreamHealth
    policy: PolicyInfo
    # Why the status is not "ok", in words, e.g. "Ollama reports 48.0 GiB in use, the policy's
    # vram_gb is 24; ...": Ollama unreachable, a refused policy edit, or Ollama's /api/ps
    # contradicting the policy's [backend]. Empty when the status is "ok".
    reasons: list[str] = msgspec.field(default_factory=list)
    # Every backend, in the file's order (one, "default", for a [backend] file). `upstream` sums
    # them up: up while any one is.
    backends: list[BackendHealth] = msgspec.field(default_factory=list)


class QueueEntry(msgspec.Struct, frozen=True, kw_only=True):
    request_id: str
    # The sidecar's own X-Queue-Id for the ticket (`GET /proxy/queue/{queue_id}` works for anyone
    # holding it); None for a ticket the HTTP layer did not issue one for.
    queue_id: str | None = None
    position: int  # 1 = next to be dispatched
    model: str
    client: str
    request_class: str = msgspec.field(name="class")
    endpoint: str
    waited_s: float
    score: float
    terms: dict[str, float]
    overdue: bool
    eligible: bool  # may be dispatched as soon as a slot is free (and dispatching is not paused)
    # Why it still waits, e.g. "model X at its num_parallel limit (2 of 2 running)"; several
    # causes are joined with "; ". None when nothing holds it back.
    reason: str | None


class InFlightEntry(msgspec.Struct, frozen=True, kw_only=True):
    request_id: str
    # The sidecar's own X-Queue-Id for the ticket (`GET /proxy/queue/{queue_id}` works for anyone
    # holding it); None for a ticket the HTTP layer did not issue one for.
    queue_id: str | None = None
    model: str
    client: str
    request_class: str = msgspec.field(name="class")
    endpoint: str
    elapsed_s: float


class QueueView(msgspec.Struct, frozen=True, kw_only=True):
    """`GET /proxy/queue` (admin): waiting tickets in dispatch order, then the ones in flight."""

    paused: bool
    depth: int
    max_parallel: int
    policy: PolicyInfo
    waiting: list[QueueEntry]
    in_flight: list[InFlightEntry]


class Position(msgspec.Struct, frozen=True, kw_only=True):
    """`GET /proxy/queue/{request_id}`: what a waiting client may know about its own ticket."""

    request_id: str
    state: Literal["waiting", "in_flight"]
    position: int | None  # None once dispatched
    depth: int
    model: str
    request_class: str = msgspec.field(name="class")
    waited_s: float
    score: float | None
    terms: dict[str, float]
    overdue: bool
    policy: PolicyInfo


class BackendVram(msgspec.Struct, frozen=True, kw_only=True):
    up: bool
    residency: dict[str, Any]
    last_ps: dict[str, Any] | None
    last_poll_age_s: float | None
    in_flight: int
    max_parallel: int


class VramView(msgspec.Struct, frozen=True, kw_only=True):
    """`GET /proxy/vram` (admin): the engine's residency model and the last `/api/ps` it saw."""

    residency: dict[str, Any]
    last_ps: dict[str, Any] | None
    last_poll_age_s: float | None
    # Per backend by name (the fields above are the first backend's, as with one).
    backends: dict[str, BackendVram] = msgspec.field(default_factory=dict)


class PolicyView(msgspec.Struct, frozen=True, kw_only=True):
    """`GET /proxy/policy` (admin): the active file as compiled, with its settings."""

    path: str
    version: str
    active: str
    policies: dict[str, str]  # name -> description
    last_reload_error: str | None
    file: dict[str, Any]


class ReloadOutcome(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    changed: bool
    version: str
    error: str | None = None


class PauseState(msgspec.Struct, frozen=True, kw_only=True):
    paused: bool
    queue_depth: int


class Cancelled(msgspec.Struct, frozen=True, kw_only=True):
    request_id: str
    cancelled: bool


class CancelOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """POST /proxy/requests/{id}/cancel: which request, and where it was when it was stopped."""

    request_id: str
    cancelled: bool
    state: Literal["waiting", "in_flight"]


class QueueClearOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """DELETE /proxy/queue: how many waiting requests were answered 503; running ones go on."""

    cleared: int
    in_flight: int


class AuthRequest(Strict, frozen=True):
    """`POST /proxy/auth` body."""

    key: str


class AuthToken(msgspec.Struct, frozen=True, kw_only=True):
    token: str
    expires_in_s: float


__all__ = [
    "AuthRequest",
    "AuthToken",
    "Cancelled",
    "Health",
    "InFlightEntry",
    "PauseState",
    "PolicyInfo",
    "PolicyView",
    "Position",
    "QueueEntry",
    "QueueView",
    "ReloadOutcome",
    "UpstreamHealth",
    "VramView",
]
