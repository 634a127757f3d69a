"""The fair_share term and its service account (engine/service.py): clients are charged by the
service they get (tokens or GPU seconds), not by how many requests they send; the charge is made
at grant and corrected at the end; a client coming back is lifted to the floor; service decays
with a half-life. Played on the real scheduler with a manual clock."""

from __future__ import annotations

from collections import defaultdict

import pytest
from sidecar_fixtures import make_policy

from engine.clock import ManualClock
from engine.scheduler import Scheduler
from engine.service import ServiceAccount, ServiceSettings, Usage
from policy.errors import PolicyError
from policy.load import load_policy_text

FAIR_SHARE = """
[policies.test.terms.fair_share]
per_unit = 0.01
half_life = "10m"
cap = 10000
"""
MODEL = "llama3.2:1b"


def _scheduler(terms: str) -> tuple[Scheduler, ManualClock]:
    compiled = load_policy_text(make_policy(max_parallel=1, terms=terms).encode(), "p.toml")
    clock = ManualClock(0.0)
    return Scheduler(compiled, clock=clock), clock


def _served(terms: str, seconds: float = 1800.0) -> dict[str, float]:
    """Two backlogged clients with equal request rates, one asking for 10× the tokens; one slot;
    a request holds it a second per 100 tokens. Service (tokens) each got in the last 20 min."""
    s, clock = _scheduler(terms)
    output = {"heavy": 2000, "light": 200}
    n = 0
    for _ in range(40):  # both keep a deep backlog
        for client in output:
            n += 1
            s.enqueue(request_id=f"{client}-{n}", model=MODEL, client=client, cls="interactive")
    served: dict[str, float] = defaultdict(float)
    while clock() < seconds:
        (grant,) = s.dispatch()
        client = grant.ticket.client
        tokens = output[client]
        clock.advance(tokens / 100)
        s.finish(grant.ticket.id, Usage(input_tokens=0, output_tokens=tokens))
        if clock() > seconds - 1200:
            served[client] += 2 * tokens
        n += 1
        s.enqueue(request_id=f"{client}-{n}", model=MODEL, client=client, cls="interactive")
    return served


def test_service_stays_within_twice_between_backlogged_clients() -> None:
    """VTC's bound: by service, the heavy client gets at most about twice the light one's (here
    about equal); by request counts (fifo) it gets ten times as much."""
    fair = _served(FAIR_SHARE)
    fifo = _served("[policies.test]\n")
    assert fair["heavy"] / fair["light"] < 2.0
    assert fifo["heavy"] / fifo["light"] > 8.0


def test_the_estimate_is_charged_at_grant_so_a_burst_cannot_front_load() -> None:
    """Four slots, one client with a burst and another with one request arriving later: after
    the burst's first grant its client is charged, so the other client goes next even though
    nothing has finished."""
    four = '[models]\n"llama3.2:1b" = { num_parallel = 4 }\n'
    compiled = load_policy_text(make_policy(max_parallel=4, terms=FAIR_SHARE, extra=four).encode(), "p.toml")
    clock = ManualClock(0.0)
    s = Scheduler(compiled, clock=clock)
    s.pause()
    for i in range(3):
        s.enqueue(request_id=f"burst-{i}", model=MODEL, client="burst", cls="interactive")
    s.enqueue(request_id="quiet-0", model=MODEL, client="quiet", cls="interactive")
    s.resume()
    order = [g.ticket.id for g in s.dispatch()]
    assert order.index("quiet-0") == 1  # right after the burst's first, not after all three
    assert s.service.value("burst") == pytest.approx(3 * 500)  # the prior, three times


def test_a_client_coming_back_is_lifted_to_the_floor() -> None:
    account = ServiceAccount(ServiceSettings(half_life=600.0))
    account.charge("a1", "busy")
    account.settle("a1", Usage(output_tokens=5000))
    account.tick(60.0, ["busy"])  # an epoch: the floor is the least-served waiting client
    assert account.floor == pytest.approx(account.value("busy"))
    account.activated("newcomer")
    assert account.value("newcomer") == pytest.approx(account.floor)
    assert account.lead("newcomer") == 0.0 and account.lead("busy") == 0.0


def test_service_decays_with_the_half_life() -> None:
    account = ServiceAccount(ServiceSettings(half_life=600.0))
    account.charge("r", "c")
    account.settle("r", Usage(input_tokens=1000, output_tokens=500))  # 1000 + 2 × 500
    assert account.value("c") == pytest.approx(2000)
    account.tick(600.0, [])
    assert account.value("c") == pytest.approx(1000)
    gpu = ServiceAccount(ServiceSettings(unit="gpu_seconds"))
    gpu.charge("r", "c")
    gpu.settle("r", Usage.from_counters({"eval_duration": 2_000_000_000, "load_duration": 500_000_000,
                                         "prompt_eval_duration": 500_000_000, "eval_count": 99}))
    assert gpu.value("c") == pytest.approx(3.0)


