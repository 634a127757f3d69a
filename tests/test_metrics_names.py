"""Every metric the sidecar exports is in docs/sidecar.md's table with its type and labels, follows
Prometheus' naming guide, and keeps its label values bounded whatever clients send."""

from __future__ import annotations

import concurrent.futures
import re
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sidecar_fixtures import SidecarFactory, make_policy

from server.telemetry.model_server_protocol import NAMES

DOCS = Path(__file__).resolve().parent.parent / "docs"


def documented(
    doc: str = "sidecar.md", header: str = "| metric | type | labels | what |"
) -> dict[str, tuple[str, frozenset[str]]]:
    text = (DOCS / doc).read_text(encoding="utf-8")
    table = text[text.index(header) :].split("\n\n", 1)[0]
    out = {}
    for row in table.splitlines()[2:]:
        name, kind, labels = (c.strip() for c in row.split("|")[1:4])
        out[name.strip("`")] = (kind, frozenset(x.strip() for x in labels.split(",") if x.strip()))
    return out


def exported(proxy: Any) -> dict[str, tuple[str, frozenset[str]]]:
    text = httpx.get(proxy.url + "/metrics", timeout=10).text
    out = {}
    for family in text_string_to_metric_families(text):
        labels = {
            k for sample in family.samples for k in sample.labels if k not in ("le", "quantile")
        }
        name = family.name + ("_total" if family.type == "counter" else "")
        out[name] = (family.type, frozenset(labels))
    return out


def test_every_metric_is_documented_with_its_type_and_labels(
    sidecar_factory: SidecarFactory, ollama_emulator: Any
) -> None:
    proxy = sidecar_factory(upstream=ollama_emulator.url)
    proxy.wait_for(lambda h: h["upstream"]["up"])
    # Traffic, a reload and a waiting request, so every labelled series exists at least once.
    body = {"model": "llama3.2:1b", "prompt": "hi", "stream": False}
    assert httpx.post(proxy.url + "/api/generate", timeout=30, json=body).status_code == 200
    normalise = "[policies.test.num_ctx]\nnormalise = true\n"
    proxy.policy_path.write_text(make_policy(max_parallel=3, extra=normalise), encoding="utf-8")
    assert proxy.admin("POST", "/proxy/policy/reload").json()["ok"]
    for num_ctx in (8192, 4096):  # the second runs on the first's runner: a num_ctx rewrite
        sized = {**body, "options": {"num_ctx": num_ctx}}
        assert httpx.post(proxy.url + "/api/generate", timeout=30, json=sized).status_code == 200
    proxy.admin("POST", "/proxy/pause")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(httpx.post, proxy.url + "/api/generate", timeout=30, json=body)
        proxy.wait_depth(1)
        seen = exported(proxy)
        proxy.admin("POST", "/proxy/resume")
        assert waiting.result().status_code == 200
    # The model server protocol's gauges carry the names an endpoint picker reads by default
    # (vLLM's), documented with their mapping in docs/many-hosts.md.
    protocol = {name: seen.pop(name) for name in list(seen) if name in NAMES}
    assert set(protocol) == set(NAMES)
    assert protocol == documented(
        "many-hosts.md", "| metric | type | labels | protocol field | what |"
    )
    docs = documented()
    assert sorted(set(seen) - set(docs)) == [], "export documented nowhere"
    assert sorted(set(docs) - set(seen)) == [], "documented, not exported"
    for name, (kind, labels) in seen.items():
        assert docs[name] == (kind, labels), name
        assert name.startswith("smart_proxy_")
        assert (kind == "counter") == name.endswith("_total"), name
        if kind == "histogram":
            assert name.endswith(("_seconds", "_bytes")), name
        assert not re.search(r"_(ms|milliseconds|kb|mb|gb)(_|$)", name), name


def test_model_labels_stay_bounded(sidecar_factory: SidecarFactory, ollama_emulator: Any) -> None:
    proxy = sidecar_factory(upstream=ollama_emulator.url)
    proxy.wait_for(lambda h: h["upstream"]["up"])
    for n in range(30):  # invented names: Ollama never reported them
        httpx.post(
            proxy.url + "/api/generate",
            timeout=30,
            json={"model": f"made-up-{n}", "prompt": "hi", "stream": False},
        )
    text = httpx.get(proxy.url + "/metrics", timeout=10).text
    assert "made-up" not in text and 'model="other"' in text

    from server.telemetry.metrics import MAX_MODEL_LABELS, Metrics

    metrics = Metrics(lambda: proxy.sidecar.scheduler)
    metrics.learn_models(
        {"models": [{"name": f"m{n}:latest"} for n in range(MAX_MODEL_LABELS + 50)]}
    )
    assert len(metrics.known_models) == MAX_MODEL_LABELS
    assert metrics.model_label(f"m{MAX_MODEL_LABELS + 10}:latest") == "other"


def test_paths_with_parameters_are_counted_by_their_route() -> None:
    from server.telemetry.metrics import endpoint_label

    assert endpoint_label("/api/experimental/whatever/anyone/sends") == "/api/experimental/{path}"
    assert endpoint_label("/v1/models/llama3") == "/v1/models/{model}"
    assert endpoint_label("/api/chat") == "/api/chat"
