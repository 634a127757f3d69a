"""Prometheus metrics, one registry per app instance (so tests can run several sidecars).

Named by Prometheus' guide: one `smart_proxy_` prefix, base units (`_seconds`, `_bytes`), `_total`
on counters (prometheus_client adds it), a `smart_proxy_build_info` gauge. Every metric is listed,
with its type and labels, in docs/sidecar.md (a test compares the two).

Labels stay bounded. Model names come from clients, so a label carries a model only once Ollama
has reported it (in /api/tags or /api/ps), and at most MAX_MODEL_LABELS of them: the rest, and
every name Ollama never reported, count as "other". Classes come from the policy file; endpoints
are the routes, with parameters folded into the route's template.
"""

from __future__ import annotations

import contextlib
import platform
import typing
from collections import Counter as Tally
from collections.abc import Callable, Iterable
from importlib import metadata

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from engine.residency import Action
from engine.scheduler import Grant, Scheduler
from schemas.model_name import canonical_model
from server.telemetry.model_server_protocol import ModelServerProtocol

# The `_created` series prometheus_client adds beside every counter and histogram double the
# series count and tell a scraper nothing it needs here.
disable_created_metrics()

MAX_MODEL_LABELS = 100  # distinct model labels; more models than this count as "other"
GB = 1024**3
_WAIT_BUCKETS = (0.005, 0.05, 0.25, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_FIRST_BYTE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_DURATION_BUCKETS = (0.05, 0.25, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


# Paths with a parameter in them are counted under their route, so the label stays bounded.
_TEMPLATES = (
    ("/v1/models/", "/v1/models/{model}"),
    ("/api/blobs/", "/api/blobs/{digest}"),
    ("/api/experimental/", "/api/experimental/{path}"),
)


def endpoint_label(path: str) -> str:
    for prefix, template in _TEMPLATES:
        if path.startswith(prefix):
            return template
    return path


class _QueueCollector(Collector):
    """Read at scrape time from the scheduler, so the gauges can never drift from the queue."""

    def __init__(self, scheduler: Callable[[], Scheduler], label: Callable[[str], str]) -> None:
        self._scheduler = scheduler
        self._label = label

    def collect(self) -> Iterable[Metric]:
        scheduler = self._scheduler()
        depth = GaugeMetricFamily(
            "smart_proxy_queue_depth", "Requests waiting in the queue, by model", labels=["model"]
        )
        # From the per-class model counts, not the tickets: an endpoint picker scrapes every
        # 50 ms, and this runs on the event loop whatever the queue's length.
        counts: Tally[str] = Tally()
        for cls in scheduler.waiting_classes():
            for model, n in scheduler.waiting_models(cls).items():
                counts[self._label(model)] += n
        for model, count in sorted(counts.items()):
            depth.add_metric([model], count)
        yield depth
        yield GaugeMetricFamily(
            "smart_proxy_in_flight", "Requests sent to Ollama and not finished", value=scheduler.in_flight_count
        )
        yield GaugeMetricFamily(
            "smart_proxy_max_parallel", "Slots: requests allowed in flight at once", value=scheduler.max_parallel
        )
        yield GaugeMetricFamily(
            "smart_proxy_paused", "1 while dispatching is paused", value=int(scheduler.paused)
        )
        nodes = [n for n in scheduler.backends.values() if not n.retiring]
        yield GaugeMetricFamily(
            "smart_proxy_vram_used_bytes",
            "VRAM the residency model counts as taken by loaded and loading models (every backend's)",
            value=sum(n.residency.vram_used() for n in nodes) * GB,
        )
        yield GaugeMetricFamily(
            "smart_proxy_vram_total_bytes", "VRAM the policy's vram_gb gives Ollama (every backend's)",
            value=sum(n.residency.vram_gb for n in nodes) * GB,
        )
        yield from _per_backend(scheduler)


def _per_backend(scheduler: Scheduler) -> Iterable[Metric]:
    """The same figures for each backend, labelled by its name (a removed one until it is idle)."""
    families = {
        "in_flight": GaugeMetricFamily("smart_proxy_backend_in_flight",
                                       "Local requests running on the backend", labels=["backend"]),
        "slots": GaugeMetricFamily("smart_proxy_backend_max_parallel",
                                   "The backend's slots (its max_parallel)", labels=["backend"]),
        "used": GaugeMetricFamily("smart_proxy_backend_vram_used_bytes",
                                  "VRAM taken on the backend, as the residency model counts it",
                                  labels=["backend"]),
        "total": GaugeMetricFamily("smart_proxy_backend_vram_total_bytes",
                                   "The backend's vram_gb", labels=["backend"]),
        "loaded": GaugeMetricFamily("smart_proxy_backend_loaded_models",
                                    "Models loaded or loading on the backend", labels=["backend"]),
    }
    for node in scheduler.backends.values():
        r = node.residency
        families["in_flight"].add_metric([node.name], node.local)
        families["slots"].add_metric([node.name], 0 if node.retiring else node.slots)
        families["used"].add_metric([node.name], r.vram_used() * GB)
        families["total"].add_metric([node.name], r.vram_gb * GB)
        families["loaded"].add_metric([node.name], len(r.resident()))
    yield from families.values()


class Metrics:
    def __init__(
        self, scheduler: Callable[[], Scheduler], *, mismatch_kinds: Iterable[str] = ()
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.known_models: set[str] = set()
        r = self.registry
        self.requests = Counter(
            "smart_proxy_requests",
            "Requests by endpoint, model and outcome",
            ["endpoint", "model", "status"],
            registry=r,
        )
        self.queue_wait = Histogram(
            "smart_proxy_queue_wait_seconds", "Time from arrival to dispatch, by model and class",
            ["model", "class"], buckets=_WAIT_BUCKETS, registry=r,
        )
        self.first_byte = Histogram(
            "smart_proxy_time_to_first_byte_seconds",
            "Time from arrival to Ollama's first byte (queue wait and any model load included)",
            ["model"], buckets=_FIRST_BYTE_BUCKETS, registry=r,
        )
        self.input_tokens = Counter(
            "smart_proxy_input_tokens", "Prompt tokens Ollama reported evaluating", ["model"], registry=r
        )
        self.output_tokens = Counter(
            "smart_proxy_output_tokens", "Tokens Ollama reported generating", ["model"], registry=r
        )
        Gauge(
            "smart_proxy_build_info", "Always 1; the labels say which sidecar is running",
            ["version", "python"], registry=r,
        ).labels(_version(), platform.python_version()).set(1)
        self.duration = Histogram(
            "smart_proxy_request_duration_seconds", "Time from arrival to the last byte", ["model"],
            buckets=_DURATION_BUCKETS, registry=r,
        )
        self.dispatches = Counter(
            "smart_proxy_dispatches",
            "Dispatches by what Ollama had to do: attach to a resident model, load, swap, or reload",
            ["action"],
            registry=r,
        )
        self.evictions = Counter(
            "smart_proxy_evictions", "Models the engine expected Ollama to unload", registry=r
        )
        self.num_ctx_rewrites = Counter(
            "smart_proxy_num_ctx_rewrites",
            "Requests sent to a loaded runner with its num_ctx instead of the asked one (normalisation)",
            ["model"],
            registry=r,
        )
        self.loop_lag = Histogram(
            "smart_proxy_event_loop_lag_seconds",
            "How late a timer fires on the event loop every stream shares (sampled 20 times a second)",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=r,
        )
        self.reloads = Counter(
            "smart_proxy_policy_reloads", "Policy reload attempts by result", ["result"], registry=r
        )
        self.upstream_up = Gauge("smart_proxy_upstream_up",
                                 "1 if the last poll of Ollama (of any one backend) succeeded", registry=r)
        self.backend_up = Gauge("smart_proxy_backend_up",
                                "1 while the backend answers (its last poll succeeded, no connection refused since)",
                                ["backend"], registry=r)
        self.backend_dispatches = Counter(
            "smart_proxy_backend_dispatches", "Dispatches to each backend by what Ollama had to do",
            ["backend", "action"], registry=r,
        )
        self.redispatches = Counter(
            "smart_proxy_redispatches",
            "Requests sent back to the queue because their backend refused the connection", ["backend"],
            registry=r,
        )
        self.policy_mismatch = Gauge(
            "smart_proxy_policy_mismatch",
            "1 while Ollama's /api/ps contradicts the policy's [backend] (vram_gb, max_loaded_models)",
            ["kind"],
            registry=r,
        )
        for kind in mismatch_kinds:  # both series exist from the start, so an alert sees the 0
            self.policy_mismatch.labels(kind).set(0)
        r.register(_QueueCollector(scheduler, self.model_label))
        r.register(ModelServerProtocol(scheduler, self.known_models.__contains__))

    def forget_backend(self, name: str) -> None:
        """A reload removed the backend: its series go (a dashboard would show it forever)."""
        for labelled, labels in ((self.backend_up, (name,)), (self.redispatches, (name,)),
                                 *((self.backend_dispatches, (name, a)) for a in typing.get_args(Action))):
            with contextlib.suppress(KeyError):
                labelled.remove(*labels)

    def model_label(self, model: str) -> str:
        return model if model in self.known_models else "other"

    def learn_models(self, *payloads: dict[str, object]) -> None:
        for payload in payloads:
            models = payload.get("models")
            if not isinstance(models, list):
                continue
            for m in models:
                if isinstance(m, dict):
                    for key in ("name", "model"):
                        if isinstance(m.get(key), str) and len(self.known_models) < MAX_MODEL_LABELS:
                            # Requests carry canonical names (server/proxy/routes.py), so must the labels.
                            self.known_models.add(canonical_model(str(m[key])))

    def granted(self, grant: Grant) -> None:
        self.dispatches.labels(grant.action).inc()
        if grant.backend:  # a cloud model's runs on no backend
            self.backend_dispatches.labels(grant.backend, grant.action).inc()
        if grant.evicts:
            self.evictions.inc(len(grant.evicts))
        if grant.again:  # sent back after a refused connection: its wait was observed once
            return
        self.queue_wait.labels(self.model_label(grant.ticket.model), grant.ticket.cls).observe(
            max(0.0, grant.granted_at - grant.ticket.arrival)
        )

    def num_ctx_rewritten(self, model: str) -> None:
        """A request was forwarded with its loaded runner's num_ctx (normalisation)."""
        self.num_ctx_rewrites.labels(self.model_label(model)).inc()

    def started(self, model: str, seconds: float) -> None:
        """Ollama's first byte of a scheduled request, `seconds` after it arrived."""
        self.first_byte.labels(self.model_label(model)).observe(max(0.0, seconds))

    def finished(
        self, path: str, model: str | None, status: str, seconds: float,
        counters: dict[str, int] | None = None,
    ) -> None:
        label = self.model_label(model) if model else "none"
        self.requests.labels(endpoint_label(path), label, status).inc()
        if model:
            self.duration.labels(label).observe(seconds)
            if counters:
                if (prompt := counters.get("prompt_eval_count")) is not None:
                    self.input_tokens.labels(label).inc(prompt)
                if (output := counters.get("eval_count")) is not None:
                    self.output_tokens.labels(label).inc(output)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _version() -> str:
    try:
        return metadata.version("ollama-smart-proxy")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"
