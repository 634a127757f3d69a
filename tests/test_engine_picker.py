"""The indexed picker chooses exactly what scoring every waiting ticket would choose.

Random event sequences (arrivals, dispatches, finishes, cancellations, /api/ps polls, time passing
across window edges) are replayed under every example policy and under random ones; after each
event the picker's choice is compared with the brute-force minimum of the order key.
"""

import random
from pathlib import Path

import pytest

from engine.clock import ManualClock
from engine.residency import GIB
from engine.scheduler import Scheduler
from policy.load import load_policy_file, load_policy_text

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = load_policy_file(ROOT / "policies.example.toml")
MODELS = {"a:1b": 1.5, "b:8b": 6.0, "c:14b": 11.0, "d:32b": 23.0, "e:70b": 48.0, "f:new": None}


def brute_force(s: Scheduler, now: float):
    policy = s._policy_source()
    eligible = s.residency_model.eligible
    best = None
    for ticket in s._waiting.values():
        if not eligible(ticket.model, ticket.variant):
            continue
        key = policy.order_key(ticket, policy.score(ticket, s.state, now))
        if best is None or key < best[0]:
            best = (key, ticket.id)
    return None if best is None else best[1]


def picked(s: Scheduler, now: float):
    policy = s._policy_source()
    s.picker.mark_dirty(s._ledger.expire(now))
    s.picker.refresh(policy, s.state, now)
    # With the residency's version, as the scheduler calls it: cached model parts must follow
    # every change of where models are.
    choice = s.picker.best(policy, s.state, now, s.residency_model.eligible, s.oldest,
                            s.residency_model.version)
    return None if choice is None else choice[0].id


def random_policy(rng: random.Random) -> str:
    clamp = "clamp_min = 0" if rng.random() < 0.3 else ""
    return f"""
active = "r"
[backend]
max_parallel = {rng.randint(1, 4)}
num_parallel = {rng.randint(1, 2)}
[policies.r]
{clamp}
[policies.r.terms.vram]
loaded = {rng.randint(0, 50)}
fits = {rng.randint(0, 200)}
unknown_size = {rng.randint(0, 900)}
fits_when_empty = {str(rng.random() < 0.5).lower()}
swap = [{{ up_to_gb = 16, points = {rng.randint(0, 400)} }}]
swap_above = {rng.randint(0, 900)}
[policies.r.terms.fairness]
per_queued = {rng.uniform(0, 20):.3f}
per_recent = {rng.uniform(0, 5):.3f}
window = "{rng.choice(["5s", "30s", "2m"])}"
cap = {rng.randint(10, 300)}
[policies.r.terms.rate_penalty]
window = "{rng.choice(["3s", "20s"])}"
threshold = {rng.randint(0, 5)}
per_request = {rng.uniform(0, 30):.2f}
[policies.r.terms.class_offset]
offsets = {{ batch = {rng.randint(-50, 300)} }}
[policies.r.terms.backend_load]
points = {rng.randint(-100, 300)}
[policies.r.terms.aging]
per_second = {rng.choice([0.0, 0.5, 1.0, 3.0])}
whole_seconds = {str(rng.random() < 0.5).lower()}
{'max_wait = "' + str(rng.randint(5, 60)) + 's"' if rng.random() < 0.5 else ""}
"""


