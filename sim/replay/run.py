"""One replay: a workload through the real `engine.Scheduler` under one policy (or through plain
Ollama), in front of the emulator's backend model (sim/backend.py), on a virtual clock.

The loop is a discrete-event simulation: it jumps to the earliest of the next arrival, the
backend's next event (a load, a finish, an expiry), the next queue timeout and the next poll, and
after every event does what the live sidecar does after one — admission limits
(engine/admission.py), `enqueue`, `dispatch`, `first_byte`, `finish`, and every `poll_interval`
a reconcile with what the backend lists, as the poller does with /api/ps. Nothing sleeps.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine.admission import Refusal, admit, served
from engine.clock import ManualClock
from engine.eta import ServiceTimes
from engine.residency import GIB
from engine.scheduler import Scheduler
from engine.service import Usage
from engine.variants import variant_of
from policy.load import CompiledFile
from schemas.model_name import canonical_model
from sim.backend import Backend, Job, QueueFull
from sim.catalog import ModelSpec
from sim.config import Settings
from sim.replay.cluster import Cluster, Route, on_cluster
from sim.replay.measure import Collector
from sim.replay.workload import Request, Workload

PLAIN = "plain-ollama"  # the row without a sidecar: Ollama's own first-come, first-served queue
INF = float("inf")

Progress = Callable[[int], None]  # called with the number of arrivals replayed so far


@dataclass(frozen=True, slots=True)
class Row:
    policy: str
    label: str
    figures: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        return {"policy": self.policy, "label": self.label, **self.figures}


def on_gpu(compiled: CompiledFile, gpu: Settings) -> CompiledFile:
    """The policy file describing the simulated GPU: every policy is compared on the same card."""
    backend = dataclasses.replace(
        compiled.backend,
        vram_gb=gpu.vram / GIB,
        num_parallel=gpu.num_parallel,
        max_loaded_models=gpu.max_loaded_models,
    )
    return dataclasses.replace(compiled, backend=backend)


def _tags(specs: dict[str, ModelSpec]) -> dict[str, Any]:
    return {"models": [{"name": s.name, "size": s.size} for s in specs.values()]}


def _ps(backend: Backend) -> dict[str, Any]:
    return {"models": [{"name": r.spec.name, "size": r.vram} for r in backend.resident()]}


def _submit(
    backend: Backend, now: float, spec: ModelSpec, request: Request, num_ctx: int | None = None
) -> Job:
    """`num_ctx`: what num_ctx normalisation forwards in place of the request's own."""
    return backend.submit(
        now, spec, kind="embed" if request.embed else "generate",
        prompt_tokens=request.prompt_tokens, output_tokens=request.output_tokens,
        num_ctx=num_ctx or request.num_ctx,
    )


