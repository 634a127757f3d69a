"""The live event stream's records (`GET /proxy/events`, docs/dashboards.md).

Each event is one msgspec struct, tagged by `type`; on the wire it is one Server-Sent Event whose
`event:` line is the type and whose `data:` line is this JSON. `id` increases by one per event and
is what a reconnecting client sends back as `Last-Event-ID`; `at` is seconds since the Unix epoch.
A heartbeat carries no id: it is not kept, so it never needs replaying.
"""

from __future__ import annotations

from typing import Literal

import msgspec

ActionName = Literal["attach", "load", "swap", "reload"]


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    id: int = 0  # 0: not numbered (heartbeat, and the per-subscriber notices below)
    at: float


class Enqueued(Event, frozen=True, kw_only=True, tag="enqueue"):
    request_id: str
    client: str
    model: str
    request_class: str = msgspec.field(name="class")
    endpoint: str
    depth: int  # tickets waiting, this one included


class Dispatched(Event, frozen=True, kw_only=True, tag="dispatch"):
    request_id: str
    client: str
    model: str
    request_class: str = msgspec.field(name="class")
    score: float
    terms: dict[str, float]  # what each policy term contributed to `score`
    resident: bool  # its model was loaded (or loading): no swap
    action: ActionName  # attach: already loaded; load: beside the others; swap: evicts; reload
    evicts: list[str]  # models this dispatch is predicted to push out of VRAM
    waited_s: float
    depth: int  # tickets waiting when it was chosen, itself included
    backend: str = ""  # the backend it was sent to ("": a cloud model's, through any)
    # Its second dispatch: the first backend refused the connection, so it waited again.
    again: bool = False


class FirstByte(Event, frozen=True, kw_only=True, tag="first_byte"):
    request_id: str
    model: str


class _Ended(Event, frozen=True, kw_only=True):
    request_id: str  # the id the queue showed and the client knows (its X-Request-Id)
    journal_id: str  # the journal record's own key: GET /proxy/requests/{journal_id} is exact
    client: str
    model: str | None
    endpoint: str
    http_status: int | None
    error: str | None
    wait_ms: float | None  # in the queue; None: never queued
    duration_ms: float | None  # from arrival to the end


class Completed(_Ended, frozen=True, kw_only=True, tag="complete"):
    status: Literal["completed", "failed"]
    # Ollama's counters from the final chunk (durations in nanoseconds, as Ollama reports them).
    prompt_eval_count: int | None = None
    eval_count: int | None = None
    load_duration: int | None = None
    eval_duration: int | None = None


class Cancelled(_Ended, frozen=True, kw_only=True, tag="cancel"):
    """The client left, an administrator cancelled it, or the queue was cleared."""


class Rejected(_Ended, frozen=True, kw_only=True, tag="reject"):
    """Refused before it waited or ran: a limit, a bad body, a shutdown."""


class Reloaded(Event, frozen=True, kw_only=True, tag="reload"):
    ok: bool
    changed: bool
    version: str
    error: str | None = None


class LoadedModel(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    size_gb: float
    vram_gb: float


class Residency(Event, frozen=True, kw_only=True, tag="residency"):
    """What Ollama's /api/ps reported changed: the full list, and what came and went."""

    models: list[LoadedModel]
    loaded: list[str]
    unloaded: list[str]
    backend: str = "default"  # which backend's /api/ps ("default": a [backend] file's one)


class BackendState(Event, frozen=True, kw_only=True, tag="backend"):
    """A backend went down (a failed poll, or a refused connection) or came back up."""

    backend: str
    up: bool
    error: str | None = None


class Paused(Event, frozen=True, kw_only=True, tag="pause"):
    depth: int


class Resumed(Event, frozen=True, kw_only=True, tag="resume"):
    depth: int


class QueueCleared(Event, frozen=True, kw_only=True, tag="queue_cleared"):
    count: int


class Heartbeat(Event, frozen=True, kw_only=True, tag="heartbeat"):
    """Every few seconds: the state now, and what happened since the last heartbeat (the web
    page's charts are a series of these)."""

    depth: int
    in_flight: int
    max_parallel: int
    paused: bool
    dispatches: int = 0
    loads: int = 0  # dispatches that loaded a model (load, swap or reload)
    ended: int = 0
    errors: int = 0  # ended failed, or answered 5xx
    wait_p50_s: float | None = None  # of the dispatches since the last heartbeat
    wait_max_s: float | None = None


class Reset(Event, frozen=True, kw_only=True, tag="reset"):
    """The events after the client's Last-Event-ID are no longer kept (or it named another run of
    the sidecar): re-read the snapshot (`GET /proxy/overview`), then carry on from here."""

    reason: str


class Dropped(Event, frozen=True, kw_only=True, tag="dropped"):
    """This subscriber fell too far behind and is disconnected; reconnect with Last-Event-ID."""

    reason: str


AnyEvent = (
    Enqueued | Dispatched | FirstByte | Completed | Cancelled | Rejected | Reloaded | Residency
    | Paused | Resumed | QueueCleared | Heartbeat | Reset | Dropped | BackendState
)

EVENT_TYPES: tuple[str, ...] = (
    "enqueue", "dispatch", "first_byte", "complete", "cancel", "reject", "reload", "residency",
    "pause", "resume", "queue_cleared", "heartbeat", "reset", "dropped", "backend",
)

__all__ = [
    "EVENT_TYPES", "AnyEvent", "BackendState", "Cancelled", "Completed", "Dispatched", "Dropped", "Enqueued",
    "Event", "FirstByte", "Heartbeat", "LoadedModel", "Paused", "QueueCleared", "Rejected",
    "Reloaded", "Reset", "Residency", "Resumed",
]
