"""One conformance suite for every registered term type, with its default parameters and with the
parameters each example policy gives it.

A term is a pure function of (ticket, state, now) that depends on the one thing it declares. The
engine relies on that to avoid rescoring the whole queue, and on a wait term's lower bound
(-wait_slope × seconds waited) to know when an old ticket may overtake.
"""

from __future__ import annotations

import copy
import itertools
import math
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import msgspec
import pytest

from policy.state import SchedulingState
from policy.terms import REGISTRY, TermType, UnknownTermType
from policy.terms.registry import Registry, TermFn
from schemas.ticket import Residency, Ticket

EXAMPLE = Path(__file__).parent.parent / "policies.example.toml"
NOW = 1000.0
KNOWN_TYPES = "known types: aging, backend_load, class_offset, fair_share, fairness, rate_penalty, swap_cost, vram"


# ---- a hand-written scheduling state ------------------------------------------------------------


@dataclass(frozen=True)
class StubState(SchedulingState):
    """SchedulingState from plain tables; typeguard checks every call's arguments against it."""

    residencies: dict[str, Residency] = field(default_factory=dict)
    sizes: dict[str, float] = field(default_factory=dict)
    fits_vram: frozenset[str] = frozenset()  # models that fit by VRAM alone
    fits_ollama: frozenset[str] = frozenset()  # ...and also under max_loaded_models
    loaded: int = 0
    queued_by_client: dict[str, int] = field(default_factory=dict)
    arrivals_by_client: dict[str, tuple[float, ...]] = field(default_factory=dict)
    leads_by_client: dict[str, float] = field(default_factory=dict)
    load_times: dict[str, float] = field(default_factory=dict)
    evictions: dict[str, tuple[str, ...]] = field(default_factory=dict)
    load: float = 0.5  # of the backend being chosen for

    def residency(self, model: str, variant: str = "") -> Residency:
        return self.residencies.get(model, "absent")

    def size_gb(self, model: str) -> float | None:
        return self.sizes.get(model)

    def fits_beside(self, model: str, vram_only: bool) -> bool:
        return model in (self.fits_vram if vram_only else self.fits_ollama)

    def loaded_count(self) -> int:
        return self.loaded

    def queued(self, client: str) -> int:
        return self.queued_by_client.get(client, 1)

    def recent(self, client: str, window: float, now: float) -> int:
        return sum(1 for t in self.arrivals_by_client.get(client, ()) if now - window < t <= now)

    def service_lead(self, client: str) -> float:
        return self.leads_by_client.get(client, 0.0)

    def load_seconds(self, model: str) -> float:
        return self.load_times.get(model, 30.0)

    def evicts(self, model: str, variant: str = "") -> tuple[str, ...]:
        return self.evictions.get(model, ())

    def backend_load(self) -> float:
        return self.load


MODELS = ["llama3.2:3b", "qwen2.5:14b", "mixtral:8x7b", "llama3.3:70b", "mystery:latest", "phi3"]
CLIENTS = ["alice", "bob", "ci-runner"]
CLASSES = ["interactive", "batch", "unlisted"]
ARRIVALS = [NOW, NOW - 0.5, NOW - 7.25, NOW - 299.0, NOW - 900.0]

