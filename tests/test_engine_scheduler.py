"""The scheduler: slots, cancellation, pause, max_wait, and swaps that would undo themselves."""

import dataclasses
from pathlib import Path

from engine.clock import ManualClock
from engine.ledger import ClientLedger
from engine.residency import GIB
from engine.scheduler import Scheduler
from policy.load import CompiledFile, load_policy_file, load_policy_text

EXAMPLE = load_policy_file(Path(__file__).resolve().parent.parent / "policies.example.toml")


def make(policy="balanced", loaded=(("llama3.1:8b", 6.0),), sizes=None):
    clock = ManualClock(100.0)
    s = Scheduler(EXAMPLE.with_active(policy), clock=clock)
    s.reconcile({"models": [{"name": n, "size": int(gb * GIB)} for n, gb in loaded]})
    s.residency_model.learn_sizes(sizes or {})
    return s, clock


def enqueue(s, rid, model="llama3.1:8b", client="alice", cls="interactive"):
    return s.enqueue(request_id=rid, model=model, client=client, cls=cls)


def test_never_more_than_max_parallel_in_flight():
    """backend.max_parallel (2 in the example) bounds what is out at Ollama."""
    s, _ = make()
    s.residency_model.num_parallel = 4
    for i in range(5):
        enqueue(s, f"r{i}", client=f"c{i}")
    assert len(s.dispatch()) == 2
    assert s.dispatch() == []
    s.finish("r0")
    assert [g.ticket.id for g in s.dispatch()] == ["r2"]
    assert s.in_flight_count == 2


def test_cancel_removes_a_waiting_ticket_at_once():
    """A cancelled ticket is gone from the queue, the counts and every view."""
    s, _ = make()
    s.pause()
    enqueue(s, "a")
    enqueue(s, "b")
    assert s.cancel("a") is True
    assert s.cancel("a") is False
    assert [r.ticket.id for r in s.waiting()] == ["b"]
    assert s.queued("alice") == 1
    s.resume()
    assert [g.ticket.id for g in s.dispatch()] == ["b"]


def test_finish_is_idempotent_and_in_flight_returns_to_zero():
    """finish() twice frees one slot once."""
    s, _ = make()
    enqueue(s, "a")
    s.dispatch()
    assert s.finish("a") is True
    assert s.finish("a") is False
    assert s.in_flight_count == 0


def test_paused_dispatches_nothing():
    """While paused tickets wait; resume releases them in policy order."""
    s, _ = make()
    s.pause()
    enqueue(s, "a")
    assert s.dispatch() == []
    s.resume()
    assert [g.ticket.id for g in s.dispatch()] == ["a"]


def test_duplicate_request_id_is_refused():
    """A request id names one ticket only."""
    s, _ = make()
    s.pause()
    enqueue(s, "a")
    try:
        enqueue(s, "a")
    except ValueError as exc:
        assert "already scheduled" in str(exc)
    else:
        raise AssertionError("duplicate id accepted")


def test_overdue_ticket_goes_first_whatever_its_score():
    """Past max_wait (5 min in balanced) a costly swap goes before fresh loaded-model work."""
    s, clock = make(sizes={"llama3.3:70b": 48.0})
    s.pause()
    enqueue(s, "old", model="llama3.3:70b", client="bob")
    clock.advance(301)
    enqueue(s, "fresh")
    s.resume()
    grant = s.dispatch()[0]
    assert grant.ticket.id == "old" and grant.score.overdue


def test_a_swap_does_not_evict_a_model_with_better_ranked_work():
    """With the loaded model at its parallel limit, a swap that would evict it waits instead."""
    s, _ = make(sizes={"qwq:32b": 23.0})
    s.pause()
    enqueue(s, "q", model="qwq:32b", client="bob")
    enqueue(s, "l1")
    enqueue(s, "l2", client="carol")
    s.resume()
    assert [g.ticket.id for g in s.dispatch()] == ["l1"]  # second slot stays free
    s.first_byte("l1")
    s.finish("l1")
    # Once no waiting work wants the loaded model, the swap may go: Ollama evicts after l2.
    grants = s.dispatch()
    assert [(g.ticket.id, g.action, g.evicts) for g in grants] == [
        ("l2", "attach", ()),
        ("q", "swap", ("llama3.1:8b",)),
    ]


def test_grant_reports_what_the_journal_needs():
    """A grant carries score, depth, residency, action and the policy's name and version."""
    s, _ = make()
    s.pause()
    enqueue(s, "a")
    enqueue(s, "b", client="bob")
    s.resume()
    g = s.dispatch()[0]
    assert (g.queue_depth, g.resident, g.action, g.policy_name) == (2, True, "attach", "balanced")
    assert g.policy_version == EXAMPLE.version
    assert set(g.score.breakdown()) == {"vram", "fairness", "fair_share", "rate_penalty", "class_offset", "aging"}


