"""The live event stream (GET /proxy/events) end to end: what a scripted run publishes and in what
order, reconnecting with Last-Event-ID, a reset when the ring has moved on, cleanup on disconnect,
and the ring and subscriber bounds that keep a slow dashboard from holding dispatch back."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from typing import Any

import httpx
import pytest
from sidecar_fixtures import SidecarFactory, make_policy, wait_until
from sse import EventReader

from schemas.events import Enqueued, Heartbeat
from server.runtime.events import EventBus, frame

MODEL_A, MODEL_B = "llama3.2:1b", "llama3.2:3b"


def _generate(proxy: Any, rid: str, client: str, model: str) -> httpx.Response:
    return httpx.post(
        proxy.url + "/api/generate", json={"model": model, "prompt": "hi", "stream": False},
        headers={"x-request-id": rid, "x-client-id": client}, timeout=30,
    )


def test_a_scripted_run_publishes_every_step_in_order(
    sidecar_factory: SidecarFactory, ollama_emulator: Any
) -> None:
    proxy = sidecar_factory(upstream=ollama_emulator.url, policy=make_policy(max_parallel=1))
    stream = EventReader(proxy.url + "/proxy/events")
    assert stream.status == 200 and stream.content_type.startswith("text/event-stream")
    try:
        proxy.admin("POST", "/proxy/pause")
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            first = pool.submit(_generate, proxy, "r1", "alice", MODEL_A)
            proxy.wait_depth(1)
            second = pool.submit(_generate, proxy, "r2", "bob", MODEL_B)
            proxy.wait_depth(2)
            proxy.admin("POST", "/proxy/resume")
            assert first.result().status_code == 200 and second.result().status_code == 200
        seen, _ = stream.until("complete", request_id="r2")
        steps = [(e.type, e.data.get("request_id")) for e in seen if e.type != "residency"]
        assert steps == [
            ("pause", None), ("enqueue", "r1"), ("enqueue", "r2"), ("resume", None),
            ("dispatch", "r1"), ("first_byte", "r1"), ("complete", "r1"),
            ("dispatch", "r2"), ("first_byte", "r2"), ("complete", "r2"),
        ]
        ids = [e.id for e in seen]
        assert all(isinstance(i, int) for i in ids) and ids == sorted(ids)
        assert len(set(ids)) == len(ids)
        by = {(e.type, e.data.get("request_id")): e.data for e in seen}
        dispatch = by[("dispatch", "r1")]
        assert dispatch["client"] == "alice" and dispatch["model"] == MODEL_A
        assert set(dispatch["terms"]) == {"vram", "fairness"}
        assert dispatch["score"] == pytest.approx(sum(dispatch["terms"].values()))
        assert dispatch["action"] in ("load", "attach") and dispatch["depth"] == 2
        done = by[("complete", "r1")]
        assert done["status"] == "completed" and done["http_status"] == 200
        assert done["eval_count"] > 0 and done["wait_ms"] >= 0
        assert by[("enqueue", "r2")]["depth"] == 2
        # The emulator's /api/ps now lists what was loaded: a residency event says so.
        _, residency = stream.until("residency")
        assert {m["name"] for m in residency.data["models"]} & {MODEL_A, MODEL_B}
        # A refusal is an event too, with the reason.
        refused = httpx.post(proxy.url + "/api/generate", content=b"{not json", timeout=10)
        assert refused.status_code == 400
        _, reject = stream.until("reject")
        assert reject.data["http_status"] == 400 and reject.data["error"]
    finally:
        stream.close()


def test_a_policy_reload_is_an_event_ok_or_not(
    sidecar_factory: SidecarFactory, ollama_emulator: Any
) -> None:
    proxy = sidecar_factory(upstream=ollama_emulator.url)
    stream = EventReader(proxy.url + "/proxy/events")
    try:
        proxy.policy_path.write_text(make_policy(max_parallel=3), encoding="utf-8")
        assert proxy.admin("POST", "/proxy/policy/reload").status_code == 200
        _, good = stream.until("reload")
        assert good.data["ok"] is True and good.data["changed"] is True and good.data["error"] is None
        proxy.policy_path.write_text("active = 'nope'\n[backend\n", encoding="utf-8")
        assert proxy.admin("POST", "/proxy/policy/reload").status_code == 422
        _, bad = stream.until("reload", ok=False)
        assert "not valid TOML" in bad.data["error"], bad.data  # the loader's own message
        assert bad.data["version"] == good.data["version"]  # the good file stays in force
    finally:
        stream.close()


def test_reconnect_with_last_event_id_gets_what_it_missed(
    sidecar_factory: SidecarFactory, ollama_emulator: Any
) -> None:
    proxy = sidecar_factory(upstream=ollama_emulator.url)
    for n in range(3):
        assert _generate(proxy, f"q{n}", "carol", MODEL_A).status_code == 200
    overview = proxy.admin("GET", "/proxy/overview").json()
    start = overview["last_event_id"]
    wait_until(lambda: proxy.call(lambda: proxy.sidecar.events.last_id) >= start,
               within=5, what="events")
    # What happened after the snapshot is replayed, then the stream carries on live.
    assert _generate(proxy, "after", "carol", MODEL_A).status_code == 200
    stream = EventReader(proxy.url + "/proxy/events", headers={"last-event-id": str(start)})
    try:
        seen, _ = stream.until("complete", request_id="after")
        assert seen[0].id == start + 1  # nothing between the snapshot and the stream is missed
        steps = [(e.type, e.data["request_id"]) for e in seen if e.type != "residency"]
        assert steps[0] == ("enqueue", "after")
        assert _generate(proxy, "live", "carol", MODEL_A).status_code == 200
        stream.until("complete", request_id="live")
    finally:
        stream.close()
    # ?last_event_id= (where a web page starts) works the same; the header wins when both come.
    by_query = EventReader(f"{proxy.url}/proxy/events?last_event_id={start}")
    try:
        assert by_query.next().id == start + 1  # type: ignore[union-attr]
    finally:
        by_query.close()


def test_an_id_the_ring_no_longer_holds_gets_a_reset(
    sidecar_factory: SidecarFactory, ollama_emulator: Any
) -> None:
    proxy = sidecar_factory(upstream=ollama_emulator.url)
    for last in ("1", "99999999999999999", "not-a-number"):
        stream = EventReader(proxy.url + "/proxy/events", headers={"last-event-id": last})
        try:
            event = stream.next()
            assert event is not None and event.type == "reset" and event.id is None
            assert event.data["reason"]
        finally:
            stream.close()
    bad = httpx.get(proxy.url + "/proxy/events?last_event_id=x1", timeout=10)
    assert bad.status_code == 400 and "last_event_id" in bad.json()["error"]


def test_a_client_that_leaves_is_unsubscribed(
    sidecar_factory: SidecarFactory, ollama_emulator: Any
) -> None:
    proxy = sidecar_factory(upstream=ollama_emulator.url)
    streams = [EventReader(proxy.url + "/proxy/events") for _ in range(3)]
    wait_until(lambda: proxy.call(lambda: proxy.sidecar.events.subscribers) == 3,
               within=5, what="three subscribers")
    for stream in streams:
        stream.close()
    # The next event (or the disconnect itself) ends each stream's task and removes it.
    _generate(proxy, "poke", "dave", MODEL_A)
    wait_until(lambda: proxy.call(lambda: proxy.sidecar.events.subscribers) == 0,
               within=10, what="no subscriber left")
    assert proxy.admin("GET", "/proxy/overview").json()["event_subscribers"] == 0


def test_heartbeats_carry_the_charts_figures(
    sidecar_factory: SidecarFactory, ollama_emulator: Any
) -> None:
    proxy = sidecar_factory(upstream=ollama_emulator.url, heartbeat_interval=0.2)
    stream = EventReader(proxy.url + "/proxy/events")
    try:
        deadline = time.monotonic() + 10
        beat = stream.next(skip_heartbeats=False)
        while beat is not None and beat.type != "heartbeat":
            assert time.monotonic() < deadline
            beat = stream.next(skip_heartbeats=False)
        assert beat is not None and beat.id is None  # not numbered, not replayed
        assert {"depth", "in_flight", "max_parallel", "paused", "loads", "wait_p50_s"} <= set(beat.data)
    finally:
        stream.close()
    series = proxy.admin("GET", "/proxy/overview").json()["series"]
    assert series and series[-1]["type"] == "heartbeat"


# -- the bus's bounds, without HTTP ------------------------------------------------------------


def _beat() -> Heartbeat:
    return Heartbeat(at=0.0, depth=0, in_flight=0, max_parallel=1, paused=False)


def _enqueued(n: int) -> Enqueued:
    return Enqueued(at=float(n), request_id=f"r{n}", client="c", model="m", request_class="x",
                    endpoint="/api/chat", depth=1)


@pytest.mark.anyio
async def test_a_subscriber_that_stops_reading_is_dropped_not_waited_for() -> None:
    bus = EventBus(heartbeat=_beat, subscriber_limit=10)
    stalled, _ = bus.subscribe(None)
    reading, _ = bus.subscribe(None)
    for n in range(25):  # publish never awaits: a stalled reader cannot slow it down
        bus.publish(_enqueued(n))
        if n % 5 == 0:
            assert len(await reading.next()) >= 1
    assert stalled.dropped and not reading.dropped and bus.dropped == 1
    assert await stalled.next() == []  # what its stream sees: the end (after a `dropped` event)
    assert b"event: dropped" in bus.dropped_frame(1.0)


@pytest.mark.anyio
async def test_the_ring_is_bounded_and_replays_only_what_it_holds() -> None:
    bus = EventBus(heartbeat=_beat, ring_size=5)
    for n in range(12):
        bus.publish(_enqueued(n))
    kept = list(bus.kept())
    assert len(kept) == 5 and kept[-1].id == bus.last_id
    _, backlog = bus.subscribe(str(bus.last_id - 2))
    assert backlog == [frame(e) for e in kept[-2:]]
    _, too_old = bus.subscribe(str(kept[0].id - 5))
    assert len(too_old) == 1 and b"event: reset" in too_old[0]
    _, current = bus.subscribe(str(bus.last_id))
    assert current == []


@pytest.mark.anyio
async def test_stopping_ends_every_stream_and_refuses_new_ones() -> None:
    bus = EventBus(heartbeat=_beat, interval=0.01)
    bus.start()
    sub, _ = bus.subscribe(None)
    await asyncio.sleep(0.05)  # a few heartbeats went out
    assert await sub.next()
    await bus.stop()
    assert bus.closed and await sub.next() == []
    from server.runtime.events import StreamRefused

    with pytest.raises(StreamRefused):
        bus.subscribe(None)


@pytest.mark.anyio
async def test_a_stream_whose_connection_stopped_draining_is_cut_and_unsubscribed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client that stops reading blocks the server's send once the socket buffers are full; the
    stream gives up after SEND_TIMEOUT and unsubscribes, instead of holding one of the 64 stream
    slots forever. Played on the ASGI interface with a send that never completes."""
    from server.admin import live

    monkeypatch.setattr(live, "SEND_TIMEOUT", 0.2)
    bus = EventBus(heartbeat=_beat)
    sub, backlog = bus.subscribe(None)
    stream = live.EventStream(bus, sub, backlog, lambda: True)
    sent: list[dict[str, Any]] = []
    stuck = asyncio.Event()

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if len(sent) >= 3:  # headers and the first body went out; then the buffers are full
            stuck.set()
            await asyncio.Event().wait()

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()  # the client never says it left
        return {"type": "http.disconnect"}

    task = asyncio.create_task(stream({"type": "http"}, receive, send))  # type: ignore[arg-type]
    bus.publish(_enqueued(1))
    await asyncio.wait_for(stuck.wait(), 5)
    await asyncio.wait_for(task, 5)  # it ends by itself
    assert bus.subscribers == 0


