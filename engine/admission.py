"""The policy's admission limits, decided against the scheduler's state: one function for the live
sidecar (which turns a refusal into an HTTP error in the client's dialect) and for the simulator
(which counts it), so a replay refuses exactly what the sidecar would."""

from __future__ import annotations

from dataclasses import dataclass

from engine.scheduler import Scheduler
from policy.load import CompiledFile


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int  # 503: the whole queue is full; 429: this client is over a limit
    message: str
    retry_after: float
    reason: str  # short and stable, for counters: "queue_full", "client_queue", "rate:NAME"


def refusal(compiled: CompiledFile, scheduler: Scheduler, client: str) -> Refusal | None:
    """Why a new request of `client` may not wait now, or None if it may."""
    limits = compiled.limits
    if scheduler.depth >= limits.max_queue:
        return Refusal(
            503,
            f"server busy, please try again. the proxy's queue is full ({scheduler.depth} waiting)",
            10, "queue_full",
        )
    if scheduler.queued(client) >= limits.max_queued_per_client:
        return Refusal(
            429,
            f"too many queued requests from this client (limit {limits.max_queued_per_client})",
            10, "client_queue",
        )
    for name, window, max_requests in limits.rate_windows:
        if scheduler.recent(client, window) >= max_requests:
            return Refusal(
                429, f"rate limit {name!r} exceeded: {max_requests} requests per {window:g}s",
                window, f"rate:{name}",
            )
    return None
