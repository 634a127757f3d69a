"""The policy's admission limits, decided against the scheduler's state: one function for the live
sidecar (which turns a refusal into an HTTP error in the client's dialect) and for the simulator
(which counts it), so a replay refuses exactly what the sidecar would.

Order of the checks, and why (docs/policy.md, Admission):

1. The class's own queue bound (`[limits.classes.NAME] max_queue`): 503.
2. The whole queue is full: a request may take the place of the newest waiting request of a less
   urgent class — urgency is the class's queue timeout, shorter first — which is answered 503 at
   once (`shed`); with no such request, the newcomer gets the 503.
3. The client's own cap and the hard rate windows: 429, the only answers that mean "you, slow
   down" (a flood of well-behaved batch work is queued, not refused).
4. The drain estimate: when the requests at least as urgent as this one would take longer to
   serve than its class may wait (its queue timeout), it is refused now (503 + Retry-After)
   rather than after waiting out its timeout for nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from engine.eta import ServiceTimes
from engine.scheduler import Scheduler
from policy.load import CompiledFile

# The least share of the drain left to a class when more urgent arrivals could take all of it: the
# estimate then says "many times its wait limit", not infinity.
MIN_SHARE = 0.05
MODELS_PRICED = 64  # distinct waiting models priced one by one (names come from clients)


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int  # 503: no room or no time for this request; 429: this client is over a limit;
    # 404: no backend may serve its model
    message: str
    retry_after: float | None
    # Short and stable, for counters: "queue_full", "class_queue", "client_queue", "rate:NAME",
    # "drain" (it could not be served within its class's queue timeout), "not_served".
    reason: str


@dataclass(frozen=True, slots=True)
class Admitted:
    # A waiting request of a less urgent class to remove for this one (answered 503 at once).
    shed: str | None = None


def ahead_of(compiled: CompiledFile, scheduler: Scheduler, cls: str) -> int:
    """Waiting requests at least as urgent as a new one of `cls` (a queue timeout no longer than
    its own): what the policy will, roughly, serve before it."""
    return sum(scheduler.waiting_in(c) for c in _as_urgent(compiled, scheduler, cls))


def _as_urgent(compiled: CompiledFile, scheduler: Scheduler, cls: str) -> list[str]:
    limits = compiled.limits
    mine = limits.queue_timeout(cls)  # a class the file does not list has backend.queue_timeout
    return [c for c in scheduler.waiting_classes() if limits.queue_timeout(c) <= mine]


def work_ahead(
    compiled: CompiledFile, scheduler: Scheduler, cls: str, slot_of: Callable[[str], float],
    fallback: float,
) -> float:
    """Slot seconds the requests ahead (as `ahead_of`) will hold, each at its own model's measured
    slot time: the policy serves the cheap ones first (loaded models, short answers), so the
    answers seen so far are faster than what is left, and an average over them is optimistic.
    Bounded by the distinct models waiting: a class with more than MODELS_PRICED of them is
    counted at `fallback` (the overall slot time) per request."""
    work, unpriced = 0.0, 0
    for c in _as_urgent(compiled, scheduler, cls):
        models = scheduler.waiting_models(c)
        if len(models) > MODELS_PRICED:
            unpriced += sum(models.values())
            continue
        # Cloud models' requests wait for other slots: not this drain.
        work += sum(n * slot_of(m) for m, n in models.items() if not scheduler.is_cloud(m))
    return work + unpriced * fallback


def _least_urgent_victim(compiled: CompiledFile, scheduler: Scheduler, cls: str) -> str | None:
    limits = compiled.limits
    mine = limits.queue_timeout(cls)
    candidates = sorted(
        (c for c in scheduler.waiting_classes() if c != cls and limits.queue_timeout(c) > mine),
        key=limits.queue_timeout, reverse=True,
    )
    for victim_class in candidates:
        victim = scheduler.newest_waiting(victim_class)
        if victim is not None:
            return victim
    return None


def served(
    times: ServiceTimes, scheduler: Scheduler, model: str, held: float | None, now: float
) -> None:
    """A dispatched request ended at `now`, its slot free: what the drain estimate learns. `held`:
    the seconds it held the slot, when it completed (a cancelled or failed one is no measure of
    service); a cloud model's end says nothing about how fast the local queue drains."""
    if held is not None:
        times.observe(model, held)
    if not scheduler.is_cloud(model):
        times.completed(now, backlogged=scheduler.depth > scheduler.cloud_waiting, held=held)