@pytest.mark.anyio
async def test_a_stream_ends_when_its_caller_is_no_longer_admin() -> None:
    bus = EventBus(heartbeat=_beat)
    sub, backlog = bus.subscribe(None)
    allowed = [True]
    from server.admin import live

    stream = live.EventStream(bus, sub, backlog, lambda: allowed[0])
    sent: list[dict[str, Any]] = []
    three = asyncio.Event()

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if len(sent) == 3:
            three.set()

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    task = asyncio.create_task(stream({"type": "http"}, receive, send))  # type: ignore[arg-type]
    bus.publish(_enqueued(1))
    await asyncio.wait_for(three.wait(), 5)  # headers, the retry line, the enqueue event
    assert b"enqueue" in sent[2]["body"] and sent[2]["more_body"]
    allowed[0] = False
    bus.publish(_enqueued(2))
    await asyncio.wait_for(task, 5)
    assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    assert bus.subscribers == 0


def test_the_overview_is_shared_and_lists_the_head_of_a_long_queue() -> None:
    """However many dashboards ask, the whole queue is scored at most once per 250 ms; a long
    queue is listed up to OVERVIEW_ROWS (its depth still counts every request)."""
    from engine.clock import ManualClock
    from engine.scheduler import Scheduler
    from policy.load import load_policy_file
    from schemas.proxy_api import PolicyInfo
    from server.admin import live, views
    from server.runtime.queue_ids import QueueIds

    taken: list[float] = []
    now = [100.0]
    shared = live.SharedSnapshot(max_age=0.25, clock=lambda: now[0])

    def take() -> Any:
        taken.append(now[0])
        return {"n": len(taken)}

    assert shared.get(take) == shared.get(take) == b'{"n":1}'
    now[0] += 0.2
    assert shared.get(take) == b'{"n":1}'  # still fresh
    now[0] += 0.1
    assert shared.get(take) == b'{"n":2}' and len(taken) == 2

    clock = ManualClock(0.0)
    scheduler = Scheduler(load_policy_file("policies.example.toml"), clock=clock)
    scheduler.pause()
    for n in range(live.OVERVIEW_ROWS + 50):
        scheduler.enqueue(request_id=f"t{n}", model="llama3.2:1b", client=f"c{n % 7}", cls="interactive")
    view = views.queue_view(scheduler, QueueIds(), PolicyInfo(name="p", version="v"), clock(),
                            limit=live.OVERVIEW_ROWS)
    assert view.depth == live.OVERVIEW_ROWS + 50 and len(view.waiting) == live.OVERVIEW_ROWS
    everything = views.queue_view(scheduler, QueueIds(), PolicyInfo(name="p", version="v"), clock())
    assert [w.request_id for w in everything.waiting[:live.OVERVIEW_ROWS]] == [
        w.request_id for w in view.waiting]


def test_a_request_sent_again_counts_one_wait_and_both_dispatches() -> None:
    """After a refused connection a request is dispatched twice (`again` on the second): the
    heartbeat counts both dispatches, the wait figures its first wait only."""
    from schemas.events import Dispatched
    from server.runtime.live_stats import LiveStats

    stats = LiveStats()
    common = dict(at=1.0, request_id="r1", client="c", model=MODEL_A, request_class="interactive",
                  score=0.0, terms={}, resident=True, action="attach", evicts=[], depth=1)
    stats(Dispatched(**common, waited_s=2.0, backend="gpu0"))
    stats(Dispatched(**common, waited_s=2.5, backend="gpu1", again=True))
    beat = stats.heartbeat(at=2.0, depth=0, in_flight=1, max_parallel=2, paused=False)
    assert (beat.dispatches, beat.wait_p50_s, beat.wait_max_s) == (2, 2.0, 2.0)