# The base state: a busy GPU, a quiet client, a noisy one, and a burst.
BASE = StubState(
    residencies={"llama3.2:3b": "loaded", "phi3": "evicting"},
    sizes={
        "llama3.2:3b": 2.5,
        "qwen2.5:14b": 9.0,
        "mixtral:8x7b": 26.0,
        "llama3.3:70b": 43.0,
        "phi3": 2.3,
    },
    fits_vram=frozenset({"qwen2.5:14b", "phi3"}),
    fits_ollama=frozenset({"qwen2.5:14b"}),
    loaded=1,
    queued_by_client={"alice": 1, "bob": 12, "ci-runner": 4},
    arrivals_by_client={
        "alice": (NOW - 30.0,),
        "bob": tuple(NOW - i * 9.0 for i in range(80)),
        "ci-runner": tuple(NOW - i * 0.5 for i in range(45)),
    },
    leads_by_client={"bob": 4000.0, "ci-runner": 90_000.0},
    load_times={"llama3.2:3b": 2.5, "qwen2.5:14b": 6.0, "mixtral:8x7b": 14.0, "llama3.3:70b": 25.0},
    evictions={"mixtral:8x7b": ("llama3.2:3b",), "llama3.3:70b": ("llama3.2:3b", "phi3")},
)
# The same clients, another GPU: everything a model term reads differs, nothing a client term reads.
OTHER_MODELS = replace(
    BASE,
    residencies={"mixtral:8x7b": "loading"},
    sizes={"qwen2.5:14b": 9.0, "mixtral:8x7b": 26.0, "llama3.3:70b": 43.0, "mystery:latest": 70.0},
    fits_vram=frozenset({"llama3.2:3b", "qwen2.5:14b"}),
    fits_ollama=frozenset({"llama3.2:3b"}),
    loaded=0,
    load_times={"qwen2.5:14b": 9.0, "llama3.3:70b": 40.0},
    evictions={"llama3.3:70b": ("mixtral:8x7b",)},
)
# The same GPU, other clients: everything a client term reads differs, nothing a model term reads.
OTHER_CLIENTS = replace(
    BASE,
    queued_by_client={"alice": 30, "bob": 1},
    arrivals_by_client={"alice": tuple(NOW - i * 1.0 for i in range(50)), "bob": ()},
    leads_by_client={"alice": 2500.0},
)
# The same GPU and clients, another backend's load: only a backend term reads it.
OTHER_BACKEND = replace(BASE, load=1.0)
STATES = [BASE, OTHER_MODELS, OTHER_CLIENTS, OTHER_BACKEND]

TICKETS = [
    Ticket(
        id=f"t{i}",
        seq=i,
        model=model,
        client=client,
        cls=CLASSES[i % len(CLASSES)],
        arrival=ARRIVALS[i % len(ARRIVALS)],
        endpoint="/api/chat",
    )
    for i, (model, client) in enumerate(itertools.product(MODELS, CLIENTS))
]

# What each declared dependency lets the points depend on: ticket fields, and which state changes.
# A "model" term sees the model and the request's reload-forcing options (its runner).
TICKET_FIELDS = {
    "model": ("model", "variant"),
    "client": ("client",),
    "class": ("cls",),
    "wait": ("arrival",),
    "backend": (),  # the same for every ticket of one choice
}
READS_STATE = {"model": OTHER_MODELS, "client": OTHER_CLIENTS, "backend": OTHER_BACKEND}
ALTERNATIVES: dict[str, list[Any]] = {
    "model": MODELS,
    "client": CLIENTS,
    "cls": CLASSES,
    "arrival": ARRIVALS,
    "id": ["another-id"],
    "seq": [10_000],
    "endpoint": ["", "/v1/embeddings"],
    "variant": ["num_ctx=8192"],
}


# ---- the cases: every type with defaults, and every term of every example policy ---------------


@dataclass(frozen=True)
class Case:
    term_type: TermType
    params: Any

    def build(self) -> TermFn:
        return self.term_type.build(self.params)


def _cases() -> Iterator[Any]:
    for name in REGISTRY.names():
        term_type = REGISTRY.get(name)
        yield pytest.param(Case(term_type, term_type.params()), id=f"{name}-defaults")
    policies = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))["policies"]
    for policy, spec in policies.items():
        for term, table in spec.get("terms", {}).items():
            term_type = REGISTRY.get(table.get("type", term))
            params = msgspec.convert(
                {k: v for k, v in table.items() if k != "type"}, term_type.params
            )
            yield pytest.param(Case(term_type, params), id=f"{policy}-{term}")


CASES = list(_cases())
WAIT_CASES = [c for c in CASES if c.values[0].term_type.depends_on == "wait"]


def _points(fn: TermFn) -> list[float]:
    return [fn(t, s, NOW) for s in STATES for t in TICKETS]


# ---- purity ------------------------------------------------------------------------------------


