"""A pure discrete-event model of Ollama's scheduler on one GPU: no I/O, no clock of its own.

Every public method takes `now` (seconds on whatever clock the caller runs: the event loop under
HTTP, a virtual clock in trace replay) and first brings the model up to that instant. Callers ask
`next_event_time()` to know when to come back, and `take_started()` for jobs that got their slot.
The rules are those of docs/ollama.md; the comments say which rule a branch implements.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from sim import physics
from sim.catalog import ModelSpec
from sim.config import Settings
from sim.gotime import FOREVER
from sim.stats import Stats

JobKind = Literal["generate", "embed", "load"]
JobState = Literal["pending", "attached", "running", "done", "cancelled"]
RunnerState = Literal["loading", "loaded", "unloading", "releasing"]


class QueueFull(Exception):
    """More than max_queue requests would be pending: Ollama answers 503."""


class CloudUnreachable(Exception):
    """The hosted service cannot be reached: Ollama answers 502."""


class CloudBusy(Exception):
    """The hosted service refuses: this server has as many cloud requests there as it takes."""


@dataclass(eq=False, slots=True)
class Job:
    """One request as the scheduler sees it. Durations are on the backend's (scaled) clock."""

    id: int
    spec: ModelSpec
    kind: JobKind
    arrival: float
    num_ctx: int
    keep_alive: float
    prompt_tokens: int
    output_tokens: int
    state: JobState = "pending"
    runner: Runner | None = None
    ready_at: float | None = None  # the runner was ready for it: load_duration = ready_at - arrival
    started_at: float | None = None
    prompt_seconds: float = 0.0
    eval_seconds: float = 0.0
    done_at: float | None = None


@dataclass(eq=False, slots=True)
class Runner:
    """One loaded (or loading, or unloading) model instance holding VRAM."""

    spec: ModelSpec
    num_ctx: int  # the context it runs with (what /api/ps reports)
    vram: int
    keep_alive: float
    state: RunnerState
    until: float  # end of the current loading / unloading / releasing phase
    load_started: float
    waiting: deque[Job] = field(default_factory=deque)
    running: list[Job] = field(default_factory=list)
    draining: bool = False  # chosen for eviction or reload: takes no new requests
    idle_since: float | None = None
    busy_since: float | None = None
    # The context that was asked for, when Ollama had to shrink it to fit the GPU: requests
    # asking for it again use this runner (a shrunk context is not a reason to reload).
    asked_ctx: int | None = None

    def idle(self) -> bool:
        return not self.running and not self.waiting


