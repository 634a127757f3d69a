"""swap_hold: a request whose dispatch would evict a model waits a while, even beside a free slot,
so the requests for its model that arrive meanwhile share one load."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from engine.clock import ManualClock
from engine.residency import GIB
from engine.scheduler import Scheduler
from policy.errors import PolicyError
from policy.load import load_policy_file, load_policy_text
from sim.replay.gpu import choose
from sim.replay.run import replay_policy
from sim.replay.synth import synthesize
from sim.replay.workload import classify, prepare

POLICY = """
active = "p"
[backend]
max_parallel = 2
num_parallel = 2
vram_gb = 24
max_loaded_models = 3
[policies.p]
swap_hold = "60s"
[policies.p.terms.vram]
loaded = 0
fits = 30
unknown_size = 240
swap = [{ up_to_gb = 40, points = 120 }]
swap_above = 240
[policies.p.terms.fairness]
per_queued = 50
per_recent = 0
cap = 500
[policies.p.terms.aging]
per_second = 1.0
max_wait = "5m"
"""


def scheduler(text: str = POLICY) -> tuple[Scheduler, ManualClock]:
    clock = ManualClock(1000.0)
    s = Scheduler(load_policy_text(text.encode(), "p.toml"), clock=clock)
    s.reconcile({"models": [{"name": "llama3.1:8b", "size": 6 * GIB}]})
    s.residency_model.learn_sizes({"qwq:32b": 23.0, "llama3.2:3b": 2.4})
    return s, clock


def ask(s: Scheduler, rid: str, model: str = "qwq:32b", client: str = "alice") -> None:
    s.enqueue(request_id=rid, model=model, client=client, cls="interactive")


def test_a_swap_waits_its_hold_and_the_requests_meanwhile_share_the_load() -> None:
    s, clock = scheduler()
    ask(s, "q1")
    assert s.dispatch() == []  # a free slot, and it waits: the swap would evict llama3.1:8b
    (view,) = s.waiting()
    assert not view.eligible
    assert view.reason == ("held back: loading qwq:32b would evict llama3.1:8b; the policy's swap_hold"
                           " (60s) lets more requests for qwq:32b share the load")
    clock.advance(30)
    ask(s, "q2", client="bob")
    assert s.dispatch() == []
    clock.advance(29.9)
    assert s.dispatch() == []
    clock.advance(0.1)  # q1 has waited 60 s
    grants = s.dispatch()
    assert [(g.ticket.id, g.action) for g in grants] == [("q1", "swap"), ("q2", "attach")]


def test_work_that_needs_no_eviction_is_not_held() -> None:
    """A loaded model, and a load that fits beside it, go at once; only the swap waits."""
    s, _ = scheduler()
    ask(s, "q")
    ask(s, "small", model="llama3.2:3b")
    ask(s, "loaded", model="llama3.1:8b")
    assert sorted(g.ticket.id for g in s.dispatch()) == ["loaded", "small"]


def test_the_oldest_request_for_the_model_sets_the_clock() -> None:
    """A newer request that ranks first (its client has less queued) does not restart the hold."""
    s, clock = scheduler()
    for i in range(3):
        ask(s, f"a{i}")  # alice: three queued, fairness ranks her behind bob
    clock.advance(50)
    ask(s, "b", client="bob")
    assert s.waiting()[0].ticket.id == "b"
    assert s.dispatch() == []
    clock.advance(10)  # alice's first has waited 60 s; bob's only 10
    assert [(g.ticket.id, g.action) for g in s.dispatch()] == [("b", "swap"), ("a0", "attach")]


def test_without_a_hold_the_swap_goes_at_once() -> None:
    s, _ = scheduler(POLICY.replace('swap_hold = "60s"\n', ""))
    ask(s, "q1")
    assert [g.action for g in s.dispatch()] == ["swap"]


def test_a_bad_hold_is_a_policy_error_naming_the_key() -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy_text(POLICY.replace('"60s"', '"a minute"').encode(), "p.toml")
    assert "policies.p.swap_hold" in str(caught.value)


def test_on_the_agents_trace_it_cuts_loads() -> None:
    """The simulator's agent workers: the example's throughput policy, with and without its hold."""
    example = load_policy_file(Path(__file__).resolve().parent.parent / "policies.example.toml")
    assert example.policies["throughput"].swap_hold == 120.0
    assert example.policies["balanced"].swap_hold is None  # the default never idles on purpose
    workload = classify(prepare(synthesize("agents", 400, seed=2)), example)
    gpu = choose(workload.models(), preset=None, config=None).settings
    held = replay_policy(workload, gpu, example, "throughput").figures
    unheld = dataclasses.replace(example.policies["throughput"], swap_hold=None)
    policies = {**example.policies, "throughput": unheld}
    plain = replay_policy(workload, gpu, dataclasses.replace(example, policies=policies), "throughput").figures
    assert held["loads"] < 0.6 * plain["loads"]
    assert held["completed"] == plain["completed"] == 400
    assert held["over_max_wait"] == 0


def test_a_hold_as_long_as_a_queue_timeout_is_refused() -> None:
    """The oldest request would time out before the hold ended, the hold would start again with the
    next one, and the model would never be loaded."""
    text = POLICY + '\n[limits.classes.interactive]\nqueue_timeout = "45s"\n'
    with pytest.raises(PolicyError) as caught:
        load_policy_text(text.encode(), "p.toml")
    assert "policies.p.swap_hold" in str(caught.value)
    assert "limits.classes.interactive.queue_timeout (45s)" in str(caught.value)


def test_the_simulator_releases_a_held_swap_on_time_with_polls_at_every_event() -> None:
    """poll_interval = 0 polls at every event; a hold ending between events must still end (the
    replay wakes each second while work waits beside a free slot), not wait for the next arrival
    or the loaded model's keep-alive."""
    from schemas.trace import TraceRecord

    example = load_policy_file(Path(__file__).resolve().parent.parent / "policies.example.toml")
    example = dataclasses.replace(example, backend=dataclasses.replace(example.backend, poll_interval=0.0))
    trace = [TraceRecord(arrival=t, at=1e9 + t, client=c, model=m, endpoint="/api/chat",
                         request_class="interactive", prompt_tokens=100, output_tokens=20)
             for t, c, m in ((0.0, "a", "llama3.1:8b"), (100.0, "b", "qwq:32b"))]
    workload = classify(prepare(trace), example)
    gpu = choose(workload.models(), preset="workstation-24gb", config=None).settings
    granted: dict[str, float] = {}
    replay_policy(workload, gpu, example, "throughput", on_grant=lambda r, now: granted.setdefault(r.model, now))
    assert 220.0 <= granted["qwq:32b"] <= 221.0  # its 2-minute hold, to the second
