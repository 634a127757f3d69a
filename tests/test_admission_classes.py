"""Admission by class (engine/admission.py): each class its own queue bound and wait limit; a full
queue sheds the newest request of a less urgent class for a more urgent newcomer; a request that
could not be served within its class's wait limit is refused at once. In process against the
scheduler, then end to end through the sidecar in front of the emulator."""

from __future__ import annotations

import concurrent.futures
from typing import Any

import httpx
import pytest
from sidecar_fixtures import SidecarFactory, make_policy, wait_until

from engine.admission import Admitted, Refusal, admit, ahead_of
from engine.clock import ManualClock
from engine.scheduler import Scheduler
from policy.load import load_policy_text

CLASSES = """
[clients.classes.interactive]
[clients.classes.batch]
clients = ["ci-*"]

[limits]
max_queue = 6
max_queued_per_client = 6

[limits.classes.interactive]
max_queue = 4
queue_timeout = "20s"

[limits.classes.batch]
queue_timeout = "30m"
"""


def _scheduler(extra: str = CLASSES, max_parallel: int = 1) -> tuple[Any, Scheduler]:
    compiled = load_policy_text(make_policy(max_parallel=max_parallel, extra=extra).encode(), "p.toml")
    scheduler = Scheduler(compiled, clock=ManualClock(0.0))
    scheduler.pause()
    return compiled, scheduler


def _fill(scheduler: Scheduler, cls: str, n: int, prefix: str) -> None:
    for i in range(n):
        scheduler.enqueue(request_id=f"{prefix}{i}", model="llama3.2:1b", client=f"{prefix}-{i}", cls=cls)


def test_each_class_has_its_own_bound_and_timeout() -> None:
    compiled, s = _scheduler()
    _fill(s, "interactive", 4, "i")
    refused = admit(compiled, s, "someone", "interactive")
    assert isinstance(refused, Refusal) and (refused.status, refused.reason) == (503, "class_queue")
    assert refused.retry_after > 0 and "'interactive'" in refused.message
    assert admit(compiled, s, "ci-1", "batch") == Admitted()  # batch has room of its own
    assert compiled.limits.queue_timeout("interactive") == 20.0
    assert compiled.limits.queue_timeout("batch") == 1800.0
    assert compiled.limits.queue_timeout("other") == compiled.backend.queue_timeout


def test_a_full_queue_sheds_the_newest_batch_request_for_an_interactive_one() -> None:
    compiled, s = _scheduler()
    _fill(s, "batch", 5, "b")
    _fill(s, "interactive", 1, "i")  # six waiting: full
    assert isinstance(admit(compiled, s, "ci-x", "batch"), Refusal)  # batch cannot push batch out
    decided = admit(compiled, s, "alice", "interactive")
    assert decided == Admitted(shed="b4")  # the newest of the least urgent class
    # With no batch request left to give up, an interactive newcomer is refused like anyone.
    _, s2 = _scheduler()
    _fill(s2, "interactive", 4, "i")
    s2.enqueue(request_id="x", model="llama3.2:1b", client="x", cls="other")
    s2.enqueue(request_id="y", model="llama3.2:1b", client="y", cls="other")
    refused = admit(compiled, s2, "alice", "batch")
    assert isinstance(refused, Refusal) and refused.reason == "queue_full"


def test_a_request_that_could_not_be_served_in_time_is_told_at_once() -> None:
    """Interactive may wait 20 s; at 10 s a slot and one slot, two interactive requests ahead
    drain in time, three do not. Batch requests ahead do not count against interactive ones (they
    are less urgent), but interactive ones count against batch."""
    compiled, s = _scheduler(CLASSES.replace("max_queue = 6\nmax_queued_per_client = 6",
                                             "max_queue = 10\nmax_queued_per_client = 10"))
    _fill(s, "batch", 3, "b")
    _fill(s, "interactive", 2, "i")
    assert ahead_of(compiled, s, "interactive") == 2 and ahead_of(compiled, s, "batch") == 5
    assert admit(compiled, s, "alice", "interactive", slot_seconds=10.0) == Admitted()
    s.enqueue(request_id="i2", model="llama3.2:1b", client="i-2", cls="interactive")
    refused = admit(compiled, s, "alice", "interactive", slot_seconds=10.0)
    assert isinstance(refused, Refusal) and (refused.status, refused.reason) == (503, "drain")
    assert refused.retry_after == 10.0 and "about 30s" in refused.message
    assert admit(compiled, s, "ci-1", "batch", slot_seconds=10.0) == Admitted()  # 30 min to spare
    # No slot time measured yet: no estimate, no drain refusal.
    assert admit(compiled, s, "alice", "interactive", slot_seconds=None) == Admitted()


