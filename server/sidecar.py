"""The running sidecar: every long-lived part in one owner, started and stopped in order.

Owns the policy holder, the scheduler and its dispatcher, the one shared httpx client, the
upstream poller, the policy watcher, admin auth, metrics and the journal hand-off. The routes
reach it through `request.app.state.sidecar`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.cookiejar import Cookie, CookieJar, DefaultCookiePolicy
from pathlib import Path
from typing import Any, Protocol

import httpx
from starlette.requests import Request

from engine.scheduler import Scheduler
from policy.holder import PolicyHolder
from policy.load import CompiledFile
from schemas.journal import JournalRecord
from server.auth import AdminAuth
from server.consistency import PolicyConsistency
from server.dispatcher import Dispatcher
from server.holds import CUT_WAIT_S, Holds
from server.identity import ApiKeysError, IPAddress, client_address, parse_api_keys
from server.journal import StoreUnavailable
from server.metrics import Metrics
from server.reload import Reloader
from server.upstream import UpstreamPoller

log = logging.getLogger("smart_proxy")

DEFAULT_UPSTREAM = "http://127.0.0.1:11434"


class _NoCookies(DefaultCookiePolicy):
    def set_ok(self, cookie: Cookie, request: Any) -> bool:
        return False

    def return_ok(self, cookie: Cookie, request: Any) -> bool:
        return False


class Journal(Protocol):
    """What the sidecar needs of a journal (server.journal.Journal fits; so does NullJournal)."""

    def submit(self, record: JournalRecord) -> None: ...

    def admit(self, record: JournalRecord) -> None:
        """A request was accepted: `record` is what a crash before its end would leave."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def health(self) -> dict[str, Any]: ...

    async def analytics(self, hours: Any, group_by: Any, limit: Any) -> dict[str, Any]:
        """server.journal's report; AnalyticsError (400) or StoreUnavailable (503)."""
        ...


class NullJournal:
    """No journal configured: records are dropped."""

    def submit(self, record: JournalRecord) -> None:
        return None

    def admit(self, record: JournalRecord) -> None:
        return None

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def health(self) -> dict[str, Any]:
        return {"backend": "none"}

    async def analytics(self, hours: Any, group_by: Any, limit: Any) -> dict[str, Any]:
        raise StoreUnavailable("no journal is configured")


@dataclass(frozen=True, slots=True)
class Settings:
    """Connection settings and secrets: from the command line and the environment, not the file."""

    policy: Path
    upstream: str | None = None  # overrides the policy's backend.url when set
    env: Mapping[str, str] = field(default_factory=dict)  # where key_env / api_keys_env are read
    shutdown_grace: float = 30.0  # seconds in-flight requests get to finish on SIGTERM
    watch_interval: float = 1.0  # policy file content-hash check


