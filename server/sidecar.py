"""The running sidecar: every long-lived part in one owner, started and stopped in order.

Owns the policy holder, the scheduler and its dispatcher, the forwarded requests' pool to
Ollama, a poller per backend, the policy watcher, admin auth, metrics and the journal hand-off. The
routes reach it through `sidecar_of(request)`; a request's trip gets only `Parts`, and reads the policy
once (`Caller.compiled`), so a reload never splits one request between two files.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.cookiejar import Cookie, CookieJar, DefaultCookiePolicy
from typing import Any

import httpx
from starlette.requests import Request

from engine.eta import ServiceTimes
from engine.scheduler import Grant, Scheduler
from policy.errors import MISSING, Problem
from policy.holder import PolicyHolder, ReloadResult
from policy.load import CompiledFile, NodeSettings
from schemas.events import (
    BackendState,
    Dispatched,
    Enqueued,
    Heartbeat,
    LoadedModel,
    Reloaded,
    Residency,
)
from schemas.ticket import Ticket
from server.http.auth import AdminAuth
from server.http.identity import (
    ApiKeysError,
    Identity,
    IPAddress,
    client_address,
    identify,
    parse_api_keys,
)
from server.http.upstream_hop import UpstreamHop
from server.journal.protocol import Journal, NullJournal
from server.runtime.backends import Backends
from server.runtime.consistency import KINDS as MISMATCH_KINDS
from server.runtime.dispatcher import Dispatcher
from server.runtime.events import EventBus
from server.runtime.holds import CUT_WAIT_S, Holds
from server.runtime.live_stats import LiveStats
from server.runtime.reload import Reloader
from server.runtime.upstream import UpstreamPoller
from server.settings import Settings
from server.telemetry.loop_lag import LoopLagProbe
from server.telemetry.metrics import Metrics
from server.telemetry.tracing import Tracer, provider_from_env

log = logging.getLogger("smart_proxy")



@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent a request, worked out once, under the one policy snapshot it is served by."""

    compiled: CompiledFile
    address: IPAddress | None  # None: the forwarded address did not parse (never an admin)

    @property
    def ip(self) -> str | None:
        return str(self.address) if self.address is not None else None


@dataclass(frozen=True, slots=True)
class Parts:
    """What one request's trip uses of the long-lived parts (server/proxy/exchange.py)."""

    hop: UpstreamHop  # the forwarded requests' connection pool to Ollama
    dispatcher: Dispatcher
    journal: Journal
    holds: Holds
    metrics: Metrics
    events: EventBus
    tracer: Tracer  # OpenTelemetry spans, when configured (server/telemetry/tracing.py)
    service_times: ServiceTimes  # how long requests hold a slot: the queue-status estimates
    backends: Backends  # where each backend is, its health; an upstream error polls it at once


class _NoCookies(DefaultCookiePolicy):
    def set_ok(self, cookie: Cookie, request: Any) -> bool:
        return False

    def return_ok(self, cookie: Cookie, request: Any) -> bool:
        return False