def test_position_tells_a_waiting_client_where_it_stands():
    """position() ranks a waiting ticket among all; None once it is dispatched."""
    s, _ = make()
    s.pause()
    enqueue(s, "a", client="noisy")
    enqueue(s, "b", client="noisy")
    enqueue(s, "c", client="quiet")
    assert s.position("c").position == 1
    assert s.position("b").position == 3
    s.resume()
    s.dispatch()
    assert s.position("c") is None


def one_slot(settings: CompiledFile, active: str | None = None) -> CompiledFile:
    """The file with one slot (and another active policy): what a reload would hand over."""
    settings = settings.with_active(active) if active else settings
    return dataclasses.replace(settings, backend=dataclasses.replace(settings.backend, max_parallel=1))


def test_a_reload_takes_effect_at_the_next_decision():
    """The policy is read once per dispatch(): switching it reorders what still waits."""
    clock = ManualClock(0.0)
    s = Scheduler(one_slot(EXAMPLE, "fifo"), clock=clock)
    s.reconcile({"models": [{"name": "llama3.1:8b", "size": 6 * GIB}]})
    s.residency_model.learn_sizes({"qwq:32b": 23.0})
    s.pause()
    enqueue(s, "swap", model="qwq:32b", client="bob")
    clock.advance(1)
    enqueue(s, "loaded")
    s.resume()
    assert s.position("swap").position == 1
    s.apply_settings(one_slot(EXAMPLE, "throughput"))
    assert [g.ticket.id for g in s.dispatch()] == ["loaded"]


def test_ledger_memory_is_bounded():
    """Clients with nothing waiting and nothing recent are forgotten; history stays in windows."""
    ledger = ClientLedger([60.0])
    for i in range(1000):
        ledger.arrive(f"c{i}", float(i))
        ledger.leave(f"c{i}")
    ledger.expire(1000.0)
    assert ledger.clients() == 60  # arrivals within the last 60 s
    ledger.expire(2000.0)
    assert ledger.clients() == 0
    assert len(ledger._log) == 0


def test_ledger_caps_one_clients_history():
    """One client's arrival times are capped; its counts saturate instead of growing memory."""
    ledger = ClientLedger([1e9], max_per_client=50)
    for i in range(500):
        ledger.record_history("flood", float(i))
    assert ledger.recent("flood", 1e9, 500.0) == 50


def test_requests_for_the_loaded_runner_go_before_a_reload():
    """Same model, other num_ctx: the request for the runner Ollama holds goes first, then the
    reload, then the request that can reuse the reloaded runner."""
    s, _ = make()
    s.apply_settings(one_slot(s.settings))
    s.pause()
    s.enqueue(
        request_id="ctx-a",
        model="llama3.1:8b",
        client="a",
        cls="interactive",
        variant="num_ctx=8192",
    )
    s.enqueue(request_id="default", model="llama3.1:8b", client="b", cls="interactive")
    s.enqueue(
        request_id="ctx-c",
        model="llama3.1:8b",
        client="c",
        cls="interactive",
        variant="num_ctx=8192",
    )
    s.resume()
    order = []
    while s.depth:
        for g in s.dispatch():
            order.append((g.ticket.id, g.action))
            s.first_byte(g.ticket.id)
            s.finish(g.ticket.id)
    assert order == [("default", "attach"), ("ctx-a", "reload"), ("ctx-c", "attach")]


def test_clamp_shortcut_does_not_take_a_score_just_above_the_clamp():
    """Only a ticket whose total IS the clamp ties at it: one scoring 5e-8 above must not beat
    a younger ticket clamped to exactly 0."""
    settings = load_policy_text(
        b"""
active = "p"
[policies.p]
clamp_min = 0
[policies.p.terms.class_offset]
offsets = { interactive = 10.00000005, batch = 5 }
[policies.p.terms.aging]
per_second = 1
""",
        "clamp.toml",
    )
    clock = ManualClock(0.0)
    s = Scheduler(settings, clock=clock)
    s.enqueue(request_id="x", model="m", client="a", cls="interactive")
    clock.set(1.0)
    s.enqueue(request_id="y", model="m", client="b", cls="batch")
    clock.set(10.0)
    policy = settings.active
    totals = {t.id: policy.score(t, s.state, 10.0).total for t in s._waiting.values()}
    assert totals["y"] == 0 and 0 < totals["x"] < 1e-7
    assert [g.ticket.id for g in s.dispatch()] == ["y"]


def test_ledger_stays_bounded_while_no_slot_is_free():
    """Windows only advanced inside dispatch() with a free slot: while paused (or with every slot
    held by long streams) each arrival, even one cancelled at once, stayed in the ledger."""
    from policy.load import load_policy_file

    settings = load_policy_file(Path(__file__).resolve().parent.parent / "policies.example.toml")
    clock = ManualClock(0.0)
    s = Scheduler(settings, clock=clock)
    s.pause()
    longest = max(settings.windows)
    for i in range(3000):
        s.enqueue(request_id=f"r{i}", model="m", client=f"client-{i}", cls="interactive")
        s.cancel(f"r{i}")
        s.dispatch()
        clock.advance(1.0)
    assert len(s._ledger._log) <= longest + 2
    assert s._ledger.clients() <= longest + 2
