"""What Ollama holds in VRAM, predicted on every dispatch and corrected by every /api/ps poll.

Ollama's rules (docs/ollama.md, "Loading and eviction"): a model loads beside the others only if it fits entirely in
free VRAM and the loaded count is under the cap; otherwise Ollama evicts, preferring idle models.
Requests for a loading model attach to the load. The prediction is optimistic and may be wrong;
`reconcile` makes it right again from Ollama's own answer, so it never stays wrong after a poll.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Literal

from engine.variants import reusable

# One rule for model names, shared with the server's intake and the policy (kept under its old name).
from schemas.model_name import canonical_model as canonical
from schemas.model_name import is_pattern
from schemas.ticket import Residency

GIB = 1024**3
Action = Literal["attach", "load", "swap", "reload"]

@dataclass(slots=True)
class ModelState:
    name: str
    where: Residency = "absent"
    in_flight: int = 0
    started: bool = False  # a response for it began: the load (if any) is over
    variant: str = ""  # the reload-forcing options its runner was loaded with
    last_used: float = 0.0
    victims: tuple[str, ...] = ()  # models this model's pending load is predicted to evict


@dataclass(frozen=True, slots=True)
class Plan:
    action: Action
    evicts: tuple[str, ...] = ()


PRIOR_UNKNOWN_LOAD_S = 30.0  # a model nobody has sized: assume a large one
GIB_IN_GB = 1.073741824


@dataclass(slots=True)
class ResidencyModel:
    vram_gb: float
    max_loaded: int
    num_parallel: int
    overrides: dict[str, float] = field(default_factory=dict)  # [models] sizes, GiB
    # [models] num_parallel: (canonical name or glob, slots), the first match wins, else
    # num_parallel (Ollama forces one slot on some architectures, whatever OLLAMA_NUM_PARALLEL).
    parallel: tuple[tuple[str, int], ...] = ()
    _slots: dict[str, int] = field(default_factory=dict)  # per model, from `parallel`
    resident_factor: float = 1.2
    models: dict[str, ModelState] = field(default_factory=dict)
    ps_sizes: dict[str, float] = field(default_factory=dict)  # reported by /api/ps
    tag_sizes: dict[str, float] = field(default_factory=dict)  # estimated from /api/tags
    # Seconds a load of each model took on this host, from Ollama's load_duration (a moving
    # average); the swap_cost term reads them, with a prior from the size until one is seen.
    load_times: dict[str, float] = field(default_factory=dict)
    # Whether a model term reads which model a load would evict (swap_cost does): that choice
    # follows each runner's use (busy first kept, then least recently used), so then every use
    # counts as a change; without such a term, attaching to a runner changes nothing a term reads.
    track_use: bool = False
    # The active policy's num_ctx normalisation ([policies.NAME.num_ctx]): None = off, every
    # num_ctx is a runner of its own; else a request may use its model's loaded (or loading)
    # runner when `reusable` says so. Set by the scheduler from the policy it picks with.
    ctx_tolerance: float | None = None
    # (VRAM used, resident count), asked for by every vram term evaluation; every mutation below
    # of where models are, their runners, sizes or limits calls _changed() (a request attaching
    # to, or leaving, a runner that stays as it was changes none of them). Callers that edit the
    # size tables directly must call it too.
    _totals: tuple[float, int, bool] | None = None
    # Counts those changes: what a "model" term reads is the same while it is (engine/picker.py
    # keeps each runner's model part until it moves).
    version: int = 0
    # plan() per runner, asked by terms and holds for many tickets per pick; dropped on every
    # change above and whenever a runner's use moves (its place in the eviction order does).
    _plans: dict[tuple[str, str], Plan] = field(default_factory=dict)
    _order: list[ModelState] | None = None  # the eviction order, for as long as _plans

    def _changed(self) -> None:
        self._totals = None
        self._plans.clear()
        self._order = None
        self.version += 1

    def set_ctx_tolerance(self, tolerance: float | None) -> None:
        if tolerance != self.ctx_tolerance:
            self.ctx_tolerance = tolerance
            self._changed()  # which runner a request would use is what model terms read

    def runner_for(self, model: str, variant: str) -> str:
        """The runner options a request asking `variant` runs with: its model's loaded (or
        loading) runner's when normalisation lets it reuse that runner, else its own."""
        if self.ctx_tolerance is None or not variant:
            return variant
        state = self.models.get(model)
        if state is None or state.where not in ("loaded", "loading") or state.variant == variant:
            return variant
        return state.variant if reusable(variant, state.variant, self.ctx_tolerance) else variant

    def set_parallel(self, parallel: tuple[tuple[str, int], ...], default: int) -> None:
        """A reload's [models] num_parallel entries and backend.num_parallel."""
        self.parallel, self.num_parallel = parallel, default
        self._slots.clear()

    def slots(self, model: str) -> int:
        """Requests Ollama serves at once for this model."""
        found = self._slots.get(model)
        if found is None:
            if len(self._slots) > 4096:  # names come from clients: the cache stays bounded
                self._slots.clear()
            found = next(
                (n for pattern, n in self.parallel
                 if pattern == model or (is_pattern(pattern) and fnmatchcase(model, pattern))),
                self.num_parallel,
            )
            self._slots[model] = found
        return found

    def _compute_totals(self) -> tuple[float, int, bool]:
        if self._totals is None:
            resident = self.resident()
            used = sum(self.size_gb(m.name) or 0.0 for m in resident)
            pending = any(m.where == "loading" and not m.started for m in resident)
            self._totals = (used, len(resident), pending)
        return self._totals

    def get(self, model: str) -> ModelState:
        state = self.models.get(model)
        if state is None:
            state = self.models[model] = ModelState(model)
        return state

    # -- questions the policy asks -----------------------------------------------------

    def residency(self, model: str, variant: str = "") -> Residency:
        state = self.models.get(model)
        if state is None:
            return "absent"
        variant = self.runner_for(model, variant)
        if state.where in ("loaded", "loading") and state.variant != variant:
            return "absent"  # another runner of the model: Ollama reloads it for this request
        return state.where

    def size_gb(self, model: str) -> float | None:
        for source in (self.ps_sizes, self.overrides, self.tag_sizes):
            if model in source:
                return source[model]
        return None

    def resident(self) -> list[ModelState]:
        return [m for m in self.models.values() if m.where != "absent"]

    def vram_used(self) -> float:
        return self._compute_totals()[0]

    def loaded_count(self) -> int:
        return self._compute_totals()[1]

    def fits_beside(self, model: str, vram_only: bool = False) -> bool:
        size = self.size_gb(model)
        if size is None:
            return False
        used, count = self.vram_used(), self.loaded_count()
        state = self.models.get(model)
        if state is not None and state.where != "absent":
            # A reload replaces the model's own runner: its VRAM and its slot are freed first.
            used, count = used - size, count - 1
        if used + size > self.vram_gb + 1e-9:
            return False
        return vram_only or count < self.max_loaded

    def load_pending(self) -> bool:
        """Ollama serves its pending queue one load at a time; is one under way?"""
        return self._compute_totals()[2]

    def eligible(self, model: str, variant: str = "") -> bool:
        """May a request for `model` be sent now without waiting inside Ollama behind others?"""
        state = self.models.get(model)
        if state is None or state.where == "absent":
            return not self.load_pending()
        variant = self.runner_for(model, variant)
        if state.variant != variant and state.where != "evicting":
            return not self.load_pending()  # a reload is a load: one at a time
        # An evicting model must not get new work (the swap would wait on it); a model at its
        # parallel limit would make the request wait inside Ollama while holding our slot.
        return state.where != "evicting" and state.in_flight < self.slots(model)

    def blocked_reason(self, model: str, variant: str = "") -> str | None:
        """Why `eligible(model, variant)` is False, in words for the queue view; None when it is
        True. Follows `eligible` branch for branch. For views only: it walks every model."""
        state = self.models.get(model)
        variant = self.runner_for(model, variant)
        if (
            state is None
            or state.where == "absent"
            or (state.variant != variant and state.where != "evicting")
        ):
            return self._load_reason() if self.load_pending() else None
        if state.where == "evicting":
            evictor = next((m.name for m in self.models.values() if model in m.victims), None)
            for_whom = f" to make room for {evictor}" if evictor else ""
            return f"model {model} is being evicted{for_whom}"
        if state.in_flight >= (slots := self.slots(model)):
            return f"model {model} at its num_parallel limit ({state.in_flight} of {slots} running)"
        return None

    def _load_reason(self) -> str:
        pending = sorted(
            (m for m in self.models.values() if m.where == "loading" and not m.started),
            key=lambda m: m.name,
        )
        reason = f"{', '.join(m.name for m in pending)} is loading, and Ollama loads one model at a time"
        # Ollama unloads a victim only once its running requests are done, so a load (and every
        # load queued behind it) can sit on someone else's long answer.
        busy = [(v, self.models[v].in_flight) for m in pending for v in m.victims if v in self.models]
        busy = [(v, n) for v, n in busy if n > 0]
        if busy:
            running = ", ".join(
                f"{n} running request{'s' if n != 1 else ''} on {v}" for v, n in busy
            )
            victims = ", ".join(v for v, _ in busy)
            reason += f"; the load waits for {running} to finish before {victims} can be evicted"
        return reason

    # -- prediction ----------------------------------------------------------------------

    def load_seconds(self, model: str) -> float:
        """How long loading `model` takes here: learned, else a prior from its size (a start-up
        second and a half, then 2 GB/s from disk), else PRIOR_UNKNOWN_LOAD_S."""
        learned = self.load_times.get(model)
        return learned if learned is not None else self.size_prior(model)

    def size_prior(self, model: str) -> float:
        """A load's seconds before one is measured: 1.5 s of start-up, then 2 GB/s from disk."""
        size = self.size_gb(model)
        return PRIOR_UNKNOWN_LOAD_S if size is None else 1.5 + size * GIB_IN_GB / 2.0

    def learn_load(self, model: str, seconds: float) -> None:
        """A load of `model` took `seconds` (Ollama's load_duration)."""
        old = self.load_times.get(model)
        new = seconds if old is None else 0.7 * old + 0.3 * seconds
        if old is None and len(self.load_times) >= 4096:  # names come from clients
            return
        self.load_times[model] = new
        self._changed()  # model parts read it: let them be recomputed

    def plan(self, model: str, variant: str = "") -> Plan:
        found = self._plans.get((model, variant))
        if found is None:
            if len(self._plans) > 4096:  # names come from clients
                self._plans.clear()
            found = self._plans[(model, variant)] = self._plan(model, variant)
        return found

    def _plan(self, model: str, variant: str) -> Plan:
        if self.residency(model, variant) in ("loaded", "loading"):
            return Plan("attach")
        state = self.models.get(model)
        if state is not None and state.where in ("loaded", "loading"):
            return Plan("reload")  # same model, other options: Ollama replaces its runner
        size = self.size_gb(model)
        used, count = self.vram_used(), self.loaded_count()
        # An unknown size is assumed to fit if the count allows; the next poll corrects it.
        need = size or 0.0
        victims: list[str] = []
        for victim in self._eviction_order():
            if used + need <= self.vram_gb + 1e-9 and count < self.max_loaded:
                break
            if victim.name != model:
                victims.append(victim.name)
                used -= self.size_gb(victim.name) or 0.0
                count -= 1
        return Plan("swap", tuple(victims)) if victims else Plan("load")

    def _eviction_order(self) -> list[ModelState]:
        """The loaded models in the order Ollama would evict them: idle first, then least
        recently used."""
        if self._order is None:
            self._order = sorted((m for m in self.models.values() if m.where == "loaded"),
                                 key=lambda m: (m.in_flight > 0, m.last_used, m.name))
        return self._order

    def _used(self) -> None:
        """A runner's use moved (a request attached or ended), and with it maybe the eviction
        order. What a model term reads (swap_cost reads whom a load evicts) changed only if a
        plan made so far would now evict others: a plan with k victims looked at no more than
        the first k + 1 of the order (one may be its own model), so if that much of the order
        is the same, every plan is too, and they are kept."""
        before, plans = self._order, self._plans
        self._plans, self._order = {}, None
        if before is None or not self.track_use:
            return  # nothing was planned on it, or nothing reads whom a load evicts
        depth = 1 + max((len(p.evicts) for p in plans.values()), default=0)
        if [m.name for m in before[:depth]] != [m.name for m in self._eviction_order()[:depth]]:
            self._changed()
        else:
            self._plans = plans

    def dispatched(self, model: str, plan: Plan, now: float, variant: str = "") -> None:
        state = self.get(model)
        state.in_flight += 1
        state.last_used = now
        self._used()
        if plan.action == "attach":
            return
        self._changed()
        state.where, state.started, state.victims = "loading", False, plan.evicts
        state.variant = variant
        for name in plan.evicts:
            self.get(name).where = "evicting"

    def first_byte(self, model: str) -> None:
        """Ollama began answering for `model`: it is loaded, and its victims are gone."""
        state = self.get(model)
        if state.started and state.where not in ("loading", "absent") and not state.victims:
            return  # another request on a loaded runner: nothing moves
        self._changed()
        if state.where in ("loading", "absent"):
            state.where = "loaded"
        state.started = True
        self._release_victims(state, evicted=True)

    def finished(self, model: str, now: float) -> None:
        state = self.get(model)
        state.in_flight = max(0, state.in_flight - 1)
        state.last_used = now
        self._used()
        if state.where == "loading" and not state.started and state.in_flight == 0:
            self._changed()
            # The load never produced a byte (error or cancellation): Ollama holds nothing new,
            # and most such failures (unknown model, bad request) evict nothing.
            state.where, state.variant = "absent", ""
            self._release_victims(state, evicted=False)

    def _release_victims(self, state: ModelState, *, evicted: bool) -> None:
        for name in state.victims:
            victim = self.get(name)
            if victim.where == "evicting":
                victim.where = "absent" if evicted else "loaded"
        state.victims = ()

    # -- correction from Ollama ---------------------------------------------------------------

    def reconcile(self, ps: dict[str, Any]) -> None:
        """Make the model agree with an /api/ps answer (listed = resident, loading included).

        ValueError, and nothing changes, when the answer has no `models` list: an answer we cannot
        read says nothing about what Ollama holds, and must not wipe the picture we have."""
        models = ps.get("models")
        if not isinstance(models, list):
            raise ValueError(f"/api/ps answer has no 'models' list: {str(ps)[:80]}")
        self._changed()
        entries = [m for m in models if isinstance(m, dict)]
        listed: dict[str, float] = {}
        for entry in entries:
            name = entry.get("name") or entry.get("model")
            if isinstance(name, str):
                size = entry.get("size")
                listed[canonical(name)] = size / GIB if isinstance(size, int | float) else 0.0
        self.ps_sizes.update({k: v for k, v in listed.items() if v > 0})
        for name in listed:
            state = self.get(name)
            if state.where == "absent":
                state.variant = ""  # loaded by someone else: assume the model's defaults
            if state.where == "absent" or (state.where == "loading" and state.in_flight == 0):
                state.where = "loaded"
            # "evicting" stays: it is still resident, and a pending load will push it out.
        for state in self.models.values():
            if state.name in listed:
                continue
            if state.in_flight > 0:
                # Requests are out for it, yet Ollama does not hold it: they wait for a load.
                state.where = "loading"
                state.started = False
            else:
                state.where = "absent"
                state.started = False
                state.variant = ""
        for state in self.models.values():  # victims named by a load Ollama no longer shows
            if state.where != "loading":
                state.victims = ()
        # Forget models nobody holds and nothing waits on: clients choose model names, so one
        # state per name ever requested would grow without bound.
        for name in [n for n, m in self.models.items() if m.where == "absent" and not m.in_flight]:
            del self.models[name]

    def learn_sizes(self, sizes: dict[str, float]) -> None:
        """Known resident sizes (GiB) of models not loaded yet, e.g. from a scenario."""
        self._changed()
        self.tag_sizes.update({canonical(m): gb for m, gb in sizes.items()})

    def learn_tags(self, tags: dict[str, Any]) -> None:
        """Estimate resident sizes of installed models from their size on disk."""
        self._changed()
        for entry in tags.get("models") or []:
            if not isinstance(entry, dict):
                continue
            name, size = entry.get("name") or entry.get("model"), entry.get("size")
            if isinstance(name, str) and isinstance(size, int | float) and size > 0:
                self.tag_sizes[canonical(name)] = size * self.resident_factor / GIB

    def view(self) -> dict[str, Any]:
        return {
            "vram_total_gb": self.vram_gb,
            "vram_used_gb": round(self.vram_used(), 3),
            "loaded_count": self.loaded_count(),
            "max_loaded_models": self.max_loaded,
            "models": [
                {
                    "model": m.name,
                    "state": m.where,
                    "size_gb": None if (s := self.size_gb(m.name)) is None else round(s, 3),
                    "in_flight": m.in_flight,
                    "evicting_for": next(
                        (o.name for o in self.models.values() if m.name in o.victims), None
                    ),
                }
                for m in sorted(self.models.values(), key=lambda m: m.name)
                if m.where != "absent" or m.in_flight
            ],
        }
