"""The sidecar's own endpoints under /proxy, and /metrics.

Public: /proxy/health (minimal: no client or model names), /proxy/queue/{id} (a waiting client's
own position: by its X-Queue-Id, or by its X-Request-Id from the same client), /proxy/auth
(rate-limited), /metrics. Every /proxy route declares its query parameters (`takes`).
Everything else needs admin (network, X-Admin-Key or session token).
"""

from __future__ import annotations

import time

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from schemas.events import Paused, Resumed
from schemas.journal import BACKEND_PATTERN, INSTANCE_PATTERN
from schemas.proxy_api import (
    AuthRequest,
    AuthToken,
    BackendVram,
    Cancelled,
    PauseState,
    PolicyInfo,
    PolicyView,
    ReloadOutcome,
    VramView,
)
from server.admin import dashboard, live, probes, views
from server.admin.guard import admin_only
from server.admin.guard import json_response as _json
from server.http.auth import SESSION_COOKIE
from server.http.bodies import read_body
from server.http.cross_site import cross_site
from server.http.dialects import ProxyError, error_response
from server.http.query_params import Param, matching, number, one_of, takes, whole
from server.http.rate import TokenBuckets
from server.journal import AnalyticsBusy, AnalyticsError, StoreUnavailable
from server.journal.analytics import GROUP_BY, MAX_HOURS, MAX_LIMIT
from server.runtime.queue_ids import QueueIds
from server.sidecar import Sidecar, sidecar_of

ANALYTICS_QUERY = {
    "hours": Param(number(above=0, at_most=MAX_HOURS, unit="hours"), 24.0),
    "group_by": Param(one_of(GROUP_BY), "model"),
    "limit": Param(whole(low=1, high=MAX_LIMIT), 10),
    # One sidecar's records, in a journal several share.
    "instance": Param(matching(INSTANCE_PATTERN, "a sidecar's instance name: letters, digits and "
                               ". _ : -, starting with a letter or digit, at most 128"), None),
    # The requests one Ollama server served, of the several a sidecar may feed.
    "backend": Param(matching(BACKEND_PATTERN, "a backend's name: letters, digits and . _ -, "
                              "starting with a letter or digit, at most 63"), None),
}


def _policy_info(sc: Sidecar) -> PolicyInfo:
    return views.policy_info(sc.compiled, sc.holder.last_error)


@takes()
async def health(request: Request) -> Response:
    sc = sidecar_of(request)
    return _json(live.health_of(sc), 503 if sc.stopping else 200)


@admin_only
@takes()
async def queue(request: Request) -> Response:
    sc = sidecar_of(request)
    ids: QueueIds = request.app.state.queue_ids
    return _json(views.queue_view(sc.scheduler, ids, _policy_info(sc), sc.clock()))


def _visible_request_id(request: Request, asked: str, *, admin: bool, client: str) -> str | None:
    """The request id of the ticket `asked` names, when this caller may see it: anyone holding
    its X-Queue-Id; by X-Request-Id (which a client may choose, so others can guess it) only an
    admin or the client identity that owns the ticket. None: answer as if there were none."""
    ids: QueueIds = request.app.state.queue_ids
    held = ids.by_queue_id(asked)
    if held is not None:
        return held.request_id
    if admin:
        return asked
    ticket = ids.by_request_id(asked)
    if ticket is None:
        return None
    # "unknown" names no one in particular: two unidentifiable callers are not the same client.
    return asked if client == ticket.client and client != "unknown" else None


@takes()
async def position(request: Request) -> Response:
    """Public and polled: rate-limited per client address (admins exempt), answered without
    scoring the whole queue (engine/ranking.py). The address, not the client identity: an
    identity header costs nothing to rotate, an address does."""
    sc = sidecar_of(request)
    caller = sc.caller(request)
    admin = sc.is_admin(request, caller)
    client = "" if admin else sc.identify(request, caller).client
    if not admin:
        polls: TokenBuckets = request.app.state.position_polls
        wait = polls.take(caller.ip or "unknown")
        if wait is not None:
            return error_response(
                request.url.path, 429,
                f"too many position queries from this address (at most {polls.rate:g} a second)",
                retry_after=wait,
            )
    asked = request.path_params["request_id"]
    rid = _visible_request_id(request, asked, admin=admin, client=client)
    if rid is None:
        return error_response(request.url.path, 404, f"no waiting or running request {asked!r}")
    body = views.position_view(sc.scheduler, rid, _policy_info(sc), sc.clock())
    if body is None:
        return error_response(request.url.path, 404, f"no waiting or running request {asked!r}")
    return _json(body)


@admin_only
@takes()
async def remove(request: Request) -> Response:
    sc = sidecar_of(request)
    rid = request.path_params["request_id"]
    held = request.app.state.queue_ids.by_queue_id(rid)  # an admin may name it either way
    rid = rid if held is None else held.request_id
    if not sc.dispatcher.remove(rid):
        return error_response(request.url.path, 404, f"no waiting request {rid!r}")
    return _json(Cancelled(request_id=rid, cancelled=True))


@admin_only
@takes()
async def vram(request: Request) -> Response:
    sc = sidecar_of(request)
    nodes = sc.scheduler.backends
    backends = {
        b.spec.name: BackendVram(
            up=b.poller.up, residency=node.residency.view(), last_ps=b.poller.last_ps,
            last_poll_age_s=b.poller.last_poll_age(), in_flight=node.local, max_parallel=node.slots,
        )
        for b in sc.backends if (node := nodes.get(b.spec.name)) is not None
    }
    return _json(
        VramView(
            residency=sc.scheduler.residency(), last_ps=sc.poller.last_ps,
            last_poll_age_s=sc.poller.last_poll_age(), backends=backends,
        )
    )