def test_the_measured_drain_counts_loads_and_more_urgent_arrivals() -> None:
    """Slot times alone miss the seconds a swap stalls every slot: the gap between completions
    while requests waited says how fast the queue really drains, and a more urgent class arriving
    meanwhile takes its share of that before a batch request's turn."""
    compiled, s = _scheduler(CLASSES.replace("max_queue = 6\nmax_queued_per_client = 6",
                                             "max_queue = 200\nmax_queued_per_client = 200"))
    _fill(s, "batch", 90, "b")  # 90 ahead of a new batch request, on one slot
    # 10 s per request on a free slot: 900 s, inside batch's 30 minutes.
    assert admit(compiled, s, "ci-1", "batch", slot_seconds=10.0) == Admitted()
    # But an answer has been ending only every 15 s: 1,350 s, still inside.
    assert admit(compiled, s, "ci-1", "batch", slot_seconds=10.0, gap_seconds=15.0) == Admitted()
    # People arrive every 30 s and go first: half of that drain is theirs, 2,700 s.
    refused = admit(compiled, s, "ci-1", "batch", slot_seconds=10.0, gap_seconds=15.0,
                    arrival_rates={"interactive": 1 / 30, "batch": 1.0})
    assert isinstance(refused, Refusal) and refused.reason == "drain" and "about 2700s" in refused.message
    # Batch arrivals are not more urgent than batch: they do not slow its drain.
    assert admit(compiled, s, "ci-1", "batch", slot_seconds=10.0, gap_seconds=15.0,
                 arrival_rates={"batch": 1.0}) == Admitted()


def test_the_requests_ahead_are_priced_each_by_its_own_model() -> None:
    """The answers measured so far are mostly the cheap ones the policy serves first (a loaded
    8B); what is left ahead may be a 32B that holds its slot ten times as long. The drain prices
    each waiting request by its model's own slot time, and scales the measured gap the same way."""
    compiled, s = _scheduler(CLASSES.replace("max_queue = 6\nmax_queued_per_client = 6",
                                             "max_queue = 200\nmax_queued_per_client = 200"))
    for i in range(30):
        s.enqueue(request_id=f"big{i}", model="qwq:32b", client=f"ci-{i}", cls="batch")
    slot = {"qwq:32b": 100.0, "llama3.2:1b": 10.0}
    # At the 10 s average, 30 ahead on one slot take 300 s: admitted.
    assert admit(compiled, s, "ci-x", "batch", slot_seconds=10.0) == Admitted()
    # Each at its own 100 s, 3,000 s: past batch's 30 minutes.
    refused = admit(compiled, s, "ci-x", "batch", slot_seconds=10.0, slot_of=lambda m: slot.get(m, 10.0))
    assert isinstance(refused, Refusal) and refused.reason == "drain" and "about 3000s" in refused.message
    # The gap measured on the cheap answers (12 s each, 1.2× their slot time) scales with it.
    refused = admit(compiled, s, "ci-x", "batch", slot_seconds=10.0, gap_seconds=12.0,
                    slot_of=lambda m: slot.get(m, 10.0))
    assert isinstance(refused, Refusal) and "about 3600s" in refused.message
    # Interactive requests are not behind batch work: their drain does not count it.
    assert admit(compiled, s, "alice", "interactive", slot_seconds=10.0,
                 slot_of=lambda m: slot.get(m, 10.0)) == Admitted()


def test_classes_not_listed_keep_the_old_rules() -> None:
    """A file with no [limits.classes] admits as before: a queue bound, a per-client cap, the
    rate windows; no drain estimate."""
    compiled, s = _scheduler(extra="[limits]\nmax_queue = 3\nmax_queued_per_client = 2\n")
    _fill(s, "interactive", 2, "i")
    assert admit(compiled, s, "alice", "interactive", slot_seconds=1000.0) == Admitted()
    s.enqueue(request_id="a1", model="llama3.2:1b", client="alice", cls="interactive")
    s.enqueue(request_id="a2", model="llama3.2:1b", client="bob", cls="interactive")
    refused = admit(compiled, s, "carol", "interactive")
    assert isinstance(refused, Refusal) and refused.reason == "queue_full"


