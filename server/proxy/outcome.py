"""How one request's trip ended, and what is done with that once: the journal's record, the
service-time estimates, the span's last attributes, the event stream, the metrics and the log line."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from engine.admission import served
from schemas.journal import Status
from server.proxy.facts import RequestFacts, StreamTap
from server.runtime.events import ended
from server.sidecar import Parts
from server.telemetry.tracing import RequestSpan

log = logging.getLogger("smart_proxy.request")
# Pass-through calls that change which models a server holds: its /api/tags are read again at
# once, since with several backends they decide where a model's requests may go.
CHANGES_MODELS = frozenset({"/api/pull", "/api/delete", "/api/create", "/api/copy"})


@dataclass(slots=True)
class Outcome:
    status: Status = "failed"
    http_status: int | None = None
    error: str | None = None


def record_trip(
    parts: Parts, facts: RequestFacts, tap: StreamTap, span: RequestSpan | None, outcome: Outcome,
    method: str, *, scheduled: bool,
) -> None:
    if outcome.status == "completed" or outcome.http_status is not None:
        facts.counters = tap.counters()
        facts.response = tap.text()
    record = facts.finish(outcome.status, outcome.http_status, outcome.error)
    parts.journal.submit(record)
    if record.dispatched_at is not None and record.completed_at:  # its slot is free again
        held = record.completed_at - record.dispatched_at if record.status == "completed" else None
        served(parts.service_times, parts.dispatcher.scheduler, record.model or "", held, time.monotonic())
    if span is not None:
        reason = tap.finish_reason()
        span.set(
            gen_ai__usage__input_tokens=record.prompt_eval_count,
            gen_ai__usage__output_tokens=record.eval_count,
            gen_ai__response__finish_reasons=[reason] if reason else None,
            smart_proxy__status=record.status,
        )
        span.end(http_status=outcome.http_status, error=outcome.error)
    if scheduled:  # pass-through calls (/api/tags polls) are not events
        parts.events.publish(ended(record))
    elif facts.endpoint in CHANGES_MODELS and facts.backend:
        parts.backends.models_changed(facts.backend)
    seconds = (record.duration_ms or 0.0) / 1000
    parts.metrics.finished(facts.endpoint, facts.model, outcome.status, seconds, facts.counters)
    log.info(
        "%s %s %s %s",
        method, facts.endpoint, outcome.http_status or "-", outcome.status,
        extra={
            "client": facts.client, "model": facts.model,
            "queue_wait_ms": None if record.queue_wait_ms is None else round(record.queue_wait_ms),
            "duration_ms": round(record.duration_ms or 0.0), "error": outcome.error,
        },
    )
