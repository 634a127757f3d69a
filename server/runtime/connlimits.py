"""Limits on what a client can hold open: time to send a request head, idle time between request
body chunks, and the number of open connections.

Hypercorn has no connection cap and times out a stalled request body never, so:

- `BodyGuard` (ASGI middleware) answers 408 in the client's dialect when the body goes quiet for
  `body_timeout` seconds (the gap between chunks, so a long, steady upload is never cut), and over
  HTTP/2 reads a body the app left unread before the response ends: Hypercorn 0.18 raises KeyError
  for DATA on a stream it has closed and drops the whole connection with every stream on it.
- `CappedSocket` is the listening socket handed to Hypercorn: past `max_connections` open
  connections it answers new ones itself with a 503 (dialect body, Retry-After) and closes them,
  and when the process runs out of descriptors it logs that once per interval instead of once per
  accept attempt.
- `quiet_accept_errors` keeps asyncio from logging the same out-of-descriptors accept error with a
  traceback on every retry (the socket logs it, rate-limited).

The time to receive a request head is Hypercorn's own idle timer (`keep_alive_timeout`): it runs
from the connection's start, or the end of the previous response, until a complete head arrives.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import resource
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.http.dialects import error_body
from server.settings import DEFAULT_BODY_TIMEOUT, DEFAULT_HEADER_TIMEOUT

log = logging.getLogger("smart_proxy")

# Descriptors kept back from the connection cap: the journal, log files, the upstream pool, and
# the over-cap connections being answered 503.
RESERVED_FDS = 128
# At most this many over-cap connections are answered with a dialect body at once (each needs to
# read the request line); the rest get the native body at once and are closed.
MAX_REJECTING = 32
REJECT_READ_TIMEOUT = 1.0
RETRY_AFTER_S = 1
# Over HTTP/2, a body the app did not read is drained up to this size before the response ends;
# beyond it the response ends anyway and Hypercorn may drop that client's connection.
DRAIN_LIMIT = 1 << 20
LOG_INTERVAL_S = 10.0
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_ASYNCIO_ACCEPT_MESSAGE = "socket.accept() out of system resource"


def default_max_connections() -> int:
    """Half of what the descriptor limit leaves after RESERVED_FDS: an in-flight request holds a
    client connection and an upstream one."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 10_000
    return max(1, (soft - RESERVED_FDS) // 2)


@dataclass(frozen=True)
class ServingLimits:
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    max_connections: int | None = None  # None: default_max_connections()

    def connection_cap(self) -> int:
        return self.max_connections if self.max_connections is not None else default_max_connections()


class RateLimitedLog:
    """One warning per `interval` seconds for a repeating condition, with how many were folded."""

    def __init__(self, message: str, interval: float = LOG_INTERVAL_S) -> None:
        self.message = message
        self.interval = interval
        self._last = -math.inf
        self._folded = 0

    def __call__(self, detail: str) -> None:
        now = time.monotonic()
        if now - self._last < self.interval:
            self._folded += 1
            return
        folded, self._folded, self._last = self._folded, 0, now
        extra = f" ({folded} more since the last report)" if folded else ""
        log.warning("%s: %s%s", self.message, detail, extra)


def quiet_accept_errors(loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
    """Drop asyncio's own report of an out-of-descriptors accept (CappedSocket has logged it,
    rate-limited); everything else goes to the handler that was there. Returns the undo."""
    previous = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") == _ASYNCIO_ACCEPT_MESSAGE:
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
    return lambda: loop.set_exception_handler(previous)


def _rejection(path: str) -> bytes:
    body = error_body(path, 503, "the proxy has too many open connections; retry shortly")
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        f"retry-after: {RETRY_AFTER_S}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def _request_path(head: bytes) -> str:
    """The path of an HTTP/1 request line; "" when there is none (the native dialect then)."""
    line = head.split(b"\r\n", 1)[0].split(b" ")
    if len(line) < 2:
        return ""
    return line[1].split(b"?", 1)[0].decode("latin-1")


class _Gate:
    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.open = 0


class _CountedSocket(socket.socket):
    """An accepted connection that gives its place under the cap back when closed."""

    _gate: _Gate | None = None

    def close(self) -> None:
        gate, self._gate = self._gate, None
        if gate is not None:
            gate.open -= 1
        super().close()


class CappedSocket(socket.socket):
    """A listening socket that counts the connections it hands out (asyncio calls `accept`)."""

    _gate: _Gate
    _rejecting: set[asyncio.Task[None]]
    _burst_failed: bool
    _report: RateLimitedLog

    @classmethod
    def wrap(cls, sock: socket.socket, max_connections: int) -> CappedSocket:
        capped = cls(sock.family, sock.type, sock.proto, fileno=sock.detach())
        capped._gate = _Gate(max_connections)
        capped._rejecting = set()
        capped._burst_failed = False
        capped._report = RateLimitedLog("cannot accept connections")
        return capped

    @property
    def open_connections(self) -> int:
        return self._gate.open

    def accept(self) -> tuple[socket.socket, Any]:
        if self._burst_failed:
            # asyncio calls accept in a loop, and after an out-of-descriptors error it goes on
            # calling and schedules one retry per error; ending the burst here keeps it to one
            # retry a second instead of a storm of them.
            self._burst_failed = False
            raise BlockingIOError(errno.EAGAIN, "accept burst ended after a resource error")
        try:
            fd, addr = self._accept()  # type: ignore[attr-defined]  # socket.accept's own primitive
        except OSError as exc:
            if exc.errno in _RESOURCE_ERRNOS:
                self._burst_failed = True
                self._report(f"{exc.strerror} (open connections: {self._gate.open})")
            raise
        if self._gate.open >= self._gate.cap:
            self._reject(socket.socket(self.family, self.type, self.proto, fileno=fd))
            raise BlockingIOError(errno.EAGAIN, "connection answered 503: over the cap")
        conn = _CountedSocket(self.family, self.type, self.proto, fileno=fd)
        conn._gate = self._gate
        self._gate.open += 1
        return conn, addr

    def _reject(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        if len(self._rejecting) >= MAX_REJECTING:
            _send_and_close(conn, _rejection(""))
            return
        task = asyncio.get_running_loop().create_task(_reject_with_dialect(conn))
        self._rejecting.add(task)
        task.add_done_callback(self._rejecting.discard)

    async def stop(self) -> None:
        """Cancel the 503 answers still under way (the server owns them; called as it stops)."""
        tasks = list(self._rejecting)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _send_and_close(conn: socket.socket, data: bytes) -> None:
    try:
        conn.send(data)  # non-blocking: a fresh socket's send buffer takes a small response
    except OSError:
        pass  # the client is gone; nothing to tell it
    finally:
        conn.close()


async def _reject_with_dialect(conn: socket.socket) -> None:
    """Read the request line (briefly) to answer in the client's dialect, then 503 and close."""
    loop = asyncio.get_running_loop()
    try:
        try:
            head = await asyncio.wait_for(loop.sock_recv(conn, 4096), REJECT_READ_TIMEOUT)
        except (TimeoutError, OSError):
            head = b""
        await asyncio.wait_for(loop.sock_sendall(conn, _rejection(_request_path(head))),
                               REJECT_READ_TIMEOUT)
    except (TimeoutError, OSError):
        pass  # a client that neither sends nor reads gets closed without an answer
    finally:
        conn.close()


BODY_TIMED_OUT = "smart_proxy_body_timed_out"  # set in scope["state"] when the guard sent its 408


class BodyGuard:
    """ASGI middleware: a request body idle for `body_timeout` seconds gets a 408 (and, over
    HTTP/1.1, a closed connection); over HTTP/2 an unread body is drained before the response
    ends (see the module docstring)."""

    def __init__(self, app: ASGIApp, body_timeout: float) -> None:
        self.app = app
        self.body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        h2 = scope.get("http_version") == "2"
        body_done = False
        started = False
        answered = False  # the guard sent the 408; the app's own response is dropped
        timed_out = False

        async def guarded_receive() -> Message:
            nonlocal body_done, answered, timed_out
            if timed_out:
                return {"type": "http.disconnect"}
            if body_done:
                return await receive()  # waiting for a disconnect: no time limit
            try:
                # asyncio.timeout, not wait_for: wait_for runs receive() in a task of its own,
                # one more task per body message on every request.
                async with asyncio.timeout(self.body_timeout):
                    message = await receive()
            except TimeoutError:
                timed_out = True
                # For the app's record of it: the client got a 408, not a vanished connection.
                scope.setdefault("state", {})[BODY_TIMED_OUT] = True
                if not started:
                    answered = True
                    await _send_timeout(send, path, self.body_timeout)
                return {"type": "http.disconnect"}
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if answered:
                return
            if message["type"] == "http.response.start":
                started = True
            elif (h2 and not body_done and message["type"] == "http.response.body"
                    and not message.get("more_body", False)):
                drained = 0
                while not body_done and not timed_out and drained <= DRAIN_LIMIT:
                    drained += len((await guarded_receive()).get("body", b""))
            await send(message)

        await self.app(scope, guarded_receive, guarded_send)


async def _send_timeout(send: Send, path: str, body_timeout: float) -> None:
    body = error_body(path, 408, f"the request body stalled for {body_timeout:g} s")
    await send({
        "type": "http.response.start",
        "status": 408,
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode("ascii"))],
    })
    await send({"type": "http.response.body", "body": body, "more_body": False})
