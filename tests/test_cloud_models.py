"""Cloud models (`NAME:cloud`, `…-cloud`): Ollama forwards them to its hosted service, so they take
no local VRAM and no local slot. The engine never counts them as loads, gives them their own
concurrency limit (`[cloud] max_parallel`), and the hosted side's 429 reaches the client as
Ollama sends it. The emulator models a cloud model: fixed latency, no load, its own limit."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from sidecar_fixtures import SidecarFactory, make_policy, wait_until

from engine.clock import ManualClock
from engine.residency import GIB
from engine.scheduler import Scheduler
from policy.load import load_policy_file
from schemas.model_name import is_cloud

EXAMPLE = load_policy_file(Path(__file__).resolve().parent.parent / "policies.example.toml")
CLOUD, LOCAL = "gpt-oss:120b-cloud", "llama3.2:1b"


@pytest.mark.parametrize(("name", "cloud"), [
    ("gpt-oss:120b-cloud", True), ("glm-4.6:cloud", True), ("qwen3-coder-cloud:latest", True),
    ("llama3.2:1b", False), ("cloudy:7b", False), ("cloud:latest", False),
])
def test_what_names_a_cloud_model(name: str, cloud: bool) -> None:
    assert is_cloud(name) is cloud


def test_the_engine_gives_cloud_models_their_own_slots_and_no_vram() -> None:
    settings = dataclasses.replace(EXAMPLE.with_active("balanced"), cloud_max_parallel=2)
    settings = dataclasses.replace(settings, backend=dataclasses.replace(settings.backend, max_parallel=1))
    s = Scheduler(settings, clock=ManualClock(100.0))
    s.reconcile({"models": [{"name": "llama3.1:8b", "size": int(6 * GIB)}]})
    for rid, model in (("c1", CLOUD), ("c2", CLOUD), ("c3", CLOUD), ("l1", "llama3.1:8b"), ("l2", "llama3.1:8b")):
        s.enqueue(request_id=rid, model=model, client=rid, cls="interactive")
    granted = {g.ticket.id: g for g in s.dispatch()}
    # Two cloud slots and the one local slot, side by side.
    assert sorted(granted) == ["c1", "c2", "l1"]
    assert granted["c1"].action == "attach" and granted["c1"].evicts == ()
    assert granted["c1"].score.breakdown()["vram"] == granted["l1"].score.breakdown()["vram"]
    assert [m["model"] for m in s.residency()["models"]] == ["llama3.1:8b"]  # no cloud VRAM
    reasons = {r.ticket.id: r.reason for r in s.waiting()}
    assert "cloud max_parallel reached (2 of 2 busy)" in (reasons["c3"] or "")
    assert "max_parallel reached (1 of 1" in (reasons["l2"] or "")
    s.finish("c1")
    assert [g.ticket.id for g in s.dispatch()] == ["c3"]
    s.finish("l1")
    assert [g.ticket.id for g in s.dispatch()] == ["l2"]
    for rid in ("c2", "c3", "l2"):
        s.finish(rid)
    assert s.in_flight_count == 0 and s.dispatch() == []


EMULATOR = f"""
[node]
vram_gb = 8
max_loaded_models = 1
num_parallel = 1
time_scale = 1.0
cloud_first_token_s = 0.3
cloud_tokens_per_s = 200
cloud_max_concurrent = 1
[[models]]
name = "{LOCAL}"
[[models]]
name = "{CLOUD}"
"""


@pytest.fixture
def cloud_emulator() -> Iterator[Any]:
    from sim.config import load_text
    from sim.testing import running_emulator

    with running_emulator(load_text(EMULATOR, "cloud", time.time())) as emulator:
        yield emulator


def _ask(proxy: Any, model: str) -> httpx.Response:
    return httpx.post(proxy.url + "/api/generate", timeout=60,
                      json={"model": model, "prompt": "hi", "stream": False, "options": {"num_predict": 20}})


def test_cloud_requests_queue_for_their_own_limit_and_never_load(
    sidecar_factory: SidecarFactory, cloud_emulator: Any
) -> None:
    proxy = sidecar_factory(upstream=cloud_emulator.url, policy=make_policy(
        max_parallel=1, vram_gb=8, max_loaded_models=1, extra="[cloud]\nmax_parallel = 1\n",
    ))
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        answers = [pool.submit(_ask, proxy, CLOUD) for _ in range(2)] + [pool.submit(_ask, proxy, LOCAL)]
        assert [a.result().status_code for a in answers] == [200, 200, 200]
    stats = cloud_emulator.stats()
    assert stats["cloud_requests"] == 2 and stats["cloud_rejections"] == 0
    assert stats["loads"] == 1  # the local model only
    ps = httpx.get(cloud_emulator.url + "/api/ps", timeout=10).json()
    assert [m["name"] for m in ps["models"]] == [LOCAL]
    vram = proxy.admin("GET", "/proxy/vram").json()
    assert CLOUD not in {m["model"] for m in vram["residency"]["models"]}
    wait_until(lambda: len([r for r in proxy.journal.records if r.model == CLOUD]) == 2,
               within=5, what="both cloud records")
    records = [r for r in proxy.journal.records if r.model == CLOUD]
    assert all(r.resident for r in records)


def test_the_hosted_services_429_reaches_the_client_in_its_dialect(
    sidecar_factory: SidecarFactory, cloud_emulator: Any
) -> None:
    # Two cloud requests allowed at once, the hosted side takes one: the second gets its 429.
    proxy = sidecar_factory(upstream=cloud_emulator.url, policy=make_policy(
        max_parallel=1, extra="[cloud]\nmax_parallel = 2\n",
    ))
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        statuses = sorted(a.status_code for a in pool.map(lambda _: _ask(proxy, CLOUD), range(2)))
    assert statuses == [200, 429]
    wait_until(lambda: any(r.http_status == 429 for r in proxy.journal.records),
               within=5, what="the refused request's record")
    refused = next(r for r in proxy.journal.records if r.http_status == 429)
    assert refused.status == "failed" and refused.model == CLOUD
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="x", max_retries=0)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(client.chat.completions.create, model=CLOUD,
                               messages=[{"role": "user", "content": "hi"}], max_tokens=20)
                   for _ in range(2)]
        errors = [f.exception() for f in futures]
    assert sum(isinstance(e, openai.RateLimitError) for e in errors) == 1
    assert proxy.health()["upstream"]["up"]  # a cloud refusal is not Ollama being down


def test_an_unreachable_hosted_service_s_502_reaches_the_client_in_its_dialect(
    sidecar_factory: SidecarFactory,
) -> None:
    from sim.config import load_text
    from sim.testing import running_emulator

    text = EMULATOR.replace("[node]\n", "[node]\ncloud_reachable = false\n", 1)
    with running_emulator(load_text(text, "cloud-down", time.time())) as emulator:
        proxy = sidecar_factory(upstream=emulator.url)
        native = _ask(proxy, CLOUD)
        assert native.status_code == 502 and "cloud" in native.json()["error"]
        client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.InternalServerError) as caught:
            client.chat.completions.create(model=CLOUD, messages=[{"role": "user", "content": "hi"}])
        assert caught.value.status_code == 502 and "cloud" in caught.value.message
        assert _ask(proxy, LOCAL).status_code == 200  # the local models are served as before
        assert proxy.health()["upstream"]["up"]
        wait_until(lambda: sum(r.http_status == 502 for r in proxy.journal.records) == 2,
                   within=5, what="both 502 records")
        assert {r.model for r in proxy.journal.records if r.http_status == 502} == {CLOUD}


def test_show_describes_a_cloud_model_as_newer_ollama_does(cloud_emulator: Any) -> None:
    card = httpx.post(cloud_emulator.url + "/api/show", json={"model": CLOUD}, timeout=10).json()
    assert card["remote_model"] == "gpt-oss:120b" and card["remote_host"].startswith("https://")
    assert card["requires"] and card["model_info"] == {} and card["capabilities"] == ["completion"]
    local = httpx.post(cloud_emulator.url + "/api/show", json={"model": LOCAL}, timeout=10).json()
    assert "remote_model" not in local and local["model_info"]["general.architecture"] == "llama"
    tags = httpx.get(cloud_emulator.url + "/api/tags", timeout=10).json()["models"]
    assert next(m for m in tags if m["name"] == CLOUD)["size"] < 1000  # a stub, not weights


def test_ollama_s_tags_outrank_the_name() -> None:
    s = Scheduler(EXAMPLE, clock=ManualClock(0.0))
    assert s.is_cloud("my-cloud:latest") and not s.is_cloud("qwen3:8b")  # by name, until told
    assert s.is_cloud("gpt-oss:120b-cloud@sha256:" + "a" * 64)  # a pinned digest is not the tag
    s.learn_tags({"models": [
        {"name": "my-cloud:latest", "size": 4_000_000_000},  # a local model, whatever its name says
        {"name": "qwen3:8b", "remote_host": "https://ollama.com:443", "remote_model": "qwen3:8b"},
    ]})
    assert not s.is_cloud("my-cloud:latest") and s.is_cloud("qwen3:8b")


def test_a_free_cloud_slot_costs_no_pick_when_no_cloud_request_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the local slots full, a free cloud slot must not send the picker over every waiting
    local ticket for nothing (it did: a tenfold slower dispatch at 10,000 waiting)."""
    settings = dataclasses.replace(EXAMPLE, backend=dataclasses.replace(EXAMPLE.backend, max_parallel=1))
    s = Scheduler(settings, clock=ManualClock(0.0))
    for n in range(20):
        s.enqueue(request_id=f"l{n}", model="llama3.1:8b", client=f"c{n}", cls="interactive")
    picks = []
    choose = s._choose
    monkeypatch.setattr(s, "_choose", lambda *a: picks.append(1) or choose(*a))
    assert len(s.dispatch()) == 1 and len(picks) == 1  # one pick for the one local slot
    s.enqueue(request_id="c1", model=CLOUD, client="x", cls="interactive")
    assert [g.ticket.id for g in s.dispatch()] == ["c1"]  # now the cloud slot is worth a pick
    s.cancel("l5")
    s.enqueue(request_id="c2", model=CLOUD, client="y", cls="interactive")
    s.cancel("c2")
    assert s._cloud_waiting == 0 and s.depth == 18


