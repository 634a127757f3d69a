"""Wire behaviour over real HTTP: framing, time to first byte, load/unload requests, aborts, 503,
determinism, counters, and the in-process entry point."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from dataclasses import replace

import httpx
import pytest

from sim.serve import preset_settings, serve_emulator
from sim.testing import RunningEmulator, running_emulator

RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z")
CHAT = {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "hello there"}]}


@pytest.fixture
def slow() -> Iterator[RunningEmulator]:
    """time scale 0.05: an 8B load takes 0.17–0.25 s, long enough to observe."""
    with running_emulator(preset="tiny-8gb", time_scale=0.05) as emulator:
        yield emulator


def test_ndjson_framing_and_final_counters(ollama_emulator: RunningEmulator) -> None:
    """One JSON object and a newline per chunk, no blank lines; counts present, zero durations omitted."""
    response = httpx.post(ollama_emulator.url + "/api/chat", json=CHAT)
    assert response.headers["content-type"] == "application/x-ndjson"
    assert response.text.endswith("\n") and "\n\n" not in response.text
    chunks = [json.loads(line) for line in response.text.splitlines()]
    final = chunks[-1]
    assert all(RFC3339.fullmatch(c["created_at"]) for c in chunks)
    assert final["done"] is True and final["eval_count"] == len(chunks) - 1
    assert "eval_duration" not in final and "load_duration" not in final  # time scale 0


def test_sse_framing_ends_with_done(ollama_emulator: RunningEmulator) -> None:
    """OpenAI streams are `data: {json}\\n\\n` events ending with `data: [DONE]\\n\\n`."""
    body = CHAT | {"stream": True}
    response = httpx.post(ollama_emulator.url + "/v1/chat/completions", json=body)
    assert response.headers["content-type"] == "text/event-stream"
    events = response.text.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    assert all(e.startswith("data: {") for e in events[:-2])


def test_replies_are_deterministic(ollama_emulator: RunningEmulator) -> None:
    """The same request gets the same text and counts; another prompt gets other text."""
    url = ollama_emulator.url + "/api/generate"
    ask = {"model": "llama3.2:3b", "prompt": "same", "stream": False}
    first, again = httpx.post(url, json=ask).json(), httpx.post(url, json=ask).json()
    other = httpx.post(url, json=ask | {"prompt": "different"}).json()
    assert (first["response"], first["eval_count"]) == (again["response"], again["eval_count"])
    assert other["response"] != first["response"]


@pytest.mark.parametrize(("keep_alive", "reason", "loaded"), [(None, "load", True), (0, "unload", False)])
def test_empty_prompt_loads_or_unloads(ollama_emulator: RunningEmulator, keep_alive: int | None,
                                       reason: str, loaded: bool) -> None:
    """An empty prompt loads the model; with keep_alive 0 it unloads it, at once."""
    url = ollama_emulator.url
    httpx.post(url + "/api/generate", json={"model": "llama3.2:1b", "prompt": "warm"})
    body: dict[str, object] = {"model": "llama3.2:1b", "prompt": ""}
    if keep_alive is not None:
        body["keep_alive"] = keep_alive
    answer = httpx.post(url + "/api/generate", json=body).json()
    assert (answer["done"], answer["done_reason"], answer["response"]) == (True, reason, "")
    names = [m["name"] for m in httpx.get(url + "/api/ps").json()["models"]]
    assert ("llama3.2:1b" in names) is loaded


def test_ps_reports_num_ctx_and_a_forever_expiry(ollama_emulator: RunningEmulator) -> None:
    """context_length follows num_ctx; keep_alive -1 shows an expiry centuries away."""
    url = ollama_emulator.url
    body = {"model": "llama3.2:1b", "messages": [], "keep_alive": -1, "options": {"num_ctx": 8192}}
    assert httpx.post(url + "/api/chat", json=body).json()["done_reason"] == "load"
    (entry,) = httpx.get(url + "/api/ps").json()["models"]
    assert entry["context_length"] == 8192 and entry["expires_at"] > "2300"


def test_head_and_get_root(ollama_emulator: RunningEmulator) -> None:
    """`/` answers GET and HEAD with 200 "Ollama is running"."""
    assert httpx.get(ollama_emulator.url + "/").text == "Ollama is running"
    assert httpx.head(ollama_emulator.url + "/").status_code == 200


def test_stats_count_and_reset(ollama_emulator: RunningEmulator) -> None:
    """/sim/stats counts loads, requests and busy models; POST /sim/stats/reset zeroes them."""
    for model in ("llama3.2:1b", "llama3.2:3b"):
        httpx.post(ollama_emulator.url + "/api/chat", json=CHAT | {"model": model, "stream": False})
    stats = ollama_emulator.stats()
    assert (stats["loads"], stats["requests_served"]) == (2, 2)
    assert set(stats["models"]) == {"llama3.2:1b", "llama3.2:3b"}
    ollama_emulator.reset_stats()
    assert ollama_emulator.stats()["loads"] == 0


@pytest.mark.anyio
async def test_nothing_is_sent_while_the_model_loads(slow: RunningEmulator) -> None:
    """Headers arrive only with the first chunk, after the load; /api/ps lists the loading model."""
    async with httpx.AsyncClient(base_url=slow.url) as client:
        started = time.perf_counter()
        request = asyncio.create_task(client.post("/api/chat", json=CHAT | {"model": "llama3.1:8b"}))
        await asyncio.sleep(0.05)
        loading = (await client.get("/api/ps")).json()["models"]
        response = await request
        waited = time.perf_counter() - started
    assert [m["name"] for m in loading] == ["llama3.1:8b"]
    assert response.status_code == 200 and waited >= 0.15
    assert json.loads(response.text.splitlines()[-1])["load_duration"] >= 0.15e9


@pytest.mark.anyio
async def test_a_client_leaving_during_the_load_aborts_it(slow: RunningEmulator) -> None:
    """The only waiting client disconnects: the load is aborted and nothing is served."""
    async with httpx.AsyncClient(base_url=slow.url) as client:
        request = asyncio.create_task(client.post("/api/chat", json=CHAT | {"model": "llama3.1:8b"}))
        await asyncio.sleep(0.05)
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
    for _ in range(100):
        stats = slow.stats()
        if stats["load_aborts"]:
            break
        await asyncio.sleep(0.01)
    assert (stats["load_aborts"], stats["requests_served"]) == (1, 0)


@pytest.mark.anyio
@pytest.mark.parametrize(("path", "body", "error"), [
    ("/api/chat", CHAT, {"error": "server busy, please try again.  maximum pending requests exceeded"}),
    ("/v1/chat/completions", CHAT, {"error": {
        "message": "server busy, please try again.  maximum pending requests exceeded",
        "type": "api_error", "param": None, "code": None}}),
])
async def test_a_full_queue_is_503(path: str, body: dict[str, object], error: dict[str, object]) -> None:
    """Past max_queue pending requests Ollama answers 503 in the caller's dialect."""
    settings = replace(preset_settings("tiny-8gb", 0.05), max_queue=1, max_loaded_models=1)
    with running_emulator(settings) as emulator:
        async with httpx.AsyncClient(base_url=emulator.url, timeout=30) as client:
            first = asyncio.create_task(client.post("/api/chat", json=CHAT | {"model": "llama3.2:1b"}))
            await asyncio.sleep(0.02)
            second = asyncio.create_task(client.post("/api/chat", json=CHAT | {"model": "llama3.2:3b"}))
            await asyncio.sleep(0.02)
            rejected = await client.post(path, json=body | {"model": "llama3.1:8b"})
            assert (await first).status_code == (await second).status_code == 200
    assert (rejected.status_code, rejected.json()) == (503, error)


@pytest.mark.anyio
async def test_serve_emulator_runs_in_process_until_cancelled() -> None:
    """The in-process entry serves in the caller's loop and stops cleanly when cancelled."""
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    server = asyncio.create_task(
        serve_emulator(preset_settings("tiny-8gb", 0.0), "127.0.0.1", 0, on_ready=ready.set_result)
    )
    url = await ready
    async with httpx.AsyncClient(base_url=url) as client:
        assert (await client.get("/api/version")).json() == {"version": "0.33.0"}
    server.cancel()
    with pytest.raises(asyncio.CancelledError):
        await server
