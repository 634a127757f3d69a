"""The ASGI application: routes, request ids, errors in the client's dialect, and a lifespan that
starts and stops the sidecar's background parts."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from policy.load import CompiledFile
from server import routes_admin, routes_proxy
from server.dialects import error_response
from server.logs import journal_id_var, request_id_var
from server.queue_ids import QueueIds
from server.sidecar import Journal, Settings, Sidecar

log = logging.getLogger("smart_proxy")

# A client's own id is kept when it is this well-formed; anything else gets a fresh one.
REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


class RequestIdMiddleware:
    """Every response carries X-Request-Id; every log line about the request carries the id."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        offered = ""
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                offered = value.decode("latin-1")
                break
        own = uuid.uuid4().hex
        rid = offered if REQUEST_ID.match(offered) else own
        raw_id = rid.encode()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                if not any(k.lower() == b"x-request-id" for k, _ in headers):
                    headers.append((b"x-request-id", raw_id))
                message = {**message, "headers": headers}
            await send(message)

        started = False

        async def send_tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send_with_id(message)

        token, journal_token = request_id_var.set(rid), journal_id_var.set(own)
        try:
            await self.app(scope, receive, send_tracked)
        except Exception as exc:
            # Caught here, inside the request id's scope, rather than by Starlette's outermost
            # error middleware: that one answers without X-Request-Id and re-raises, so Hypercorn
            # logs the same traceback a second time. Logged once, with the id; never re-raised.
            path = scope.get("path", "")
            log.error("unhandled error on %s %s", scope.get("method", ""), path, exc_info=exc)
            if not started:
                response = error_response(path, 500, "internal error in the proxy; see its log")
                await response(scope, receive, send_with_id)
            # Else the answer has begun: returning unfinished makes the server cut the stream,
            # so the client sees a broken response rather than a short one passed off as whole.
        finally:
            request_id_var.reset(token)
            journal_id_var.reset(journal_token)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"no such endpoint: {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    else:
        message = str(exc.detail)
    return error_response(request.url.path, exc.status_code, message, headers=exc.headers)


def create_app(
    settings: Settings,
    *,
    journal: Callable[[CompiledFile], Journal] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Starlette:
    """The sidecar as an ASGI app. Raises policy.errors.PolicyError if the policy file is bad.

    `journal` makes the journal from the compiled policy file; None: records are dropped.
    """
    sidecar = Sidecar(settings, journal=journal, clock=clock)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await sidecar.start()
        try:
            yield
        finally:
            await sidecar.stop()

    app = Starlette(
        routes=routes_proxy.routes() + routes_admin.routes(),
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error},
    )
    # Starlette would answer `/api/tags/` with a redirect built from the client's own Host header
    # (an open redirect); a path with a trailing slash is simply not a route here: a 404.
    app.router.redirect_slashes = False
    # Who may ask `GET /proxy/queue/{id}` about which ticket (server/queue_ids.py).
    app.state.queue_ids = QueueIds()
    app.state.sidecar = sidecar
    app.add_middleware(RequestIdMiddleware)
    return app
