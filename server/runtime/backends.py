"""The Ollama servers the sidecar forwards to, as it sees them: one poller each (what it has
loaded, what it holds on disk), whether it answers, and its reports against the policy's promises.

A backend is down when its poll fails or a request could not connect to it; its poller keeps
polling on the policy's interval, and the first poll that succeeds brings it back. With several
backends the scheduler gives a down one no requests (server/sidecar.py); with one there is nowhere
else to send them, so they go and fail fast with a 502 as they always have.

A reload adds pollers for new backends and stops those of removed ones, in the same step as the
scheduler's change; `stop()` waits for every poller it ever started.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

import httpx

from policy.load import DEFAULT_BACKEND, NodeSettings
from server.runtime.consistency import KINDS, Kind, PolicyConsistency
from server.runtime.upstream import UpstreamPoller

log = logging.getLogger("smart_proxy.upstream")


@dataclass(slots=True)
class Backend:
    spec: NodeSettings
    poller: UpstreamPoller
    consistency: PolicyConsistency
    up: bool | None = None  # None until its first poll: neither up nor down has been said


class Backends:
    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        nodes: Callable[[], tuple[NodeSettings, ...]],
        url: Callable[[NodeSettings], str],
        interval: Callable[[], float],
        on_state: Callable[[str, dict[str, Any], dict[str, Any] | None], None],
        on_change: Callable[[str, bool, str | None], None],
        on_mismatch: Callable[[Kind, bool], None],
        listed_on: Callable[[str], AbstractSet[str]] = lambda model: frozenset(),
    ) -> None:
        """`on_state(name, ps, tags)`: a poll's answers. `on_change(name, up, error)`: a backend
        went down or came back. `on_mismatch(kind, on)`: whether any backend contradicts the policy
        that way (one gauge per kind)."""
        self._client = client
        self._nodes, self._url, self._interval = nodes, url, interval
        self._on_state, self._on_change, self._on_mismatch = on_state, on_change, on_mismatch
        self._listed_on = listed_on  # which backends' /api/tags list a model
        self._by_name: dict[str, Backend] = {}
        self._retired: dict[str, str] = {}  # removed backends' URLs, for requests they still run
        self._stopping: set[asyncio.Task[None]] = set()
        self._running = False
        self.sync()

    # -- life cycle --------------------------------------------------------------------------

    def start(self) -> None:
        self._running = True
        for backend in self._by_name.values():
            backend.poller.start()

    def sync(self) -> None:
        """After a reload: a poller for every backend the file lists, none for the others."""
        specs = {spec.name: spec for spec in self._nodes()}
        for name in [n for n in self._by_name if n not in specs]:
            gone = self._by_name.pop(name)
            # Its requests in flight (it retires) keep their URL; a later backend of the same
            # name takes it over.
            self._retired[name] = gone.spec.url.rstrip("/")  # several backends: no --upstream
            if (task := gone.poller.detach()) is not None:
                self._stopping.add(task)
                task.add_done_callback(self._stopping.discard)
                task.cancel()
        for name, spec in specs.items():
            self._retired.pop(name, None)
            if name in self._by_name:
                backend = self._by_name[name]
                moved = backend.spec.url.rstrip("/") != spec.url.rstrip("/")
                backend.spec = spec
                if moved:  # another server: what it holds now, rather than at the next tick
                    backend.poller.reread_tags()
                continue
            self._by_name[name] = backend = self._make(name, spec)
            if self._running:
                backend.poller.start()
        self._by_name = {name: self._by_name[name] for name in specs}  # the file's order
        self._mismatch_changed()

    async def stop(self) -> None:
        self._running = False
        tasks = [t for b in self._by_name.values() if (t := b.poller.detach()) is not None]
        tasks += list(self._stopping)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _make(self, name: str, spec: NodeSettings) -> Backend:
        def health(up: bool) -> None:
            self._health(name, up, poller.last_error)

        poller = UpstreamPoller(
            self._client, base_url=lambda: self.url(name), interval=self._interval,
            on_state=lambda ps, tags: self._state(name, ps, tags), on_health=health,
            name="" if name == DEFAULT_BACKEND else name,
        )
        # Checked only while listed (`_state`, `recheck`), so its spec is always there to read.
        consistency = PolicyConsistency(lambda: self._by_name[name].spec,
                                        on_change=lambda kind, on: self._mismatch_changed())
        return Backend(spec, poller, consistency)

    # -- what the sidecar asks ----------------------------------------------------------------

    def __iter__(self) -> Iterator[Backend]:
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)

    def get(self, name: str) -> Backend | None:
        return self._by_name.get(name)

    @property
    def first(self) -> Backend:
        return next(iter(self._by_name.values()))

    def url(self, name: str) -> str:
        """Where requests for this backend go: a removed one's last URL (its slot is still its
        own until the request ends); the first backend's for a name never listed."""
        backend = self._by_name.get(name)
        if backend is None and name in self._retired:
            return self._retired[name]
        return self.url_of((backend or self.first).spec)

    def url_of(self, spec: NodeSettings) -> str:
        return self._url(spec).rstrip("/")

    def any_up(self) -> bool:
        return any(b.poller.up for b in self._by_name.values())

    def pick_up(self, model: str | None = None) -> Backend:
        """Where a request no grant sends goes (a model list, a pull; a cloud model's, through
        some backend's Ollama): the first backend that answers and lists `model`, else the first
        that answers, else the first."""
        up = [b for b in self._by_name.values() if b.poller.up]
        listed = self._listed_on(model) if model else frozenset()
        return next((b for b in up if b.spec.name in listed), up[0] if up else self.first)

    def poll_soon(self, name: str | None = None) -> None:
        for backend in self._by_name.values():
            if name is None or backend.spec.name == name:
                backend.poller.poll_soon()

    def models_changed(self, name: str) -> None:
        """A pull, delete, create or copy went through to this backend: read its /api/tags now."""
        backend = self._by_name.get(name)
        if backend is not None:
            backend.poller.reread_tags()

    def failed(self, name: str, reason: str) -> None:
        """A request could not connect to this backend: down now, and polled at once to see."""
        backend = self._by_name.get(name)
        if backend is None:
            return
        backend.poller.down(reason)
        self._health(name, False, reason)
        backend.poller.poll_soon()

    def mismatches(self) -> list[str]:
        """Every backend's contradictions of the policy, named by backend when there are several."""
        several = len(self._by_name) > 1
        return [f"backend {b.spec.name}: {r}" if several else r
                for b in self._by_name.values() for r in b.consistency.reasons]

    def recheck(self) -> None:
        """After a reload: the last reports against the new file (a fixed vram_gb clears at once)."""
        for backend in self._by_name.values():
            backend.consistency.check(backend.poller.last_ps)

    # -- events -------------------------------------------------------------------------------

    def _state(self, name: str, ps: dict[str, Any], tags: dict[str, Any] | None) -> None:
        backend = self._by_name.get(name)
        if backend is None:
            return  # removed by a reload while its poll was on the way
        backend.consistency.check(ps)  # first: a payload the reconcile refuses must not skip it
        self._on_state(name, ps, tags)

    def _health(self, name: str, up: bool, error: str | None) -> None:
        backend = self._by_name.get(name)
        if backend is None or backend.up == up:
            return
        backend.up = up
        self._on_change(name, up, error)

    def _mismatch_changed(self) -> None:
        for kind in KINDS:
            self._on_mismatch(kind, any(b.consistency.active(kind) for b in self._by_name.values()))
