"""`simulate` agrees with the live sidecar: one trace (200 requests from four clients over three
models on an 8 GB card, so swaps happen) replayed through the real sidecar in front of the HTTP
emulator at time scale 0.02, and through the simulator. The policy's durations are scaled by the
same factor (`policy scale`), since the sidecar's terms count real seconds.

The resolution of a compressed live replay is what one request's trip through two HTTP servers
costs (5–10 ms here, i.e. 0.25–0.5 s of trace time at this scale): a completion and an arrival
closer than that can happen in either order live, and from there the runs part ways. So the
trace arrives in bursts — ten requests at one instant every 50 trace seconds, each burst done
long before the next — and the live run holds dispatching until a burst is all queued (pause,
then resume), as the simulator sees simultaneous arrivals. Then no two decisions fall within the
resolution, and the tolerance is none: loads and the whole dispatch order must agree exactly.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import httpx
from sidecar_fixtures import SidecarFactory

from policy.load import load_policy_text
from policy.scale import scale_policy_text
from schemas.trace import TraceRecord
from sim.config import load_text
from sim.presets import PRESETS
from sim.replay.run import replay_policy
from sim.replay.workload import Request, classify, prepare
from sim.testing import running_emulator

SCALE = 0.02
BURST, BURSTS, GAP = 10, 20, 50.0  # requests per burst, bursts, trace seconds between bursts
MODELS = ("llama3.2:1b", "llama3.2:3b", "llama3.1:8b")
CLIENTS = ("alice", "bob", "carol", "agent-1")

# tiny-8gb as the policy describes it: 8 GB is 7.4506 GiB; one slot per model, two models.
POLICY = """
active = "balanced"
[backend]
url = "http://127.0.0.1:11434"
max_parallel = 1
num_parallel = 1
vram_gb = 7.450580596923828
max_loaded_models = 2
poll_interval = "5s"
queue_timeout = "10m"
[limits]
max_queued_per_client = 1000
[clients]
identify_by = ["header"]
[clients.classes.interactive]
[clients.classes.batch]
clients = ["agent-*"]
[policies.balanced.terms.vram]
fits = 30
unknown_size = 240
swap = [{ up_to_gb = 16, points = 120 }, { up_to_gb = 40, points = 180 }]
swap_above = 240
[policies.balanced.terms.fairness]
per_queued = 3
per_recent = 1
window = "1h"  # longer than the trace: see below
cap = 120
[policies.balanced.terms.class_offset]
offsets = { batch = 60 }
[policies.balanced.terms.aging]
per_second = 0.01  # see below
max_wait = "5m"
"""
# Sending a burst of ten live takes ~90 ms (each request is queued before the next is sent, so
# they queue in trace order): 4.5 trace seconds at this scale, where the simulator sees one
# instant. Aging at 0.01 point a second keeps that spread below every other term's step (all
# whole points here), so aging only breaks ties — by arrival, as the simulator's sequence does.
# The fairness window is longer than the whole trace, so "recent" counts every arrival so far: a
# window that is a multiple of the gap between bursts (10 minutes was twelve gaps) puts its edge
# exactly on an earlier burst's arrivals, which live are spread over the few trace seconds it
# takes to send them, and the two runs then count different numbers of recent requests.


def the_trace() -> list[dict[str, Any]]:
    rng = random.Random(8)
    out = []
    for b in range(BURSTS):
        for k in range(BURST):
            out.append({"id": f"r{b * BURST + k:03d}", "arrival": 5.0 + b * GAP,
                        "client": rng.choice(CLIENTS), "model": rng.choices(MODELS, (3, 2, 2))[0]})
    return out


def admin(proxy: Any, action: str) -> None:
    assert httpx.post(f"{proxy.url}/proxy/{action}", timeout=10).status_code == 200


async def replay_live(proxy: Any, trace: list[dict[str, Any]]) -> None:
    """Each burst at its (scaled) time: queued while paused, then released at once."""
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=50)) as client:
        # The simulator knows every model's size from the start; the sidecar learns them from
        # its first poll of Ollama. The first burst comes 0.1 s in: not before that poll (a
        # size still unknown scores `unknown_size`, and the first burst then ordered otherwise).
        for _ in range(2000):
            if (await client.get(proxy.url + "/proxy/health")).json()["upstream"]["up"]:
                break
            await asyncio.sleep(0.005)
        else:
            raise AssertionError("the sidecar never reached the emulator")
        start = time.monotonic()

        async def one(item: dict[str, Any]) -> None:
            body = {"model": item["model"], "stream": True,
                    "messages": [{"role": "user", "content": f"request {item['id']}: tell me more"}]}
            headers = {"x-client-id": item["client"], "x-request-id": item["id"]}
            async with client.stream("POST", proxy.url + "/api/chat", json=body, headers=headers) as r:
                assert r.status_code == 200, await r.aread()
                async for _ in r.aiter_bytes():
                    pass

        for b in range(BURSTS):
            burst = trace[b * BURST:(b + 1) * BURST]
            late = time.monotonic() - (start + burst[0]["arrival"] * SCALE)
            assert late < GAP * SCALE / 4, f"burst {b} would start {late:.3f}s late"
            await asyncio.sleep(-late)
            await asyncio.to_thread(admin, proxy, "pause")
            tasks = []
            for item in burst:  # one at a time, so they queue in trace order
                tasks.append(asyncio.create_task(one(item)))
                await wait_depth(client, proxy, len(tasks))
            await asyncio.to_thread(admin, proxy, "resume")
            await asyncio.gather(*tasks)


async def wait_depth(client: httpx.AsyncClient, proxy: Any, depth: int) -> None:
    for _ in range(2000):
        health = (await client.get(proxy.url + "/proxy/health")).json()
        if health["queue_depth"] >= depth:
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"the queue never reached {depth}")


def inversions(live: list[str], sim: list[str]) -> list[tuple[str, str]]:
    where = {rid: i for i, rid in enumerate(sim)}
    out = []
    for i, a in enumerate(live):
        for b in live[i + 1:]:
            if where[b] < where[a]:
                out.append((a, b))
    return out


def test_simulate_agrees_with_the_live_sidecar(sidecar_factory: SidecarFactory) -> None:
    trace = the_trace()
    compiled = load_policy_text(POLICY.encode(), "agreement.toml")
    scaled = scale_policy_text(POLICY, "agreement.toml", SCALE)
    with running_emulator(preset="tiny-8gb", time_scale=SCALE) as ollama:
        proxy = sidecar_factory(upstream=ollama.url, policy=scaled, watch_interval=3600)
        asyncio.run(replay_live(proxy, trace))
        live_loads = ollama.stats()["loads"]
    records = {r.client_request_id: r for r in proxy.journal.records if r.status == "completed"}
    assert len(records) == len(trace)
    live_order = sorted(records, key=lambda rid: records[rid].dispatched_at or 0.0)

    # The same trace, with the token counts Ollama reported, through the simulator.
    trace_records = [
        TraceRecord(arrival=item["arrival"], at=item["arrival"], client=item["client"],
                    model=item["model"], endpoint="/api/chat",
                    prompt_tokens=records[item["id"]].prompt_eval_count,
                    output_tokens=records[item["id"]].eval_count)
        for item in trace
    ]
    workload = classify(prepare(trace_records), compiled)
    gpu = load_text(PRESETS["tiny-8gb"], "tiny-8gb", 0.0)
    sim_order: list[str] = []

    def on_grant(request: Request, now: float) -> None:
        sim_order.append(trace[request.index]["id"])

    row = replay_policy(workload, gpu, compiled, "balanced", on_grant=on_grant)
    assert row.figures["completed"] == len(trace)
    assert row.figures["loads"] == live_loads, (row.figures["loads"], live_loads)
    assert row.figures["loads"] >= 10  # the trace does make the card swap

    assert inversions(live_order, sim_order) == []
    assert live_order == sim_order
