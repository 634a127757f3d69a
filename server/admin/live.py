"""The dashboards' routes: the live event stream, one snapshot of everything they show, one
request's detail, and the queue administration (clear the queue, cancel a request). All admin.

    GET    /proxy/events                 Server-Sent Events (schemas/events.py)
    GET    /proxy/overview               health, queue with score terms, residency, figures
    GET    /proxy/requests/{id}          live state and the journal's record
    POST   /proxy/requests/{id}/cancel   a waiting or running request, answered in its dialect
    DELETE /proxy/queue                  every waiting request, each answered 503
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from schemas.events import Dispatched, QueueCleared
from schemas.overview import Overview, RequestDetail
from schemas.proxy_api import (
    BackendHealth,
    CancelOutcome,
    Health,
    QueueClearOutcome,
    UpstreamHealth,
)
from server.admin import views
from server.admin.guard import admin_only, json_response
from server.http.dialects import error_response
from server.http.query_params import BadValue, Param, takes
from server.journal import StoreUnavailable
from server.runtime.events import EventBus, StreamRefused, Subscriber
from server.runtime.queue_ids import QueueIds
from server.sidecar import Sidecar, sidecar_of

RECENT_DISPATCHES = 30
OVERVIEW_ROWS = 200  # waiting requests a snapshot lists (queue.depth counts them all)
RETRY_MS = 3000  # how soon an EventSource reconnects after the stream ends


SEND_TIMEOUT = 15.0  # a client whose connection takes no byte for this long is cut


class EventStream(Response):
    """One open `GET /proxy/events`: the backlog, then every event as it is published, until the
    client leaves, falls too far behind (a `dropped` event, then the end), stops reading for
    SEND_TIMEOUT, is no longer admin (its session ended, checked with every batch and so at least
    every heartbeat) or the sidecar stops."""

    def __init__(
        self, bus: EventBus, subscriber: Subscriber, backlog: list[bytes],
        still_admin: Callable[[], bool],
    ) -> None:
        super().__init__(media_type="text/event-stream")
        self.bus, self.sub, self.backlog = bus, subscriber, backlog
        self.still_admin = still_admin

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gone = asyncio.create_task(_until_disconnect(receive))
        batch: asyncio.Task[list[bytes]] | None = None
        try:
            await send({
                "type": "http.response.start", "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-store"),
                    (b"x-accel-buffering", b"no"),  # nginx in front must not buffer the stream
                ],
            })
            first = b"retry: %d\n\n" % RETRY_MS + b"".join(self.backlog)
            async with asyncio.timeout(SEND_TIMEOUT):
                await send({"type": "http.response.body", "body": first, "more_body": True})
            while True:
                batch = asyncio.create_task(self.sub.next())
                await asyncio.wait({batch, gone}, return_when=asyncio.FIRST_COMPLETED)
                if gone.done():
                    return
                frames, ending = batch.result(), False
                if not self.still_admin():  # logged out, session expired, key changed
                    frames, ending = [], True
                elif not frames:  # dropped for falling behind, or the sidecar is stopping
                    frames = [] if self.bus.closed else [self.bus.dropped_frame(time.time())]
                    ending = True
                # A connection that stopped draining blocks the send: past the timeout the
                # stream ends (and so unsubscribes) instead of holding a stream slot forever.
                async with asyncio.timeout(SEND_TIMEOUT):
                    await send({"type": "http.response.body", "body": b"".join(frames),
                                "more_body": not ending})
                if ending:
                    return
        except TimeoutError:
            return
        finally:
            self.bus.unsubscribe(self.sub)
            for task in (gone, batch):
                if task is not None and not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _event_id(text: str) -> str:
    if not (text.isascii() and text.isdigit() and len(text) <= 19):
        raise BadValue("must be an event id (a whole number) from this sidecar")
    return text


@admin_only
@takes({"last_event_id": Param(_event_id, None)})
async def events(request: Request) -> Response:
    """The stream from the event after Last-Event-ID (the header, which a browser's EventSource
    sends when it reconnects, wins over `?last_event_id=`, which is where a page starts)."""
    bus = sidecar_of(request).events
    after = request.headers.get("last-event-id") or request.state.query["last_event_id"]
    try:
        sub, backlog = bus.subscribe(after)
    except StreamRefused as exc:
        return error_response(request.url.path, 503, str(exc), retry_after=5)
    sc = sidecar_of(request)
    return EventStream(bus, sub, backlog, lambda: sc.is_admin(request, sc.caller(request)))


def backends_health(sc: Sidecar) -> list[BackendHealth]:
    """Each backend as the scheduler and its poller see it, in the file's order; then any a reload
    removed that still finishes its requests."""
    nodes = sc.scheduler.backends
    out = []
    for backend in sc.backends:
        node, poller = nodes.get(backend.spec.name), backend.poller
        out.append(BackendHealth(
            name=backend.spec.name, up=poller.up, last_error=poller.last_error,
            last_poll_age_s=poller.last_poll_age(), in_flight=node.local if node else 0,
            max_parallel=node.slots if node else backend.spec.max_parallel,
        ))
    listed = {b.name for b in out}
    out += [BackendHealth(name=n.name, up=True, in_flight=n.local, max_parallel=n.slots, retiring=True)
            for n in nodes.values() if n.retiring and n.name not in listed]
    return out


def health_of(sc: Sidecar) -> Health:
    """/proxy/health's body: public, so it names no client and no model."""
    sc.api_keys()  # re-read if a reload named another variable
    backends = backends_health(sc)
    up = [b for b in backends if b.up and not b.retiring]
    # With one backend, its poller's figures; with several, up while any one answers (the
    # reasons name each one that does not).
    first = sc.poller
    upstream = UpstreamHealth(up=first.up, last_error=first.last_error, last_poll_age_s=first.last_poll_age()) \
        if len(backends) == 1 else UpstreamHealth(
            up=bool(up), last_error=None if up else "no backend answers",
            last_poll_age_s=min((b.last_poll_age_s for b in backends if b.last_poll_age_s is not None), default=None))
    reasons = views.health_reasons(
        upstream_up=first.up, upstream_error=first.last_error,
        reload_error=sc.holder.last_error, mismatches=sc.backends.mismatches(),
        api_keys_env=sc.compiled.clients.api_keys_env if sc.api_keys_problem else None,
        backends=backends if len(backends) > 1 else None,
    )
    return Health(
        status="stopping" if sc.stopping else "degraded" if reasons else "ok",
        queue_depth=sc.scheduler.depth,
        in_flight=sc.dispatcher.in_flight,
        max_parallel=sc.scheduler.max_parallel,
        paused=sc.scheduler.paused,
        upstream=upstream,
        policy=views.policy_info(sc.compiled, sc.holder.last_error),
        reasons=reasons,
        backends=backends,
    )


