"""Defects found in review: each test pins one, so it stays fixed."""

from __future__ import annotations

from engine.clock import ManualClock
from engine.scheduler import Scheduler
from policy.load import load_policy_text


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
