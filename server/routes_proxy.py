"""The Ollama-facing routes: scheduled ones go through the queue, the rest pass straight through
(some only for admins). Each reads and checks what it must, then hands an `Exchange` the trip."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import Message, Receive, Scope, Send

from engine.residency import variant_of
from schemas.model_name import canonical_model
from server.dialects import ProxyError, error_response
from server.exchange import Exchange, Scheduling
from server.forward import request_headers
from server.identity import Identity, identify
from server.logs import journal_id_var, request_id_var
from server.queue_ids import QueueIds
from server.record import RequestFacts, prompt_text
from server.sidecar import Sidecar

# Each can make Ollama load a model, so each waits for the scheduler's grant.
SCHEDULED = (
    "/api/chat",
    "/api/generate",
    "/api/embed",
    "/api/embeddings",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
)


class _Scheduled(msgspec.Struct):
    """Only what scheduling needs; every other field stays in the raw bytes, forwarded as sent."""

    model: str = ""
    stream: bool | None = None
    options: dict[str, Any] | None = None
    keep_alive: float | str | None = None


_decoder = msgspec.json.Decoder(_Scheduled)


def sidecar_of(request: Request) -> Sidecar:
    sc: Sidecar = request.app.state.sidecar
    return sc


def _target(request: Request) -> str:
    path = request.scope.get("raw_path") or request.url.path.encode()
    query = request.scope.get("query_string") or b""
    return (path + (b"?" + query if query else b"")).decode("latin-1")


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing with 413 as soon as it is known to exceed `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ProxyError(413, f"request body is larger than the limit of {limit} bytes")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ProxyError(413, f"request body is larger than the limit of {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise ProxyError(400, "the client disconnected while sending the body") from None
    return b"".join(chunks)


def parse_scheduled(body: bytes) -> _Scheduled:
    if not body.strip():
        raise ProxyError(400, "missing request body")
    try:
        parsed = _decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise ProxyError(400, f"invalid request body: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ProxyError(400, f"invalid JSON in request body: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ProxyError(400, f"invalid request body: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except RecursionError:  # msgspec's guard against a stack overflow: a client's input, not ours
        raise ProxyError(400, "invalid JSON in request body: nested too deeply") from None
    if not parsed.model.strip():
        raise ProxyError(400, "model is required")
    return parsed


def admit(sc: Sidecar, client: str) -> None:
    """The policy's limits: queue full -> 503; per-client cap and hard rate windows -> 429."""
    if sc.stopping:
        raise ProxyError(503, "the proxy is shutting down", retry_after=5)
    compiled, scheduler = sc.policy, sc.scheduler
    limits = compiled.raw.limits
    if scheduler.depth >= limits.max_queue:
        raise ProxyError(
            503,
            f"server busy, please try again. the proxy's queue is full ({scheduler.depth} waiting)",
            retry_after=10,
        )
    if scheduler.queued(client) >= limits.max_queued_per_client:
        raise ProxyError(
            429,
            f"too many queued requests from this client (limit {limits.max_queued_per_client})",
            retry_after=10,
        )
    for name, window, max_requests in compiled.rate_windows:
        if scheduler.recent(client, window) >= max_requests:
            raise ProxyError(
                429,
                f"rate limit {name!r} exceeded: {max_requests} requests per {window:g}s",
                retry_after=window,
            )


def _facts(request: Request, sc: Sidecar) -> RequestFacts:
    address = sc.address(request)
    return RequestFacts(
        request_id=request_id_var.get() or "",
        journal_id=journal_id_var.get(),
        endpoint=request.url.path,
        received_at=time.time(),
        ip=str(address) if address is not None else None,
    )


def refuse(sc: Sidecar, facts: RequestFacts, exc: ProxyError) -> Response:
    """Turn a request away before it is forwarded or queued: journaled as rejected."""
    sc.journal.submit(facts.finish("rejected", exc.status, exc.message))
    sc.metrics.finished(facts.endpoint, facts.model, "rejected", 0.0)
    return error_response(facts.endpoint, exc.status, exc.message, retry_after=exc.retry_after)


async def scheduled(request: Request) -> Response | _Ticketed:
    sc = sidecar_of(request)
    compiled = sc.policy
    facts = _facts(request, sc)
    clients = compiled.raw.clients
    try:
        body = await read_body(request, compiled.raw.limits.max_body)
        parsed = parse_scheduled(body)
        try:
            # Checked before the ticket exists: the scheduler compares these as runner keys.
            variant = variant_of(parsed.options)
        except ValueError as exc:
            raise ProxyError(400, str(exc)) from None
        identity = identify_request(request, sc)
        # One name per model from here on (queue, class rules, journal, metrics); the body
        # forwarded to Ollama keeps the client's spelling.
        model = canonical_model(parsed.model)
        facts.client, facts.model = identity.client, model
        facts.cls = compiled.classify(
            identity.client, model, facts.endpoint, request.headers.get(clients.class_header)
        )
        admit(sc, identity.client)
    except ProxyError as exc:
        return refuse(sc, facts, exc)
    if compiled.raw.journal.store_prompts != "none":
        # For the journal only: a body it cannot read (a number beyond float range, which the
        # typed decode above skips) is still Ollama's to judge, not a 500.
        with contextlib.suppress(msgspec.DecodeError, RecursionError):
            facts.prompt = prompt_text(msgspec.json.decode(body))
    exchange = Exchange(
        sc,
        method=request.method,
        target=_target(request),
        headers=request_headers(request.headers),
        body=body,
        facts=facts,
        scheduling=Scheduling(model=model, client=identity.client, cls=facts.cls, variant=variant),
        keep_text=compiled.raw.journal.store_prompts != "none",
    )
    return _Ticketed(exchange, request.app.state.queue_ids, facts.request_id, identity.client)


class _Ticketed:
    """Runs a scheduled exchange under a queue id of the sidecar's own (server/queue_ids.py),
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


def identify_request(request: Request, sc: Sidecar) -> Identity:
    """The client identity the policy's `clients` rules give this request."""
    clients = sc.policy.raw.clients
    return identify(
        headers=request.headers,
        address=sc.address(request),
        identify_by=clients.identify_by,
        header=clients.header,
        api_keys=sc.api_keys(),
    )


async def _passthrough(request: Request, *, admin: bool) -> Response | Exchange:
    sc = sidecar_of(request)
    facts = _facts(request, sc)
    if admin and not sc.is_admin(request):
        return refuse(sc, facts, ProxyError(403, "admin only: this endpoint changes Ollama's models"))
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
            upload = await read_body(request, sc.policy.raw.limits.max_body)
        except ProxyError as exc:
            return refuse(sc, facts, exc)
    return Exchange(
        sc,
        method=request.method,
        target=_target(request),
        headers=request_headers(request.headers, keep_length=streamed),
        body=upload,
        facts=facts,
        scheduling=None,
        keep_text=False,
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
    ]
    return out