def replay_policy(
    workload: Workload, gpu: Settings, compiled: CompiledFile, name: str,
    progress: Progress | None = None, on_grant: Callable[[Request, float], None] | None = None,
    on_admit: Callable[[Request, float, Scheduler], None] | None = None,
    on_finish: Callable[[Request, float], None] | None = None, nodes: int = 1,
) -> Row:
    """`on_grant`: told of every dispatch, in order, with its (virtual) time; `on_admit` of every
    request queued (with the scheduler, to ask its place), `on_finish` of every one that ended.
    `nodes`: the sidecar in front of that many of the GPU (at least the file's [backends])."""
    nodes = max(nodes, len(compiled.nodes))
    settings = (on_gpu(compiled, gpu) if nodes == 1 else on_cluster(compiled, gpu, nodes)).with_active(name)
    policy = settings.policies[name]
    clock = ManualClock(0.0)
    scheduler = Scheduler(settings, clock=clock)
    specs = {canonical_model(s.name): s for s in gpu.models}
    scheduler.learn_tags(_tags(specs))
    backend = Cluster(gpu, [n.name for n in settings.nodes])
    out = Collector(policy.max_wait, dict(policy.class_max_wait))
    limits = settings.limits
    times = ServiceTimes()  # slot times as the sidecar measures them: the drain estimate's input
    granted_at: dict[str, float] = {}
    # A poll interval of 0 (allowed: "as often as possible") polls at every event instead.
    poll = settings.backend.poll_interval or 0.0
    requests = workload.requests
    by_id: dict[str, tuple[Request, str]] = {}  # waiting or in flight: (request, class)
    deadlines: list[tuple[float, int, str]] = []  # heap of queue timeouts (per class)
    in_backend: dict[int, tuple[str, Job]] = {}  # job id (unique in the cluster) → (request id, job)
    running: list[tuple[float, int, str]] = []  # heap of started jobs: (done_at, job id, request id)
    next_poll = poll
    i, n = 0, len(requests)

    def collect(now: float) -> None:
        """What the backend did up to `now`: jobs that got a slot (the first byte is near), jobs
        that finished (the slot is free)."""
        for _, job in backend.take_started():
            entry = in_backend.get(job.id)
            if entry is not None and job.state in ("running", "done"):
                rid = entry[0]
                assert job.done_at is not None
                heapq.heappush(running, (job.done_at, job.id, rid))
                scheduler.first_byte(rid)
                request, cls = by_id[rid]
                out.started(request, cls, now)
        while running and running[0][0] <= now:
            _, job_id, rid = heapq.heappop(running)
            _, job = in_backend.pop(job_id)
            request, _ = by_id.pop(rid)
            held = now - granted_at.pop(rid, now)
            # Ollama's load_duration: from the request's arrival at Ollama to its runner ready.
            loaded = (job.ready_at - job.arrival) if job.ready_at is not None else 0.0
            scheduler.finish(rid, Usage(request.prompt_tokens, request.output_tokens, held, loaded))
            served(times, scheduler, request.model, held, now)
            out.finished(request, now)
            if on_finish is not None:
                on_finish(request, now)

    waiting: set[str] = set()
    # Polls on a fixed grid, as the poller's timer; a poll when nothing happened since the last
    # one would change nothing, so the loop only wakes for one after some event ("dirty").
    dirty = False
    while True:
        while deadlines and deadlines[0][2] not in waiting:
            heapq.heappop(deadlines)  # dispatched (or shed) before its timeout: nothing to wake for
        t_arrival = requests[i].arrival if i < n else INF
        t_backend = backend.next_event_time()
        t_event = min(t_arrival, INF if t_backend is None else t_backend,
                      deadlines[0][0] if deadlines else INF)
        # Work waiting beside a free slot wakes the loop at the next poll; with polls at every
        # event (0) a second later, as the live poller keeps polling (a held swap, an overdue
        # ticket, a window expiring: time alone frees them).
        now = min(t_event, (next_poll if poll > 0 else clock.now + 1.0) if dirty else INF)
        if now == INF:
            break
        if poll <= 0:
            next_poll = now
        elif not dirty and next_poll <= now:  # the polls in between found nothing new
            next_poll += (math.floor((now - next_poll) / poll) + 1) * poll
        clock.set(max(now, clock.now))
        now = clock.now
        backend.advance(now)
        collect(now)
        if now >= next_poll:
            for node, one in backend:
                scheduler.reconcile(_ps(one), node)
            next_poll += poll
            dirty = False
        dirty = dirty or t_event <= now
        while deadlines and deadlines[0][0] <= now:
            _, _, rid = heapq.heappop(deadlines)
            if rid in waiting and scheduler.cancel(rid):
                waiting.discard(rid)
                request, cls = by_id.pop(rid)
                out.dropped(request, cls, now)
        while i < n and requests[i].arrival <= now:
            request = requests[i]
            i += 1
            cls = request.cls or settings.clients.default_class  # classified by `classify`
            decided = admit(settings, scheduler, request.client, cls,
                            times.mean() if times.measured else None, request.model, times.gap(),
                            times.arrival_rates(now), times.mean, times.gap_slot())
            if isinstance(decided, Refusal):
                mine = limits.queue_timeout(cls)
                out.refused_at_arrival(request, decided.reason, now, cls, over_less_urgent=(
                    decided.status == 503  # no room or no time (a 429 is about the client)
                    and any(limits.queue_timeout(c) > mine for c in scheduler.waiting_classes())))
                continue
            if decided.shed is not None and scheduler.cancel(decided.shed):
                waiting.discard(decided.shed)
                shed_request, shed_class = by_id.pop(decided.shed)
                out.shed(shed_request, shed_class, now)
            if not scheduler.is_cloud(request.model):
                times.arrived(cls, now)
            rid = str(request.index)
            scheduler.enqueue(request_id=rid, model=request.model, client=request.client, cls=cls,
                              endpoint=request.endpoint,
                              variant=variant_of({"num_ctx": request.num_ctx}))
            by_id[rid] = (request, cls)
            waiting.add(rid)
            heapq.heappush(deadlines, (now + limits.queue_timeout(cls), request.index, rid))
            out.admitted(request, now)
            if on_admit is not None:
                on_admit(request, now, scheduler)
            if progress is not None and i % 1000 == 0:
                progress(i)
        # As the dispatcher does: fill free slots, and again after every start or refusal
        # (a first byte or a freed slot can let the next ticket go at the same instant).
        granted = True
        while granted:
            granted = False
            for grant in scheduler.dispatch():
                granted = dirty = True
                rid = grant.ticket.id
                waiting.discard(rid)
                granted_at[rid] = now
                request, _ = by_id[rid]
                if on_grant is not None:
                    on_grant(request, now)
                try:
                    job = _submit(backend[grant.backend or backend.names[0]], now, specs[request.model],
                                  request, grant.num_ctx)
                except QueueFull:  # Ollama's 503: the client gets an error, the slot is free
                    by_id.pop(rid)
                    granted_at.pop(rid, None)
                    scheduler.finish(rid)
                    out.failed(request, "ollama_queue_full", now)
                    continue
                in_backend[job.id] = (rid, job)
            collect(now)  # a request dispatched to a loaded model with a free slot starts now
        # Time alone can free a ticket (it becomes overdue, a window expires): while work
        # waits beside a free slot, keep polling as the live poller does, each poll a dispatch.
        dirty = dirty or bool(scheduler.depth and scheduler.in_flight_count < scheduler.max_parallel)
    if progress is not None:
        progress(n)
    return Row(name, name, {**backend.figures(), **out.figures()})


