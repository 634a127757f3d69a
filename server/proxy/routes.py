"""The Ollama-facing routes: scheduled ones go through the queue, the rest pass straight through
(some only for admins). Each reads and checks what it must, then hands an `Exchange` the trip."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import Message, Receive, Scope, Send

from engine.variants import parse_variant, variant_of
from schemas.model_name import canonical_model
from server.http.bodies import read_body
from server.http.cross_site import cross_site
from server.http.dialects import ProxyError, error_response
from server.http.forward import request_headers
from server.http.request_ids import journal_id_var, request_id_var
from server.proxy.exchange import Exchange
from server.proxy.facts import RequestFacts
from server.proxy.intake import Admission, Scheduling, check_limits, parse_form, parse_scheduled
from server.runtime.events import ended
from server.runtime.queue_ids import QueueIds
from server.sidecar import Caller, Sidecar, sidecar_of

# Each can make Ollama load a model, so each waits for the scheduler's grant.
SCHEDULED = (
    "/api/chat",
    "/api/generate",
    "/api/embed",
    "/api/embeddings",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",  # OpenAI's Responses API (Ollama serves it statelessly)
    "/v1/messages",  # Anthropic's Messages API
    "/v1/audio/transcriptions",  # a multipart form: the model is a form field
)
FORM_ROUTES = frozenset({"/v1/audio/transcriptions"})


def _target(request: Request) -> str:
    path = request.scope.get("raw_path") or request.url.path.encode()
    query = request.scope.get("query_string") or b""
    return (path + (b"?" + query if query else b"")).decode("latin-1")


def _facts(request: Request, caller: Caller) -> RequestFacts:
    return RequestFacts(
        request_id=request_id_var.get() or "",
        journal_id=journal_id_var.get(),
        endpoint=request.url.path,
        received_at=time.time(),
        ip=caller.ip,
    )


def refuse(sc: Sidecar, facts: RequestFacts, exc: ProxyError, *, scheduled: bool = False) -> Response:
    """Turn a request away before it is forwarded or queued: journaled as rejected (and, for the
    routes that queue, an event: the dashboards show who is being turned away, and why)."""
    record = facts.finish("rejected", exc.status, exc.message)
    sc.journal.submit(record)
    sc.metrics.finished(facts.endpoint, facts.model, "rejected", 0.0)
    if scheduled:
        sc.events.publish(ended(record))
    return error_response(facts.endpoint, exc.status, exc.message, retry_after=exc.retry_after)


async def scheduled(request: Request) -> Response | _Ticketed:
    sc = sidecar_of(request)
    caller = sc.caller(request)  # the one policy snapshot this request is served under
    compiled = caller.compiled
    facts = _facts(request, caller)
    try:
        body = await read_body(request, compiled.limits.max_body)
        if facts.endpoint in FORM_ROUTES:
            parsed = parse_form(body, request.headers.get("content-type", ""))
        else:
            parsed = parse_scheduled(body)
        try:
            # Checked before the ticket exists: the scheduler compares these as runner keys.
            variant = variant_of(parsed.options)
        except ValueError as exc:
            raise ProxyError(400, str(exc)) from None
        facts.num_ctx = parse_variant(variant).get("num_ctx")
        identity = sc.identify(request, caller)
        # One name per model from here on (queue, class rules, journal, metrics); the body
        # forwarded to Ollama keeps the client's spelling.
        model = canonical_model(parsed.model)
        facts.client, facts.model = identity.client, model
        facts.cls = compiled.classify(
            identity.client, model, facts.endpoint, request.headers.get(compiled.clients.class_header)
        )
        check_limits(compiled, sc.dispatcher, sc.parts.service_times, identity.client, facts.cls,
                     model, stopping=sc.stopping, request_id=facts.request_id)
    except ProxyError as exc:
        return refuse(sc, facts, exc, scheduled=True)
    keep_text = compiled.journal.store_prompts != "none"
    if keep_text:
        facts.prompt = parsed.prompt_text()
    admission = Admission(
        compiled=compiled, facts=facts, keep_text=keep_text, streamed=bool(parsed.stream),
        scheduling=Scheduling(model=model, client=identity.client, cls=facts.cls, variant=variant),
    )
    exchange = Exchange(
        sc.parts, admission,
        method=request.method,
        target=_target(request),  # on the backend its grant names
        headers=request_headers(request.headers),
        body=body,
    )
    return _Ticketed(exchange, request.app.state.queue_ids, facts.request_id, identity.client)


class _Ticketed:
    """Runs a scheduled exchange under a queue id of the sidecar's own (server/runtime/queue_ids.py),
    sent as `X-Queue-Id` with whatever answer the exchange gives, and forgotten when it ends."""

    def __init__(self, exchange: Exchange, ids: QueueIds, request_id: str, client: str) -> None:
        self.exchange, self.ids, self.request_id, self.client = exchange, ids, request_id, client

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ticket = self.ids.issue(self.request_id, self.client)
        if ticket is None:  # its X-Request-Id is in use: the exchange refuses it, no ticket
            await self.exchange(scope, receive, send)
            return
        header = (b"x-queue-id", ticket.queue_id.encode())

        async def send_with_queue_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        try:
            await self.exchange(scope, receive, send_with_queue_id)
        finally:
            self.ids.release(ticket)


async def _passthrough(request: Request, *, admin: bool) -> Response | Exchange:
    sc = sidecar_of(request)
    caller = sc.caller(request)
    facts = _facts(request, caller)
    if admin and not sc.is_admin(request, caller):
        return refuse(sc, facts, ProxyError(403, "admin only: this endpoint changes Ollama's models"))
    if admin and (why := cross_site(request)) is not None:  # a pull posted by another site's page
        return refuse(sc, facts, ProxyError(403, why))
    raw_path = request.scope.get("raw_path") or request.url.path.encode()
    if any(segment in (b".", b"..") for segment in raw_path.split(b"/")):
        # httpx resolves them, so Ollama would get another endpoint than the one routed here
        # (/v1/models/../../api/… is public; what it reaches may be admin only).
        return refuse(sc, facts, ProxyError(400, "the path must not contain . or .. segments"))
    streamed = request.url.path.startswith("/api/blobs/")
    if streamed:
        upload: bytes | AsyncIterator[bytes] = request.stream()  # model layers: never in memory
    else:
        try:
            upload = await read_body(request, caller.compiled.limits.max_body)
        except ProxyError as exc:
            return refuse(sc, facts, exc)
    backend = request.headers.get("x-backend")  # a pull or a model list of one backend
    if backend is not None and sc.backends.get(backend) is None:
        names = ", ".join(b.spec.name for b in sc.backends)
        return refuse(sc, facts, ProxyError(400, f"X-Backend: no backend {backend[:64]!r}; the policy has {names}"))
    admission = Admission(compiled=caller.compiled, facts=facts, scheduling=None, keep_text=False)
    return Exchange(
        sc.parts, admission,
        method=request.method,
        target=_target(request),
        backend=backend,  # None: the first that answers
        headers=request_headers(request.headers, keep_length=streamed),
        body=upload,
    )


async def passthrough(request: Request) -> Response | Exchange:
    return await _passthrough(request, admin=False)


async def admin_passthrough(request: Request) -> Response | Exchange:
    return await _passthrough(request, admin=True)


def routes() -> list[BaseRoute]:
    out: list[BaseRoute] = [Route(path, scheduled, methods=["POST"]) for path in SCHEDULED]
    out += [
        Route("/", passthrough, methods=["GET", "HEAD"]),
        Route("/api/version", passthrough, methods=["GET", "HEAD"]),
        Route("/api/tags", passthrough, methods=["GET", "HEAD"]),
        Route("/api/ps", passthrough, methods=["GET", "HEAD"]),
        Route("/api/show", passthrough, methods=["POST"]),
        Route("/v1/models", passthrough, methods=["GET"]),
        Route("/v1/models/{model:path}", passthrough, methods=["GET"]),
        Route("/api/pull", admin_passthrough, methods=["POST"]),
        Route("/api/push", admin_passthrough, methods=["POST"]),
        Route("/api/create", admin_passthrough, methods=["POST"]),
        Route("/api/copy", admin_passthrough, methods=["POST"]),
        Route("/api/delete", admin_passthrough, methods=["DELETE"]),
        Route("/api/blobs/{digest}", admin_passthrough, methods=["HEAD", "POST"]),
        # Newer Ollama: server status is public; the account routes act on the server's cloud
        # sign-in and the experimental ones may change anything, so both are admin only.
        Route("/api/status", passthrough, methods=["GET", "HEAD"]),
        Route("/api/me", admin_passthrough, methods=["GET", "POST"]),
        Route("/api/signout", admin_passthrough, methods=["POST"]),
        Route("/api/experimental/{rest:path}", admin_passthrough,
              methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]),
    ]
    return out
