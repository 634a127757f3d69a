"""The scheduler under random event sequences (a hypothesis state machine over its public API),
checked against a brute-force oracle: every dispatch grants the first ticket of `waiting()` — the
view that scores the whole queue and plans every runner — that the view calls eligible. The picker
behind `dispatch()` prunes by score bounds and never scores the whole queue, so the two are
independent ways to the same answer. Invariants: no ticket granted twice or lost, in flight never
above max_parallel."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from engine.clock import ManualClock
from engine.scheduler import Scheduler
from policy.load import load_policy_file

EXAMPLE = load_policy_file(Path(__file__).resolve().parent.parent / "policies.example.toml")
SIZES = {"small:1b": 2.0, "mid:8b": 7.0, "big:32b": 20.0, "huge:70b": 42.0}  # GiB, on a 24 GB card
MAX_PARALLEL = 2


class SchedulerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.policy_name = "balanced"
        self.clock = ManualClock(1000.0)
        self.scheduler = self._make("balanced")
        self.enqueued: set[str] = set()
        self.granted: set[str] = set()
        self.running: set[str] = set()
        self.ended: set[str] = set()  # finished or cancelled
        self.serial = 0

    def _make(self, policy: str) -> Scheduler:
        compiled = EXAMPLE.with_active(policy)
        backend = dataclasses.replace(
            compiled.backend, max_parallel=MAX_PARALLEL, num_parallel=2, vram_gb=24.0,
            max_loaded_models=3,
        )
        s = Scheduler(dataclasses.replace(compiled, backend=backend), clock=self.clock)
        s.residency_model.learn_sizes(SIZES)
        return s

    # -- events ---------------------------------------------------------------------------

    @rule(
        model=st.sampled_from(sorted(SIZES)),
        client=st.sampled_from(["alice", "bob", "carol", "agent-1", "agent-2"]),
        cls=st.sampled_from(["interactive", "batch"]),
        variant=st.sampled_from(["", "", "", "num_ctx=16384"]),
    )
    def enqueue(self, model: str, client: str, cls: str, variant: str) -> None:
        self.serial += 1
        rid = f"t{self.serial}"
        self.scheduler.enqueue(request_id=rid, model=model, client=client, cls=cls, variant=variant)
        self.enqueued.add(rid)

    @rule(seconds=st.sampled_from([0.0, 0.5, 3.0, 30.0, 400.0]))
    def wait(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def dispatch(self) -> None:
        s = self.scheduler
        view = s.waiting()
        expected = next((r.ticket.id for r in view if r.eligible), None)
        grants = s.dispatch()
        free = MAX_PARALLEL - (s.in_flight_count - len(grants))
        if s.paused or free <= 0:
            assert grants == []
            return
        first = grants[0].ticket.id if grants else None
        assert first == expected, (first, expected, [(r.ticket.id, r.eligible, r.reason) for r in view])
        for grant in grants:
            rid = grant.ticket.id
            assert rid not in self.granted, f"{rid} granted twice"
            self.granted.add(rid)
            self.running.add(rid)

    @precondition(lambda self: self.running)
    @rule(data=st.data())
    def first_byte(self, data: st.DataObject) -> None:
        self.scheduler.first_byte(data.draw(st.sampled_from(sorted(self.running))))

    @precondition(lambda self: self.running)
    @rule(data=st.data())
    def finish(self, data: st.DataObject) -> None:
        rid = data.draw(st.sampled_from(sorted(self.running)))
        assert self.scheduler.finish(rid)
        assert not self.scheduler.finish(rid)  # a second finish frees nothing
        self.running.discard(rid)
        self.ended.add(rid)

    @precondition(lambda self: self.enqueued - self.granted - self.ended)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        rid = data.draw(st.sampled_from(sorted(self.enqueued - self.granted - self.ended)))
        assert self.scheduler.cancel(rid)
        self.ended.add(rid)

    @rule(paused=st.booleans())
    def pause_or_resume(self, paused: bool) -> None:
        if paused:
            self.scheduler.pause()
        else:
            self.scheduler.resume()

    @rule(policy=st.sampled_from(["balanced", "fifo", "throughput", "fair", "seed"]))
    def reload(self, policy: str) -> None:
        """A reload to another of the file's policies, as the sidecar applies one."""
        self.scheduler.apply_settings(
            dataclasses.replace(self.scheduler.settings, active=EXAMPLE.policies[policy])
        )

    # -- invariants -------------------------------------------------------------------------

    @invariant()
    def nothing_lost_or_doubled(self) -> None:
        s = self.scheduler
        waiting = {t.id for t in s.tickets()}
        flying = {f.ticket.id for f in s.in_flight()}
        assert waiting == self.enqueued - self.granted - self.ended
        assert flying == self.running
        assert not waiting & flying
        assert s.depth == len(waiting) and s.in_flight_count == len(flying) <= MAX_PARALLEL

    @invariant()
    def positions_are_a_permutation_when_fresh(self) -> None:
        ranks = [r.position for r in self.scheduler.waiting()]
        assert ranks == list(range(1, len(ranks) + 1))


SchedulerMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None,
    database=None,  # no .hypothesis directory in the work tree; a failure prints its own example
    suppress_health_check=[HealthCheck.too_slow],
)
TestScheduler = SchedulerMachine.TestCase
