"""A real sidecar for end-to-end tests: Hypercorn on a free loopback port in a background thread
with its own event loop, in front of whatever upstream URL the test gives (usually the emulator).

    def test_x(sidecar_factory, emulator):
        proxy = sidecar_factory(upstream=emulator.url, policy=POLICY_TEXT)
        httpx.post(proxy.url + "/api/chat", json=...)
        proxy.health()["in_flight"]
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import pytest

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from policy.load import CompiledFile
    from schemas.journal import JournalRecord
    from server.runtime.serving import Server
    from server.sidecar import Sidecar

# server is imported inside the functions: this plugin loads before typeguard instruments our
# packages, and a module imported that early would escape the type checks.

T = TypeVar("T")

def make_policy(
    *,
    max_parallel: int = 2,
    vram_gb: float = 8,
    max_loaded_models: int = 2,
    queue_timeout: str = "30s",
    request_timeout: str = "30s",
    extra: str = "",
    terms: str | None = None,
) -> str:
    """A small, predictable policy: vram and fairness terms, instant polls; `extra` is appended."""
    default_terms = """
[policies.test.terms.vram]
loaded = 0
fits = 100
unknown_size = 600
swap = [{ up_to_gb = 16, points = 300 }, { up_to_gb = 40, points = 400 }]
swap_above = 800

[policies.test.terms.fairness]
per_queued = 5
per_recent = 5
window = "10m"
cap = 100
"""
    return f"""\
active = "test"

[backend]
max_parallel = {max_parallel}
num_parallel = 1
vram_gb = {vram_gb}
max_loaded_models = {max_loaded_models}
poll_interval = "200ms"
request_timeout = "{request_timeout}"
queue_timeout = "{queue_timeout}"
{terms if terms is not None else default_terms}
{extra}
"""


BASE_POLICY = make_policy()


class RecordingJournal:
    """A journal that keeps every record in memory, in hand-off order."""

    def __init__(self) -> None:
        self.records: list[JournalRecord] = []
        self.admitted: list[JournalRecord] = []  # the crash records, kept apart from the real ones
        self.settings: list[Any] = []  # every [journal] section a reload handed over

    def submit(self, record: JournalRecord) -> None:
        self.records.append(record)

    def admit(self, record: JournalRecord) -> None:
        self.admitted.append(record)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def health(self) -> dict[str, Any]:
        return {"backend": "memory", "state": "running", "connected": True, "records": len(self.records)}

    def configure(self, settings: Any) -> None:
        self.settings.append(settings)

    async def analytics(self, hours: Any, group_by: Any, limit: Any, **filters: Any) -> dict[str, Any]:
        from server.journal import StoreUnavailable

        raise StoreUnavailable("the recording journal keeps no database")

    async def lookup(self, request_id: str) -> JournalRecord | None:
        for record in reversed(self.records):
            if request_id in (record.request_id, record.client_request_id):
                return record
        return None


@dataclass
class RunningSidecar:
    url: str
    urls: list[str]
    app: Starlette
    policy_path: Path
    loop: asyncio.AbstractEventLoop = field(repr=False)
    server: Server = field(repr=False)
    journal: RecordingJournal = field(default_factory=RecordingJournal)  # unless one was given

    @property
    def sidecar(self) -> Sidecar:
        sc: Sidecar = self.app.state.sidecar
        return sc

    def call(self, function: Callable[[], T]) -> T:
        """Run `function` on the sidecar's loop thread (the scheduler is not thread-safe)."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(function())
            except BaseException as exc:
                future.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        return future.result(timeout=10)

    def health(self) -> dict[str, Any]:
        response = httpx.get(self.url + "/proxy/health", timeout=10)
        result: dict[str, Any] = response.json()
        return result

    def queue(self) -> dict[str, Any]:
        response = httpx.get(self.url + "/proxy/queue", timeout=10)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def admin(self, method: str, path: str) -> httpx.Response:
        return httpx.request(method, self.url + path, timeout=10)

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], within: float = 10.0) -> dict[str, Any]:
        """Poll /proxy/health until `predicate(health)` holds; AssertionError after `within` s."""
        deadline = time.monotonic() + within
        while True:
            health = self.health()
            if predicate(health):
                return health
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not reached within {within}s: {health}")
            time.sleep(0.01)

    def wait_depth(self, depth: int, within: float = 10.0) -> None:
        self.wait_for(lambda h: h["queue_depth"] == depth, within)

    def wait_idle(self, within: float = 10.0) -> None:
        self.wait_for(lambda h: h["in_flight"] == 0 and h["queue_depth"] == 0, within)


