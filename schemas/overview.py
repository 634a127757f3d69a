"""What the dashboards read: `GET /proxy/overview` (one snapshot of everything they show) and
`GET /proxy/requests/{id}` (one request). Both admin only."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from schemas.events import Dispatched, Heartbeat
from schemas.journal import JournalRecord
from schemas.proxy_api import Health, Position, QueueView


class NameCount(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    requests: int


class LiveFigures(msgspec.Struct, frozen=True, kw_only=True):
    """Over the last requests that ended (at most a few thousand, since `since`)."""

    requests: int
    since: float | None
    errors: int  # failed, or answered 5xx (refused and cancelled ones are counted apart)
    error_rate: float | None
    rejected: int
    cancelled: int
    wait_p50_s: float | None  # queue waits of the last dispatches
    wait_p95_s: float | None
    wait_p99_s: float | None
    wait_max_s: float | None
    top_clients: list[NameCount]
    top_models: list[NameCount]


class Overview(msgspec.Struct, frozen=True, kw_only=True):
    at: float
    # Subscribe to /proxy/events with this as Last-Event-ID: nothing between is missed.
    last_event_id: int
    health: Health
    queue: QueueView
    residency: dict[str, Any]  # the scheduler's prediction, corrected by every /api/ps
    recent_dispatches: list[Dispatched]  # newest last
    figures: LiveFigures
    series: list[Heartbeat]  # oldest first, for the charts
    event_subscribers: int
    event_subscribers_dropped: int  # streams ended for falling too far behind, since start


class RequestDetail(msgspec.Struct, frozen=True, kw_only=True):
    request_id: str
    state: Literal["waiting", "in_flight", "ended"]
    live: Position | None  # while it waits or runs
    # The journal's record: the latest one handed over (None while it runs, or with no journal).
    # Its prompt and response are the text only under `store_prompts = "full"`.
    record: JournalRecord | None
    journal_error: str | None = None  # the record could not be read (the database is down)
