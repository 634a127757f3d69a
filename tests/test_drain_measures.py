"""What the drain estimate reads (engine/eta.py): the gap between completions while requests
waited, started from the slot time, and each class's arrival rate."""

from __future__ import annotations

import math

import pytest
from sidecar_fixtures import make_policy

from engine.admission import Admitted, admit
from engine.clock import ManualClock
from engine.eta import GAP_ALPHA, GAP_CAP, RATE_MIN_SPAN, RATE_TAU, ServiceTimes
from engine.scheduler import Scheduler
from policy.load import load_policy_text


def test_the_gap_is_measured_only_between_answers_that_both_found_requests_waiting() -> None:
    times = ServiceTimes()
    times.observe("m", 20.0)
    times.completed(100.0, backlogged=False)
    times.completed(130.0, backlogged=True)  # began on an empty queue: idle time, not drain
    assert times.gap() is None
    times.completed(134.0, backlogged=True)
    # Started from the slot time (20 s), pulled toward the 4 s measured.
    assert times.gap() == pytest.approx((1 - GAP_ALPHA) * 20.0 + GAP_ALPHA * 4.0)
    for k in range(300):
        times.completed(134.0 + 4.0 * (k + 1), backlogged=True)
    assert times.gap() == pytest.approx(4.0, abs=0.01)


def test_a_quiet_night_is_not_a_slow_drain() -> None:
    """An answer, eight idle hours, then answers while one request waits: no gap of 8 hours (a
    later request would be refused as if the queue drained once a night)."""
    times = ServiceTimes()
    times.observe("m", 5.0)
    times.completed(0.0, backlogged=False)
    times.completed(8 * 3600.0, backlogged=True)
    times.completed(8 * 3600.0 + 5.0, backlogged=True)
    assert times.gap() is not None and times.gap() <= 5.0


def test_one_long_gap_counts_at_most_a_few_slot_times() -> None:
    times = ServiceTimes()
    times.observe("m", 5.0)
    times.completed(0.0, backlogged=True)
    times.completed(1000.0, backlogged=True)  # a stall (a 70B load) while requests waited
    assert times.gap() == pytest.approx((1 - GAP_ALPHA) * 5.0 + GAP_ALPHA * GAP_CAP * 5.0)


def test_arrival_rates_per_class_decay_with_time() -> None:
    times = ServiceTimes()
    for k in range(600):  # one interactive request a second for ten minutes
        times.arrived("interactive", float(k))
    rates = times.arrival_rates(599.0)
    assert rates["interactive"] == pytest.approx(1.0, rel=0.01)
    later = times.arrival_rates(599.0 + RATE_TAU)["interactive"]  # quiet since: it decays
    assert later == pytest.approx(rates["interactive"] / math.e, rel=0.1)
    assert "batch" not in rates


def test_arrival_rates_are_not_underestimated_while_the_memory_fills() -> None:
    """The moving average starts at zero; a rate read a minute after the first arrival is scaled
    by the part of its window it has seen, not a fifth of the truth (which let the overload's
    first minutes admit batch work that then waited out its timeout)."""
    times = ServiceTimes()
    for k in range(60):
        times.arrived("interactive", 100.0 + k)
    assert times.arrival_rates(159.0)["interactive"] == pytest.approx(1.0, rel=0.05)
    one = ServiceTimes()
    one.arrived("interactive", 0.0)  # one arrival is no rate: taken over RATE_MIN_SPAN at least
    assert one.arrival_rates(0.0)["interactive"] == pytest.approx(1.0 / RATE_MIN_SPAN, rel=0.1)


def test_a_burst_of_short_answers_does_not_inflate_the_drain() -> None:
    """The gap is a slow average; the overall slot time a fast one. Measured against the slot
    time of the same answers, as slowly averaged (`gap_slot`), a burst of 50-ms embeddings after
    20-s chats does not make the work ahead look like hours."""
    extra = "[limits]\nmax_queue = 200\nmax_queued_per_client = 200\n[limits.classes.batch]\nqueue_timeout = \"30m\"\n"
    compiled = load_policy_text(make_policy(max_parallel=2, extra=extra).encode(), "p.toml")
    s = Scheduler(compiled, clock=ManualClock(0.0))
    s.pause()
    for i in range(10):
        s.enqueue(request_id=f"b{i}", model="chat:8b", client=f"ci-{i}", cls="batch")
    times = ServiceTimes()
    t = 0.0
    for _ in range(20):  # chats, two at a time, the queue never empty
        times.observe("chat:8b", 20.0)
        t += 10.0
        times.completed(t, backlogged=True, held=20.0)
    for _ in range(20):
        times.observe("embed:small", 0.05)
        t += 0.025
        times.completed(t, backlogged=True, held=0.05)
    assert times.mean() < 1.0  # the fast average forgot the chats
    decided = admit(compiled, s, "ci-x", "batch", times.mean(), "chat:8b", times.gap(),
                    times.arrival_rates(t), times.mean, times.gap_slot())
    assert decided == Admitted()  # 10 chats ahead on 2 slots: minutes, not hours