def replay(settings, seed: int, events: int = 150, reloads: bool = False) -> int:
    rng = random.Random(seed)
    clock = ManualClock(1000.0)
    s = Scheduler(settings, clock=clock)
    s.learn_tags(
        {"models": [{"name": m, "size": int(gb * GIB / 1.2)} for m, gb in MODELS.items() if gb]}
    )
    flying: list[str] = []
    checked = 0
    for n in range(events):
        roll = rng.random()
        if roll < 0.45:
            s.enqueue(
                request_id=f"r{n}",
                model=rng.choice(list(MODELS)),
                client=f"c{rng.randint(1, 8)}",
                cls=rng.choice(["interactive", "batch"]),
                variant=rng.choice(["", "", "num_ctx=8192"]),  # some force a reload
            )
        elif roll < 0.55 and s.depth:
            if reloads and rng.random() < 0.5:  # the head of a group: its key must move on
                s.cancel(rng.choice([q[0].id for q in s.picker._groups.values()]))
            else:
                s.cancel(rng.choice(list(s._waiting)))
        elif roll < 0.75 and flying:
            rid = flying.pop(rng.randrange(len(flying)))
            if rng.random() < 0.8:
                s.first_byte(rid)
            s.finish(rid)
        elif roll < 0.8:
            resident = [m for m in MODELS if MODELS[m] and rng.random() < 0.3]
            s.reconcile({"models": [{"name": m, "size": int(MODELS[m] * GIB)} for m in resident]})
        elif reloads and roll < 0.86:  # a hot reload: new weights, windows, limits
            new = random_policy(rng) if rng.random() < 0.5 else None
            s.apply_settings(
                load_policy_text(new.encode(), "reload.toml")
                if new
                else EXAMPLE.with_active(rng.choice(sorted(EXAMPLE.policies)))
            )
        elif reloads and roll < 0.9:
            s.record_history(f"c{rng.randint(1, 8)}", clock())
        clock.advance(rng.choice([0.0, 0.1, 0.5, 1.0, 2.5, 7.0]))
        now = clock()
        expected = brute_force(s, now)
        assert picked(s, now) == expected, f"seed {seed}, event {n}"
        checked += expected is not None
        if rng.random() < 0.5:
            flying.extend(g.ticket.id for g in s.dispatch())
    return checked


@pytest.mark.parametrize("policy", sorted(EXAMPLE.policies))
def test_matches_brute_force_for_example_policies(policy):
    """Under each example policy the picker agrees with scoring every waiting ticket."""
    settings = EXAMPLE.with_active(policy)
    assert sum(replay(settings, seed) for seed in range(3)) > 150


@pytest.mark.parametrize("seed", range(8))
def test_matches_brute_force_for_random_policies(seed):
    """Random weights, windows, clamps and max_wait: the bound never prunes the true winner."""
    rng = random.Random(seed)
    settings = load_policy_text(random_policy(rng).encode(), "random.toml")
    assert replay(settings, 100 + seed) > 30


@pytest.mark.parametrize("seed", range(6))
def test_matches_brute_force_across_reloads_and_head_cancels(seed):
    """Hot reloads mid-run (another policy, other windows and limits), cancelled group heads and
    recorded history: every key is rebuilt or stays a lower bound."""
    settings = EXAMPLE.with_active(sorted(EXAMPLE.policies)[seed % len(EXAMPLE.policies)])
    assert replay(settings, 200 + seed, events=300, reloads=True) > 30


@pytest.mark.parametrize(
    ("aging", "linear"),
    [
        ('[policies.r.terms.aging]\nper_second = 0.5\n[policies.r.terms.slow]\ntype = "aging"\nper_second = 0.25\n', True),
        ('[policies.r.terms.aging]\nper_second = 1.0\nwhole_seconds = true\n', False),
        ("", True),  # no wait term: the wait part is 0
    ],
)
def test_the_linear_wait_shortcut_is_the_wait_terms_own_sum(aging, linear):
    """The search totals a head with -slope × waited instead of calling the wait terms only when
    every wait term is exactly that (`Policy.linear_wait`): two linear terms add up, whole
    seconds do not qualify, no wait term is 0. Picks still match brute force."""
    text, _ = random_policy(random.Random(7)).split("[policies.r.terms.aging]", 1)
    settings = load_policy_text((text + aging).encode(), "linear.toml")
    policy = settings.policies["r"]
    assert policy.linear_wait is linear
    if linear:
        clock = ManualClock(1000.0)
        s = Scheduler(settings, clock=clock)
        s.enqueue(request_id="a", model="small:1b", client="c1", cls="interactive")
        for waited in (0.0, 0.3, 7.0, 61.5):
            clock.set(1000.0 + waited)
            wait = policy.partial("wait", s._waiting["a"], s.state, clock())
            assert wait == pytest.approx(-(policy.wait_slope * waited), abs=1e-9)
    assert replay(settings, 300, events=120) > 10


