"""Serving the app with Hypercorn, and stopping it gracefully.

On SIGTERM/SIGINT (or `stop()`): stop admitting and answer queued requests 503 at once, stop
accepting connections, give in-flight requests `grace` seconds to finish and cut the rest (each
answers its client in the dialect: 503, or an error chunk mid-stream), then the lifespan stops
the poller, the watcher and the journal (which flushes what it holds). SIGHUP reloads the policy.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Sequence
from typing import Any, Protocol

from hypercorn.asyncio.run import worker_serve
from hypercorn.config import Config, Sockets
from hypercorn.utils import wrap_app
from starlette.applications import Starlette

from server.runtime.connlimits import BodyGuard, CappedSocket, ServingLimits, quiet_accept_errors

log = logging.getLogger("smart_proxy")


class Stoppable(Protocol):
    """What serving needs of the app's owner (server.sidecar.Sidecar), found on `app.state`."""

    def begin_shutdown(self) -> int: ...

    async def drain(self, within: float) -> None: ...

    def reload_soon(self) -> None: ...


def listen(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: any free port), so the URL is known before Hypercorn starts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    # Streams are one small write per token: without NODELAY Nagle holds them back.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    # Connections made before Hypercorn starts, or faster than the loop accepts them (a thousand
    # agents starting at once), wait in the backlog; the kernel caps it at net.core.somaxconn.
    # At 1,024, a burst of 1,200 streams lost some of its connections (bench/loop_lag.py).
    sock.listen(LISTEN_BACKLOG)
    return sock


LISTEN_BACKLOG = 8192


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class Server:
    def __init__(
        self,
        app: Starlette,
        sockets: Sequence[socket.socket],
        grace: float,
        limits: ServingLimits | None = None,
    ) -> None:
        self.app = app
        self.sockets = list(sockets)
        self.grace = grace
        self.limits = limits or ServingLimits()
        self._stop = asyncio.Event()

    @property
    def sidecar(self) -> Stoppable:
        sc: Stoppable = self.app.state.sidecar
        return sc

    def stop(self) -> None:
        """Begin a graceful shutdown (idempotent; safe from a signal handler)."""
        if not self._stop.is_set():
            self.sidecar.begin_shutdown()
            self._stop.set()

    async def _shutdown_trigger(self) -> None:
        await self._stop.wait()
        # Hypercorn stops accepting, then waits up to `graceful_timeout` for open connections;
        # keep-alive connections idle between requests would hold it that long, so wait here
        # for the requests that matter — the ones in progress — and cut what the grace leaves,
        # before Hypercorn's own cancellation would leave them an empty 500 or a cut stream.
        await self.sidecar.drain(self.grace)

    async def run(self, *, handle_signals: bool = True) -> None:
        config = Config()
        config.graceful_timeout = 1.0  # requests were drained (or cut) above; idle sockets go fast
        config.accesslog = None
        config.errorlog = logging.getLogger("smart_proxy.hypercorn")
        # Hypercorn's one idle timer covers both the wait between keep-alive requests and the
        # time to receive a request head (it stops only once a head is complete).
        config.keep_alive_timeout = self.limits.header_timeout
        # Hypercorn owns (and closes) the sockets from here; they count the connections they
        # accept, which Hypercorn itself does not limit.
        cap = self.limits.connection_cap()
        listening = [CappedSocket.wrap(s, cap) for s in self.sockets]
        sockets = Sockets(secure_sockets=[], insecure_sockets=list(listening), quic_sockets=[])
        # Hypercorn types its ASGI callables more narrowly than Starlette's protocol does.
        guarded: Any = BodyGuard(self.app, self.limits.body_timeout)
        app = wrap_app(guarded, config.wsgi_max_body_size, "asgi")
        loop = asyncio.get_running_loop()
        restore_handler = quiet_accept_errors(loop)
        installed: list[signal.Signals] = []
        if handle_signals:
            for stopping in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(stopping, self.stop)
                installed.append(stopping)
            loop.add_signal_handler(signal.SIGHUP, self.sidecar.reload_soon)
            installed.append(signal.SIGHUP)
        try:
            await worker_serve(app, config, sockets=sockets, shutdown_trigger=self._shutdown_trigger)
        finally:
            for sock in listening:
                await sock.stop()
            restore_handler()
            for sig in installed:
                loop.remove_signal_handler(sig)
