"""Compile: decoded, validated terms -> a pure `Policy`. No I/O, no clock: `now` is an argument."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from policy.state import SchedulingState
from policy.terms.registry import DependsOn, TermFn, TermType
from schemas.ticket import Score, TermScore, Ticket


@dataclass(frozen=True, slots=True)
class DecodedTerm:
    name: str  # the key under [policies.NAME.terms]
    type: TermType
    params: Any  # an instance of type.params
    path: str  # for error messages


@dataclass(frozen=True, slots=True)
class CompiledTerm:
    name: str
    type: str
    depends_on: DependsOn
    fn: TermFn


OrderKey = tuple[int, float, float, int]


@dataclass(frozen=True, slots=True)
class Policy:
    """A compiled policy. Lower total = served sooner; the order key is total and never ties."""

    name: str
    version: str
    description: str
    terms: tuple[CompiledTerm, ...]
    clamp_min: float | None
    # Every wait term's points are >= -wait_slope × seconds waited: the engine's lower bound.
    wait_slope: float
    max_wait: float | None  # for classes without their own
    windows: frozenset[float]  # client windows the ledger must count for this policy
    # The term functions by what they depend on: `partial` runs for every group head the picker
    # looks at, so it must not filter `terms` on each call.
    by_dependency: dict[str, tuple[TermFn, ...]] = field(default_factory=dict, compare=False)
    class_max_wait: dict[str, float] = field(default_factory=dict)  # per class, over max_wait
    reserve: dict[str, int] = field(default_factory=dict)  # local slots kept for a class
    # [policies.NAME.num_ctx]: None = off; else how far below the asked num_ctx a loaded runner's
    # may be and still be reused (engine/residency.py, `runner_for`).
    num_ctx_tolerance: float | None = None
    # Every wait term's points are exactly -wait_slope × seconds waited (the picker's shortcut).
    linear_wait: bool = False
    # Seconds a request whose dispatch would evict a model waits at least (None: no hold).
    swap_hold: float | None = None
    # The shortest wait after which any ticket is overdue: where the picker's walk over the
    # oldest tickets may stop (set from the two above).
    first_overdue: float | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        waits = [w for w in (self.max_wait, *self.class_max_wait.values()) if w is not None]
        object.__setattr__(self, "first_overdue", min(waits) if waits else None)

    def wait_limit(self, cls: str) -> float | None:
        return self.class_max_wait.get(cls, self.max_wait)

    def overdue(self, ticket: Ticket, now: float) -> bool:
        limit = self.class_max_wait.get(ticket.cls, self.max_wait)
        return limit is not None and now - ticket.arrival >= limit

    def score(self, ticket: Ticket, state: SchedulingState, now: float) -> Score:
        parts = tuple(TermScore(t.name, t.fn(ticket, state, now)) for t in self.terms)
        raw = sum(p.points for p in parts)
        total = raw if self.clamp_min is None else max(self.clamp_min, raw)
        return Score(total=total, parts=parts, overdue=self.overdue(ticket, now))

    def partial(
        self, depends_on: DependsOn, ticket: Ticket, state: SchedulingState, now: float
    ) -> float:
        """The sum of the terms that depend on one thing only (model, client, class or wait)."""
        fns = self.by_dependency.get(depends_on, ())
        if len(fns) == 1:
            return fns[0](ticket, state, now)
        return sum(fn(ticket, state, now) for fn in fns)

    def order_key(self, ticket: Ticket, score: Score) -> OrderKey:
        # Overdue tickets go first, those of the class with the shortest wait limit first, then
        # the oldest (as the picker takes them); then by score, arrival, and sequence number.
        if score.overdue:
            return (0, self.wait_limit(ticket.cls) or 0.0, ticket.arrival, ticket.seq)
        return (1, score.total, ticket.arrival, ticket.seq)


def compile_policy(
    name: str,
    version: str,
    description: str,
    clamp_min: float | None,
    terms: Sequence[DecodedTerm],
) -> Policy:
    compiled = tuple(
        CompiledTerm(t.name, t.type.name, t.type.depends_on, t.type.build(t.params)) for t in terms
    )
    slope = float(sum(t.type.wait_slope(t.params) for t in terms if t.type.depends_on == "wait"))
    waits = [w for t in terms if (w := t.type.max_wait(t.params)) is not None]
    class_waits = {c: w for t in terms for c, w in t.type.class_max_wait(t.params).items()}
    windows = frozenset(w for t in terms for w in t.type.windows(t.params))
    return Policy(
        name=name,
        version=version,
        description=description,
        terms=compiled,
        clamp_min=clamp_min,
        wait_slope=slope,
        linear_wait=all(t.type.linear_wait(t.params) for t in terms if t.type.depends_on == "wait"),
        max_wait=min(waits) if waits else None,
        windows=windows,
        class_max_wait=class_waits,
        by_dependency={
            dep: tuple(t.fn for t in compiled if t.depends_on == dep) for dep in {t.depends_on for t in compiled}
        },
    )