def test_equal_totals_go_to_the_older_ticket_on_an_epoch_like_clock():
    """Found in review: at a clock near 1.7e9 s (seconds since 1970, as a replay may use) a bound
    rounds by more than the fixed float slack, and the search stopped before an older ticket
    with the same total. The slack grows with slope × now."""
    text = """
active = "r"
[backend]
max_parallel = 2
[policies.r.terms.class_offset]
offsets = { batch = 7 }
[policies.r.terms.aging]
per_second = 1.0
[policies.r.terms.slow]
type = "aging"
per_second = 0.2
"""
    settings = load_policy_text(text.encode(), "t.toml")
    for seed in range(400):
        rng = random.Random(seed)
        clock = ManualClock(1.7e9)
        s = Scheduler(settings, clock=clock)
        for n in range(rng.randint(2, 8)):  # many equal arrivals: equal totals across runners
            s.enqueue(request_id=f"r{n}", model=rng.choice(["m1:1b", "m2:1b", "m3:1b"]),
                      client=f"c{rng.randint(1, 4)}", cls=rng.choice(["interactive", "batch"]))
            clock.advance(rng.choice([0.0, 0.0, 0.1, 1.0]))
        clock.advance(rng.choice([0.0, 0.3, 5.0, 1234.5]))
        assert picked(s, clock()) == brute_force(s, clock()), f"seed {seed}"


TWO_BACKENDS = """
[backends.gpu0]
url = "http://127.0.0.1:11434"
max_parallel = {p0}
vram_gb = 24.0
[backends.gpu1]
url = "http://127.0.0.1:11435"
max_parallel = {p1}
vram_gb = 48.0
"""


@pytest.mark.parametrize("seed", range(6))
def test_each_backends_pick_matches_brute_force_with_its_own_residency(seed):
    """With several backends the picker keeps model parts per backend and adds the backend's
    backend_load part to every total: each backend's pick is what scoring every waiting ticket
    against that backend's state gives."""
    rng = random.Random(seed)
    one, rest = random_policy(rng).split("[policies.r]\n", 1)
    backends = TWO_BACKENDS.format(p0=rng.randint(1, 3), p1=rng.randint(1, 3))
    text = one.split("[backend]")[0] + backends + "[policies.r]\n" + rest
    clock = ManualClock(1000.0)
    s = Scheduler(load_policy_text(text.encode(), "two.toml"), clock=clock)
    tags = {"models": [{"name": m, "size": int(gb * GIB / 1.2)} for m, gb in MODELS.items() if gb]}
    s.learn_tags(tags)
    flying: list[str] = []
    checked = 0
    for n in range(150):
        roll = rng.random()
        if roll < 0.5:
            s.enqueue(request_id=f"r{n}", model=rng.choice(list(MODELS)), client=f"c{rng.randint(1, 8)}",
                      cls=rng.choice(["interactive", "batch"]))
        elif roll < 0.6 and s.depth:
            s.cancel(rng.choice(list(s._waiting)))
        elif roll < 0.8 and flying:
            rid = flying.pop(rng.randrange(len(flying)))
            s.first_byte(rid)
            s.finish(rid)
        elif roll < 0.9:
            name = rng.choice(["gpu0", "gpu1"])
            resident = [m for m in MODELS if MODELS[m] and rng.random() < 0.3]
            s.reconcile({"models": [{"name": m, "size": int(MODELS[m] * GIB)} for m in resident]}, name)
        clock.advance(rng.choice([0.0, 0.5, 2.5, 7.0]))
        now = clock()
        policy = s._policy_source()
        s.picker.mark_dirty(s._ledger.expire(now))
        s.picker.refresh(policy, s.state, now)
        for node in s.backends.values():
            best = None
            for ticket in s._waiting.values():
                if node.residency.eligible(ticket.model, ticket.variant):
                    key = policy.order_key(ticket, policy.score(ticket, node.state, now))
                    if best is None or key < best[0]:
                        best = (key, ticket.id)
            choice = s.picker.best(policy, node.state, now, node.residency.eligible, s.oldest,
                                   node.residency.version, cache=node.name)
            assert (None if choice is None else choice[0].id) == (None if best is None else best[1]), (seed, n)
            checked += best is not None
        if rng.random() < 0.5:
            flying.extend(g.ticket.id for g in s.dispatch())
    assert checked > 30
