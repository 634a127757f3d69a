"""What Ollama really has loaded: `/api/ps` and `/api/tags` polled on the policy's interval with the
shared client, fed to the engine's `reconcile`/`learn_tags`, and the upstream's health.

A dispatch never waits for a poll: the engine's optimistic residency model covers the gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx
import msgspec

from server.http.upstream_hop import describe

log = logging.getLogger("smart_proxy.upstream")


class UpstreamPoller:
    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        base_url: Callable[[], str],
        interval: Callable[[], float],
        on_state: Callable[[dict[str, Any], dict[str, Any] | None], None],
        on_health: Callable[[bool], None],
        name: str = "",
    ) -> None:
        """`name`: the backend's, for the log (several backends each have a poller)."""
        self._client = client
        self._where = f" (backend {name})" if name else ""
        self._base_url = base_url
        self._interval = interval
        self._on_state = on_state
        self._on_health = on_health
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.up = False
        self.last_error: str | None = None
        self.last_ok: float | None = None  # monotonic
        self.last_ps: dict[str, Any] | None = None
        self._tags_at = -1e18
        self._warned = False  # this outage's first failed poll has been logged

    def last_poll_age(self) -> float | None:
        return None if self.last_ok is None else max(0.0, time.monotonic() - self.last_ok)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="upstream-poller")

    def poll_soon(self) -> None:
        """Poll now rather than at the next tick (after an upstream error on the request path)."""
        self._wake.set()

    def reread_tags(self) -> None:
        """Poll now, /api/tags too (read only every few polls otherwise): the server's models
        changed (a pull through the sidecar), or it is another server (its URL changed)."""
        self._tags_at = -1e18
        self._wake.set()

    async def stop(self) -> None:
        if (task := self.detach()) is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def detach(self) -> asyncio.Task[None] | None:
        """Hand its task to whoever stops it (a reload removing its backend cannot await)."""
        task, self._task = self._task, None
        return task

    def down(self, reason: str) -> None:
        """A request could not connect: down until a poll succeeds (whose failure is logged)."""
        if self.up:  # a new outage: its first failed poll is logged (not once per refused request)
            self._warned = False
        self.up, self.last_error = False, reason
        self._tags_at = -1e18

    async def _run(self) -> None:
        while True:
            await self.poll_once()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._interval())

    async def _get(self, path: str) -> dict[str, Any]:
        response = await self._client.get(self._base_url() + path, timeout=10.0)
        response.raise_for_status()
        payload = msgspec.json.decode(response.content)
        if not isinstance(payload, dict):
            raise ValueError(f"{path} answered {type(payload).__name__}, not an object")
        return payload

    async def poll_once(self) -> None:
        try:
            ps = await self._get("/api/ps")
            tags = None
            # Sizes on disk change only on pull/delete: read them every few polls.
            if time.monotonic() - self._tags_at >= 4 * self._interval():
                tags = await self._get("/api/tags")
                self._tags_at = time.monotonic()
        except Exception as exc:
            # Not only HTTPError: a reloaded backend.url httpx cannot use fails with InvalidURL
            # (a bad host) or an ExceptionGroup (a port above 65535). Whatever it is, the poller
            # must survive it, or the sidecar would never see Ollama again.
            # An exception is always truthy, so `exc or name` kept an empty message empty; say
            # which exception it was. (Not the URL: /proxy/health is public and shows this.)
            reason = describe(exc)
            if self.up or not self._warned:
                log.warning("Ollama poll failed%s: %s", self._where, reason)
                self._warned = True
            self.up = False
            self.last_error = reason
            self._tags_at = -1e18  # re-read tags as soon as it is back
            self._on_health(False)
            return
        if not self.up:
            log.info("Ollama is up at %s%s", self._base_url(), self._where)
        self.up, self.last_error, self.last_ok, self.last_ps = True, None, time.monotonic(), ps
        self._warned = False
        self._on_health(True)
        try:
            self._on_state(ps, tags)
        except (KeyError, TypeError, ValueError) as exc:
            # A malformed payload must not stop the poller; the engine keeps its model.
            log.warning("could not use Ollama's /api/ps or /api/tags: %s", exc)
