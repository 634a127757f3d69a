"""Queue positions from one cached ranking (engine/ranking.py): exact when fresh, corrected for
departures, bounded when stale, and never a whole-queue scoring per question."""

from __future__ import annotations

from pathlib import Path

from engine.clock import ManualClock
from engine.ranking import MAX_AGE, Ranking
from engine.scheduler import Scheduler
from policy.load import load_policy_file

EXAMPLE = load_policy_file(Path(__file__).resolve().parent.parent / "policies.example.toml")


def make(n: int, policy: str = "balanced") -> tuple[Scheduler, ManualClock]:
    clock = ManualClock(100.0)
    s = Scheduler(EXAMPLE.with_active(policy), clock=clock)
    s.pause()
    for i in range(n):
        s.enqueue(request_id=f"r{i}", model=("llama3.1:8b", "qwen2.5:7b")[i % 3 == 0],
                  client=f"c{i % 7}", cls=("interactive", "batch")[i % 4 == 0])
        clock.advance(0.37)
    return s, clock


def brute_force(s: Scheduler) -> dict[str, int]:
    """Every waiting ticket's place, by scoring all of them now (what `waiting()` does)."""
    return {r.ticket.id: r.position for r in s.waiting()}


def test_a_fresh_ranking_gives_exact_positions() -> None:
    s, _ = make(40)
    expected = brute_force(s)
    assert {rid: s.position(rid).position for rid in expected} == expected


def test_departures_move_everyone_behind_them_up_without_a_rebuild() -> None:
    """Under fifo a departure changes no one else's score, so the corrected places are exact.
    (Under fairness terms a departure also changes its client's other scores: those places are
    as of the last build, at most MAX_AGE old.)"""
    s, _ = make(30, "fifo")
    before = brute_force(s)
    s.position("r0")  # build
    builds = s._ranking.builds
    leaving = sorted(before, key=before.get)[::4]  # every fourth place, the first included
    for rid in leaving:
        assert s.cancel(rid)
    expected = brute_force(s)  # the clock has not moved: scores are those of the build
    assert {rid: s.position(rid).position for rid in expected} == expected
    assert s._ranking.builds == builds


def test_a_late_arrival_is_placed_among_the_ranked_by_its_own_score() -> None:
    s, _ = make(20)
    s.position("r0")
    s.enqueue(request_id="late", model="llama3.1:8b", client="newcomer", cls="interactive")
    assert s.position("late").position == brute_force(s)["late"]


def test_one_rebuild_per_max_age_however_many_polls() -> None:
    s, clock = make(200)
    for _ in range(10):
        for i in range(0, 200, 10):
            s.position(f"r{i}")
        clock.advance(MAX_AGE / 5)
    # 10 rounds over 2 × MAX_AGE of clock: a rebuild at the first poll and one per MAX_AGE after.
    assert s._ranking.builds == 2


def test_a_reload_invalidates_the_ranking() -> None:
    s, _ = make(10)
    s.position("r0")
    s.apply_settings(EXAMPLE.with_active("fifo"))
    assert s.position("r3").position == brute_force(s)["r3"] == 4  # fifo: arrival order


def test_positions_stay_within_the_queue() -> None:
    r = Ranking(max_age=10)
    r.position("a", (0, 0.0, 0.0, 1), 3, 0.0, lambda: [((0, 0.0, 0.0, i), f"t{i}") for i in range(3)])
    for t in ("t0", "t1", "t2"):
        r.left(t)
    # A key behind everyone who has left, in a queue of one: first, not fourth nor zeroth.
    assert r.position("b", (0, 9.0, 0.0, 9), 1, 1.0, list) == 1
