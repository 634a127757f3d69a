"""The swap_cost term: a load scored by the seconds of GPU time it takes — learned per model from
Ollama's load_duration, with a prior from the size until one is seen — plus a share of the reload
of every model it evicts. Played on the real scheduler with a manual clock."""

from __future__ import annotations

import pytest
from sidecar_fixtures import make_policy

from engine.clock import ManualClock
from engine.residency import GIB, PRIOR_UNKNOWN_LOAD_S
from engine.scheduler import Scheduler
from engine.service import Usage
from policy.load import load_policy_text

SWAP_COST = """
[policies.test.terms.swap_cost]
per_second = 2.0
evict_weight = 0.5
cap = 900
"""


def _scheduler() -> tuple[Scheduler, ManualClock]:
    text = make_policy(max_parallel=1, vram_gb=24, max_loaded_models=2, terms=SWAP_COST)
    clock = ManualClock(0.0)
    return Scheduler(load_policy_text(text.encode(), "p.toml"), clock=clock), clock


def _points(s: Scheduler, model: str) -> float:
    s.pause()
    s.enqueue(request_id="probe", model=model, client="c", cls="interactive")
    points = s.waiting()[0].score.breakdown()["swap_cost"]
    s.cancel("probe")
    s.resume()
    return points


def test_a_load_costs_its_seconds_from_a_size_prior_then_from_what_ollama_measured() -> None:
    s, _ = _scheduler()
    s.reconcile({"models": []})
    s.learn_tags({"models": [{"name": "big:70b", "size": 40 * 10**9}, {"name": "small:1b", "size": 10**9}]})
    big = s.residency_model.size_gb("big:70b")
    assert big is not None
    assert _points(s, "big:70b") == pytest.approx(2.0 * (1.5 + big * GIB / 1e9 / 2.0))
    assert _points(s, "nobody-knows:1b") == pytest.approx(2.0 * PRIOR_UNKNOWN_LOAD_S)
    # Ollama says loading big:70b took 12 s here: that is what it costs from now on.
    s.enqueue(request_id="r", model="big:70b", client="c", cls="interactive")
    (grant,) = s.dispatch()
    assert grant.action == "load"
    s.first_byte("r")
    s.finish("r", Usage(input_tokens=5, output_tokens=5, gpu_seconds=13.0, load_seconds=12.0))
    assert s.residency_model.load_times["big:70b"] == 12.0
    assert _points(s, "big:70b") == 0.0  # loaded now: no load at all
    # small:1b would evict it (40 GB does not leave room on 24 GiB): its own 3 s, and half of
    # big:70b's measured 12 s to bring it back.
    s.residency_model.learn_load("small:1b", 3.0)
    assert s.state.evicts("small:1b") == ("big:70b",)
    assert _points(s, "small:1b") == pytest.approx(2.0 * (3.0 + 0.5 * 12.0))


def test_an_eviction_adds_a_share_of_the_evicted_models_reload() -> None:
    s, _ = _scheduler()
    s.reconcile({"models": [{"name": "a:7b", "size": 10 * GIB}, {"name": "b:7b", "size": 10 * GIB}]})
    s.residency_model.learn_load("a:7b", 8.0)
    s.residency_model.learn_load("b:7b", 6.0)
    s.residency_model.learn_load("c:7b", 4.0)
    s.learn_tags({"models": [{"name": "c:7b", "size": 10 * GIB}]})
    evicted = s.state.evicts("c:7b")
    assert len(evicted) == 1  # two loaded and max_loaded_models = 2: one must go
    reload = s.residency_model.load_times[evicted[0]]
    assert _points(s, "c:7b") == pytest.approx(2.0 * (4.0 + 0.5 * reload))


def test_a_new_ollama_starts_from_the_priors_again() -> None:
    s, _ = _scheduler()
    s.residency_model.learn_load("a:7b", 8.0)
    s.apply_settings(s.settings, new_host=True)
    assert s.residency_model.load_times == {}


def test_a_tiny_load_duration_teaches_nothing() -> None:
    """A load_duration under 0.1 s means Ollama had the model loaded after all."""
    s, _ = _scheduler()
    s.enqueue(request_id="r", model="m:7b", client="c", cls="interactive")
    (grant,) = s.dispatch()
    assert grant.action == "load"
    s.finish("r", Usage(load_seconds=0.05))
    assert "m:7b" not in s.residency_model.load_times


def test_a_policy_with_swap_cost_reprices_when_a_use_changes_whom_a_load_evicts() -> None:
    """Which model a load evicts follows each runner's use (idle first, then least recently
    used), so with swap_cost a use that changes it drops the cached model parts; a use that
    leaves every plan's victims as they were keeps them (each pick would otherwise reprice every
    runner). Without swap_cost nothing a term reads moves with use."""
    s, _ = _scheduler()
    assert s.residency_model.track_use
    r = s.residency_model
    r.reconcile({"models": [{"name": "a:7b", "size": 5 * GIB}, {"name": "b:7b", "size": 5 * GIB}]})
    r.learn_sizes({"c:7b": 5.0})
    for t, model in ((1.0, "a:7b"), (3.0, "b:7b")):
        r.dispatched(model, r.plan(model), t)
        r.finished(model, t + 1)
    assert r.plan("c:7b").evicts == ("a:7b",)  # a is idle longest
    before = r.version
    r.dispatched("b:7b", r.plan("b:7b"), 5.0)  # b busy: a is still the first to go
    assert r.version == before and r.plan("c:7b").evicts == ("a:7b",)
    r.dispatched("a:7b", r.plan("a:7b"), 6.0)  # both busy: b, used longer ago, goes first now
    assert r.version > before and r.plan("c:7b").evicts == ("b:7b",)
    plain = Scheduler(load_policy_text(make_policy().encode(), "p.toml"), clock=ManualClock(0.0))
    assert not plain.residency_model.track_use


def test_a_swap_teaches_at_most_three_times_its_size_prior() -> None:
    """A swap's load_duration includes waiting for its busy victims to finish: what it teaches
    is bounded, but a card that holds one model at a time still learns from its swaps."""
    s, _ = _scheduler()
    s.reconcile({"models": [{"name": "a:7b", "size": 20 * GIB}]})
    s.learn_tags({"models": [{"name": "b:7b", "size": 10 * 10**9}]})
    s.enqueue(request_id="r", model="b:7b", client="c", cls="interactive")
    (grant,) = s.dispatch()
    assert grant.action == "swap"
    s.finish("r", Usage(load_seconds=500.0))
    prior = s.residency_model.size_prior("b:7b")
    assert s.residency_model.load_times["b:7b"] == pytest.approx(3 * prior)