def test_cases_cover_every_registered_type() -> None:
    """Each registered term type runs through the suite at least with its defaults."""
    covered = {c.values[0].term_type.name for c in CASES}
    assert covered == set(REGISTRY.names())


@pytest.mark.parametrize("case", CASES)
def test_term_is_deterministic(case: Case) -> None:
    """Same params, ticket, state and now give the same points, call after call and build after build."""
    first = _points(case.build())
    assert _points(case.build()) == first
    fn = case.build()
    assert _points(fn) == _points(fn)


@pytest.mark.parametrize("case", CASES)
def test_term_points_are_finite(case: Case) -> None:
    """Points are finite floats for every ticket and state, so the order is always defined."""
    for points in _points(case.build()):
        assert isinstance(points, float | int)
        assert math.isfinite(points)


@pytest.mark.parametrize("case", CASES)
def test_term_does_not_mutate_its_inputs(case: Case) -> None:
    """Scoring leaves the ticket, the state and the parameters exactly as they were."""
    fn = case.build()
    params_before = copy.deepcopy(case.params)
    for state in STATES:
        state_before = copy.deepcopy(state)
        for ticket in TICKETS:
            ticket_before = copy.deepcopy(ticket)
            fn(ticket, state, NOW)
            assert ticket == ticket_before
        assert state == state_before
    assert case.params == params_before


# ---- dependencies: only what the term declares -------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_term_depends_only_on_the_ticket_field_it_declares(case: Case) -> None:
    """Changing any other ticket field (model, variant, client, cls, arrival, id, seq, endpoint)
    keeps the points."""
    declared = TICKET_FIELDS[case.term_type.depends_on]
    fn = case.build()
    for state, ticket in itertools.product(STATES, TICKETS):
        base = fn(ticket, state, NOW)
        for name, values in ALTERNATIVES.items():
            if name in declared:
                continue
            for value in values:
                other = msgspec.structs.replace(ticket, **{name: value})
                assert fn(other, state, NOW) == base, f"{name}={value!r} changed {ticket}"


@pytest.mark.parametrize("case", CASES)
def test_term_reads_only_the_state_it_declares(case: Case) -> None:
    """A model term ignores client counts, a client term ignores the GPU, others ignore both."""
    depends_on = case.term_type.depends_on
    unread = [s for d, s in READS_STATE.items() if d != depends_on]
    fn = case.build()
    for ticket in TICKETS:
        base = fn(ticket, BASE, NOW)
        for state in unread:
            assert fn(ticket, state, NOW) == base


@pytest.mark.parametrize("case", WAIT_CASES)
def test_wait_term_depends_only_on_time_waited(case: Case) -> None:
    """Shifting arrival and now by the same amount keeps a wait term's points."""
    fn = case.build()
    for ticket, shift in itertools.product(TICKETS, [-500.0, 0.25, 86_400.0]):
        shifted = msgspec.structs.replace(ticket, arrival=ticket.arrival + shift)
        assert fn(shifted, BASE, NOW + shift) == fn(ticket, BASE, NOW)


# ---- wait terms: the engine's lower bound ------------------------------------------------------

WAITED = [0.0, 0.25, 0.5, 0.999, 1.0, 1.5, 2.0, 10.0, 59.9, 60.0, 299.0, 300.0, 301.0, 3600.0]


def _wait_points(fn: TermFn, waited: float) -> float:
    ticket = msgspec.structs.replace(TICKETS[0], arrival=NOW - waited)
    return fn(ticket, BASE, NOW)


@pytest.mark.parametrize("case", WAIT_CASES)
def test_wait_term_never_rises_with_waiting(case: Case) -> None:
    """Waiting longer never costs a ticket points."""
    fn = case.build()
    points = [_wait_points(fn, w) for w in WAITED]
    assert points == sorted(points, reverse=True)


@pytest.mark.parametrize("case", WAIT_CASES)
def test_wait_term_stays_above_its_declared_slope(case: Case) -> None:
    """Points are never below -wait_slope × seconds waited, the bound the picker relies on."""
    fn = case.build()
    slope = case.term_type.wait_slope(case.params)
    for waited in WAITED:
        assert _wait_points(fn, waited) >= -slope * waited - 1e-9