def test_queue_status_estimates_count_only_requests_of_the_same_kind_ahead() -> None:
    """The queue-status estimate: the ranking places local and cloud requests together, but
    each kind waits for its own slots, so the other kind ahead does not lengthen the wait."""
    from engine.eta import ServiceTimes
    from server.proxy.queue_status import line

    s = Scheduler(EXAMPLE, clock=ManualClock(0.0))
    s.pause()
    for n in range(8):  # eight local requests, then one cloud request
        s.enqueue(request_id=f"l{n}", model="llama3.1:8b", client=f"c{n}", cls="interactive")
    s.enqueue(request_id="cloud", model=CLOUD, client="c9", cls="interactive")
    times = ServiceTimes(prior=10.0)
    cloud, last = s.position("cloud"), s.position("l7")
    assert cloud is not None and last is not None
    assert cloud.position == 1 and last.position == 9  # the cloud one costs no load: first
    assert line(s, times, "cloud").decode() == (
        f": queued, position 1 of 9, est {math.ceil(10.0 / s.cloud_max_parallel)}s\n\n")
    # l7 is ninth, but only the seven local requests before it and itself hold local slots.
    assert line(s, times, "l7").decode() == (
        f": queued, position 9 of 9, est {math.ceil(8 * 10.0 / s.max_parallel)}s\n\n")

