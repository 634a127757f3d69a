"""The policy file: shared settings plus named policies. Every key is documented in
`policies.example.toml`; a test fails when one is not."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from schemas.common import (
    Cidr,
    Duration,
    EnvName,
    HttpUrl,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    Strict,
)


class Backend(Strict, frozen=True):
    url: HttpUrl = "http://127.0.0.1:11434"
    max_parallel: PositiveInt = 2  # requests in flight to Ollama at once, all models together
    num_parallel: PositiveInt = 1  # Ollama's OLLAMA_NUM_PARALLEL: requests one model serves at once
    vram_gb: PositiveFloat = 24.0  # GiB of GPU memory Ollama may use
    max_loaded_models: PositiveInt = 3  # Ollama's OLLAMA_MAX_LOADED_MODELS
    poll_interval: Duration = "5s"  # how often /api/ps and /api/tags are read
    request_timeout: Duration = "10m"  # one upstream request, first byte to last
    queue_timeout: Duration = "10m"  # longest wait in the sidecar's queue before a 504
    # Resident size ≈ size on disk × this, for models seen in /api/tags but never loaded.
    resident_factor: PositiveFloat = 1.2


# A backend's name: in the X-Backend header, metric labels and the journal.
BACKEND_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}"
BackendName = Annotated[str, Meta(pattern=f"^{BACKEND_NAME}$")]


class BackendNode(Backend, frozen=True):
    """One of several Ollama servers ([backends.NAME]); [backend] is the shorthand for one.
    poll_interval, request_timeout, queue_timeout and resident_factor belong to the sidecar as a
    whole: every backend that sets them must set the same value."""

    # Models this server may serve (globs; empty: all): a box that holds only some of them.
    models: list[str] = msgspec.field(default_factory=list)
    # Its share when the pick is otherwise even (its load counts in_flight / slots / weight).
    weight: PositiveFloat = 1.0


class ModelInfo(Strict, frozen=True):
    # Resident size in GiB, used until Ollama reports the real one. One model only (no glob).
    vram_gb: PositiveFloat | None = None
    # Requests this model serves at once, where Ollama gives it other than backend.num_parallel:
    # it forces one slot on vision and hybrid architectures (docs/policy.md). Globs allowed.
    num_parallel: PositiveInt | None = None


class ClassRule(Strict, frozen=True):
    description: str = ""
    # A request is in this class if it matches every list that is not empty (globs allowed).
    clients: list[str] = msgspec.field(default_factory=list)
    models: list[str] = msgspec.field(default_factory=list)
    endpoints: list[str] = msgspec.field(default_factory=list)
    selectable: bool = False  # a client may ask for this class with the class header


IdentifyBy = Literal["api_key", "header", "ip"]


class Clients(Strict, frozen=True):
    identify_by: list[IdentifyBy] = msgspec.field(
        default_factory=lambda: ["api_key", "header", "ip"]
    )
    header: str = "x-client-id"
    api_keys_env: EnvName = "SMART_PROXY_API_KEYS"  # holds "key=name,key=name"
    trusted_proxies: list[Cidr] = msgspec.field(default_factory=list)
    class_header: str = "x-request-class"
    default_class: str = "interactive"
    classes: dict[str, ClassRule] = msgspec.field(
        default_factory=lambda: {
            "interactive": ClassRule(description="people waiting at a prompt"),
            "batch": ClassRule(description="agents and jobs that can wait", selectable=True),
        }
    )


class RateWindow(Strict, frozen=True):
    window: Duration
    max_requests: PositiveInt  # arrivals of one client within the window; more get a 429


class ClassLimits(Strict, frozen=True):
    # Waiting requests of this class at most; beyond, a new one is refused (503 + Retry-After).
    max_queue: PositiveInt | None = None
    # How long a request of this class may wait for a slot (504 after), in place of
    # backend.queue_timeout. Also its urgency: a class with a shorter timeout is served, and
    # kept, before one with a longer one when the queue is full (docs/policy.md, Admission).
    queue_timeout: Duration | None = None


class Limits(Strict, frozen=True):
    max_queue: PositiveInt = 2000
    max_queued_per_client: PositiveInt = 1000
    max_body: PositiveInt = 16 * 1024 * 1024  # bytes
    rate: dict[str, RateWindow] = msgspec.field(default_factory=dict)
    classes: dict[str, ClassLimits] = msgspec.field(default_factory=dict)


class Admin(Strict, frozen=True):
    networks: list[Cidr] = msgspec.field(default_factory=lambda: ["127.0.0.1/32", "::1/128"])
    key_env: EnvName = "PROXY_ADMIN_KEY"
    session_lifetime: Duration = "24h"
    auth_attempts_per_minute: PositiveInt = 10


StorePrompts = Literal["full", "hash", "none"]


class Journal(Strict, frozen=True):
    store_prompts: StorePrompts = "hash"
    retention: Duration = "30d"


class Cloud(Strict, frozen=True):
    # Cloud models (`NAME:cloud`, `…-cloud`) run on Ollama's hosted service: no local VRAM, no
    # local slot. Requests to them in flight at once, apart from backend.max_parallel.
    max_parallel: PositiveInt = 4


class QueueStatus(Strict, frozen=True):
    # Streamed requests on the event-stream routes (/v1/chat/completions, /v1/completions,
    # /v1/responses, /v1/messages) hear `: queued, position 3 of 12, est 40s` comment lines while
    # they wait, then `: dispatched, loading MODEL` until Ollama's first byte. The 200 status
    # goes out with the first line, so a later error from Ollama
    # arrives as an error event instead of its status code (docs/sidecar.md).
    enabled: bool = False
    every: Duration = "5s"  # between lines; the first after this long in the queue


class NumCtx(Strict, frozen=True):
    # Reuse a loaded runner of the model for a request that asks another `options.num_ctx`, by
    # rewriting it in the body forwarded to Ollama, instead of letting Ollama reload the model.
    # Off unless set. A runner with a larger context is reused as it is (the client gets more
    # context than it asked for, never less); see `tolerance` for smaller ones. Only requests
    # that set num_ctx are rewritten, and only to a runner loaded through this sidecar
    # (docs/policy.md, "num_ctx normalisation").
    normalise: bool = False
    # Also reuse a runner whose context is smaller than asked, by up to this fraction of what was
    # asked (0.25: a request for 8192 may run at 6144). That shrinks the client's context: a long
    # prompt is cut sooner. 0 (the default) never shrinks one.
    tolerance: Annotated[float, Meta(ge=0, le=0.5)] = 0.0


class PolicySpec(Strict, frozen=True):
    description: str = ""
    # Scores below this are raised to it (the seed clamped at 0); ties then fall to arrival order.
    clamp_min: float | None = None
    # Slots (of backend.max_parallel) kept for a class: other classes cannot take the last ones,
    # so an interactive request never waits behind a full set of long batch generations.
    reserve: dict[str, PositiveInt] = msgspec.field(default_factory=dict)
    num_ctx: NumCtx = msgspec.field(default_factory=NumCtx)  # rewrite num_ctx to a loaded runner's
    # A request whose dispatch would evict another model waits at least this long, even beside a
    # free slot, so that requests for its model arriving meanwhile share one load (unset: a swap
    # goes as soon as it is the best choice). Loads that evict nothing, and overdue work, never wait.
    swap_hold: Duration | None = None
    # TERM name -> its table. Decoded per term type by the policy package.
    terms: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)


class PolicyFile(Strict, frozen=True):
    active: str
    backend: Backend = msgspec.field(default_factory=Backend)
    backends: dict[BackendName, BackendNode] = msgspec.field(default_factory=dict)
    models: dict[str, ModelInfo] = msgspec.field(default_factory=dict)
    clients: Clients = msgspec.field(default_factory=Clients)
    limits: Limits = msgspec.field(default_factory=Limits)
    admin: Admin = msgspec.field(default_factory=Admin)
    journal: Journal = msgspec.field(default_factory=Journal)
    cloud: Cloud = msgspec.field(default_factory=Cloud)
    queue_status: QueueStatus = msgspec.field(default_factory=QueueStatus)
    policies: dict[str, PolicySpec] = msgspec.field(default_factory=dict)


__all__ = [
    "Admin",
    "Backend",
    "BackendNode",
    "ClassLimits",
    "ClassRule",
    "Clients",
    "Cloud",
    "Journal",
    "Limits",
    "ModelInfo",
    "NonNegativeFloat",
    "PolicyFile",
    "PolicySpec",
    "QueueStatus",
    "RateWindow",
]
