"""The model server protocol's gauges (server/telemetry/model_server_protocol.py): what an endpoint
picker of the Gateway API Inference Extension reads from each pod's /metrics to route with model
affinity. In process against the scheduler, then live through the sidecar and the emulator."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sidecar_fixtures import SidecarFactory

from engine.clock import ManualClock
from engine.scheduler import Scheduler
from policy.load import load_policy_file
from server.telemetry.metrics import GB, Metrics
from server.telemetry.model_server_protocol import ADAPTERS, CACHE, CACHE_BEFORE_V1, QUEUED, RUNNING

EXAMPLE = Path(__file__).resolve().parent.parent / "policies.example.toml"


def _samples(text: str) -> dict[str, list[Any]]:
    return {f.name: f.samples for f in text_string_to_metric_families(text) if f.name.startswith("vllm:")}


def test_the_gauges_follow_the_queue_the_card_and_the_loaded_models() -> None:
    compiled = load_policy_file(EXAMPLE)  # vram_gb 24, max_loaded_models 3
    s = Scheduler(compiled, clock=ManualClock(0.0))
    s.pause()
    s.reconcile({"models": [{"name": "llama3.1:8b", "model": "llama3.1:8b", "size": 6 * GB, "size_vram": 6 * GB}]})
    for i, model in enumerate(("llama3.1:8b", "qwq:32b", "qwq:32b", "made-up:1b")):
        s.enqueue(request_id=f"r{i}", model=model, client=f"c{i}", cls="interactive")
    metrics = Metrics(lambda: s)
    metrics.learn_models({"models": [{"name": "llama3.1:8b"}, {"name": "qwq:32b"}]})
    found = _samples(metrics.render().decode())
    assert found[QUEUED][0].value == 4 and found[RUNNING][0].value == 0
    assert found[CACHE][0].value == found[CACHE_BEFORE_V1][0].value == 0.25  # 6 of 24 GB
    (adapters,) = found[ADAPTERS]
    # Loaded: the 8B; waited for and not loaded: the 32B. A name Ollama never reported is no label.
    assert adapters.labels == {"max_lora": "3", "running_lora_adapters": "llama3.1:8b",
                               "waiting_lora_adapters": "qwq:32b"}
    assert adapters.value > 1.7e9  # when it was read: the picker keeps the newest series
    s.resume()
    assert [g.ticket.model for g in s.dispatch()][:1] == ["llama3.1:8b"]
    after = _samples(metrics.render().decode())
    assert after[RUNNING][0].value >= 1 and after[QUEUED][0].value == 4 - after[RUNNING][0].value


def test_an_endpoint_picker_reads_them_from_the_live_sidecar(
    sidecar_factory: SidecarFactory, ollama_emulator: Any
) -> None:
    proxy = sidecar_factory(upstream=ollama_emulator.url)
    proxy.wait_for(lambda h: h["upstream"]["up"])
    body = {"model": "llama3.2:1b", "prompt": "hi", "stream": False}
    assert httpx.post(proxy.url + "/api/generate", json=body, timeout=30).status_code == 200
    found = _samples(httpx.get(proxy.url + "/metrics", timeout=10).text)
    assert "llama3.2:1b" in found[ADAPTERS][0].labels["running_lora_adapters"].split(",")
    assert 0 < found[CACHE][0].value <= 1
    proxy.admin("POST", "/proxy/pause")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(httpx.post, proxy.url + "/api/generate", json=body, timeout=30)
        proxy.wait_depth(1)
        found = _samples(httpx.get(proxy.url + "/metrics", timeout=10).text)
        assert found[QUEUED][0].value == 1 and found[RUNNING][0].value == 0
        proxy.admin("POST", "/proxy/resume")
        assert waiting.result().status_code == 200


def test_cloud_models_are_no_adapters_and_the_vram_share_stays_within_one() -> None:
    compiled = load_policy_file(EXAMPLE)  # vram_gb 24
    s = Scheduler(compiled, clock=ManualClock(0.0))
    s.pause()
    s.reconcile({"models": [
        {"name": "qwq:32b", "model": "qwq:32b", "size": 30 * GB, "size_vram": 30 * GB},  # over the card
        {"name": "gpt-oss:120b-cloud", "model": "gpt-oss:120b-cloud", "size": 0, "size_vram": 0},
    ]})
    s.enqueue(request_id="c", model="gpt-oss:120b-cloud", client="x", cls="interactive")
    metrics = Metrics(lambda: s)
    metrics.learn_models({"models": [{"name": "qwq:32b"}, {"name": "gpt-oss:120b-cloud"}]})
    found = _samples(metrics.render().decode())
    assert found[CACHE][0].value == 1.0
    assert found[QUEUED][0].value == 0  # a cloud request waits for no local GPU
    labels = found[ADAPTERS][0].labels
    assert labels["running_lora_adapters"] == "qwq:32b" and labels["waiting_lora_adapters"] == ""
