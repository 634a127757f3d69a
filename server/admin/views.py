"""The admin routes' answers, built from plain state: pure functions with no request, no sidecar
and no clock of their own, so each view is testable on a scheduler alone."""

from __future__ import annotations

from engine.scheduler import Scheduler
from policy.load import CompiledFile
from schemas.proxy_api import (
    BackendHealth,
    InFlightEntry,
    PolicyInfo,
    Position,
    QueueEntry,
    QueueView,
)
from server.runtime.queue_ids import QueueIds


def policy_info(compiled: CompiledFile, last_reload_error: str | None) -> PolicyInfo:
    return PolicyInfo(
        name=compiled.active.name, version=compiled.version, last_reload_error=last_reload_error
    )


def health_reasons(
    *,
    upstream_up: bool,
    upstream_error: str | None,
    reload_error: str | None,
    mismatches: list[str],
    api_keys_env: str | None,
    backends: list[BackendHealth] | None = None,
) -> list[str]:
    """Why /proxy/health says degraded, in words; public, so it says where to look, never what
    a secret or a client is. `api_keys_env`: the variable's name when its value was refused.
    `backends`: with several, each one that does not answer is a reason of its own."""
    reasons: list[str] = []
    if backends is not None:
        reasons += [f"backend {b.name} is down (see backends[].last_error)" if b.last_error
                    else f"no poll of backend {b.name} has succeeded yet" for b in backends if not b.up]
    elif not upstream_up:
        reasons.append(
            "Ollama did not answer the last poll (see upstream.last_error)" if upstream_error
            else "no poll of Ollama has succeeded yet"
        )
    if reload_error is not None:
        reasons.append("the last policy edit was refused (see policy.last_reload_error)")
    reasons += mismatches
    if api_keys_env is not None:
        reasons.append(f"{api_keys_env} was refused, so no API key identifies a client (see the log)")
    return reasons


def queue_view(
    scheduler: Scheduler, ids: QueueIds, policy: PolicyInfo, now: float, limit: int | None = None
) -> QueueView:
    """GET /proxy/queue: every waiting ticket in dispatch order (the whole queue scored: admin
    only), or the first `limit`, and what is in flight."""
    waiting = [
        QueueEntry(
            request_id=r.ticket.id, queue_id=ids.queue_id_of(r.ticket.id),
            position=r.position, model=r.ticket.model,
            client=r.ticket.client, request_class=r.ticket.cls, endpoint=r.ticket.endpoint,
            waited_s=round(now - r.ticket.arrival, 3), score=r.score.total,
            terms=r.score.breakdown(), overdue=r.score.overdue, eligible=r.eligible,
            reason=r.reason,
        )
        for r in scheduler.waiting()[:limit]
    ]
    flying = [
        InFlightEntry(
            request_id=f.ticket.id, queue_id=ids.queue_id_of(f.ticket.id), model=f.ticket.model,
            client=f.ticket.client, request_class=f.ticket.cls, endpoint=f.ticket.endpoint,
            elapsed_s=round(now - f.granted_at, 3),
        )
        for f in scheduler.in_flight()
    ]
    return QueueView(
        paused=scheduler.paused, depth=scheduler.depth, max_parallel=scheduler.max_parallel,
        policy=policy, waiting=waiting, in_flight=flying,
    )


def position_view(scheduler: Scheduler, request_id: str, policy: PolicyInfo, now: float) -> Position | None:
    """GET /proxy/queue/{id}: one request's state, without scoring the whole queue; None when it
    neither waits nor runs."""
    ranked = scheduler.position(request_id)
    if ranked is not None:
        t, s = ranked.ticket, ranked.score
        return Position(
            request_id=request_id, state="waiting", position=ranked.position,
            depth=scheduler.depth, model=t.model, request_class=t.cls,
            waited_s=round(now - t.arrival, 3), score=s.total, terms=s.breakdown(),
            overdue=s.overdue, policy=policy,
        )
    for f in scheduler.in_flight():
        if f.ticket.id == request_id:
            return Position(
                request_id=request_id, state="in_flight", position=None, depth=scheduler.depth,
                model=f.ticket.model, request_class=f.ticket.cls,
                waited_s=round(f.granted_at - f.ticket.arrival, 3), score=None, terms={},
                overdue=False, policy=policy,
            )
    return None