def test_a_request_that_reports_nothing_keeps_its_estimate() -> None:
    account = ServiceAccount(ServiceSettings(prior=300.0))
    account.charge("r", "c")
    assert account.settle("r", None) is None and account.value("c") == 300.0
    assert account.settle("r", Usage(output_tokens=1)) is None  # settled once only


def test_a_half_life_of_zero_is_an_error() -> None:
    terms = FAIR_SHARE.replace('half_life = "10m"', "half_life = 0")
    with pytest.raises(PolicyError) as caught:
        load_policy_text(make_policy(terms=terms).encode(), "p.toml")
    assert "policies.test.terms.fair_share.half_life" in str(caught.value)
    assert "must be above 0" in str(caught.value)


RESERVE = """
[clients.classes.interactive]
[clients.classes.batch]
clients = ["ci-*"]
"""


def _with_reserve(text: str) -> str:
    return text.replace("[policies.test.terms.vram]",
                        "[policies.test]\nreserve = { interactive = 1 }\n\n[policies.test.terms.vram]", 1)


def test_a_reserved_slot_waits_for_its_class() -> None:
    """reserve = { interactive = 1 } with two slots: batch work takes one, never both; an
    interactive request arriving later starts at once."""
    text = _with_reserve(make_policy(
        max_parallel=2, extra=RESERVE + '[models]\n"llama3.2:1b" = { num_parallel = 4 }\n'))
    compiled = load_policy_text(text.encode(), "p.toml")
    assert compiled.active.reserve == {"interactive": 1}
    s = Scheduler(compiled, clock=ManualClock(0.0))
    for i in range(3):
        s.enqueue(request_id=f"b{i}", model=MODEL, client=f"ci-{i}", cls="batch")
    assert [g.ticket.id for g in s.dispatch()] == ["b0"]
    reasons = {r.ticket.id: r for r in s.waiting()}
    assert not reasons["b1"].eligible and "kept for interactive" in (reasons["b1"].reason or "")
    s.enqueue(request_id="i0", model=MODEL, client="alice", cls="interactive")
    assert [g.ticket.id for g in s.dispatch()] == ["i0"]
    s.finish("i0")
    assert s.dispatch() == []  # the slot is kept again
    s.finish("b0")
    assert [g.ticket.id for g in s.dispatch()] == ["b1"]


def test_a_reserve_that_leaves_no_slot_is_an_error() -> None:
    text = _with_reserve(make_policy(max_parallel=1, extra=RESERVE))
    with pytest.raises(PolicyError) as caught:
        load_policy_text(text.encode(), "p.toml")
    assert "policies.test.reserve" in str(caught.value) and "leave at least one" in str(caught.value)


def test_a_reload_to_a_longer_half_life_never_grows_a_counter() -> None:
    account = ServiceAccount(ServiceSettings(half_life=600.0))
    account.tick(100_000.0, [])
    account.charge("r", "c")
    account.settle("r", Usage(output_tokens=500))
    before = account.value("c")
    account.configure(ServiceSettings(half_life=1200.0))
    account.tick(100_100.0, ["c"])
    assert 0 < account.value("c") <= before
    account.configure(ServiceSettings(half_life=1200.0, unit="gpu_seconds"))  # another unit
    assert account.value("c") == 0.0


def test_gpu_seconds_without_durations_keep_the_estimate() -> None:
    """The OpenAI and Anthropic routes report tokens only: an answer with no durations must not
    count as free service."""
    account = ServiceAccount(ServiceSettings(unit="gpu_seconds", prior=2.0))
    account.charge("r", "c")
    assert account.settle("r", Usage(input_tokens=10, output_tokens=10)) is None
    assert account.value("c") == 2.0


def test_batch_work_kept_out_of_the_free_slot_holds_no_swap_back() -> None:
    """reserve = { interactive = 1 }, two slots: b0 runs on x, b1-b3 wait for x, i0 wants y,
    which would evict x. b1-b3 cannot take the free slot, so they must not hold i0's swap back."""
    text = _with_reserve(make_policy(max_parallel=2, vram_gb=8, extra=RESERVE))
    s = Scheduler(load_policy_text(text.encode(), "p.toml"), clock=ManualClock(0.0))
    s.reconcile({"models": [{"name": "x:7b", "size": 5 * 2**30}]})
    s.learn_tags({"models": [{"name": "y:7b", "size": 5 * 10**9}]})
    s.enqueue(request_id="b0", model="x:7b", client="ci-0", cls="batch")
    assert [g.ticket.id for g in s.dispatch()] == ["b0"]
    for i in range(1, 4):
        s.enqueue(request_id=f"b{i}", model="x:7b", client=f"ci-{i}", cls="batch")
    s.enqueue(request_id="i0", model="y:7b", client="alice", cls="interactive")
    assert [g.ticket.id for g in s.dispatch()] == ["i0"]


def test_a_gpu_seconds_policy_starts_from_a_prior_in_seconds() -> None:
    terms = FAIR_SHARE.replace('half_life = "10m"', 'half_life = "10m"\nunit = "gpu_seconds"')
    s, _ = _scheduler(terms)
    assert s.service.settings.unit == "gpu_seconds" and s.service.settings.prior == 10.0
