"""One name per model: however a client, Ollama's /api/ps or the policy file spells a model, the
scheduler, the residency model, the class rules, the journal and the metric labels see one
canonical name — while the body forwarded to Ollama keeps the client's spelling."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path
from typing import Any

import httpx
import pytest
from sidecar_fixtures import SidecarFactory, make_policy

from engine.clock import ManualClock
from engine.residency import GIB
from engine.scheduler import Scheduler
from policy.errors import PolicyError
from policy.load import load_policy_file, load_policy_text
from schemas.model_name import canonical_model, canonical_pattern
from server.telemetry.metrics import Metrics

EXAMPLE = load_policy_file(Path(__file__).resolve().parent.parent / "policies.example.toml")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("llama3", "llama3:latest"),
        ("Llama3", "llama3:latest"),
        ("llama3:latest", "llama3:latest"),
        ("LLAMA3:Latest", "llama3:latest"),
        ("library/llama3", "llama3:latest"),
        ("registry.ollama.ai/library/llama3:latest", "llama3:latest"),
        ("Registry.Ollama.AI/Library/Llama3:8B", "llama3:8b"),
        ("llama3.1:8b", "llama3.1:8b"),
        ("nomic-embed-text", "nomic-embed-text:latest"),
        ("user/model", "user/model:latest"),
        ("registry.ollama.ai/user/model:q4", "user/model:q4"),
        ("hf.co/User/Model:Q4_K_M", "hf.co/user/model:q4_k_m"),
        ("hf.co/user/model", "hf.co/user/model:latest"),
        ("localhost:5000/ns/model", "localhost:5000/ns/model:latest"),  # a port, not a tag
        ("localhost:5000/ns/model:v2", "localhost:5000/ns/model:v2"),
        ("llama3:", "llama3:latest"),
        ("llama3@sha256:ABC", "llama3:latest@sha256:abc"),
        ("a/b/c/d", "a/b/c/d:latest"),  # not a name Ollama accepts: only lower-cased and tagged
    ],
)
def test_canonical_model(name: str, expected: str) -> None:
    assert canonical_model(name) == expected
    assert canonical_model(expected) == expected  # canonical names are fixed points


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("nomic-embed-text", "nomic-embed-text:latest"),  # a plain name: canonical like a request's
        ("Llama3*", "llama3*"),
        ("library/llama3*", "llama3*"),
        ("registry.ollama.ai/library/qwen*", "qwen*"),
        ("registry.ollama.ai/user/*", "user/*"),
        ("*:7b", "*:7b"),
        ("hf.co/*", "hf.co/*"),
    ],
)
def test_canonical_pattern(pattern: str, expected: str) -> None:
    assert canonical_pattern(pattern) == expected


def test_scheduler_and_residency_see_one_model() -> None:
    """Spellings of one model land in one runner: attached to what /api/ps reports under its long
    name, and counted once in the residency view."""
    s = Scheduler(EXAMPLE, clock=ManualClock(100.0))
    s.residency_model.num_parallel = 4
    s.reconcile(
        {"models": [{"name": "registry.ollama.ai/library/llama3:latest", "size": 5 * GIB}]}
    )
    for rid, name in (("a", "Llama3"), ("b", "llama3:latest"), ("c", "library/llama3")):
        s.enqueue(request_id=rid, model=name, client="alice", cls="interactive")
    assert {t.model for t in s.tickets()} == {"llama3:latest"}
    grants = s.dispatch()
    assert [g.action for g in grants] == ["attach", "attach"]
    assert [m["model"] for m in s.residency()["models"]] == ["llama3:latest"]


def test_size_overrides_match_any_spelling() -> None:
    """A [models] override written `Llama3` sizes requests for `llama3:latest`, and the reverse."""
    compiled = load_policy_text(
        make_policy(extra='[models."Llama3"]\nvram_gb = 5.5\n[models."qwen2:7B"]\nvram_gb = 4\n').encode(),
        "test.toml",
    )
    s = Scheduler(compiled)
    assert s.state.size_gb(canonical_model("llama3:latest")) == 5.5
    assert s.state.size_gb(canonical_model("Qwen2:7b")) == 4
    s.apply_settings(compiled)
    assert s.state.size_gb(canonical_model("library/llama3")) == 5.5


def test_class_rules_match_canonical_names() -> None:
    """Class rules written with a bare name or a long prefix match the canonical name."""
    compiled = load_policy_text(
        make_policy(
            extra="""
