"""The built-in term types. Each `_build_*` runs once at compile time and returns a closure with
everything precomputed; the closure is pure arithmetic on (ticket, state, now)."""

from __future__ import annotations

import math

from policy.durations import parse_duration
from policy.errors import Problem, join_path
from policy.state import SchedulingState
from policy.terms.registry import REGISTRY, TermFn, TermType
from schemas.terms import (
    AgingParams,
    BackendLoadParams,
    ClassOffsetParams,
    FairnessParams,
    FairShareParams,
    RatePenaltyParams,
    SwapCostParams,
    VramParams,
)
from schemas.ticket import Ticket

# ---- vram: where the model is, and what loading it would cost -----------------------------


def _build_vram(p: VramParams) -> TermFn:
    tiers = tuple((t.up_to_gb, t.points) for t in p.swap)
    vram_only = p.fits_check == "vram_only"

    def vram(ticket: Ticket, state: SchedulingState, now: float) -> float:
        if state.residency(ticket.model, ticket.variant) in ("loaded", "loading"):
            return p.loaded
        size = state.size_gb(ticket.model)
        if size is None:
            return p.unknown_size
        if (p.fits_when_empty or state.loaded_count() > 0) and state.fits_beside(
            ticket.model, vram_only
        ):
            return p.fits
        for up_to, points in tiers:
            if size <= up_to:
                return points
        return p.swap_above

    return vram


def _validate_vram(p: VramParams, path: str) -> list[Problem]:
    problems = []
    for i in range(1, len(p.swap)):
        prev, cur = p.swap[i - 1].up_to_gb, p.swap[i].up_to_gb
        if cur <= prev:
            problems.append(
                Problem(
                    join_path(join_path(join_path(path, "swap"), i), "up_to_gb"),
                    cur,
                    f"is not above swap[{i - 1}].up_to_gb ({prev:g}); tiers must ascend",
                )
            )
    return problems


REGISTRY.register(
    TermType(
        name="vram",
        params=VramParams,
        depends_on="model",
        build=_build_vram,
        validate=_validate_vram,
        summary="Model residency: loaded < fits beside < swap tiers by size; unknown size is costly.",
    )
)

# ---- fairness: a client with many waiting or recent requests waits a little longer -----------


def _build_fairness(p: FairnessParams) -> TermFn:
    window = parse_duration(p.window)

    def fairness(ticket: Ticket, state: SchedulingState, now: float) -> float:
        points = p.per_queued * state.queued(ticket.client) + p.per_recent * state.recent(
            ticket.client, window, now
        )
        return min(points, p.cap)

    return fairness


REGISTRY.register(
    TermType(
        name="fairness",
        params=FairnessParams,
        depends_on="client",
        build=_build_fairness,
        windows=lambda p: (parse_duration(p.window),),
        summary="Per client: points per queued and per recent request, capped.",
    )
)

# ---- aging: waiting buys priority; past max_wait a ticket goes first -------------------------


def _build_aging(p: AgingParams) -> TermFn:
    rate, whole = p.per_second, p.whole_seconds

    def aging(ticket: Ticket, state: SchedulingState, now: float) -> float:
        waited = max(0.0, now - ticket.arrival)
        if whole:
            waited = float(math.floor(waited))
        return -(rate * waited) or 0.0  # `or` turns -0.0 into 0.0 for stable snapshots

    return aging


REGISTRY.register(
    TermType(
        name="aging",
        params=AgingParams,
        depends_on="wait",
        build=_build_aging,
        wait_slope=lambda p: p.per_second,
        linear_wait=lambda p: not p.whole_seconds,
        max_wait=lambda p: None if p.max_wait is None else parse_duration(p.max_wait),
        class_max_wait=lambda p: {c: parse_duration(w) for c, w in p.max_wait_by_class.items()},
        classes=lambda p: tuple(p.max_wait_by_class),
        classes_key="max_wait_by_class",
        summary="Minus per_second points per second waited; past max_wait (or its class's) the "
        "ticket goes first.",
    )
)