def admit(
    compiled: CompiledFile, scheduler: Scheduler, client: str, cls: str,
    slot_seconds: float | None = None, model: str = "", gap_seconds: float | None = None,
    arrival_rates: Mapping[str, float] | None = None, slot_of: Callable[[str], float] | None = None,
    gap_slot_seconds: float | None = None,
) -> Refusal | Admitted:
    """Whether a new request of `client` in `cls` may wait now. `slot_seconds`: how long a
    request holds a slot, measured (None: nothing measured yet, so no drain check);
    `gap_seconds`: the measured time between completions while requests waited (engine/eta.py),
    which counts the loads and idle slots slot times miss; `arrival_rates`: each class's arrivals
    per second, measured (more urgent classes arriving meanwhile go ahead and slow the drain);
    `slot_of`: a model's measured slot time (the requests ahead are priced each by its own model);
    `gap_slot_seconds`: the local answers' slot time, averaged as slowly as the gap (None: the
    overall `slot_seconds`).
    The drain check applies to classes listed under [limits.classes], for local models (a cloud
    model's slots are another queue)."""
    limits = compiled.limits
    if model and not scheduler.serves(model):  # it would wait out its timeout for nothing
        return Refusal(404, f"model {model!r} is not served here: no backend's models list "
                       "([backends.NAME] models) includes it", None, "not_served")
    own = limits.classes.get(cls)
    if own is not None and own.max_queue is not None and scheduler.waiting_in(cls) >= own.max_queue:
        return Refusal(
            503, f"server busy, please try again. the queue for {cls!r} requests is full "
            f"({own.max_queue} waiting)", 10, "class_queue",
        )
    shed = None
    if scheduler.depth >= limits.max_queue:
        shed = _least_urgent_victim(compiled, scheduler, cls)
        if shed is None:
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
    if slot_seconds is not None and own is not None and not (model and scheduler.is_cloud(model)):
        timeout = own.queue_timeout
        ahead = ahead_of(compiled, scheduler, cls)  # a shed request is less urgent: not in it
        # The slots this class may use: the policy's reserve for other classes is not its own.
        kept = sum(n for c, n in compiled.active.reserve.items() if c != cls)
        slots = scheduler.max_parallel - kept if kept < scheduler.max_parallel else scheduler.max_parallel
        # The slot seconds the requests ahead will hold, and every slot busy: the fastest it drains.
        work = (ahead * slot_seconds if slot_of is None
                else work_ahead(compiled, scheduler, cls, slot_of, slot_seconds))
        drain = work / max(1, slots)
        if gap_seconds is not None:  # as fast as the queue has really been draining, less what
            # more urgent arrivals take of it while this one waits
            mine = limits.queue_timeout(cls)
            urgent = sum(r for c, r in (arrival_rates or {}).items() if limits.queue_timeout(c) < mine)
            per_request = gap_seconds * scheduler.max_parallel / max(1, slots)
            left = max(MIN_SHARE, 1.0 - urgent * per_request)
            # The measured gap is per answer of the local mix served so far (gap_slot_seconds on
            # average, as slowly averaged): scaled to the work ahead, priced per model.
            mix = gap_slot_seconds if gap_slot_seconds is not None else slot_seconds
            drain = max(drain, per_request * work / max(mix, 1e-9) / left)
        if drain > timeout:
            return Refusal(
                503, f"server busy, please try again. the {ahead} requests ahead would take about "
                f"{drain:.0f}s, longer than {cls!r} requests may wait ({timeout:g}s)",
                max(1.0, round(drain - timeout)), "drain",
            )
    return Admitted(shed)
