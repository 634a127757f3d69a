"""One request's trip through the sidecar once it has been admitted: wait for a grant (scheduled
routes), open the upstream request, stream the answer back, and — whatever happens — free the
slot exactly once and hand the journal one record.

It is an ASGI app that a route returns in place of a response, so it owns the connection for the
whole trip and can race every step against the client going away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import AbstractContextManager, nullcontext

from starlette.types import Message, Receive, Scope, Send

from engine.scheduler import Grant
from engine.service import Usage
from schemas.events import FirstByte
from server.http.dialects import ProxyError, error_response, ollama_message, stream_error
from server.http.forward import relay
from server.http.upstream_hop import Unreachable, UploadBroken, UpstreamAnswer, UpstreamBroken
from server.proxy import queue_status
from server.proxy.disconnect import ClientGone, DisconnectWatch
from server.proxy.facts import StreamTap
from server.proxy.intake import Admission, id_in_use, with_num_ctx
from server.proxy.outcome import Outcome, record_trip
from server.runtime.connlimits import BODY_TIMED_OUT
from server.runtime.dispatcher import Removed, ShuttingDown
from server.runtime.holds import Cut, Hold
from server.sidecar import Parts

log = logging.getLogger("smart_proxy.request")

CLIENT_CLOSED = 499  # nginx's convention for "the client went away"; journal and logs only
SHUTDOWN_CUT = "sidecar shut down before the request finished"
ADMIN_CANCEL = "an administrator cancelled this request"
RETRY_AFTER_S = 5  # what a request refused or cut by a shutdown is told
ERROR_BODY_LIMIT = 65536  # bytes of Ollama's error body read for its message


class SendAgain(Exception):
    """The backend refused the connection and the request waits for another grant."""


class Exchange:
    def __init__(
        self,
        parts: Parts,
        admission: Admission,
        *,
        method: str,
        target: str,  # the path and query as they came
        backend: str | None = None,  # where it goes; None: where the scheduler grants it
        headers: list[tuple[bytes, bytes]],
        body: bytes | AsyncIterator[bytes],
    ) -> None:
        self.parts = parts
        # Timeouts: the request's own policy snapshot.
        self.backend, self.limits = admission.compiled.backend, admission.compiled.limits
        self.method = method
        self.target, self.backend_name = target, backend
        self.headers = headers
        self.body = self._sent_body = body  # what num_ctx normalisation rewrites: a copy
        self._regrant: asyncio.Future[Grant] | None = None  # after a refused connection (once)
        self.facts = admission.facts
        self.scheduling = admission.scheduling
        self.tap = StreamTap(keep_text=admission.keep_text)
        self._tail = b"\n\n"  # the last two bytes sent (how an error event must be framed)
        self._send: Send | None = None
        self._scope: Scope = {}
        self._started = False  # the response's status line has gone to the client
        self._ended = False  # and its last byte
        self._hold: Hold | None = None
        self._submitted = False
        # Queue-status lines while it waits (server/proxy/queue_status.py): seconds between them.
        every = admission.compiled.queue_status_every
        self._status_every = (
            every if every is not None and admission.streamed
            and admission.facts.endpoint in queue_status.ROUTES else None
        )
        # The request's server span, when tracing is configured (scheduled requests only).
        self.span = (
            parts.tracer.start(admission.facts.endpoint, admission.facts.model, headers)
            if admission.scheduling is not None and parts.tracer.on else None
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def tracked(message: Message) -> None:
            # Noted before the await: a cut landing inside it must not start or end twice.
            if message["type"] == "http.response.start":
                self._started = True
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                self._ended = True
            await send(message)

        self._send = tracked
        self._scope = scope
        # Accepted from here: a crash from now on leaves an `interrupted` record, not none.
        self.parts.journal.admit(self.facts.admission())
        # Scheduled requests may be cancelled by an administrator, by the id the queue shows.
        cancellable = self.facts.request_id if self.scheduling is not None else None
        with self.parts.holds.hold(cancellable) as hold:
            self._hold = hold
            await self._serve(receive)

    async def _serve(self, receive: Receive) -> None:
        # A streamed upload still owns `receive`; watch for disconnects once it is done.
        watch = DisconnectWatch(receive) if isinstance(self.body, bytes) else None
        outcome = Outcome()
        try:
            await self._run(watch, outcome)
        except asyncio.CancelledError:
            # The ASGI server gave up on us (a cut answer stuck past its own timeout). Unless
            # the outcome was already decided, the client gets the server's 500 or a cut stream.
            if outcome.status == "failed" and outcome.error is None:
                outcome.error = SHUTDOWN_CUT
                outcome.http_status = outcome.http_status or 500
            raise
        finally:
            if watch is not None:
                watch.close()
            try:
                self._record(outcome)
            finally:
                # Every path ends here, so the slot (or the waiting ticket) is always released —
                # after the record, so "nothing in flight" also means "every record handed over".
                if self._submitted:
                    usage = Usage.from_counters(self.facts.counters) if self.facts.counters else None
                    self.parts.dispatcher.release(self.facts.request_id, usage)

    # -- the trip ---------------------------------------------------------------------------

    async def _run(self, watch: DisconnectWatch | None, outcome: Outcome) -> None:
        while True:  # at most twice: a second grant after a refused connection (`_forward`)
            extra = [(b"x-request-id", self.facts.request_id.encode())]
            if self.scheduling is not None:
                assert watch is not None
                try:
                    grant = await self._wait_grant(watch)
                except ProxyError as exc:
                    return await self._fail(outcome, exc)
                except Removed as removed:  # by an admin, or shed for a more urgent request
                    self._settled()
                    try:
                        return await self._fail(outcome, ProxyError(503, removed.message, retry_after=removed.retry_after))
                    finally:  # even when the client is gone before its 503 is written
                        outcome.status = removed.status
                except ClientGone:
                    outcome.status, outcome.http_status = "cancelled", CLIENT_CLOSED
                    outcome.error = "client disconnected while queued"
                    return
                extra += self._granted(grant)
            name = self.backend_name or self.parts.backends.pick_up(self.facts.model).spec.name
            self.facts.backend = name
            extra.append((b"x-backend", name.encode()))
            url = self.parts.backends.url(name) + self.target
            span = self.span.upstream(self.method, url, self.headers) if self.span else nullcontext()
            with contextlib.suppress(SendAgain), span:  # the client span around Ollama's part
                return await self._forward(watch, outcome, extra, url, name)  # its traceparent goes too

    def _granted(self, grant: Grant) -> list[tuple[bytes, bytes]]:
        """The grant's headers; the body with the loaded runner's num_ctx, if that differs."""
        facts, extra = self.facts, self.facts.granted(grant)
        self.backend_name = grant.backend or None  # a cloud model's: through any backend
        self.body, facts.num_ctx_forwarded = self._sent_body, None
        if grant.num_ctx is not None and (sent := with_num_ctx(self._sent_body, grant.num_ctx)):
            # num_ctx normalisation: run on the loaded runner rather than reload the model.
            self.body, facts.num_ctx_forwarded = sent, grant.num_ctx
            self.parts.metrics.num_ctx_rewritten(facts.model or "")
            extra.append((b"x-num-ctx-forwarded", str(grant.num_ctx).encode()))
        if self.span is not None:
            self.span.set(
                smart_proxy__queue_wait_ms=round(facts.queue_wait_ms or 0.0, 1), smart_proxy__score=grant.score.total,
                smart_proxy__resident=grant.resident, smart_proxy__action=grant.action, smart_proxy__backend=grant.backend,
                smart_proxy__evicted_models=list(grant.evicts), smart_proxy__policy=f"{grant.policy_name}@{grant.policy_version}")
        return extra

    async def _forward(
        self, watch: DisconnectWatch | None, outcome: Outcome, extra: list[tuple[bytes, bytes]],
        url: str, backend: str,
    ) -> None:
        """Forward and relay the answer. SendAgain: its backend refused the connection, so
        nothing was sent, and the request went back to the queue for another backend (once)."""
        parts, facts = self.parts, self.facts
        timeout = self.backend.request_timeout
        deadline = time.monotonic() + timeout
        try:
            with self._guard(watch), self._armed():
                opening = parts.hop.open(method=self.method, url=url, headers=self.headers,
                                         content=self.body, upstream_timeout=timeout)
                # A model load can outlast a proxy's idle timeout too: status lines go on.
                upstream = await queue_status.await_with_status(
                    opening, self._status_every, self._say_dispatched, UpstreamAnswer.aclose)
        except ProxyError as exc:
            if isinstance(exc, Unreachable):  # down: no dispatches until a poll says otherwise
                parts.backends.failed(backend, exc.reason)
                if self._requeued(backend):
                    raise SendAgain from None
            parts.backends.poll_soon(backend)  # learn about the outage now, not at the next tick
            return await self._fail(outcome, exc)
        except UploadBroken as exc:  # the client's streamed body broke off: nobody to answer
            stalled = self._scope.get("state", {}).get(BODY_TIMED_OUT, False)
            outcome.status, outcome.http_status = "cancelled", 408 if stalled else CLIENT_CLOSED
            outcome.error = f"the client's request body {'stalled' if stalled else 'broke off'} ({exc})"
            return
        except ClientGone:
            outcome.status, outcome.http_status = "cancelled", CLIENT_CLOSED
            outcome.error = "client disconnected while Ollama prepared the answer"
            return
        except Cut:
            return await self._cut(outcome)
        if self._started:  # a queue-status line committed the 200 already
            return await self._after_status(upstream, outcome, watch, deadline)
        try:
            facts.first_byte_at = time.time()
            outcome.http_status = upstream.status_code
            if self.scheduling is not None and upstream.status_code < 400:
                self._first_byte()
            limit = max(0.0, deadline - time.monotonic()) if self.scheduling else None
            try:
                with self._guard(watch), self._armed():
                    async with asyncio.timeout(limit):
                        assert self._send is not None
                        await relay(upstream, self._send, extra, self._seen)
                self._settled()
            except ClientGone:
                outcome.status, outcome.error = "cancelled", "client disconnected mid-answer"
                return
            except Cut:
                return await self._cut(outcome)
            except TimeoutError:
                outcome.error = f"Ollama's answer exceeded the request timeout ({timeout:g}s)"
                return await self._abort(outcome.error)
            except UpstreamBroken as exc:
                outcome.error = f"Ollama broke off the answer: {exc}"
                parts.backends.poll_soon(backend)
                return await self._abort(outcome.error)
            if upstream.status_code < 400:
                outcome.status = "completed"
            else:
                outcome.error = f"Ollama answered {upstream.status_code}"
        finally:
            await upstream.aclose()

    async def _after_status(
        self, upstream: UpstreamAnswer, outcome: Outcome, watch: DisconnectWatch | None,
        deadline: float,
    ) -> None:
        """Ollama's answer when queue-status lines have begun the response: its events follow
        them (its own status line and headers are not sent again); an error status becomes an
        error event with Ollama's message."""
        facts = self.facts
        try:
            facts.first_byte_at = time.time()
            outcome.http_status = upstream.status_code
            limit = max(0.0, deadline - time.monotonic())
            if upstream.status_code >= 400:
                outcome.error = f"Ollama answered {upstream.status_code}"
                body = b""
                try:
                    with self._guard(watch), self._armed():
                        async with asyncio.timeout(limit):
                            async for chunk in upstream.chunks():
                                body += chunk
                                if len(body) > ERROR_BODY_LIMIT:
                                    break
                except ClientGone:
                    outcome.status = "cancelled"
                    return
                except Cut:
                    return await self._cut(outcome)
                except (TimeoutError, UpstreamBroken):
                    pass  # the status says enough
                await self._abort(ollama_message(body[:ERROR_BODY_LIMIT]) or outcome.error)
                return
            self._first_byte()
            assert self._send is not None
            send = self._send

            async def body_only(message: Message) -> None:
                if message["type"] != "http.response.start":
                    await send(message)

            timeout = self.backend.request_timeout
            try:
                with self._guard(watch), self._armed():
                    async with asyncio.timeout(limit):
                        await relay(upstream, body_only, [], self._seen)
                self._settled()
            except ClientGone:
                outcome.status, outcome.error = "cancelled", "client disconnected mid-answer"
                return
            except Cut:
                return await self._cut(outcome)
            except (TimeoutError, UpstreamBroken) as exc:
                outcome.error = f"Ollama broke off the answer: {exc}" if isinstance(
                    exc, UpstreamBroken) else f"Ollama's answer exceeded the request timeout ({timeout:g}s)"
                return await self._abort(outcome.error)
            outcome.status = "completed"
        finally:
            await upstream.aclose()

    async def _wait_grant(self, watch: DisconnectWatch) -> Grant:
        """Its grant: submitted now, or, after a refused connection, its requeued ticket's —
        within the class's queue timeout again (that wait was the backend's fault, not its own)."""
        dispatcher, s, rid = self.parts.dispatcher, self.scheduling, self.facts.request_id
        assert s is not None
        queue_timeout = self.limits.queue_timeout(s.cls)
        fut = self._regrant
        if fut is None:
            if dispatcher.known(rid):
                raise id_in_use(rid)
            try:
                _, fut = dispatcher.submit(
                    request_id=rid, model=s.model, client=s.client, cls=s.cls,
                    endpoint=self.facts.endpoint, variant=s.variant,
                )
            except ShuttingDown:
                raise ProxyError(503, "the proxy is shutting down", retry_after=RETRY_AFTER_S) from None
            self._submitted = True
        try:
            with watch.guard():
                async with asyncio.timeout(queue_timeout):
                    return await queue_status.await_with_status(fut, self._status_every, self._say_status)
        except TimeoutError:
            raise ProxyError(
                504, f"waited longer than the queue timeout ({queue_timeout:g}s) for a slot"
            ) from None
        except ShuttingDown:
            raise ProxyError(503, "the proxy is shutting down", retry_after=RETRY_AFTER_S) from None

    def _requeued(self, backend: str) -> bool:
        """Its backend refused the connection, so nothing reached Ollama: back in the queue in
        its place, once, with several backends. After a connection it is never sent again:
        Ollama may have generated, or run a tool call's side effects, already."""
        if self._regrant is not None or self.scheduling is None or len(self.parts.backends) < 2:
            return False
        self._regrant = self.parts.dispatcher.requeue(self.facts.request_id)
        if self._regrant is None:
            return False
        self.facts.ungranted()
        if self.parts.backends.get(backend) is not None:  # not removed meanwhile: no stale series
            self.parts.metrics.redispatches.labels(backend).inc()
        log.warning("backend %s refused the connection; request sent back to the queue", backend,
                    extra={"request_id": self.facts.request_id, "model": self.facts.model})
        return True

    async def _say_status(self, body: bytes | None = None) -> None:
        """One queue-status comment; the first one commits the 200 and the stream's headers."""
        assert self._send is not None
        if not self._started:
            await self._send({"type": "http.response.start", "status": 200,
                              "headers": list(queue_status.START_HEADERS)})
        if body is None:
            body = queue_status.line(self.parts.dispatcher.scheduler, self.parts.service_times,
                                     self.facts.request_id)
        await self._send({"type": "http.response.body", "body": body, "more_body": True})

    async def _say_dispatched(self) -> None:
        await self._say_status(queue_status.dispatched_line(self.facts.model, self.facts.resident))

    @staticmethod
    def _guard(watch: DisconnectWatch | None) -> AbstractContextManager[None]:
        # A streamed upload (blobs) still owns `receive`: no watch, nothing to guard.
        return watch.guard() if watch is not None else nullcontext()

    def _armed(self) -> AbstractContextManager[None]:
        """Where the shutdown cut interrupts (with Cut): waiting for Ollama, and streaming."""
        assert self._hold is not None
        return self._hold.armed()

    # -- answering ----------------------------------------------------------------------------

    def _seen(self, chunk: bytes) -> None:
        if chunk:
            self._tail = (self._tail + chunk)[-2:]
        self.tap(chunk)

    def _first_byte(self) -> None:
        """Ollama began a successful answer to a scheduled request: tell the event stream (first:
        started() dispatches the tickets held behind this load), the metrics and the scheduler."""
        facts, parts = self.facts, self.parts
        parts.events.publish(
            FirstByte(at=time.time(), request_id=facts.request_id, model=facts.model or "")
        )
        parts.metrics.started(facts.model or "", (facts.first_byte_at or time.time()) - facts.received_at)
        parts.dispatcher.started(facts.request_id)

    def _settled(self) -> None:
        """The request answers on its own from here: an admin's cancel can no longer stop it."""
        if self._hold is not None:
            self._hold.cancellable = False

    async def _fail(self, outcome: Outcome, exc: ProxyError) -> None:
        # Refused before a slot (a duplicate id, a shutdown): rejected. Timeouts, Ollama: failed.
        self._settled()
        outcome.status = "rejected" if exc.status in (400, 503) else "failed"
        outcome.http_status, outcome.error = exc.status, exc.message
        await self._answer(exc)

    async def _cut(self, outcome: Outcome) -> None:
        """The shutdown grace ran out, or an administrator cancelled the request: a 503 if the
        answer had not begun, else an error chunk. (The upstream request is closed by the caller's
        `finally`, which frees Ollama's slot too.)"""
        self._settled()
        if self._ended:  # the whole answer went out just before the cut
            if (outcome.http_status or 500) < 400:
                outcome.status = "completed"
            else:
                outcome.error = f"Ollama answered {outcome.http_status}"
            return
        assert self._hold is not None
        by_admin = self._hold.by_admin
        message = ADMIN_CANCEL if by_admin else SHUTDOWN_CUT
        outcome.status, outcome.error = ("cancelled" if by_admin else "failed"), message
        if self._started:
            return await self._abort(message)
        outcome.http_status = 503
        await self._answer(ProxyError(503, message, retry_after=None if by_admin else RETRY_AFTER_S))

    async def _answer(self, exc: ProxyError) -> None:
        if self._started:  # queue-status lines began the response: the error is its last event
            return await self._abort(exc.message)
        assert self._send is not None
        response = error_response(
            self.facts.endpoint, exc.status, exc.message, retry_after=exc.retry_after,
            headers={"x-request-id": self.facts.request_id,
                     **({"x-backend": self.facts.backend} if self.facts.backend else {})},
        )
        await response({"type": "http"}, _no_receive, self._send)

    async def _abort(self, message: str) -> None:
        """The answer broke after it began: end it with an error line in the stream's framing, as
        Ollama itself does, so a client sees an error rather than a silently short answer."""
        self._settled()
        assert self._send is not None
        line = stream_error(self.facts.endpoint, message, tail=self._tail)
        await self._send({"type": "http.response.body", "body": line, "more_body": False})

    def _record(self, outcome: Outcome) -> None:
        record_trip(self.parts, self.facts, self.tap, self.span, outcome, self.method,
                    scheduled=self.scheduling is not None)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}
