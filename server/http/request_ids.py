"""Request ids: every response carries X-Request-Id, and every log line and journal record about
a request carries its ids (context variables set here, read by the log filter and the routes)."""

from __future__ import annotations

import contextvars
import logging
import re
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.http.dialects import error_response

log = logging.getLogger("smart_proxy")

# A client's own id is kept when it is this well-formed; anything else gets a fresh one.
REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "request_id", default=None
)
# The journal's key for the same request: the request id when the sidecar chose it, a fresh one
# when the client sent its own (clients reuse ids; records must never overwrite each other).
journal_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "journal_id", default=None
)


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