def test_the_sidecar_sheds_a_batch_request_in_its_dialect_and_keeps_the_interactive_one(
    sidecar_factory: SidecarFactory, ollama_emulator: Any
) -> None:
    proxy = sidecar_factory(upstream=ollama_emulator.url, policy=make_policy(max_parallel=1, extra=CLASSES))
    proxy.admin("POST", "/proxy/pause")

    def ask(rid: str, client: str, path: str = "/api/generate") -> httpx.Response:
        body = {"model": "llama3.2:1b", "prompt": "hi", "stream": False}
        if path.startswith("/v1"):
            body = {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "hi"}]}
        return httpx.post(proxy.url + path, json=body, timeout=30,
                          headers={"x-request-id": rid, "x-client-id": client})

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        batch = []
        for n in range(5):  # one at a time: "the newest" must be b4
            batch.append(pool.submit(ask, f"b{n}", f"ci-{n}", "/v1/chat/completions"))
            proxy.wait_depth(n + 1)
        first = pool.submit(ask, "i0", "alice")
        proxy.wait_depth(6)
        second = pool.submit(ask, "i1", "bob")  # the queue is full: b4 gives up its place
        shed = batch[4].result()
        assert shed.status_code == 503 and "Retry-After" in shed.headers
        error = shed.json()["error"]  # OpenAI's shape: b4 asked on /v1
        assert error["type"] and "more urgent" in error["message"]
        proxy.wait_depth(6)
        late = ask("b5", "ci-5")  # batch cannot push batch out
        assert late.status_code == 503 and "queue is full" in late.json()["error"]
        proxy.admin("POST", "/proxy/resume")
        assert first.result().status_code == second.result().status_code == 200
        assert all(f.result().status_code == 200 for f in batch[:4])
    wait_until(lambda: len(proxy.journal.records) == 8, within=10, what="eight records")
    statuses = {r.client_request_id or r.request_id: (r.status, r.http_status) for r in proxy.journal.records}
    assert statuses["b4"] == ("rejected", 503) and statuses["b5"] == ("rejected", 503)
    assert statuses["i1"] == ("completed", 200)


def test_a_class_waits_no_longer_than_its_own_timeout(
    sidecar_factory: SidecarFactory, ollama_emulator: Any
) -> None:
    extra = CLASSES.replace('queue_timeout = "20s"', 'queue_timeout = "500ms"')
    proxy = sidecar_factory(upstream=ollama_emulator.url, policy=make_policy(
        max_parallel=1, queue_timeout="30s", extra=extra))
    proxy.admin("POST", "/proxy/pause")
    answer = httpx.post(proxy.url + "/api/generate", timeout=30,
                        json={"model": "llama3.2:1b", "prompt": "hi", "stream": False})
    assert answer.status_code == 504 and "0.5s" in answer.json()["error"]
    proxy.admin("POST", "/proxy/resume")


def test_a_class_may_have_its_own_max_wait() -> None:
    """aging's max_wait_by_class: a batch request may wait its half hour without being marked
    overdue (and jumping ahead of people) after the interactive five minutes."""
    terms = ('[policies.test.terms.aging]\nper_second = 0\nmax_wait = "5s"\n'
             'max_wait_by_class = { batch = "60s" }\n')
    text = make_policy(max_parallel=1, terms=terms, extra=CLASSES)
    compiled = load_policy_text(text.encode(), "p.toml")
    policy = compiled.active
    assert policy.wait_limit("batch") == 60.0 and policy.wait_limit("interactive") == 5.0
    assert policy.first_overdue == 5.0
    clock = ManualClock(0.0)
    s = Scheduler(compiled, clock=clock)
    s.pause()
    s.enqueue(request_id="old-batch", model="llama3.2:1b", client="ci-1", cls="batch")
    clock.advance(1.0)
    s.enqueue(request_id="people", model="llama3.2:1b", client="alice", cls="interactive")
    clock.advance(10.0)  # both past 5 s; only the interactive one is overdue
    s.resume()
    assert [g.ticket.id for g in s.dispatch()] == ["people"]
    assert policy.overdue(s.waiting()[0].ticket, clock()) is False
    clock.advance(60.0)
    assert s.waiting()[0].score.overdue