def overview_of(sc: Sidecar, ids: QueueIds) -> Overview:
    """Everything the dashboards show, in one consistent moment (no await inside)."""
    now = sc.clock()
    policy = views.policy_info(sc.compiled, sc.holder.last_error)
    recent = [e for e in sc.events.recent((Dispatched,), RECENT_DISPATCHES) if isinstance(e, Dispatched)]
    return Overview(
        at=time.time(),
        last_event_id=sc.events.last_id,
        health=health_of(sc),
        queue=views.queue_view(sc.scheduler, ids, policy, now, limit=OVERVIEW_ROWS),
        residency=sc.scheduler.residency(),
        recent_dispatches=recent,
        figures=sc.live.figures(),
        series=list(sc.live.series),
        event_subscribers=sc.events.subscribers,
        event_subscribers_dropped=sc.events.dropped,
    )


class SharedSnapshot:
    """The overview, taken at most once per `max_age` however many dashboards ask: each redraws
    on every event (up to 4 times a second), and a snapshot scores the whole queue (about 7 ms at
    1,000 waiting), so without sharing the loop's cost would grow with the dashboards open."""

    def __init__(self, max_age: float = 0.25, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_age, self._clock = max_age, clock
        self._at = -1e18
        self._body = b""

    def get(self, take: Callable[[], Overview]) -> bytes:
        now = self._clock()
        if now - self._at >= self.max_age:
            self._body, self._at = msgspec.json.encode(take()), now
        return self._body


@admin_only
@takes()
async def overview(request: Request) -> Response:
    shared: SharedSnapshot = request.app.state.overview
    body = shared.get(lambda: overview_of(sidecar_of(request), request.app.state.queue_ids))
    return Response(body, media_type="application/json")


def _request_id(request: Request) -> str:
    """The id in the path: a request id, or a queue id (X-Queue-Id) that names one."""
    asked: str = request.path_params["request_id"]
    held = request.app.state.queue_ids.by_queue_id(asked)
    return asked if held is None else held.request_id


@admin_only
@takes()
async def request_detail(request: Request) -> Response:
    sc, rid = sidecar_of(request), _request_id(request)
    policy = views.policy_info(sc.compiled, sc.holder.last_error)
    live = views.position_view(sc.scheduler, rid, policy, sc.clock())
    record, problem = None, None
    if live is None:  # while it waits or runs the journal holds only what a crash would leave
        try:
            record = await sc.journal.lookup(rid)
        except StoreUnavailable as exc:
            problem = f"the journal database is unavailable: {exc}"
    if live is None and record is None and problem is None:
        return error_response(request.url.path, 404, f"no request {rid!r} is waiting, running or journaled")
    state = live.state if live is not None else "ended"
    return json_response(RequestDetail(
        request_id=rid, state=state, live=live, record=record, journal_error=problem,
    ))


@admin_only
@takes()
async def cancel(request: Request) -> Response:
    sc, rid = sidecar_of(request), _request_id(request)
    if sc.dispatcher.remove(rid):
        return json_response(CancelOutcome(request_id=rid, cancelled=True, state="waiting"))
    if sc.holds.cancel(rid):
        return json_response(CancelOutcome(request_id=rid, cancelled=True, state="in_flight"))
    return error_response(request.url.path, 404, f"no waiting or running request {rid!r}")


@admin_only
@takes()
async def clear(request: Request) -> Response:
    sc = sidecar_of(request)
    count = sc.dispatcher.clear()
    sc.events.publish(QueueCleared(at=time.time(), count=count))
    return json_response(QueueClearOutcome(cleared=count, in_flight=sc.dispatcher.in_flight))


def routes() -> list[BaseRoute]:
    return [
        Route("/proxy/events", events, methods=["GET"]),
        Route("/proxy/overview", overview, methods=["GET"]),
        Route("/proxy/queue", clear, methods=["DELETE"]),
        Route("/proxy/requests/{request_id}", request_detail, methods=["GET"]),
        Route("/proxy/requests/{request_id}/cancel", cancel, methods=["POST"]),
    ]
