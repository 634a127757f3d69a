"""Serving the emulator with Hypercorn, in the caller's event loop, until cancelled or told to stop.

`smart-proxy sim` runs it as the whole process; `smart-proxy demo` and tests run it beside other
work. The listening socket is bound here (port 0 → a free port) so the caller learns the URL
before the first request and no port is ever guessed.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config
from starlette.applications import Starlette

from sim.app import build_app
from sim.config import Settings, load_text
from sim.driver import Emulator
from sim.presets import PRESETS


def preset_settings(name: str, time_scale: float | None = None) -> Settings:
    """A built-in preset, optionally at another time scale. KeyError for an unknown name."""
    settings = load_text(PRESETS[name], f"preset {name}", time.time())
    return settings if time_scale is None else settings.with_time_scale(time_scale)


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket; connections made before Hypercorn starts wait in the backlog."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Streams are one small write per token: without NODELAY Nagle holds them back.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(1024)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def hypercorn_config(sock: socket.socket, quiet: bool) -> Config:
    config = Config()
    config.bind = [f"fd://{sock.detach()}"]  # Hypercorn owns (and closes) the socket from here
    config.accesslog = None if quiet else "-"
    config.loglevel = "WARNING" if quiet else "INFO"
    config.keep_alive_timeout = 75.0  # like Go's default idle timeout: proxies keep connections
    config.graceful_timeout = 1.0
    return config


async def serve_app(
    app: Starlette,
    host: str = "127.0.0.1",
    port: int = 11434,
    *,
    shutdown_trigger: Callable[[], Awaitable[object]] | None = None,
    on_ready: Callable[[str], None] | None = None,
    quiet: bool = True,
) -> None:
    """Serve `app` (from build_app) until `shutdown_trigger` returns or the task is cancelled."""
    await serve_on(app, bind_socket(host, port), shutdown_trigger=shutdown_trigger,
                   on_ready=on_ready, quiet=quiet)


async def serve_on(
    app: Starlette,
    sock: socket.socket,
    *,
    shutdown_trigger: Callable[[], Awaitable[object]] | None = None,
    on_ready: Callable[[str], None] | None = None,
    quiet: bool = True,
) -> None:
    """Serve `app` on a socket already bound (bind_socket), until told to stop or cancelled."""
    url = url_of(sock)
    config = hypercorn_config(sock, quiet)
    forever = asyncio.Event()
    emulator: Emulator = app.state.emulator
    if on_ready is not None:
        on_ready(url)
    try:
        asgi: Any = app  # Hypercorn types ASGI callables more narrowly than Starlette does
        trigger: Any = shutdown_trigger or forever.wait
        await hypercorn_serve(asgi, config, shutdown_trigger=trigger)
    finally:
        emulator.close()


class NodeBindError(OSError):
    """A node's port could not be bound: which port, and why."""

    def __init__(self, port: int, cause: OSError) -> None:
        super().__init__(cause.errno, cause.strerror)
        self.port = port
        self.cause = cause


def bind_nodes(host: str, port: int, nodes: int) -> list[socket.socket]:
    """Sockets for `nodes` emulated servers: port, port + 1, … (port 0: any free port each). All
    are bound before any serves, so a busy port fails the whole start, not the third node."""
    bound: list[socket.socket] = []
    for i in range(nodes):
        at = 0 if port == 0 else port + i
        try:
            bound.append(bind_socket(host, at))
        except OSError as exc:
            for sock in bound:
                sock.close()
            raise NodeBindError(at, exc) from exc
    return bound


async def serve_nodes(
    settings: Settings,
    sockets: list[socket.socket],
    *,
    shutdown_trigger: Callable[[], Awaitable[object]],
    on_ready: Callable[[list[str]], None] | None = None,
    quiet: bool = True,
) -> None:
    """One emulated Ollama per socket, each with its own state (what it has loaded, its queue):
    the servers of a box with one Ollama per GPU, or of a small cluster, from one config."""
    if on_ready is not None:
        on_ready([url_of(s) for s in sockets])
    await asyncio.gather(*(serve_on(build_app(settings), s, shutdown_trigger=shutdown_trigger,
                                    quiet=quiet) for s in sockets))


async def serve_emulator(
    settings: Settings,
    host: str = "127.0.0.1",
    port: int = 11434,
    *,
    shutdown_trigger: Callable[[], Awaitable[object]] | None = None,
    on_ready: Callable[[str], None] | None = None,
    quiet: bool = True,
) -> None:
    """The in-process entry: an emulated Ollama on host:port in the current event loop."""
    await serve_app(build_app(settings), host, port, shutdown_trigger=shutdown_trigger,
                    on_ready=on_ready, quiet=quiet)