def test_an_unknown_class_in_max_wait_by_class_is_an_error() -> None:
    from policy.errors import PolicyError

    terms = '[policies.test.terms.aging]\nmax_wait_by_class = { nightly = "1h" }\n'
    with pytest.raises(PolicyError) as caught:
        load_policy_text(make_policy(terms=terms, extra=CLASSES).encode(), "p.toml")
    assert "policies.test.terms.aging.max_wait_by_class.nightly" in str(caught.value)
    assert "not a class defined" in str(caught.value)


@pytest.mark.anyio
async def test_shedding_gives_up_no_place_for_a_request_that_will_be_refused() -> None:
    """check_limits: a newcomer whose X-Request-Id is in use is refused (400) before a batch
    request gives up its place; a victim that left meanwhile means no room (503), not an
    overfull queue; an unlisted class with a longer timeout may be shed too."""
    from engine.eta import ServiceTimes
    from server.http.dialects import ProxyError
    from server.proxy.intake import check_limits
    from server.runtime.dispatcher import Dispatcher

    extra = CLASSES + '[clients.classes.nightly]\nclients = ["night-*"]\n'
    compiled = load_policy_text(make_policy(max_parallel=1, queue_timeout="1h", extra=extra).encode(), "p.toml")
    scheduler = Scheduler(compiled, clock=ManualClock(0.0))
    dispatcher = Dispatcher(scheduler, on_grant=lambda grant: None)
    dispatcher.pause()
    waiting = {}
    for i in range(5):
        _, waiting[f"b{i}"] = dispatcher.submit(request_id=f"b{i}", model="llama3.2:1b",
                                                client=f"ci-{i}", cls="batch", endpoint="/api/chat")
    _, waiting["n0"] = dispatcher.submit(request_id="n0", model="llama3.2:1b", client="night-0",
                                         cls="nightly", endpoint="/api/chat")
    times = ServiceTimes()

    def check(rid: str) -> None:
        check_limits(compiled, dispatcher, times, "alice", "interactive", "llama3.2:1b",
                     stopping=False, request_id=rid)

    with pytest.raises(ProxyError) as dup:
        check("b0")  # in use: refused before anyone is shed
    assert dup.value.status == 400 and scheduler.depth == 6
    check("fresh")  # the newest of the least urgent class gives up its place: nightly (1h)
    assert waiting["n0"].done() and scheduler.depth == 5
    assert isinstance(waiting["n0"].exception(), Exception)
    dispatcher.submit(request_id="i0", model="llama3.2:1b", client="alice", cls="interactive",
                      endpoint="/api/chat")
    waiting["b4"].cancel()  # its client's wait was cut; the ticket is not released yet
    with pytest.raises(ProxyError) as gone:
        check("fresh2")
    assert gone.value.status == 503 and gone.value.retry_after == 10
    for fut in waiting.values():
        if not fut.done():
            fut.cancel()


def test_the_overdue_walk_steps_over_no_batch_ticket_that_is_not_overdue() -> None:
    """A thousand batch tickets between the interactive and the batch max_wait, then one person
    past theirs: the pick walks each class's own oldest, so it finds the person without stepping
    over the thousand (one walk over all arrivals did, on every pick)."""
    terms = ('[policies.test.terms.aging]\nper_second = 0\nmax_wait = "5s"\n'
             'max_wait_by_class = { batch = "60s" }\n')
    compiled = load_policy_text(make_policy(max_parallel=1, terms=terms, extra=CLASSES.replace(
        "max_queue = 6\nmax_queued_per_client = 6", "max_queue = 2000\nmax_queued_per_client = 2000")
    ).encode(), "p.toml")
    clock = ManualClock(0.0)
    s = Scheduler(compiled, clock=clock)
    s.pause()
    for i in range(1000):
        s.enqueue(request_id=f"b{i}", model="llama3.2:1b", client=f"ci-{i}", cls="batch")
    clock.advance(1.0)
    s.enqueue(request_id="person", model="llama3.2:1b", client="alice", cls="interactive")
    clock.advance(10.0)  # the person is overdue (5 s); no batch ticket is (60 s)
    seen = []
    walk = s.oldest

    def counted(cls: str | None = None) -> Any:
        for ticket in walk(cls):
            seen.append(ticket.id)
            yield ticket

    s.oldest = counted  # type: ignore[method-assign]
    s.resume()
    assert [g.ticket.id for g in s.dispatch()] == ["person"]
    assert len(seen) <= 3, len(seen)
