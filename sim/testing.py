"""Run the emulator as a real HTTP server for other tests: a background thread with its own event
loop, Hypercorn on a free loopback port, stopped cleanly on exit.

    from sim.testing import running_emulator
    with running_emulator(preset="tiny-8gb", time_scale=0.001) as ollama:
        httpx.get(ollama.url + "/api/ps")
        ollama.stats()["loads"]
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
from starlette.applications import Starlette

from sim.app import build_app
from sim.config import Settings
from sim.driver import Emulator
from sim.serve import preset_settings, serve_app

T = TypeVar("T")


@dataclass
class RunningEmulator:
    """A live emulator: `url` to call, `app`/`emulator` to inspect, `stats()` for the counters."""

    url: str
    app: Starlette
    emulator: Emulator
    loop: asyncio.AbstractEventLoop = field(repr=False)

    def stats(self) -> dict[str, Any]:
        """GET /sim/stats."""
        response = httpx.get(self.url + "/sim/stats", timeout=10)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def reset_stats(self) -> None:
        httpx.post(self.url + "/sim/stats/reset", timeout=10).raise_for_status()

    def call(self, function: Callable[[], T]) -> T:
        """Run `function` on the emulator's loop thread (the backend is not thread-safe)."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(function())
            except BaseException as exc:  # handed to the caller's thread, not swallowed
                future.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        return future.result(timeout=10)


@contextmanager
def running_emulator(
    settings: Settings | None = None,
    *,
    preset: str = "tiny-8gb",
    time_scale: float = 0.0,
    host: str = "127.0.0.1",
    port: int = 0,
) -> Iterator[RunningEmulator]:
    """Start an emulator (given settings, else `preset` at `time_scale`) and yield it running."""
    chosen = settings if settings is not None else preset_settings(preset, time_scale)
    app = build_app(chosen)
    ready: concurrent.futures.Future[tuple[str, asyncio.AbstractEventLoop, asyncio.Event]]
    ready = concurrent.futures.Future()
    failure: list[BaseException] = []

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        await serve_app(app, host, port, shutdown_trigger=stop.wait,
                        on_ready=lambda url: ready.set_result((url, loop, stop)))

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # reported by the context manager below
            failure.append(exc)
            if not ready.done():
                ready.set_exception(exc)

    thread = threading.Thread(target=run, name="ollama-emulator", daemon=True)
    thread.start()
    url, loop, stop = ready.result(timeout=30)
    try:
        yield RunningEmulator(url=url, app=app, emulator=app.state.emulator, loop=loop)
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=30)
        if thread.is_alive():
            raise RuntimeError("the emulator thread did not stop within 30 s")
        if failure:
            raise failure[0]
