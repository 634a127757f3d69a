"""Overdue work under overload: among tickets past their wait limit the class with the shortest
limit goes first, and an overdue swap does not evict a model whose own overdue work goes before
it (a batch backlog past its long limit would otherwise swap people's model out between every
two answers, while people wait past their short one)."""

from __future__ import annotations

from engine.clock import ManualClock
from engine.residency import GIB
from engine.scheduler import Scheduler
from policy.load import load_policy_text

POLICY = """
active = "p"
[backend]
max_parallel = 2
num_parallel = 1
vram_gb = 24
max_loaded_models = 3
[policies.p.terms.vram]
loaded = 0
fits = 30
unknown_size = 240
swap = [{ up_to_gb = 40, points = 120 }]
swap_above = 240
[policies.p.terms.class_offset]
offsets = { batch = 1800 }
[policies.p.terms.aging]
per_second = 1.0
max_wait = "5m"
max_wait_by_class = { batch = "25m" }
"""


def scheduler() -> tuple[Scheduler, ManualClock]:
    clock = ManualClock(0.0)
    s = Scheduler(load_policy_text(POLICY.encode(), "p.toml"), clock=clock)
    s.reconcile({"models": [{"name": "llama3.1:8b", "size": 6 * GIB}]})
    s.residency_model.learn_sizes({"qwq:32b": 20.0, "llama3.2:3b": 2.4})
    return s, clock


def test_the_overdue_of_the_more_urgent_class_go_first() -> None:
    s, clock = scheduler()
    s.pause()
    s.enqueue(request_id="batch", model="llama3.2:3b", client="ci", cls="batch")
    clock.set(1400.0)
    s.enqueue(request_id="person", model="llama3.2:3b", client="alice", cls="interactive")
    clock.set(1800.0)  # both overdue: batch by 300 s, the person by 100 s
    s.resume()
    s.residency_model.num_parallel = 1
    assert [g.ticket.id for g in s.dispatch()] == ["person"]  # one slot of llama3.2:3b


def test_an_overdue_swap_does_not_evict_a_model_with_more_urgent_overdue_work() -> None:
    s, clock = scheduler()
    s.pause()
    s.enqueue(request_id="qwq", model="qwq:32b", client="ci", cls="batch")  # needs llama evicted
    clock.set(1400.0)
    s.enqueue(request_id="p1", model="llama3.1:8b", client="alice", cls="interactive")
    s.enqueue(request_id="p2", model="llama3.1:8b", client="bob", cls="interactive")
    clock.set(1800.0)  # all three overdue
    s.resume()
    # One slot of llama3.1:8b: p1 runs, p2 waits for it; the free second slot must not go to the
    # swap, which would unload llama3.1:8b under p2.
    assert [(g.ticket.id, g.action) for g in s.dispatch()] == [("p1", "attach")]
    views = {r.ticket.id: r for r in s.waiting()}
    assert [r.ticket.id for r in s.waiting()] == ["p2", "qwq"]  # the view's order is the pick's
    assert "num_parallel limit" in (views["p2"].reason or "")
    assert not views["qwq"].eligible and views["qwq"].reason == (
        "held back: loading qwq:32b would evict llama3.1:8b, whose own overdue requests go first")
    position = s.position("qwq")
    assert position is not None and not position.eligible
    s.first_byte("p1")
    s.finish("p1")
    # Nothing more urgent waits for llama3.1:8b once p2 has its slot: the overdue swap goes (Ollama
    # unloads llama3.1:8b when p2 is done).
    assert [(g.ticket.id, g.action) for g in s.dispatch()] == [("p2", "attach"), ("qwq", "swap")]


def test_work_the_reserve_keeps_out_of_the_slot_does_not_hold_an_overdue_swap() -> None:
    """An overdue batch request for the loaded model may not take the slot kept for people, so
    it protects nothing there: the overdue person's swap takes it."""
    text = POLICY.replace('[policies.p.terms.vram]', '[policies.p]\nreserve = { interactive = 1 }\n'
                          '[policies.p.terms.vram]').replace('max_wait_by_class = { batch = "25m" }\n', '')
    text += '[clients.classes.interactive]\n[clients.classes.batch]\n'
    clock = ManualClock(0.0)
    s = Scheduler(load_policy_text(text.encode(), "p.toml"), clock=clock)
    s.reconcile({"models": [{"name": "llama3.1:8b", "size": 6 * GIB}]})
    s.residency_model.learn_sizes({"qwq:32b": 20.0})
    s.pause()
    s.enqueue(request_id="busy", model="llama3.1:8b", client="x", cls="batch")
    s.resume()
    assert [g.ticket.id for g in s.dispatch()] == ["busy"]  # batch in one slot: the other is kept for people
    s.enqueue(request_id="batch", model="llama3.1:8b", client="ci", cls="batch")
    clock.set(100.0)
    s.enqueue(request_id="person", model="qwq:32b", client="alice", cls="interactive")
    clock.set(500.0)  # both past the one max_wait, batch first; but it may not take the last slot
    assert [(g.ticket.id, g.action) for g in s.dispatch()] == [("person", "swap")]