@contextmanager
def running_sidecar(
    policy_path: Path,
    upstream: str | None,
    *,
    env: Mapping[str, str] | None = None,
    hosts: Sequence[str] = ("127.0.0.1",),
    grace: float = 5.0,
    watch_interval: float = 0.1,
    heartbeat_interval: float = 5.0,
    journal: Callable[[CompiledFile], Any] | None = None,
    tracer_provider: Any | None = None,
) -> Iterator[RunningSidecar]:
    """`journal`: a factory for a real journal; by default a RecordingJournal is used."""
    from server.app import create_app
    from server.runtime.serving import Server, listen, url_of
    from server.settings import Settings

    settings = Settings(
        policy=policy_path, upstream=upstream, env=dict(env or {}),
        shutdown_grace=grace, watch_interval=watch_interval, heartbeat_interval=heartbeat_interval,
    )
    recording = RecordingJournal()

    def make_journal(compiled: CompiledFile) -> RecordingJournal:
        return recording

    app = create_app(settings, journal=journal or make_journal, tracer_provider=tracer_provider)
    sockets = [listen(host, 0) for host in hosts]
    urls = [url_of(s) for s in sockets]
    server = Server(app, sockets, grace=grace)
    loops: concurrent.futures.Future[asyncio.AbstractEventLoop] = concurrent.futures.Future()
    failure: list[BaseException] = []

    async def main() -> None:
        loops.set_result(asyncio.get_running_loop())
        await server.run(handle_signals=False)

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # re-raised in the test's thread below
            failure.append(exc)
            if not loops.done():
                loops.set_exception(exc)

    thread = threading.Thread(target=run, name="sidecar", daemon=True)
    thread.start()
    loop = loops.result(timeout=30)
    running = RunningSidecar(urls[0], urls, app, policy_path, loop, server, recording)
    deadline = time.monotonic() + 30
    while True:  # ready once the lifespan has started and the first poll has been made
        try:
            if httpx.get(urls[0] + "/proxy/health", timeout=5).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or failure:
            break
        time.sleep(0.01)
    try:
        yield running
    finally:
        if thread.is_alive():
            loop.call_soon_threadsafe(server.stop)
        thread.join(timeout=30)
        if thread.is_alive():
            raise RuntimeError("the sidecar thread did not stop within 30 s")
        if failure:
            raise failure[0]


SidecarFactory = Callable[..., RunningSidecar]


@contextmanager
def cli_process(
    args: Sequence[str], env: Mapping[str, str], cwd: Path | None = None
) -> Iterator[subprocess.Popen[str]]:
    """`smart-proxy ARGS` in a process of its own (run from `cwd`) with stderr piped (its log);
    killed and closed however the test ends."""
    process = subprocess.Popen(
        [sys.executable, "-m", "server.cli", *args], cwd=cwd, env=dict(env), stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()


def wait_until(check: Callable[[], bool], *, within: float, what: str) -> None:
    """Poll `check` until it holds; AssertionError naming `what` after `within` seconds. For state
    in another process (a sidecar under `cli_process`), which offers no event to wait on."""
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {within}s"
        time.sleep(0.05)


def wait_upstream_up(url: str, within: float = 20.0) -> None:
    """Poll a sidecar's /proxy/health until it has seen Ollama; AssertionError after `within` s."""
    wait_until(lambda: httpx.get(url + "/proxy/health", timeout=5).json()["upstream"]["up"] is True,
               within=within, what=f"{url} seeing Ollama")


async def health_async(client: httpx.AsyncClient, proxy: RunningSidecar) -> dict[str, Any]:
    result: dict[str, Any] = (await client.get(proxy.url + "/proxy/health")).json()
    return result


async def wait_async(
    client: httpx.AsyncClient,
    proxy: RunningSidecar,
    predicate: Callable[[dict[str, Any]], bool],
    within: float = 10.0,
) -> dict[str, Any]:
    """Poll /proxy/health from an async test until `predicate(health)` holds."""
    deadline = time.monotonic() + within
    while True:
        health = await health_async(client, proxy)
        if predicate(health):
            return health
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached within {within}s: {health}")
        await asyncio.sleep(0.005)


async def queue_in_order(
    client: httpx.AsyncClient,
    proxy: RunningSidecar,
    calls: Sequence[tuple[str, dict[str, Any], dict[str, str]]],
) -> list[asyncio.Task[httpx.Response]]:
    """Send (path, json, headers) requests one at a time, each only once the previous is queued,
    so their arrival order is exactly the list's. The queue must be paused."""
    start = (await health_async(client, proxy))["queue_depth"]
    tasks = []
    for i, (path, body, headers) in enumerate(calls, start=1):
        tasks.append(asyncio.create_task(client.post(proxy.url + path, json=body, headers=headers)))
        await wait_async(client, proxy, lambda h, n=start + i: h["queue_depth"] == n)
    return tasks


@pytest.fixture
def sidecar_factory(tmp_path: Path) -> Iterator[SidecarFactory]:
    """Start sidecars (policy text or path, upstream URL); all are stopped after the test."""
    with contextlib.ExitStack() as stack:
        counter = iter(range(1000))

        def start(*, upstream: str | None, policy: str = BASE_POLICY, **kwargs: Any) -> RunningSidecar:
            """`upstream=None`: the policy's own URLs (several [backends])."""
            path = tmp_path / f"policy-{next(counter)}.toml"
            path.write_text(policy, encoding="utf-8")
            return stack.enter_context(running_sidecar(path, upstream, **kwargs))

        yield start


# An emulated node whose slow:700b loads in under a second and then generates a few tokens a
# second (time scale 0.3; 700B-class speed), so its answers outlast a kill or a shutdown grace.
# Two slots per model. Tests append the other models they need. A 4k context, as set with
# OLLAMA_CONTEXT_LENGTH: at the 128k Ollama picks for a 96 GB card, a 70B model would not fit.
SLOW_NODE = """
[node]
vram_gb = 96
context_length = 4096
max_loaded_models = 4
num_parallel = 2
time_scale = 0.3
[[models]]
name = "slow:700b"
size_gb = 0.5
parameter_size = "700B"
quantization = "Q4_K_M"
family = "llama"
"""


@pytest.fixture
def slow_emulator() -> Iterator[Any]:
    """An emulator on SLOW_NODE: slow:700b takes most of a second to load, then a few tokens a
    second."""
    from sim.config import load_text
    from sim.testing import running_emulator

    with running_emulator(load_text(SLOW_NODE, "slow-node", time.time())) as emulator:
        yield emulator

