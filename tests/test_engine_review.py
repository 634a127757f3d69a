"""Defects found in review: each test pins one, so it stays fixed."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.clock import ManualClock
from engine.scenario import load_scenario
from engine.scheduler import Scheduler
from policy.errors import PolicyError
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


SCENARIO_HEAD = 'description = "review"\nnow = 100.0\n'


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(
            '[[tickets]]\nid = "a"\nmodel = "m"\nclient = "c"\narrival = 200.0\n',
            ["s.toml: tickets[0].arrival: 200.0 is after now (100.0); tickets arrive by now"],
            id="ticket-after-now",
        ),
        pytest.param(
            '[[history]]\nclient = "c"\nat = [50.0, 300.0]\n',
            ["s.toml: history[0].at[1]: 300.0 is after now (100.0); history lies in the past"],
            id="history-after-now",
        ),
        pytest.param(
            '[[tickets]]\nid = "a"\nmodel = "m"\nclient = "c"\narrival = 1.0\n'
            '[[tickets]]\nid = "a"\nmodel = "n"\nclient = "c"\narrival = 2.0\n',
            ['s.toml: tickets[1].id: "a" is already the id of tickets[0]; ids must be unique'],
            id="duplicate-id",
        ),
        pytest.param(
            'loaded = [{ model = "m", size_gb = 1e300 }]\n',
            ["s.toml: loaded[0].size_gb: 1e+300 is out of range: must be <= 1000000.0"],
            id="size-overflows",
        ),
        pytest.param(
            'step = 1e308\n[[tickets]]\nid = "a"\nmodel = "m"\nclient = "c"\narrival = 1.0\n',
            ["s.toml: step: 1e+308 is out of range: must be <= 1000000000000.0"],
            id="clock-overflows",  # now + step = inf; the seed's whole-seconds aging then crashed
        ),
    ],
)
def test_bad_scenario_is_an_error_not_a_traceback(tmp_path, monkeypatch, body, expected):
    """Scenarios that replaying would crash on (a clock going backwards, an id scheduled twice,
    a size that overflows) are reported like every other scenario problem."""
    monkeypatch.chdir(tmp_path)
    Path("s.toml").write_text(SCENARIO_HEAD + body, encoding="utf-8")
    with pytest.raises(PolicyError) as caught:
        load_scenario("s.toml")
    assert caught.value.lines == expected


# ---- hot-reload holder -------------------------------------------------------------------------


def test_holder_start_up_does_not_miss_an_edit_made_while_it_compiled(tmp_path, monkeypatch):
    """The holder compiled the file, then read it a second time for its digest: an edit between
    the two reads was taken as already active, so the watcher never loaded it."""
    import policy.holder
    import policy.load

    path = tmp_path / "p.toml"
    path.write_text('active = "a"\n[policies.a]\n')
    real = policy.load.load_policy_text

    def compile_then_edit(data: bytes, file: str):
        compiled = real(data, file)
        path.write_text('active = "b"\n[policies.b]\n')  # the operator saves again meanwhile
        return compiled

    monkeypatch.setattr(policy.load, "load_policy_text", compile_then_edit)
    monkeypatch.setattr(policy.holder, "load_policy_text", compile_then_edit)
    holder = policy.holder.PolicyHolder(path)
    assert holder.current.active.name == "a"
    monkeypatch.setattr(policy.load, "load_policy_text", real)
    monkeypatch.setattr(policy.holder, "load_policy_text", real)
    result = holder.check_changed()
    assert result.changed and holder.current.active.name == "b"


# ---- ledger memory -------------------------------------------------------------------------------


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