# ---- the registry ------------------------------------------------------------------------------


def test_registering_a_duplicate_name_lists_known_types() -> None:
    """A second type under a taken name is refused, and the error lists the known types."""
    with pytest.raises(ValueError) as caught:
        REGISTRY.register(REGISTRY.get("vram"))
    assert str(caught.value) == f"term type 'vram' is already registered; {KNOWN_TYPES}"
    assert REGISTRY.names() == ["aging", "backend_load", "class_offset", "fair_share", "fairness", "rate_penalty", "swap_cost", "vram"]


def test_duplicate_in_a_fresh_registry_keeps_the_first() -> None:
    """A refused duplicate leaves the first registration in place."""
    registry = Registry()
    first = registry.register(REGISTRY.get("aging"))
    with pytest.raises(
        ValueError, match=r"^term type 'aging' is already registered; known types: aging$"
    ):
        registry.register(replace(REGISTRY.get("aging"), summary="another"))
    assert registry.get("aging") is first


@pytest.mark.parametrize("name", ["vramm", "", "VRAM"])
def test_unknown_type_lists_known_types(name: str) -> None:
    """Looking up a name nobody registered fails with the list of known types."""
    with pytest.raises(UnknownTermType) as caught:
        REGISTRY.get(name)
    assert caught.value.args[0] == f"is not a known term type; {KNOWN_TYPES}"


@pytest.mark.parametrize("name", REGISTRY.names())
def test_registered_type_is_well_formed(name: str) -> None:
    """Each type has a summary, a known dependency, and defaults that build a term."""
    term_type = REGISTRY.get(name)
    assert term_type.name == name
    assert term_type.summary
    assert term_type.depends_on in TICKET_FIELDS
    build: Callable[[Any], TermFn] = term_type.build
    assert callable(build(term_type.params()))
    if term_type.depends_on != "wait":
        assert term_type.wait_slope(term_type.params()) == 0.0


# rate_penalty by hand: points = min((arrivals in the window − threshold) × per_request, cap), and
# 0 at or below the threshold. Arrivals count if now − window < t ≤ now.
RATE_PENALTY_ROWS = [
    # (params, arrival ages in seconds, expected points, the arithmetic)
    ({"window": "1m", "threshold": 10, "per_request": 20, "cap": 500}, [1.0] * 10, 0.0,
     "10 arrivals, threshold 10: none beyond it"),
    ({"window": "1m", "threshold": 10, "per_request": 20, "cap": 500}, [1.0] * 13, 60.0,
     "13 − 10 = 3 beyond; 3 × 20 = 60"),
    ({"window": "1m", "threshold": 2, "per_request": 7.5, "cap": 500}, [5.0, 30.0, 59.0, 60.0, 61.0], 7.5,
     "ages 5, 30, 59 are inside a 60 s window, 60 and 61 are not: 3 − 2 = 1; 1 × 7.5 = 7.5"),
    ({"window": "10s", "threshold": 0, "per_request": 40, "cap": 100}, [1.0, 2.0, 3.0, 4.0], 100.0,
     "4 − 0 = 4 beyond; 4 × 40 = 160, capped at 100"),
    ({"window": "1m", "threshold": 3, "per_request": 20, "cap": 500}, [], 0.0,
     "no arrivals at all: 0 − 3 < 0, so 0 (never a negative penalty)"),
]


@pytest.mark.parametrize(("params", "ages", "expected", "why"), RATE_PENALTY_ROWS,
                         ids=[row[3] for row in RATE_PENALTY_ROWS])
def test_rate_penalty_worked_by_hand(params: dict[str, Any], ages: list[float], expected: float,
                                     why: str) -> None:
    term_type = REGISTRY.get("rate_penalty")
    fn = term_type.build(msgspec.convert(params, term_type.params))
    state = StubState(arrivals_by_client={"alice": tuple(NOW - a for a in ages)})
    ticket = Ticket(id="t", seq=1, model="m", client="alice", cls="interactive", arrival=NOW)
    assert fn(ticket, state, NOW) == expected