class Backend:
    def __init__(self, settings: Settings, first_id: int = 0) -> None:
        """`first_id`: job ids count from here (several backends replayed together keep them
        apart)."""
        self.settings = settings
        self.stats = Stats()
        self.now = 0.0
        self.runners: dict[str, Runner] = {}
        self.pending: deque[Job] = deque()
        self._started: list[Job] = []
        self._next_id = first_id
        self.cloud: list[Job] = []  # cloud requests in progress at the hosted service
        # Models read recently enough to still be in the host's page cache: name → bytes.
        self._page_cache: OrderedDict[str, int] = OrderedDict()

    # --- public API -------------------------------------------------------------------------

    def submit(
        self,
        now: float,
        spec: ModelSpec,
        *,
        kind: JobKind = "generate",
        prompt_tokens: int = 1,
        output_tokens: int = 0,
        num_ctx: int | None = None,
        keep_alive: float | None = None,
    ) -> Job:
        """Queue a request; QueueFull if the pending queue is at max_queue; CloudBusy when a cloud
        model's hosted service has as many of this server's requests as it takes."""
        self.advance(now)
        self._next_id += 1
        job = Job(
            id=self._next_id, spec=spec, kind=kind, arrival=now,
            num_ctx=num_ctx or self.settings.context_for(spec),
            keep_alive=self.settings.keep_alive if keep_alive is None else keep_alive,
            prompt_tokens=prompt_tokens, output_tokens=output_tokens,
        )
        if spec.cloud:
            return self._submit_cloud(job, now)
        runner = self.runners.get(spec.name)
        if runner is not None and self._usable(runner, job):
            # Fast path: a loaded (or loading) model with matching options skips the queue.
            self._attach(runner, job, now)
        else:
            if len(self.pending) >= self.settings.max_queue:
                self.stats.queue_full_rejections += 1
                raise QueueFull
            self.pending.append(job)
            self.stats.peak_pending = max(self.stats.peak_pending, len(self.pending))
        self._settle(now)
        return job

    def _submit_cloud(self, job: Job, now: float) -> Job:
        """Forwarded to the hosted service: no runner, no VRAM, no local queue; it answers after
        a fixed latency at its own token rate, and refuses (429) past its concurrency limit."""
        if not self.settings.cloud_reachable:
            raise CloudUnreachable
        if len(self.cloud) >= self.settings.cloud_max_concurrent:
            self.stats.cloud_rejections += 1
            raise CloudBusy
        job.state, job.ready_at, job.started_at = "running", now, now
        job.prompt_seconds = self._scaled(self.settings.cloud_first_token_s)
        job.eval_seconds = self._scaled(job.output_tokens / self.settings.cloud_tokens_per_s)
        job.done_at = now + job.prompt_seconds + job.eval_seconds
        self.cloud.append(job)
        self._started.append(job)
        self.stats.cloud_requests += 1
        return job

    def _finish_cloud(self, job: Job) -> None:
        self.cloud.remove(job)
        job.state = "done"
        self.stats.requests_served += 1
        self.stats.model(job.spec.name).requests += 1

    def cancel(self, now: float, job: Job) -> None:
        """The client went away: drop the job wherever it is. Idempotent."""
        self.advance(now)
        if job.state in ("done", "cancelled"):
            return
        if job.spec.cloud:
            self.cloud.remove(job)
            job.state = "cancelled"
            self.stats.requests_cancelled += 1
            return
        runner = job.runner
        if job.state == "pending":
            self.pending.remove(job)
        elif job.state == "attached" and runner is not None:
            runner.waiting.remove(job)
            if runner.state == "loading" and runner.idle():
                # Its only waiting clients left: Ollama cancels the load and frees the GPU.
                self.stats.load_aborts += 1
                runner.state = "releasing"
                runner.until = now + self._scaled(physics.vram_release_seconds(runner.spec))
        elif job.state == "running" and runner is not None:
            self._leave_slot(runner, job, now)
        job.state = "cancelled"
        self.stats.requests_cancelled += 1
        self._settle(now)

    def unload(self, now: float, spec: ModelSpec) -> None:
        """keep_alive 0 with an empty prompt: unload as soon as the model is idle."""
        self.advance(now)
        runner = self.runners.get(spec.name)
        if runner is not None and runner.state in ("loading", "loaded"):
            runner.keep_alive = 0.0
        self._settle(now)

    def advance(self, now: float) -> None:
        """Play every event due up to `now`, in time order."""
        now = max(now, self.now)
        while True:
            due = self._next_event()
            if due is None or due[0] > now:
                break
            at, action = due
            self.now = max(self.now, at)
            action()
            self._schedule(self.now)
        self.now = now

    def next_event_time(self) -> float | None:
        due = self._next_event()
        return None if due is None else due[0]

    def take_started(self) -> list[Job]:
        """Jobs that got their runner (and slot) since the last call."""
        started, self._started = self._started, []
        return started

    def resident(self) -> list[Runner]:
        """What /api/ps lists: loading and loaded runners (an unloading one is already gone)."""
        return [r for r in self.runners.values() if r.state in ("loading", "loaded")]

    def expires_at(self, runner: Runner) -> float:
        """End of the keep_alive timer; it only runs while the model is idle."""
        base = runner.idle_since if runner.idle_since is not None else self.now
        return min(base + runner.keep_alive, FOREVER)

    # --- the rules ----------------------------------------------------------------------------

    def _scaled(self, seconds: float) -> float:
        return seconds * self.settings.time_scale

    def _usable(self, runner: Runner, job: Job) -> bool:
        asked = runner.asked_ctx if runner.asked_ctx is not None else runner.num_ctx
        return runner.state in ("loading", "loaded") and not runner.draining and asked == job.num_ctx

    def _attach(self, runner: Runner, job: Job, now: float) -> None:
        job.state, job.runner = "attached", runner
        # Each request resets the model's keep_alive to its own (Ollama's sessionDuration).
        runner.keep_alive = job.keep_alive
        runner.waiting.append(job)
        runner.idle_since = None

    def _settle(self, now: float) -> None:
        self._schedule(now)
        self.advance(now)  # zero-length phases (time_scale 0) complete at once

    def _schedule(self, now: float) -> None:
        changed = True
        while changed:
            changed = self._serve_pending(now)
            for runner in list(self.runners.values()):
                changed |= self._serve_runner(runner, now)

    def _serve_pending(self, now: float) -> bool:
        """ONE queue, served strictly in order: a head that must wait blocks all behind it."""
        changed = False
        while self.pending:
            job = self.pending[0]
            runner = self.runners.get(job.spec.name)
            if runner is not None and self._usable(runner, job):
                self.pending.popleft()
                self._attach(runner, job, now)
                changed = True
                continue
            if runner is not None:
                if runner.state in ("loading", "loaded") and not runner.draining:
                    runner.draining = True  # different num_ctx: a full reload
                    self.stats.reloads += 1
                    changed = True
                return changed
            if any(r.draining for r in self.runners.values()):
                # An eviction is under way: Ollama waits until the victim's VRAM is reported
                # free before it considers the head again, even if the head would fit now.
                return changed
            need = job.spec.resident_size(job.num_ctx)
            if need > self.settings.vram and not self.runners and job.spec.size < self.settings.vram:
                # The weights fit an empty GPU but their KV cache at this context does not:
                # Ollama shrinks the context until it fits. (Weights that do not fit at all are
                # offloaded to the CPU instead, context and all.)
                self.pending.popleft()
                self._start_load(job, self.settings.vram, now, num_ctx=self._fitting_ctx(job))
                changed = True
                continue
            need = min(need, self.settings.vram)
            if self._fits(need):
                self.pending.popleft()
                self._start_load(job, need, now)
                changed = True
                continue
            return self._evict_for_head() or changed
        return changed

    def _fits(self, need: int) -> bool:
        if not self.runners:
            return True  # an empty GPU takes anything (Ollama offloads the rest to CPU)
        used = sum(r.vram for r in self.runners.values())
        count = sum(1 for r in self.runners.values() if r.state != "releasing")
        return used + need <= self.settings.vram and count < self.settings.max_loaded_models

    def _evict_for_head(self) -> bool:
        """Pick a victim: shortest keep_alive first, ties by name (not LRU); idle ones preferred."""
        if any(r.state in ("unloading", "releasing") for r in self.runners.values()):
            return False  # an expiry is freeing VRAM already; see whether that is enough
        candidates = sorted(
            (r for r in self.runners.values() if r.state == "loaded"),
            key=lambda r: (r.keep_alive, r.spec.name),
        )
        if not candidates:
            return False  # only loads in flight; wait for one to finish
        victim = next((r for r in candidates if r.idle()), candidates[0])
        victim.draining = True
        self.stats.evictions += 1
        return True

    def _fitting_ctx(self, job: Job) -> int:
        """The largest context (a multiple of 256, at least 2,048, at most the one asked for)
        whose KV cache fits beside the weights in VRAM."""
        spec = job.spec
        per_token = spec.size * (spec.resident_factor - 1.0) / spec.context_length
        room = self.settings.vram - spec.size
        fits = int(room / per_token) if per_token > 0 and room > 0 else 0
        return max(2048, min(job.num_ctx, fits // 256 * 256))

    def _start_load(self, job: Job, vram: int, now: float, *, num_ctx: int | None = None) -> None:
        spec = job.spec
        warm = spec.name in self._page_cache
        runner = Runner(
            spec=spec, num_ctx=num_ctx or job.num_ctx, vram=vram, keep_alive=job.keep_alive,
            state="loading", until=now + self._scaled(physics.load_seconds(spec, warm)),
            load_started=now,
            asked_ctx=job.num_ctx if num_ctx is not None and num_ctx != job.num_ctx else None,
        )
        self.runners[spec.name] = runner
        self._remember_read(spec)
        self.stats.loads += 1
        self.stats.model(spec.name).loads += 1
        self._attach(runner, job, now)

    def _remember_read(self, spec: ModelSpec) -> None:
        self._page_cache.pop(spec.name, None)
        self._page_cache[spec.name] = spec.size
        while sum(self._page_cache.values()) > self.settings.page_cache and len(self._page_cache) > 1:
            self._page_cache.popitem(last=False)

    def _serve_runner(self, runner: Runner, now: float) -> bool:
        """Hand free slots to attached jobs in order; unload when draining or expired and idle."""
        if runner.state != "loaded":
            return False
        changed = False
        while runner.waiting:
            job = runner.waiting[0]
            if job.kind != "load" and len(runner.running) >= runner.spec.slots(self.settings.num_parallel):
                break
            runner.waiting.popleft()
            self._start_job(runner, job, now)
            changed = True
        if runner.idle() and runner.idle_since is None:
            runner.idle_since = now
        if runner.idle() and (runner.draining or runner.keep_alive <= 0):
            self._begin_unload(runner, now)
            changed = True
        return changed

    def _start_job(self, runner: Runner, job: Job, now: float) -> None:
        job.ready_at = job.ready_at if job.ready_at is not None else now
        job.started_at = now
        self._started.append(job)
        if job.kind == "load":
            job.state, job.done_at = "done", now  # a load request needs the runner, not a slot
            return
        spec = runner.spec
        job.prompt_seconds = self._scaled(job.prompt_tokens / physics.prompt_tokens_per_second(spec))
        job.eval_seconds = self._scaled(job.output_tokens / physics.tokens_per_second(spec))
        job.done_at = now + job.prompt_seconds + job.eval_seconds
        job.state = "running"
        if not runner.running:
            runner.busy_since = now
        runner.running.append(job)
        total = sum(len(r.running) for r in self.runners.values())
        self.stats.peak_concurrency = max(self.stats.peak_concurrency, total)

    def _leave_slot(self, runner: Runner, job: Job, now: float) -> None:
        runner.running.remove(job)
        if not runner.running and runner.busy_since is not None:
            self.stats.model(runner.spec.name).busy_seconds += now - runner.busy_since
            runner.busy_since = None

    def _begin_unload(self, runner: Runner, now: float) -> None:
        runner.state = "unloading"
        runner.until = now + self._scaled(physics.unload_seconds(runner.spec))
        self.stats.unloads += 1
        self.stats.model(runner.spec.name).unloads += 1

    # --- events -------------------------------------------------------------------------------

    def _next_event(self) -> tuple[float, Callable[[], None]] | None:
        best: tuple[float, Callable[[], None]] | None = None
        for job in self.cloud:
            assert job.done_at is not None
            if best is None or job.done_at < best[0]:
                best = (job.done_at, lambda j=job: self._finish_cloud(j))
        for runner in self.runners.values():
            if runner.state == "loaded":
                for job in runner.running:
                    assert job.done_at is not None
                    if best is None or job.done_at < best[0]:
                        best = (job.done_at, lambda r=runner, j=job: self._finish(r, j))
                if runner.idle() and runner.idle_since is not None and runner.keep_alive < FOREVER:
                    at = runner.idle_since + runner.keep_alive
                    if best is None or at < best[0]:
                        best = (at, lambda r=runner: self._expire(r))
            elif best is None or runner.until < best[0]:
                best = (runner.until, lambda r=runner: self._phase_done(r))
        return best

    def _finish(self, runner: Runner, job: Job) -> None:
        self._leave_slot(runner, job, self.now)
        job.state = "done"
        self.stats.requests_served += 1
        self.stats.model(runner.spec.name).requests += 1

    def _expire(self, runner: Runner) -> None:
        self._begin_unload(runner, self.now)

    def _phase_done(self, runner: Runner) -> None:
        now = self.now
        if runner.state == "loading":
            runner.state = "loaded"
            seconds = now - runner.load_started
            self.stats.load_seconds += seconds
            self.stats.model(runner.spec.name).load_seconds += seconds
            for job in runner.waiting:
                job.ready_at = now
        elif runner.state == "unloading":
            # The process is gone but the driver takes a moment to report the VRAM free.
            runner.state = "releasing"
            runner.until = now + self._scaled(physics.vram_release_seconds(runner.spec))
        else:
            del self.runners[runner.spec.name]

    def reset_stats(self) -> None:
        """Fresh counters; busy periods in progress restart their clock now."""
        self.stats = Stats()
        for runner in self.runners.values():
            if runner.busy_since is not None:
                runner.busy_since = self.now
