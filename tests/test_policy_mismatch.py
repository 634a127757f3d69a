"""`serve` notices when Ollama's own /api/ps contradicts the policy's [backend]: /proxy/health is
degraded with the reason, `smart_proxy_policy_mismatch{kind}` is 1, and the log says so once when
it starts and once when it ends — not on every poll."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sidecar_fixtures import RunningSidecar, SidecarFactory, make_policy
from test_sidecar_admin import metric

from policy.load import load_policy_text
from server.runtime.consistency import GIB, PolicyConsistency, contradictions, observe

BIG, BIGGER = "gemma3:27b", "qwq:32b"  # 20.4 GB + 24 GB resident in the emulator: 41.4 GiB


def ps_of(*sizes_gib: float, key: str = "size_vram") -> dict[str, Any]:
    return {"models": [{"name": f"m{i}:latest", key: int(s * GIB)} for i, s in enumerate(sizes_gib)]}


def test_observe_reads_vram_from_size_vram_else_size() -> None:
    seen = observe({"models": [{"name": "a", "size": 10 * GIB, "size_vram": 6 * GIB},
                               {"name": "b", "size": 2 * GIB}, "junk"]})
    assert seen is not None and seen.loaded == 2 and seen.vram_gb == pytest.approx(8.0)
    assert observe({"error": "nope"}) is None  # says nothing, so contradicts nothing


def test_contradictions_name_the_figures_and_the_setting() -> None:
    backend = load_policy_text(make_policy(vram_gb=24, max_loaded_models=2).encode(), "p.toml").backend
    seen = observe(ps_of(30, 10, 8.0))
    assert seen is not None
    found = contradictions(seen, backend)
    assert found["vram"].startswith("Ollama reports 48.0 GiB in use, the policy's vram_gb is 24")
    assert found["max_loaded"].startswith(
        "Ollama reports 3 models loaded, the policy's max_loaded_models is 2"
    )
    fits = observe(ps_of(12, 12.0))
    assert fits is not None and contradictions(fits, backend) == {}


def test_one_log_line_and_one_change_per_state_change(caplog: pytest.LogCaptureFixture) -> None:
    backend = load_policy_text(make_policy(vram_gb=24, max_loaded_models=3).encode(), "p.toml").backend
    changes: list[tuple[str, bool]] = []
    watch = PolicyConsistency(lambda: backend, on_change=lambda kind, on: changes.append((kind, on)))
    with caplog.at_level(logging.INFO, logger="smart_proxy"):
        for ps in (ps_of(10), ps_of(40), ps_of(41), ps_of(48), ps_of(20), ps_of(21), {"models": "x"}):
            watch.check(ps)
    assert changes == [("vram", True), ("vram", False)]
    lines = [r for r in caplog.records if r.name == "smart_proxy.upstream"]
    assert [r.levelno for r in lines] == [logging.WARNING, logging.INFO]
    assert "40.0 GiB in use, the policy's vram_gb is 24" in lines[0].getMessage()
    assert "agrees with the policy's vram_gb again" in lines[1].getMessage()
    assert watch.reasons == []


@pytest.fixture
def server_80gb() -> Iterator[Any]:
    from sim.testing import running_emulator

    with running_emulator(preset="server-80gb", time_scale=0) as emulator:
        yield emulator


def load(emulator: Any, model: str, keep_alive: int | None = None) -> None:
    """Straight at Ollama, as another client of it would: no prompt loads (keep_alive 0 unloads)."""
    body: dict[str, Any] = {"model": model, "stream": False}
    if keep_alive is not None:
        body["keep_alive"] = keep_alive
    answer = httpx.post(emulator.url + "/api/generate", json=body, timeout=30)
    assert answer.status_code == 200, answer.text


def wait_polls(proxy: RunningSidecar, count: int) -> None:
    """Let the sidecar poll Ollama `count` more times (its poll age drops at each poll)."""
    seen = {"polls": 0, "age": float("inf")}

    def polled(health: dict[str, Any]) -> bool:
        age = health["upstream"]["last_poll_age_s"]
        if age is not None and age < seen["age"]:
            seen["polls"] += 1
        seen["age"] = age if age is not None else float("inf")
        return seen["polls"] > count

    proxy.wait_for(polled, within=20)


def mismatch_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "smart_proxy.upstream" and "policy" in r.getMessage()]


def test_vram_beyond_the_policy_degrades_health_until_it_is_gone(
    sidecar_factory: SidecarFactory, server_80gb: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A 24 GiB policy in front of an 80 GB Ollama holding 41 GiB: degraded, metric 1, one line;
    unloading one model makes it agree again: ok, metric 0, one line."""
    caplog.set_level(logging.INFO, logger="smart_proxy")
    proxy = sidecar_factory(
        upstream=server_80gb.url, policy=make_policy(vram_gb=24, max_loaded_models=3)
    )
    proxy.wait_for(lambda h: h["upstream"]["up"] is True)
    assert proxy.health()["status"] == "ok" and proxy.health()["reasons"] == []
    load(server_80gb, BIG)
    load(server_80gb, BIGGER)

    health = proxy.wait_for(lambda h: h["status"] == "degraded")
    assert health["upstream"]["up"] is True
    assert len(health["reasons"]) == 1
    assert health["reasons"][0].startswith("Ollama reports 41.4 GiB in use, the policy's vram_gb is 24")
    text = httpx.get(proxy.url + "/metrics", timeout=10).text
    assert metric(text, "smart_proxy_policy_mismatch", kind="vram") == 1
    assert metric(text, "smart_proxy_policy_mismatch", kind="max_loaded") == 0
    wait_polls(proxy, 3)  # the contradiction persists over several polls ...
    lines = mismatch_lines(caplog)
    assert len(lines) == 1 and "41.4 GiB in use" in lines[0]  # ... and was logged once

    load(server_80gb, BIGGER, keep_alive=0)
    health = proxy.wait_for(lambda h: h["status"] == "ok")
    assert health["reasons"] == []
    text = httpx.get(proxy.url + "/metrics", timeout=10).text
    assert metric(text, "smart_proxy_policy_mismatch", kind="vram") == 0
    wait_polls(proxy, 2)
    lines = mismatch_lines(caplog)
    assert len(lines) == 2 and "agrees with the policy's vram_gb again" in lines[1]