class Sidecar:
    def __init__(
        self,
        settings: Settings,
        *,
        journal: Callable[[CompiledFile], Journal] | None = None,
        clock: Callable[[], float] = time.monotonic,
        tracer_provider: Any | None = None,
    ) -> None:
        """`tracer_provider`: an OpenTelemetry TracerProvider (tests give an in-memory one); None:
        from the OTEL_* variables in `settings.env` (TracingUnavailable if they ask for tracing
        and the `otel` extra is missing)."""
        self.settings = settings
        self.tracer = Tracer(tracer_provider if tracer_provider is not None else provider_from_env(settings.env))
        self.clock = clock
        # A bad file at start-up raises PolicyError.
        self.holder = PolicyHolder(settings.policy, accept=lambda c: servable(c, settings.upstream))
        # The scheduler reads its settings and its policy from one CompiledFile reference, which
        # a reload replaces in the same step as the holder's (`_swap`).
        self.scheduler = Scheduler(settings=self.holder.current, clock=clock)
        self.metrics = Metrics(lambda: self.scheduler, mismatch_kinds=MISMATCH_KINDS)
        # The live event stream (GET /proxy/events) and the dashboards' figures it feeds.
        self.live = LiveStats()
        self.events = EventBus(heartbeat=self._heartbeat, interval=settings.heartbeat_interval)
        self.events.listen(self.live)
        self._loaded: dict[str, tuple[tuple[str, float], ...]] = {}  # /api/ps at each backend's last poll
        self._labelled: set[str] = set()  # backends with their own metric series
        self.dispatcher = Dispatcher(self.scheduler, on_grant=self._granted, on_enqueue=self._enqueued)
        self.holds = Holds()  # every request in progress (an Exchange), for the shutdown
        self.auth = AdminAuth(settings.env, clock)
        # Made from the compiled file, so the journal follows its [journal] settings.
        self.journal: Journal = journal(self.holder.current) if journal else NullJournal()
        # Forwarded requests go through `hop` (aiohttp; server/http/upstream_hop.py says why);
        # the poller's few requests a second through this httpx client.
        self.hop = UpstreamHop()
        self.client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
            follow_redirects=False,
            trust_env=False,  # the upstream is named explicitly; no proxy env detours
            # One client serves everyone: a cookie Ollama (or a gateway) sets for one client's
            # request goes back to that client, and must never ride along on anyone else's.
            cookies=CookieJar(policy=_NoCookies()),
        )
        # A poller per backend; each one's reports against the policy's promises (/proxy/health,
        # a gauge, the log) and whether it answers (server/runtime/backends.py).
        self.backends = Backends(
            self.client,
            nodes=lambda: self.holder.current.nodes,
            url=self._node_url,
            interval=lambda: self.holder.current.backend.poll_interval,
            on_state=self._upstream_state,
            on_change=self._backend_changed,
            on_mismatch=lambda kind, on: self.metrics.policy_mismatch.labels(kind).set(int(on)),
            listed_on=lambda model: self.scheduler.is_cloud.listed_on(model),
        )
        self.reloader = Reloader(
            self.holder,
            on_swap=self._swap,
            on_result=self._reloaded,
            interval=settings.watch_interval,
        )
        self._label_backends()
        self.lag_probe = LoopLagProbe(self.metrics.loop_lag.observe)
        self.parts = Parts(
            hop=self.hop, dispatcher=self.dispatcher, journal=self.journal,
            holds=self.holds, metrics=self.metrics, events=self.events, tracer=self.tracer,
            service_times=ServiceTimes(), backends=self.backends,
        )
        self._keys_source: tuple[str, str] | None = None
        self.api_keys_problem: str | None = None  # why the API keys variable was refused
        self._keys: dict[str, str] = {}

    # -- life cycle -----------------------------------------------------------------------

    async def start(self) -> None:
        await self.journal.start()
        self.backends.start()
        self.reloader.start()
        self.lag_probe.start()
        self.events.start()
        log.info(
            "sidecar ready: upstream %s, policy %s version %s (active %s)",
            self.describe_upstream(), self.holder.path, self.holder.current.version,
            self.holder.current.active.name,
        )

    @property
    def stopping(self) -> bool:
        return self.dispatcher.closed

    def begin_shutdown(self) -> int:
        """Stop admitting; answer every queued request with 503. In-flight ones carry on."""
        rejected = self.dispatcher.close()
        self.events.close()
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

    def reload_soon(self) -> None:
        """SIGHUP: reload the policy file without blocking the signal handler."""
        self.reloader.reload_soon()

    async def stop(self) -> None:
        if not self.stopping:
            self.begin_shutdown()
        await self.reloader.stop()
        await self.events.stop()
        await self.lag_probe.stop()
        await self.backends.stop()
        await self.client.aclose()
        await self.hop.aclose()
        await self.journal.stop()
        await asyncio.to_thread(self.tracer.shutdown)  # flushes spans: network I/O, off the loop

    # -- what routes ask --------------------------------------------------------------------

    @property
    def compiled(self) -> CompiledFile:
        """The policy file in force now. A request reads it once, through `caller()`."""
        return self.holder.current

    def upstream_url(self, compiled: CompiledFile | None = None) -> str:
        """The one backend's URL (`--upstream` wins over the file's); with several, the first's."""
        backend = (compiled or self.holder.current).backend
        return (self.settings.upstream or backend.url).rstrip("/")

    def describe_upstream(self) -> str:
        """Where requests go, for the start-up line: the URL, or each backend's by name."""
        if len(self.backends) == 1:
            return self.upstream_url()
        return ", ".join(f"{b.spec.name}={self.backends.url(b.spec.name)}" for b in self.backends)

    def _node_url(self, spec: NodeSettings) -> str:
        # `--upstream` names the one server of a one-backend file (`servable` refuses it with more).
        if len(self.holder.current.nodes) == 1:
            return self.upstream_url()
        return spec.url

    @property
    def poller(self) -> UpstreamPoller:
        """The first backend's poller: what a view of one backend shows."""
        return self.backends.first.poller

    def caller(self, request: Request) -> Caller:
        compiled = self.holder.current
        peer = request.client.host if request.client else None
        address = client_address(peer, request.headers, compiled.clients.trusted_proxies)
        return Caller(compiled, address)

    def is_admin(self, request: Request, caller: Caller) -> bool:
        admin = caller.compiled.admin
        return self.auth.is_admin(
            address=caller.address, networks=admin.networks, headers=request.headers,
            key_env=admin.key_env,
        )

    def identify(self, request: Request, caller: Caller) -> Identity:
        """The client identity the policy's `clients` rules give this request."""
        clients = caller.compiled.clients
        return identify(
            headers=request.headers, address=caller.address, identify_by=clients.identify_by,
            header=clients.header, api_keys=self.api_keys(caller.compiled),
        )

    def api_keys(self, compiled: CompiledFile | None = None) -> dict[str, str]:
        name = (compiled or self.holder.current).clients.api_keys_env
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

    def _upstream_state(self, name: str, ps: dict[str, Any], tags: dict[str, Any] | None) -> None:
        if tags is not None:
            self.scheduler.learn_tags(tags, backend=name)
            self.metrics.learn_models(tags)
        self.scheduler.reconcile(ps, backend=name)
        self.metrics.learn_models(ps)
        self._residency_changed(name, ps)
        self.dispatcher.pump()

    def _backend_changed(self, name: str, up: bool, error: str | None) -> None:
        """A backend went down or came back: its gauge, the event stream, and — with several —
        the scheduler, which gives a down one nothing (with one there is nowhere else to go)."""
        self.metrics.backend_up.labels(name).set(int(up))
        self.metrics.upstream_up.set(int(self.backends.any_up()))
        self._apply_down()
        self.events.publish(BackendState(at=time.time(), backend=name, up=up, error=error))
        if len(self.backends) > 1:  # with one, the poller's own lines say it
            if up:
                log.info("backend %s is up", name)
            else:
                log.warning("backend %s is down: %s", name, error)
        self.dispatcher.pump()

    def _label_backends(self) -> None:
        """Every backend's series exist from the start (an alert sees the 0); a removed one's go."""
        names = {n.name for n in self.holder.current.nodes}
        for name in self._labelled - names:
            self.metrics.forget_backend(name)
        for name in names - self._labelled:
            self.metrics.backend_up.labels(name).set(0)
            self.metrics.redispatches.labels(name)
        self._labelled = names

    def _apply_down(self) -> None:
        several = len(self.backends) > 1  # listed ones: a retiring backend is no second choice
        for backend in self.backends:
            self.scheduler.set_down(backend.spec.name, several and backend.up is False)

    def _residency_changed(self, name: str, ps: dict[str, Any]) -> None:
        """A `residency` event when a backend's /api/ps lists other models (or sizes) than at its
        last poll. Lenient like the reconcile before it: an odd entry is shown as best it can be,
        never raised (the poller would log it every poll)."""
        gb = 1024**3
        models = [
            LoadedModel(
                name=str(m.get("name") or m.get("model") or "?"),
                size_gb=round(_number(m.get("size")) / gb, 3),
                vram_gb=round(_number(m.get("size_vram")) / gb, 3),
            )
            for m in ps.get("models") or () if isinstance(m, dict)
        ] if isinstance(ps.get("models") or (), list) else []
        listed = tuple(sorted((m.name, m.vram_gb) for m in models))
        before = self._loaded.get(name)
        self._loaded[name] = listed
        if (before is None and not listed) or before == listed:
            return
        names, was = {n for n, _ in listed}, {n for n, _ in before or ()}
        self.events.publish(Residency(
            at=time.time(), models=models, loaded=sorted(names - was), unloaded=sorted(was - names),
            backend=name,
        ))

    def _enqueued(self, ticket: Ticket) -> None:
        self.events.publish(Enqueued(
            at=time.time(), request_id=ticket.id, client=ticket.client, model=ticket.model,
            request_class=ticket.cls, endpoint=ticket.endpoint, depth=self.scheduler.depth,
        ))

    def _granted(self, grant: Grant) -> None:
        self.metrics.granted(grant)
        t = grant.ticket
        self.events.publish(Dispatched(
            at=time.time(), request_id=t.id, client=t.client, model=t.model, request_class=t.cls,
            score=grant.score.total, terms=grant.score.breakdown(), resident=grant.resident,
            action=grant.action, evicts=list(grant.evicts),
            waited_s=round(max(0.0, grant.granted_at - t.arrival), 3), depth=grant.queue_depth,
            backend=grant.backend, again=grant.again,
        ))

    def _reloaded(self, result: ReloadResult) -> None:
        self.metrics.reloads.labels("ok" if result.ok else "error").inc()
        self.events.publish(Reloaded(
            at=time.time(), ok=result.ok, changed=result.changed, version=result.version,
            error=result.error,
        ))

    def _heartbeat(self) -> Heartbeat:
        s = self.scheduler
        return self.live.heartbeat(
            at=time.time(), depth=s.depth, in_flight=s.in_flight_count,
            max_parallel=s.max_parallel, paused=s.paused,
        )

    def _swap(self, compiled: CompiledFile) -> None:
        """A reload, applied in one step on the event loop: nothing awaits between the holder's
        swap and these, so no request or dispatch sees half of the new file."""
        moved = self.upstream_url(compiled) != self.upstream_url(self.scheduler.settings)
        self.scheduler.apply_settings(compiled, new_host=moved)
        self.backends.sync()  # pollers for added backends, none for removed ones
        for name in set(self._loaded) - {n.name for n in compiled.nodes}:
            del self._loaded[name]
        self._label_backends()
        self.metrics.upstream_up.set(int(self.backends.any_up()))
        self._apply_down()
        if moved:
            self.backends.poll_soon()  # what the new Ollama holds, now rather than at the next tick
        self.journal.configure(compiled.journal)
        self.backends.recheck()  # a fixed vram_gb clears health at once
        self.dispatcher.pump()


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def sidecar_of(request: Request) -> Sidecar:
    sc: Sidecar = request.app.state.sidecar
    return sc


def servable(compiled: CompiledFile, upstream: str | None) -> list[Problem]:
    """What the sidecar refuses in a valid file: `--upstream` names one server, so it cannot
    stand for several backends."""
    if upstream is None or len(compiled.nodes) == 1:
        return []
    return [Problem("backends", MISSING, f"lists {len(compiled.nodes)} servers, and --upstream "
                    "(or SMART_PROXY_UPSTREAM) names one; drop --upstream, each backend's url is its own")]
