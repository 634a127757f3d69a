"""The ASGI application: routes, request ids, errors in the client's dialect, and a lifespan that
starts and stops the sidecar's background parts."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from policy.load import CompiledFile
from server.admin import routes as admin_routes
from server.admin.live import SharedSnapshot
from server.http.dialects import ProxyError, error_response
from server.http.rate import TokenBuckets
from server.http.request_ids import RequestIdMiddleware
from server.journal.protocol import Journal
from server.proxy import routes as proxy_routes
from server.runtime.queue_ids import QueueIds
from server.settings import Settings
from server.sidecar import Sidecar

log = logging.getLogger("smart_proxy")

POSITION_POLLS_PER_S = 5.0  # GET /proxy/queue/{id} per client, admins exempt
POSITION_POLL_BURST = 10



async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"no such endpoint: {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    else:
        message = str(exc.detail)
    return error_response(request.url.path, exc.status_code, message, headers=exc.headers)


async def _proxy_error(request: Request, exc: Exception) -> Response:
    """A ProxyError a route did not catch: the client's dialect and status, never a 500."""
    assert isinstance(exc, ProxyError)
    return error_response(request.url.path, exc.status, exc.message, retry_after=exc.retry_after)


def create_app(
    settings: Settings,
    *,
    journal: Callable[[CompiledFile], Journal] | None = None,
    clock: Callable[[], float] = time.monotonic,
    tracer_provider: Any | None = None,
) -> Starlette:
    """The sidecar as an ASGI app. Raises policy.errors.PolicyError if the policy file is bad.

    `journal` makes the journal from the compiled policy file; None: records are dropped.
    """
    sidecar = Sidecar(settings, journal=journal, clock=clock, tracer_provider=tracer_provider)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await sidecar.start()
        try:
            yield
        finally:
            await sidecar.stop()

    app = Starlette(
        routes=proxy_routes.routes() + admin_routes.routes(),
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error, ProxyError: _proxy_error},
    )
    # Starlette would answer `/api/tags/` with a redirect built from the client's own Host header
    # (an open redirect); a path with a trailing slash is simply not a route here: a 404.
    app.router.redirect_slashes = False
    # Who may ask `GET /proxy/queue/{id}` about which ticket (server/runtime/queue_ids.py).
    app.state.queue_ids = QueueIds()
    app.state.overview = SharedSnapshot()  # GET /proxy/overview, shared by every dashboard
    # Public position polls, per client: a crowd of pollers cannot starve the streams.
    app.state.position_polls = TokenBuckets(POSITION_POLLS_PER_S, POSITION_POLL_BURST, sidecar.clock)
    app.state.sidecar = sidecar
    app.add_middleware(RequestIdMiddleware)
    return app