class Sidecar:
    def __init__(
        self,
        settings: Settings,
        *,
        journal: Callable[[CompiledFile], Journal] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.holder = PolicyHolder(settings.policy)  # a bad file at start-up raises PolicyError
        self.scheduler = Scheduler(
            settings=self.holder.current, policy=lambda: self.holder.current.active, clock=clock
        )
        self.metrics = Metrics(lambda: self.scheduler)
        self.dispatcher = Dispatcher(self.scheduler, on_grant=self.metrics.granted)
        self.holds = Holds()  # every request in progress (an Exchange), for the shutdown
        self.auth = AdminAuth(settings.env, clock)
        # Made from the compiled file, so the journal follows its [journal] settings.
        self.journal: Journal = journal(self.holder.current) if journal else NullJournal()
        self.client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
            follow_redirects=False,
            trust_env=False,  # the upstream is named explicitly; no proxy env detours
            # One client serves everyone: a cookie Ollama (or a gateway) sets for one client's
            # request goes back to that client, and must never ride along on anyone else's.
            cookies=CookieJar(policy=_NoCookies()),
        )
        self.poller = UpstreamPoller(
            self.client,
            base_url=self.upstream_url,
            interval=lambda: self.holder.current.backend.poll_interval,
            on_state=self._upstream_state,
            on_health=lambda up: self.metrics.upstream_up.set(int(up)),
        )
        # Ollama's own reports against the policy's [backend]: /proxy/health, a gauge, the log.
        self.consistency = PolicyConsistency(
            lambda: self.holder.current.backend,
            on_change=lambda kind, on: self.metrics.policy_mismatch.labels(kind).set(int(on)),
        )
        self.reloader = Reloader(
            self.holder,
            on_swap=self._policy_swapped,
            on_result=lambda result: self.metrics.reloads.labels(result).inc(),
            interval=settings.watch_interval,
        )
        self.stopping = False
        self._keys_source: tuple[str, str] | None = None
        self.api_keys_problem: str | None = None  # why the API keys variable was refused
        self._keys: dict[str, str] = {}

    # -- life cycle -----------------------------------------------------------------------

    async def start(self) -> None:
        await self.journal.start()
        self.poller.start()
        self.reloader.start()
        log.info(
            "sidecar ready: upstream %s, policy %s version %s (active %s)",
            self.upstream_url(), self.holder.path, self.holder.current.version,
            self.holder.current.active.name,
        )

    def begin_shutdown(self) -> int:
        """Stop admitting; answer every queued request with 503. In-flight ones carry on."""
        self.stopping = True
        rejected = self.dispatcher.close()
        log.info("shutting down: %d queued requests answered 503, %d in flight",
                 rejected, self.dispatcher.in_flight)
        return rejected

    async def drain(self, within: float) -> None:
        """Wait, at most `within` seconds, for requests in progress to finish; then cut the rest:
        each answers its client in the dialect (503, or an error chunk mid-stream) and ends."""
        if await self.holds.wait_empty(within):
            return
        self.holds.cut_all()
        ended = await self.holds.wait_empty(CUT_WAIT_S)
        if cut := self.holds.interrupted():
            log.warning("shutdown grace (%gs) ran out: %d requests still in progress were cut",
                        within, cut)
        if not ended:
            log.warning("%d requests did not end within %gs of the cut; closing their connections",
                        len(self.holds), CUT_WAIT_S)

    async def stop(self) -> None:
        if not self.stopping:
            self.begin_shutdown()
        await self.reloader.stop()
        await self.poller.stop()
        await self.client.aclose()
        await self.journal.stop()

    # -- what routes ask --------------------------------------------------------------------

    @property
    def policy(self) -> CompiledFile:
        return self.holder.current

    def upstream_url(self) -> str:
        return (self.settings.upstream or self.holder.current.backend.url).rstrip("/")

    def address(self, request: Request) -> IPAddress | None:
        peer = request.client.host if request.client else None
        return client_address(peer, request.headers, self.holder.current.trusted_proxies)

    def is_admin(self, request: Request) -> bool:
        compiled = self.holder.current
        return self.auth.is_admin(
            address=self.address(request),
            networks=compiled.admin_networks,
            headers=request.headers,
            key_env=compiled.raw.admin.key_env,
        )

    def api_keys(self) -> dict[str, str]:
        name = self.holder.current.raw.clients.api_keys_env
        text = self.settings.env.get(name, "")
        if self._keys_source != (name, text):
            self._keys_source = (name, text)
            try:
                self._keys, self.api_keys_problem = parse_api_keys(text), None
            except ApiKeysError as exc:
                # Reached only when a reload names another variable (`serve` refuses a bad one
                # at start): fail closed — no key identifies anyone — and say so, once.
                self._keys, self.api_keys_problem = {}, f"{name}: {exc}"
                log.error("clients.api_keys_env %s; no API key identifies a client until it is fixed",
                          self.api_keys_problem)
        return self._keys

    # -- events -------------------------------------------------------------------------------

    def _upstream_state(self, ps: dict[str, Any], tags: dict[str, Any] | None) -> None:
        self.consistency.check(ps)  # first: a payload reconcile refuses must not skip it
        if tags is not None:
            self.scheduler.learn_tags(tags)
            self.metrics.learn_models(tags)
        self.scheduler.reconcile(ps)
        self.metrics.learn_models(ps)
        self.dispatcher.pump()

    def _policy_swapped(self, compiled: CompiledFile) -> None:
        self.scheduler.apply_settings(compiled)
        self.consistency.check(self.poller.last_ps)  # a fixed vram_gb clears health at once
        self.dispatcher.pump()
