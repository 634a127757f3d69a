"""The `seed` policy reproduces the seed proxy's v3.6 scoring exactly, clamp and quirks included:
score = tier + min(5 × queued + 5 × recent, 100) − whole seconds waited, clamped at 0."""

from pathlib import Path

import pytest

from engine.clock import ManualClock
from engine.residency import GIB
from engine.scheduler import Scheduler
from policy.load import load_policy_file

EXAMPLE = load_policy_file(Path(__file__).resolve().parent.parent / "policies.example.toml")
SEED = EXAMPLE.with_active("seed")


def scheduler(loaded: dict[str, float], sizes: dict[str, float] | None = None, **backend):
    import dataclasses

    settings = dataclasses.replace(
        SEED, backend=dataclasses.replace(SEED.backend, vram_gb=24.0, **backend)
    )
    clock = ManualClock(0.0)
    s = Scheduler(settings, clock=clock)
    s.reconcile({"models": [{"name": m, "size": int(gb * GIB)} for m, gb in loaded.items()]})
    s.residency_model.learn_sizes(sizes or {})
    return s, clock


def score_of(s: Scheduler, request_id: str) -> dict:
    ranked = s.position(request_id)
    assert ranked is not None
    return {"total": ranked.score.total, **ranked.score.breakdown()}


def test_readme_example_is_80_not_minus_30():
    """The seed README's "loaded model, new IP, waited 30 s → −30" really scores 100 + 10 − 30."""
    s, clock = scheduler({"llama3.1:8b": 6.0})
    s.enqueue(request_id="r", model="llama3.1:8b", client="10.0.0.9", cls="interactive")
    clock.advance(30)
    assert score_of(s, "r") == {"total": 80, "vram": 100, "fairness": 10, "aging": -30}


@pytest.mark.parametrize(
    ("waited", "total", "aging"),
    [
        (0.0, 110, 0),
        (30.9, 80, -30),  # whole seconds only
        (109.99, 1, -109),
        (110.0, 0, -110),
        (200.0, 0, -200),  # clamped at 0: every long waiter ties, and arrival order decides
    ],
)
def test_aging_counts_whole_seconds_and_clamps_at_zero(waited, total, aging):
    """Waiting takes off one point per whole second; the total never goes below 0."""
    s, clock = scheduler({"llama3.1:8b": 6.0})
    s.enqueue(request_id="r", model="llama3.1:8b", client="ip", cls="interactive")
    clock.advance(waited)
    got = score_of(s, "r")
    assert (got["total"], got["aging"]) == (total, aging)


# ---- VRAM tiers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("loaded", "model", "sizes", "tier"),
    [
        ({"llama3.1:8b": 6.0}, "llama3.1:8b", {}, 100),  # loaded
        ({"llama3.1:8b": 6.0}, "phi4:14b", {"phi4:14b": 11.0}, 200),  # fits beside
        ({}, "phi4:14b", {"phi4:14b": 11.0}, 400),  # fits, but nothing loaded: no 200 tier
        ({"qwq:32b": 23.0}, "phi4:14b", {"phi4:14b": 11.0}, 400),  # small swap
        ({"qwq:32b": 23.0}, "llama3.3:70b", {"llama3.3:70b": 48.0}, 800),  # > 40 GiB
        ({"qwq:32b": 23.0}, "never-seen:70b", {}, 400),  # unknown size: the seed's small swap
        ({"qwq:32b": 23.0}, "exactly:40", {"exactly:40": 40.0}, 400),  # 40 GiB is not > 40
    ],
)
def test_vram_tiers(loaded, model, sizes, tier):
    """100 loaded; 200 fits beside a loaded model; 800 above 40 GiB; else 400 (unknown too)."""
    s, _ = scheduler(loaded, sizes)
    s.enqueue(request_id="r", model=model, client="ip", cls="interactive")
    assert score_of(s, "r")["vram"] == tier


def test_fits_ignores_the_loaded_model_cap():
    """The seed looked at VRAM alone: with the cap reached, a model that fits still gets 200."""
    loaded = {"a:1b": 1.0, "b:1b": 1.0, "c:1b": 1.0}
    s, _ = scheduler(loaded, {"d:1b": 1.0}, max_loaded_models=3)
    s.enqueue(request_id="r", model="d:1b", client="ip", cls="interactive")
    assert score_of(s, "r")["vram"] == 200


# ---- fairness --------------------------------------------------------------------------------


def test_every_request_starts_at_plus_ten():
    """queued and recent both count the new request itself: a first request scores +10."""
    s, _ = scheduler({"llama3.1:8b": 6.0})
    s.enqueue(request_id="r", model="llama3.1:8b", client="new", cls="interactive")
    assert score_of(s, "r")["fairness"] == 10


def test_fairness_counts_queued_and_recent_of_the_same_ip():
    """3 waiting and 5 arrivals in the last 600 s (2 already served) → 5×3 + 5×5 = 40."""
    s, clock = scheduler({"llama3.1:8b": 6.0})
    s.record_history("ip", 0.0)  # served earlier, still within 600 s
    s.record_history("ip", 1.0)
    clock.set(2.0)
    for i in range(3):
        s.enqueue(request_id=f"r{i}", model="llama3.1:8b", client="ip", cls="interactive")
    assert score_of(s, "r0")["fairness"] == 40


def test_fairness_is_capped_at_100_and_old_arrivals_leave_the_window():
    """min(…, 100); arrivals older than 600 s no longer count."""
    s, clock = scheduler({"llama3.1:8b": 6.0})
    for i in range(15):
        s.enqueue(request_id=f"r{i}", model="llama3.1:8b", client="ip", cls="interactive")
    assert score_of(s, "r0")["fairness"] == 100
    clock.advance(600.5)
    assert score_of(s, "r0")["fairness"] == 75  # 15 queued, 0 recent