def replay_plain(
    workload: Workload, gpu: Settings, max_wait: float | None, progress: Progress | None = None,
    class_max_wait: dict[str, float] | None = None, nodes: int = 1, route: Route = "round-robin",
) -> Row:
    """Every request straight into the backend model's own FIFO queue (Ollama without a
    sidecar); more than OLLAMA_MAX_QUEUE pending are refused with 503, as Ollama does. With
    several `nodes`, a plain balancer sends each request to one by `route` (sim/replay/cluster.py)."""
    specs = {canonical_model(s.name): s for s in gpu.models}
    backend = Cluster(gpu, [f"gpu{i}" for i in range(nodes)])
    out = Collector(max_wait, dict(class_max_wait or {}))
    requests = workload.requests
    running: dict[int, tuple[Request, Job]] = {}
    submitted: dict[int, tuple[Request, str]] = {}  # job id → (request, node)
    i, n = 0, len(requests)

    def collect(now: float) -> None:
        for _, job in backend.take_started():
            entry = submitted.get(job.id)
            if entry is not None and job.state in ("running", "done"):
                running[job.id] = (entry[0], job)
                out.started(entry[0], entry[0].cls or "", now)  # classified by `classify`
        for job_id in [j for j, (_, job) in running.items() if job.state == "done"]:
            request, _ = running.pop(job_id)
            backend.outstanding[submitted.pop(job_id)[1]] -= 1
            out.finished(request, now)

    while True:
        t_arrival = requests[i].arrival if i < n else INF
        t_backend = backend.next_event_time()
        now = min(t_arrival, INF if t_backend is None else t_backend)
        if now == INF:
            break
        now = max(now, backend.now)
        backend.advance(now)
        collect(now)
        while i < n and requests[i].arrival <= now:
            request = requests[i]
            i += 1
            node = backend.route(route)
            try:
                job = _submit(backend[node], now, specs[request.model], request)
            except QueueFull:
                out.refused_at_arrival(request, "ollama_queue_full", now)
                continue
            submitted[job.id] = (request, node)
            backend.outstanding[node] += 1
            out.admitted(request, now)
            if progress is not None and i % 1000 == 0:
                progress(i)
        collect(now)
    if progress is not None:
        progress(n)
    label = "plain Ollama (no sidecar)" if nodes == 1 else f"plain Ollama × {nodes}, {route}"
    return Row(PLAIN, label, {**backend.figures(), **out.figures()})
