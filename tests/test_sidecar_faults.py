"""Faults: clients that leave while queued or mid-answer, an Ollama that dies mid-stream and comes
back, and a graceful shutdown. After each, nothing is left in flight."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sidecar_fixtures import SidecarFactory, make_policy, running_sidecar, wait_async

MODEL = "llama3.2:1b"
# A model that loads fast (small file) but generates slowly (70B-class token rate): at this time
# scale the prompt below streams 114 tokens over ~2.3 s, after a ~0.8 s load.
SLOW = """
[node]
vram_gb = 8
time_scale = 0.3
[[models]]
name = "slow:70b"
size_gb = 0.5
parameter_size = "70B"
quantization = "Q4_K_M"
family = "llama"
[[models]]
name = "llama3.2:1b"
"""
LONG = {"model": "slow:70b", "prompt": "tell me everything"}


def slow_settings() -> Any:
    from sim.config import load_text

    return load_text(SLOW, "slow", time.time())


@pytest.fixture
def slow_emulator() -> Iterator[Any]:
    from sim.testing import running_emulator

    with running_emulator(slow_settings()) as emulator:
        yield emulator


@pytest.mark.anyio
async def test_disconnect_while_queued_removes_the_ticket(
    sidecar_factory: SidecarFactory, ollama_emulator: Any
) -> None:
    proxy = sidecar_factory(upstream=ollama_emulator.url)
    async with httpx.AsyncClient(timeout=30) as client:
        await client.post(proxy.url + "/proxy/pause")
        waiting = asyncio.create_task(
            client.post(proxy.url + "/api/generate", json={"model": MODEL, "prompt": "hi"},
                        headers={"x-request-id": "leaver"})
        )
        await wait_async(client, proxy, lambda h: h["queue_depth"] == 1)
        assert (await client.get(proxy.url + "/proxy/queue/leaver")).json()["position"] == 1
        waiting.cancel()  # closes the connection
        await wait_async(client, proxy, lambda h: h["queue_depth"] == 0, within=5)
        await client.post(proxy.url + "/proxy/resume")
        await wait_async(client, proxy, lambda h: h["in_flight"] == 0)
    assert ollama_emulator.stats()["requests_served"] == 0
    (record,) = proxy.journal.records
    assert (record.client_request_id, record.status) == ("leaver", "cancelled")
    assert record.error == "client disconnected while queued"


def test_disconnect_mid_stream_closes_the_upstream_request(
    sidecar_factory: SidecarFactory, slow_emulator: Any
) -> None:
    proxy = sidecar_factory(upstream=slow_emulator.url)
    with httpx.stream("POST", proxy.url + "/api/generate", json=LONG, timeout=30) as response:
        lines = response.iter_lines()
        for _ in range(3):
            assert json.loads(next(lines))["done"] is False
        assert proxy.health()["in_flight"] == 1
    # Leaving the block closed the connection mid-answer.
    proxy.wait_for(lambda h: h["in_flight"] == 0, within=5)
    deadline = time.monotonic() + 5
    while slow_emulator.stats()["requests_cancelled"] != 1:
        assert time.monotonic() < deadline, slow_emulator.stats()
        time.sleep(0.01)
    proxy.wait_for(lambda h: len(proxy.journal.records) == 1)
    assert proxy.journal.records[0].status == "cancelled"
    assert proxy.journal.records[0].error == "client disconnected mid-answer"


def test_upstream_killed_mid_stream_then_restarted(sidecar_factory: SidecarFactory) -> None:
    """The broken stream ends with an error line, the slot comes back, health shows Ollama down,
    and once Ollama is back on its port the sidecar serves again without a restart."""
    from sim.testing import running_emulator

    with contextlib.ExitStack() as first:
        emulator = first.enter_context(running_emulator(slow_settings()))
        port = int(emulator.url.rsplit(":", 1)[1])
        proxy = sidecar_factory(upstream=emulator.url)
        with httpx.stream("POST", proxy.url + "/api/generate", json=LONG, timeout=30) as response:
            lines = response.iter_lines()
            assert json.loads(next(lines))["done"] is False
            first.close()  # Ollama goes away while the answer is still streaming
            rest = list(lines)
    assert "broke off" in json.loads(rest[-1])["error"]
    proxy.wait_for(lambda h: h["in_flight"] == 0 and not h["upstream"]["up"], within=10)
    with running_emulator(preset="tiny-8gb", time_scale=0.0, port=port):
        proxy.wait_for(lambda h: h["upstream"]["up"], within=10)
        again = httpx.post(proxy.url + "/api/generate", timeout=30,
                           json={"model": MODEL, "prompt": "hi", "stream": False})
        assert again.status_code == 200 and again.json()["done"] is True
        proxy.wait_idle()
    assert [r.status for r in proxy.journal.records] == ["failed", "completed"]


def test_graceful_shutdown(tmp_path: Path, slow_emulator: Any) -> None:
    """Stop: queued requests get 503 at once, the one in flight finishes, the server exits."""
    policy = tmp_path / "policy.toml"
    policy.write_text(make_policy(max_parallel=1), encoding="utf-8")
    body = LONG
    with running_sidecar(policy, slow_emulator.url, grace=10) as proxy, \
            concurrent.futures.ThreadPoolExecutor(2) as pool:

        def stream_all() -> list[str]:
            with httpx.stream("POST", proxy.url + "/api/generate", json=body, timeout=30) as r:
                return list(r.iter_lines())

        running = pool.submit(stream_all)
        proxy.wait_for(lambda h: h["in_flight"] == 1)
        queued = pool.submit(httpx.post, proxy.url + "/api/generate", json=body, timeout=30)
        proxy.wait_depth(1)
        proxy.loop.call_soon_threadsafe(proxy.server.stop)
        refused = queued.result()
        assert refused.status_code == 503 and "shutting down" in refused.json()["error"]
        assert refused.headers["retry-after"] == "5"
        lines = running.result()
        assert json.loads(lines[-1])["done"] is True  # the in-flight answer was not cut
        deadline = time.monotonic() + 10
        while True:
            try:
                httpx.get(proxy.url + "/proxy/health", timeout=1)
            except httpx.TransportError:
                break  # no longer accepting
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert [r.status for r in proxy.journal.records] == ["rejected", "completed"]