def test_more_models_than_max_loaded_and_a_policy_fix_clears_it(
    sidecar_factory: SidecarFactory, ollama_emulator: Any, tmp_path: Path
) -> None:
    """tiny-8gb holds two models; a policy that allows one is contradicted. Fixing the policy
    clears the state on the reload, without waiting for Ollama to change."""
    proxy = sidecar_factory(
        upstream=ollama_emulator.url, policy=make_policy(vram_gb=8, max_loaded_models=1)
    )
    proxy.wait_for(lambda h: h["upstream"]["up"] is True)
    load(ollama_emulator, "llama3.2:1b")
    load(ollama_emulator, "llama3.2:3b")
    health = proxy.wait_for(lambda h: h["status"] == "degraded")
    assert health["reasons"] == [
        "Ollama reports 2 models loaded, the policy's max_loaded_models is 1; "
        "set it to Ollama's OLLAMA_MAX_LOADED_MODELS"
    ]
    text = httpx.get(proxy.url + "/metrics", timeout=10).text
    assert metric(text, "smart_proxy_policy_mismatch", kind="max_loaded") == 1

    proxy.policy_path.write_text(make_policy(vram_gb=8, max_loaded_models=2), encoding="utf-8")
    assert proxy.admin("POST", "/proxy/policy/reload").status_code == 200
    health = proxy.health()  # at once: the reload re-checked the last /api/ps answer
    assert health["status"] == "ok" and health["reasons"] == []
    text = httpx.get(proxy.url + "/metrics", timeout=10).text
    assert metric(text, "smart_proxy_policy_mismatch", kind="max_loaded") == 0
