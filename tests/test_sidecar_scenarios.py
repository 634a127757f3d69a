"""The seed's five integration scenarios, made deterministic: pause the queue, enqueue in a known
order, resume, and read the order Ollama (the emulator) was actually given the requests.

One slot (`max_parallel = 1`), so the journal's hand-off order is the dispatch order.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sidecar_fixtures import (
    RunningSidecar,
    SidecarFactory,
    make_policy,
    queue_in_order,
    wait_async,
)

pytestmark = pytest.mark.anyio

SMALL, MID, BIG = "llama3.2:1b", "llama3.2:3b", "llama3.1:8b"

@pytest.fixture
def workstation_emulator() -> Iterator[Any]:
    from sim.testing import running_emulator

    with running_emulator(preset="workstation-24gb", time_scale=0.0) as emulator:
        yield emulator


def gen(model: str, client: str = "c1", rid: str | None = None) -> tuple[str, dict[str, Any], dict[str, str]]:
    headers = {"x-client-id": client}
    if rid is not None:
        headers["x-request-id"] = rid
    return "/api/generate", {"model": model, "prompt": "hi", "stream": False}, headers


async def run_paused(
    proxy: RunningSidecar, calls: list[tuple[str, dict[str, Any], dict[str, str]]]
) -> list[str]:
    """Pause, enqueue `calls` in order, resume; the request ids in the order they were served."""
    async with httpx.AsyncClient(timeout=30) as client:
        assert (await client.post(proxy.url + "/proxy/pause")).status_code == 200
        tasks = await queue_in_order(client, proxy, calls)
        assert (await client.post(proxy.url + "/proxy/resume")).status_code == 200
        responses = [await t for t in tasks]
        await wait_async(client, proxy, lambda h: h["in_flight"] == 0 and h["queue_depth"] == 0)
    ids = {r.headers["x-request-id"] for r in responses}
    return [r.client_request_id for r in proxy.journal.records if r.client_request_id in ids]


async def preload(proxy: RunningSidecar, *models: str) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        for model in models:
            body = {"model": model, "prompt": "warm up", "stream": False}
            assert (await client.post(proxy.url + "/api/generate", json=body)).status_code == 200
        # Let a poll confirm what Ollama holds, as it would in production.
        await wait_async(client, proxy, lambda h: h["upstream"]["last_poll_age_s"] is not None)


async def test_same_model_requests_are_bunched(
    sidecar_factory: SidecarFactory, one_model_emulator: Any
) -> None:
    """Alternating models A,B,A,B,A,B run as A,A,A,B,B,B: two loads instead of six."""
    proxy = sidecar_factory(
        upstream=one_model_emulator.url, policy=make_policy(max_parallel=1, max_loaded_models=1)
    )
    calls = [gen(m, rid=f"r{i}") for i, m in enumerate([SMALL, MID] * 3)]
    order = await run_paused(proxy, calls)
    assert order == ["r0", "r2", "r4", "r1", "r3", "r5"]
    assert one_model_emulator.stats()["loads"] == 2


async def test_requests_that_force_a_reload_are_grouped(
    sidecar_factory: SidecarFactory, one_model_emulator: Any
) -> None:
    """One model, num_ctx alternating 2048, 8192, 2048, 8192: Ollama reloads on every change, so
    the sidecar runs them as 2048, 2048, 8192, 8192 — two loads instead of four."""
    proxy = sidecar_factory(
        upstream=one_model_emulator.url, policy=make_policy(max_parallel=1, max_loaded_models=1)
    )
    calls = []
    for i, num_ctx in enumerate([2048, 8192, 2048, 8192]):
        path, body, headers = gen(SMALL, rid=f"r{i}")
        calls.append((path, {**body, "options": {"num_ctx": num_ctx}}, headers))
    order = await run_paused(proxy, calls)
    assert order == ["r0", "r2", "r1", "r3"]
    assert one_model_emulator.stats()["loads"] == 2


async def test_large_model_is_deferred_behind_cheaper_work(
    sidecar_factory: SidecarFactory, workstation_emulator: Any
) -> None:
    """With two small models loaded, a 32B swap that arrived first runs after a loaded model's
    request and after a model that fits beside them."""
    proxy = sidecar_factory(
        upstream=workstation_emulator.url,
        policy=make_policy(max_parallel=1, vram_gb=24, max_loaded_models=3),
    )
    await preload(proxy, SMALL, MID)
    order = await run_paused(
        proxy, [gen("qwq:32b", rid="big"), gen("mistral:7b", rid="fits"), gen(SMALL, rid="loaded")]
    )
    assert order == ["loaded", "fits", "big"]


async def test_a_bad_model_fails_alone(
    sidecar_factory: SidecarFactory, ollama_emulator: Any
) -> None:
    """A model Ollama does not have gets Ollama's own 404; the good requests around it complete
    and the slot comes back."""
    # unknown_size = 0 puts the bad model first, so the others run after its failure.
    terms = """
[policies.test.terms.vram]
loaded = 0
fits = 100
unknown_size = 0
"""
    proxy = sidecar_factory(upstream=ollama_emulator.url, policy=make_policy(max_parallel=1, terms=terms))
    async with httpx.AsyncClient(timeout=30) as client:
        assert (await client.post(proxy.url + "/proxy/pause")).status_code == 200
        tasks = await queue_in_order(
            client, proxy, [gen(SMALL), gen("ghost:7b"), gen(SMALL), gen(MID), gen("ghost:7b")]
        )
        await client.post(proxy.url + "/proxy/resume")
        responses = [await t for t in tasks]
        await wait_async(client, proxy, lambda h: h["in_flight"] == 0 and h["queue_depth"] == 0)
    assert [r.status_code for r in responses] == [200, 404, 200, 200, 404]
    assert responses[1].json() == {"error": "model 'ghost:7b' not found"}
    statuses = [rec.status for rec in proxy.journal.records]
    assert statuses.count("completed") == 3 and statuses.count("failed") == 2
    # The failures went first (score 0) and did not block what followed.
    assert [rec.model for rec in proxy.journal.records][:2] == ["ghost:7b", "ghost:7b"]


async def test_a_loaded_model_overtakes_earlier_loads(
    sidecar_factory: SidecarFactory, ollama_emulator: Any
) -> None:
    """A request for the loaded model, arriving last, runs before earlier ones needing a load."""
    proxy = sidecar_factory(upstream=ollama_emulator.url, policy=make_policy(max_parallel=1))
    await preload(proxy, SMALL)
    order = await run_paused(proxy, [gen(BIG, rid="b1"), gen(BIG, rid="b2"), gen(SMALL, rid="a")])
    assert order == ["a", "b1", "b2"]


async def test_a_quiet_client_is_not_stuck_behind_a_noisy_one(
    sidecar_factory: SidecarFactory, ollama_emulator: Any
) -> None:
    """20 requests from one client, then 1 from another: the other one is served first."""
    proxy = sidecar_factory(upstream=ollama_emulator.url, policy=make_policy(max_parallel=1))
    await preload(proxy, SMALL)
    calls = [gen(SMALL, client="noisy", rid=f"n{i}") for i in range(20)]
    calls.append(gen(SMALL, client="quiet", rid="q"))
    order = await run_paused(proxy, calls)
    assert len(order) == 21
    assert order[0] == "q"
    assert order[1:] == [f"n{i}" for i in range(20)]