# ---- class_offset: interactive before batch ------------------------------------------------


def _build_class_offset(p: ClassOffsetParams) -> TermFn:
    offsets = dict(p.offsets)

    def class_offset(ticket: Ticket, state: SchedulingState, now: float) -> float:
        return offsets.get(ticket.cls, 0.0)

    return class_offset


REGISTRY.register(
    TermType(
        name="class_offset",
        params=ClassOffsetParams,
        depends_on="class",
        build=_build_class_offset,
        classes=lambda p: tuple(p.offsets),
        summary="Fixed points per request class; classes not listed get 0.",
    )
)

# ---- rate_penalty: soft rate limit, beyond the hard limits in [limits.rate] --------------------


def _build_rate_penalty(p: RatePenaltyParams) -> TermFn:
    window = parse_duration(p.window)

    def rate_penalty(ticket: Ticket, state: SchedulingState, now: float) -> float:
        over = state.recent(ticket.client, window, now) - p.threshold
        return min(over * p.per_request, p.cap) if over > 0 else 0.0

    return rate_penalty


REGISTRY.register(
    TermType(
        name="rate_penalty",
        params=RatePenaltyParams,
        depends_on="client",
        build=_build_rate_penalty,
        windows=lambda p: (parse_duration(p.window),),
        summary="Per client: per_request points for each arrival in the window above threshold.",
    )
)

# ---- fair_share: service received, not requests counted (VTC, engine/service.py) -------------


def _build_fair_share(p: FairShareParams) -> TermFn:
    per_unit, cap = p.per_unit, p.cap

    def fair_share(ticket: Ticket, state: SchedulingState, now: float) -> float:
        return min(per_unit * state.service_lead(ticket.client), cap)

    return fair_share


def _validate_fair_share(p: FairShareParams, path: str) -> list[Problem]:
    try:
        half_life = parse_duration(p.half_life)
    except ValueError:
        return []  # the decoder has said what is wrong with it
    if half_life <= 0:
        return [Problem(join_path(path, "half_life"), p.half_life,
                        "must be above 0: service must fade for a client that stops")]
    return []


REGISTRY.register(
    TermType(
        name="fair_share",
        params=FairShareParams,
        depends_on="client",
        build=_build_fair_share,
        validate=_validate_fair_share,
        summary="Per client: points per unit of service (tokens or GPU seconds, decayed) beyond "
        "the least-served waiting client.",
    )
)

# ---- swap_cost: a load in seconds of GPU time, not a tier in points ----------------------------


def _build_swap_cost(p: SwapCostParams) -> TermFn:
    def swap_cost(ticket: Ticket, state: SchedulingState, now: float) -> float:
        if state.residency(ticket.model, ticket.variant) in ("loaded", "loading"):
            return 0.0
        seconds = state.load_seconds(ticket.model)
        seconds += p.evict_weight * sum(state.load_seconds(v) for v in state.evicts(ticket.model, ticket.variant))
        return min(p.per_second * seconds, p.cap)

    return swap_cost


REGISTRY.register(
    TermType(
        name="swap_cost",
        params=SwapCostParams,
        depends_on="model",
        build=_build_swap_cost,
        summary="Per model: per_second points per second a load would take (learned from "
        "Ollama's load_duration), plus evict_weight of each evicted model's reload.",
    )
)

# ---- backend_load: where the request would go, as busy as it is ---------------------------------


def _build_backend_load(p: BackendLoadParams) -> TermFn:
    def backend_load(ticket: Ticket, state: SchedulingState, now: float) -> float:
        return p.points * state.backend_load()

    return backend_load


REGISTRY.register(
    TermType(
        name="backend_load",
        params=BackendLoadParams,
        depends_on="backend",
        build=_build_backend_load,
        summary="Per backend: points × the share of its slots in use, so that with several "
        "backends a policy can weigh spreading work against keeping it where its model is.",
    )
)