[clients.classes.embed]
models = ["Nomic-Embed-Text"]
[clients.classes.big]
models = ["registry.ollama.ai/library/llama3*"]
[clients.classes.interactive]
"""
        ).encode(),
        "test.toml",
    )
    table = [
        ("nomic-embed-text", "embed"),
        ("nomic-embed-text:latest", "embed"),
        ("NOMIC-EMBED-TEXT", "embed"),
        ("nomic-embed-text:v1.5", "interactive"),
        ("llama3.1:8b", "big"),
        ("Llama3", "big"),
        ("qwen2:7b", "interactive"),
    ]
    got = [(name, compiled.classify("c", canonical_model(name), "/api/chat", None)) for name, _ in table]
    assert got == table


def test_metric_labels_learn_canonical_names() -> None:
    """/api/tags and /api/ps names are learnt canonical, so a request's canonical name is a label
    of its own, not `other`."""
    metrics = Metrics(lambda: Scheduler(EXAMPLE))
    metrics.learn_models({"models": [{"name": "Nomic-Embed-Text:latest", "model": "nomic-embed-text"}]})
    metrics.learn_models({"models": [{"name": "registry.ollama.ai/library/llama3:8b"}]})
    assert metrics.known_models == {"nomic-embed-text:latest", "llama3:8b"}
    assert metrics.model_label(canonical_model("nomic-embed-text")) == "nomic-embed-text:latest"
    assert metrics.model_label(canonical_model("Llama3:8B")) == "llama3:8b"


def _count(text: str, name: str, **labels: str) -> float:
    wanted = "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and line.split(" ")[0] == name + wanted:
            total += float(line.split(" ")[1])
    return total


def test_spellings_are_one_model_end_to_end(
    sidecar_factory: SidecarFactory, ollama_emulator: Any
) -> None:
    """Through the real sidecar: three spellings of nomic-embed-text are one model in the queue,
    the journal and the metrics; Ollama still gets each body as sent (its answer echoes it)."""
    proxy = sidecar_factory(upstream=ollama_emulator.url, policy=make_policy(max_parallel=1))
    spellings = ("nomic-embed-text", "nomic-embed-text:latest", "Nomic-Embed-Text")
    assert proxy.admin("POST", "/proxy/pause").status_code == 200
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        futures = []
        for i, name in enumerate(spellings):
            futures.append(pool.submit(
                httpx.post, proxy.url + "/api/embed", json={"model": name, "input": "hi"},
                timeout=30, headers={"x-request-id": f"r{i}"},
            ))
            proxy.wait_depth(i + 1)
        assert {w["model"] for w in proxy.queue()["waiting"]} == {"nomic-embed-text:latest"}
        proxy.admin("POST", "/proxy/resume")
        answers = [f.result() for f in futures]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert [a.json()["model"] for a in answers] == list(spellings)  # forwarded byte for byte
    proxy.wait_idle()
    assert [r.model for r in proxy.journal.records] == ["nomic-embed-text:latest"] * 3
    text = httpx.get(proxy.url + "/metrics", timeout=10).text
    assert _count(text, "smart_proxy_requests_total", endpoint="/api/embed",
                  model="nomic-embed-text:latest", status="completed") == 3
    assert _count(text, "smart_proxy_requests_total", endpoint="/api/embed", model="other",
                  status="completed") == 0


def test_two_spellings_of_one_model_in_models_are_refused() -> None:
    """[models."llama3"] and [models."llama3:latest"] give one model two sizes: a policy error
    naming both, not a silent choice of one."""
    text = make_policy(extra='[models."llama3"]\nvram_gb = 5\n[models."Llama3:latest"]\nvram_gb = 6\n')
    with pytest.raises(PolicyError) as raised:
        load_policy_text(text.encode(), "test.toml")
    assert raised.value.lines == [
        'test.toml: models: "Llama3:latest" is the same model as "llama3" (both mean'
        " llama3:latest); keep one of them"
    ]
