"""The Kubernetes Gateway API Inference Extension's model server protocol, on the sidecar's
/metrics: the gauges an endpoint picker (EPP) scrapes from every pod of an InferencePool to choose
where a request goes (docs/many-hosts.md says which field maps how, and what cannot map).

The protocol fixes the semantics and lets the names vary, but the EPP's defaults are vLLM's names,
so the sidecar uses them: a pod of Ollama + sidecar joins a pool with no EPP flags to change.

- queued requests: the sidecar's waiting local requests (Ollama's own queue stays empty: the
  sidecar sends it only what it can start);
- running requests: local requests the sidecar has sent to Ollama and that have not ended;
- "KV-cache utilisation": VRAM in use over the policy's `vram_gb` — the share of the card the
  loaded models hold, which is what decides whether one more model fits;
- LoRA adapters: models. Running = loaded or loading on this Ollama; waiting = models requests
  wait for that are not; `max_lora` = `max_loaded_models`. The EPP's adapter affinity then sends a
  request where its model is already loaded.

Read at scrape time from the scheduler, like the queue gauges, so they never drift from it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from engine.scheduler import Scheduler

QUEUED = "vllm:num_requests_waiting"
RUNNING = "vllm:num_requests_running"
CACHE = "vllm:kv_cache_usage_perc"
CACHE_BEFORE_V1 = "vllm:gpu_cache_usage_perc"  # the name EPPs before vLLM's v1 engine read
ADAPTERS = "vllm:lora_requests_info"
# Every name, for the deployment examples' test (the EPP's flags must name what is exposed).
NAMES = (QUEUED, RUNNING, CACHE, CACHE_BEFORE_V1, ADAPTERS)
ADAPTER_LABELS = ("max_lora", "running_lora_adapters", "waiting_lora_adapters")
MAX_LISTED = 32  # models in one adapter list: the label value stays bounded


class ModelServerProtocol(Collector):
    def __init__(
        self, scheduler: Callable[[], Scheduler], known: Callable[[str], bool],
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`known(model)`: Ollama has reported the model (a client's made-up name never becomes
        a label value, as with every other model label)."""
        self._scheduler = scheduler
        self._known = known
        self._clock = clock

    def collect(self) -> Iterable[Metric]:
        s = self._scheduler()
        # One sidecar, one "model server" to the picker: with several backends, their sums.
        nodes = [n for n in s.backends.values() if not n.retiring]
        local_waiting = s.depth - s.cloud_waiting
        local_running = sum(1 for f in s.in_flight() if not f.cloud)
        yield GaugeMetricFamily(QUEUED, "Requests waiting in the sidecar's queue for this Ollama "
                                "(model server protocol: TotalQueuedRequests)", value=local_waiting)
        yield GaugeMetricFamily(RUNNING, "Requests sent to this Ollama and not finished "
                                "(model server protocol: TotalRunningRequests)", value=local_running)
        total = sum(n.residency.vram_gb for n in nodes)
        share = min(1.0, sum(n.residency.vram_used() for n in nodes) / total) if total > 0 else 0.0
        for name in (CACHE, CACHE_BEFORE_V1):
            yield GaugeMetricFamily(name, "VRAM the loaded models hold over the policy's vram_gb, 0 to 1 "
                                    "(model server protocol: KVCacheUtilization)", value=share)
        running = sorted({m.name for n in nodes for m in n.residency.resident()
                          if self._known(m.name) and not s.is_cloud(m.name)})
        held = set(running)
        waiting = sorted({m for c in s.waiting_classes() for m in s.waiting_models(c)
                          if m not in held and not s.is_cloud(m) and self._known(m)})
        adapters = GaugeMetricFamily(
            ADAPTERS, "Models loaded (running) and waited for (waiting) on this Ollama, as LoRA "
            "adapters; the value is when this was read (model server protocol: LoRA affinity)",
            labels=ADAPTER_LABELS,
        )
        adapters.add_metric([str(sum(n.residency.max_loaded for n in nodes)), ",".join(running[:MAX_LISTED]),
                             ",".join(waiting[:MAX_LISTED])], self._clock())
        yield adapters