@admin_only
@takes()
async def policy(request: Request) -> Response:
    sc = sidecar_of(request)
    compiled = sc.compiled
    return _json(
        PolicyView(
            path=compiled.path, version=compiled.version, active=compiled.active.name,
            policies={n: p.description for n, p in compiled.policies.items()},
            last_reload_error=sc.holder.last_error, file=msgspec.to_builtins(compiled.raw),
        )
    )


@admin_only
@takes()
async def reload(request: Request) -> Response:
    result = await sidecar_of(request).reloader.reload()
    body = ReloadOutcome(ok=result.ok, changed=result.changed, version=result.version, error=result.error)
    return _json(body, 200 if result.ok else 422)


@admin_only
@takes()
async def pause(request: Request) -> Response:
    sc = sidecar_of(request)
    if not sc.scheduler.paused:
        sc.dispatcher.pause()
        sc.events.publish(Paused(at=time.time(), depth=sc.scheduler.depth))
    return _json(PauseState(paused=True, queue_depth=sc.scheduler.depth))


@admin_only
@takes()
async def resume(request: Request) -> Response:
    sc = sidecar_of(request)
    if sc.scheduler.paused:
        sc.events.publish(Resumed(at=time.time(), depth=sc.scheduler.depth))
    sc.dispatcher.resume()
    return _json(PauseState(paused=False, queue_depth=sc.scheduler.depth))


@takes()
async def auth(request: Request) -> Response:
    sc = sidecar_of(request)
    caller = sc.caller(request)
    admin = caller.compiled.admin
    if (why := cross_site(request)) is not None:  # no logging in from another site's page
        return error_response(request.url.path, 403, why)
    try:
        body = msgspec.json.decode(await read_body(request, 4096), type=AuthRequest)
    except ProxyError as exc:
        return error_response(request.url.path, exc.status, exc.message)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # ValidationError included
        return error_response(request.url.path, 400, f'expected {{"key": "..."}}: {exc}')
    except RecursionError:  # msgspec's guard against a stack overflow: the caller's input
        return error_response(request.url.path, 400, 'expected {"key": "..."}: nested too deeply')
    try:
        token = sc.auth.login(
            address=caller.ip or "unknown",
            offered=body.key,
            key_env=admin.key_env,
            lifetime=admin.session_lifetime,
            per_minute=admin.auth_attempts_per_minute,
        )
    except ProxyError as exc:
        return error_response(request.url.path, exc.status, exc.message, retry_after=exc.retry_after)
    response = _json(AuthToken(token=token, expires_in_s=admin.session_lifetime))
    response.set_cookie(
        SESSION_COOKIE, token, max_age=max(1, int(admin.session_lifetime)),
        httponly=True, samesite="strict", secure=request.url.scheme == "https",
    )
    return response


@takes()
async def logout(request: Request) -> Response:
    """Ends the session whose cookie (or X-Admin-Token) came with the request; always 200."""
    if (why := cross_site(request)) is not None:
        return error_response(request.url.path, 403, why)
    sidecar_of(request).auth.logout(request.headers)
    response = _json({"logged_out": True})
    response.delete_cookie(SESSION_COOKIE, httponly=True, samesite="strict")
    return response


@admin_only
@takes(ANALYTICS_QUERY)
async def analytics(request: Request) -> Response:
    """The journal's report: ?hours=24&group_by=model&limit=10 (as the seed offered it), and
    &instance=NAME for one sidecar's records in a journal several share."""
    q = request.state.query
    try:
        report = await sidecar_of(request).journal.analytics(
            hours=q["hours"], group_by=q["group_by"], limit=q["limit"], instance=q["instance"],
            backend=q["backend"],
        )
    except AnalyticsError as exc:
        return error_response(request.url.path, 400, str(exc))
    except AnalyticsBusy as exc:
        return error_response(request.url.path, 503, str(exc), retry_after=2)
    except StoreUnavailable as exc:
        return error_response(request.url.path, 503, f"the journal database is unavailable: {exc}",
                              retry_after=10)
    return _json(report)


@admin_only
@takes()
async def journal(request: Request) -> Response:
    return _json(sidecar_of(request).journal.health())


async def metrics(request: Request) -> Response:
    body = sidecar_of(request).metrics.render()
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")


def routes() -> list[BaseRoute]:
    return [
        Route("/proxy/health", health, methods=["GET"]),
        Route("/proxy/queue", queue, methods=["GET"]),
        Route("/proxy/queue/{request_id}", position, methods=["GET"]),
        Route("/proxy/queue/{request_id}", remove, methods=["DELETE"]),
        Route("/proxy/vram", vram, methods=["GET"]),
        Route("/proxy/policy", policy, methods=["GET"]),
        Route("/proxy/policy/reload", reload, methods=["POST"]),
        Route("/proxy/pause", pause, methods=["POST"]),
        Route("/proxy/resume", resume, methods=["POST"]),
        Route("/proxy/auth", auth, methods=["POST"]),
        Route("/proxy/auth/logout", logout, methods=["POST"]),
        Route("/proxy/analytics", analytics, methods=["GET"]),
        Route("/proxy/journal", journal, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        *live.routes(),
        *dashboard.routes(),
        *probes.routes(),
    ]
