"""When the shutdown grace runs out, every request the sidecar still holds is answered in its own
dialect: 503 + Retry-After if its answer had not begun (its model still loading, or Ollama still
working on a whole answer), the dialect's error chunk and a clean end if it was streaming. Queued
requests get their 503 at once, when the shutdown begins. Each gets exactly one journal record,
and the log has one summary line and no traceback."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sidecar_fixtures import SLOW_NODE, make_policy, running_sidecar, wait_async

GRACE = 0.5
CUT = "sidecar shut down before the request finished"
# slow:700b's answers outlast the grace (SLOW_NODE); huge:70b takes ~10 s to load. Two slots per
# model, so the whole answer joins the streaming one's model and the huge load is not held back.
EMULATOR = SLOW_NODE + """[[models]]
name = "huge:70b"
size_gb = 60
parameter_size = "70B"
quantization = "Q4_K_M"
family = "llama"
[[models]]
name = "llama3.2:1b"
"""
PROMPT = "tell me everything"


def long_seed(model: str, text: str) -> int:
    """A seed for which the emulator's answer to `text` is long (100+ tokens)."""
    from sim.textgen import plan_reply, seeded

    return next(s for s in range(1000) if plan_reply(seeded(model, text, s), None)[0] >= 100)


@dataclass(frozen=True)
class Dialect:
    name: str
    path: str

    def body(self, model: str, *, stream: bool) -> dict[str, Any]:
        if self.name == "openai":
            seed = long_seed(model, f"user: {PROMPT}")
            return {"model": model, "stream": stream, "seed": seed,
                    "messages": [{"role": "user", "content": PROMPT}]}
        seed = long_seed(model, PROMPT)
        return {"model": model, "prompt": PROMPT, "stream": stream, "options": {"seed": seed}}

    def message(self, error: Any) -> str:
        """The message of an error object in this dialect (and check its shape)."""
        if self.name == "openai":
            assert set(error) == {"message", "type", "param", "code"}, error
            text: str = error["message"]
            return text
        assert isinstance(error, str), error
        return error

    def chunks(self, text: str) -> list[Any]:
        """The decoded chunks of a streamed answer, in order."""
        if self.name == "openai":
            events = [e for e in text.split("\n\n") if e.strip()]
            assert all(e.startswith("data: ") for e in events), text
            return [e[6:] if e == "data: [DONE]" else json.loads(e[6:]) for e in events]
        assert text.endswith("\n"), text
        return [json.loads(line) for line in text.splitlines()]


DIALECTS = [Dialect("ollama", "/api/generate"), Dialect("openai", "/v1/chat/completions")]


@dataclass(frozen=True)
class Case:
    """One request the shutdown finds: what it asks for and how it must end."""

    name: str
    model: str
    stream: bool
    status: str  # in the journal
    http_status: int | None  # what the client got (in the journal too)


CASES = [
    Case("streaming", "slow:700b", True, "failed", 200),
    Case("whole", "slow:700b", False, "failed", 503),
    Case("loading", "huge:70b", True, "failed", 503),
    Case("queued", "llama3.2:1b", False, "rejected", 503),
]


@pytest.fixture
def slow_emulator() -> Iterator[Any]:
    from sim.config import load_text
    from sim.testing import running_emulator

    with running_emulator(load_text(EMULATOR, "shutdown", time.time())) as emulator:
        yield emulator


async def _stream_text(client: httpx.AsyncClient, url: str, body: dict[str, Any],
                       rid: str, first: asyncio.Event) -> tuple[httpx.Response, str]:
    async with client.stream("POST", url, json=body, headers={"x-request-id": rid}) as response:
        text = ""
        async for piece in response.aiter_text():
            text += piece
            first.set()
        return response, text


@pytest.mark.anyio
@pytest.mark.parametrize("dialect", DIALECTS, ids=lambda d: d.name)
async def test_grace_runs_out(
    dialect: Dialect, slow_emulator: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    policy = tmp_path / "policy.toml"
    text = make_policy(max_parallel=3, vram_gb=96, max_loaded_models=4)
    policy.write_text(text.replace("num_parallel = 1", "num_parallel = 2"), encoding="utf-8")
    caplog.set_level(logging.INFO)
    url_of: dict[str, str] = {}
    results: dict[str, tuple[httpx.Response, str]] = {}
    with running_sidecar(policy, slow_emulator.url, grace=GRACE) as proxy:
        url = proxy.url + dialect.path
        async with httpx.AsyncClient(timeout=60) as client:
            tasks: dict[str, asyncio.Task[tuple[httpx.Response, str]]] = {}
            for in_flight, case in enumerate(CASES, start=1):
                first = asyncio.Event()
                body = dialect.body(case.model, stream=case.stream)
                tasks[case.name] = asyncio.create_task(
                    _stream_text(client, url, body, case.name, first))
                url_of[case.name] = url
                if case.name == "streaming":
                    await asyncio.wait_for(first.wait(), 20)  # the answer is under way
                elif case.name == "queued":
                    await wait_async(client, proxy, lambda h: h["queue_depth"] == 1)
                else:
                    await wait_async(client, proxy, lambda h, n=in_flight: h["in_flight"] == n,
                                     within=20)
            await asyncio.sleep(0.3)  # Ollama is working on each (or loading its model)
            stopped_at = time.monotonic()
            proxy.loop.call_soon_threadsafe(proxy.server.stop)
            # The queued one is answered when the shutdown begins, not after the grace.
            results["queued"] = await asyncio.wait_for(tasks.pop("queued"), GRACE)
            for name, task in tasks.items():
                results[name] = await asyncio.wait_for(task, 20)
            assert time.monotonic() - stopped_at < GRACE + 2  # and the grace is not exceeded much
    # Ollama's work on the cut requests was called off (their upstream requests closed).
    deadline = time.monotonic() + 5
    while slow_emulator.stats()["requests_cancelled"] != 3:
        assert time.monotonic() < deadline, slow_emulator.stats()
        await asyncio.sleep(0.05)
    # Every request answered in its dialect.
    for case in CASES:
        response, text = results[case.name]
        if case.name == "streaming":
            assert response.status_code == 200
            chunks = dialect.chunks(text)
            assert len(chunks) >= 2 and "error" not in chunks[0]
            assert dialect.message(chunks[-1]["error"]) == CUT, chunks[-1]
        else:
            assert response.status_code == 503, (case.name, response.status_code, text)
            assert int(response.headers["retry-after"]) >= 1
            assert response.headers["content-type"] == "application/json"
            message = dialect.message(json.loads(text)["error"])
            expected = "the proxy is shutting down" if case.name == "queued" else CUT
            assert message == expected, (case.name, message)
    # Exactly one record each, with what the client got.
    records = {r.client_request_id or r.request_id: r for r in proxy.journal.records}
    assert len(proxy.journal.records) == len(CASES) == len(records)
    for case in CASES:
        record = records[case.name]
        assert (record.status, record.http_status) == (case.status, case.http_status), record
        if case.name != "queued":
            assert record.error == CUT
    # No traceback in the log; one line says how many were cut.
    for record in caplog.records:
        assert record.exc_info is None and record.levelno < logging.ERROR, record.getMessage()
    summary = [r.getMessage() for r in caplog.records if "ran out" in r.getMessage()]
    assert summary == ["shutdown grace (0.5s) ran out: 3 requests still in progress were cut"]


def test_sigterm_to_serve_cuts_what_the_grace_did_not_finish(tmp_path: Path, slow_emulator: Any) -> None:
    """The real process: SIGTERM, a 0.5 s grace, a stream under way and a model still loading.
    Both clients get their dialect's error, the journal on disk has one record each, the log one
    summary line and no traceback, and the process exits 0."""
    import os
    import signal
    import sqlite3
    import threading

    from sidecar_fixtures import cli_process, wait_until, wait_upstream_up

    policy = tmp_path / "policy.toml"
    text = make_policy(max_parallel=3, vram_gb=96, max_loaded_models=4)
    policy.write_text(text.replace("num_parallel = 1", "num_parallel = 2"), encoding="utf-8")
    env = {**os.environ, "SMART_PROXY_UPSTREAM": slow_emulator.url, "SMART_PROXY_LOG_FORMAT": "json",
           "SMART_PROXY_DB": str(tmp_path / "journal.db")}
    serve = ["serve", "--policy", str(policy), "--host", "127.0.0.1", "--port", "0",
             "--shutdown-grace", str(GRACE)]
    ollama, openai = DIALECTS
    streamed: list[str] = []
    first = threading.Event()

    def stream() -> None:
        body = ollama.body("slow:700b", stream=True)
        with httpx.stream("POST", url + ollama.path, json=body, timeout=30,
                          headers={"x-request-id": "streaming"}) as response:
            for line in response.iter_lines():
                streamed.append(line)
                first.set()

    with cli_process(serve, env) as process:
        assert process.stderr is not None
        url = next(line.split()[3] for line in process.stderr
                   if line.startswith("smart-proxy listening on "))
        wait_upstream_up(url, within=10)
        streaming = threading.Thread(target=stream)
        streaming.start()
        assert first.wait(20)
        loading: list[httpx.Response] = []
        loader = threading.Thread(target=lambda: loading.append(httpx.post(
            url + openai.path, json=openai.body("huge:70b", stream=False), timeout=30,
            headers={"x-request-id": "loading"})))
        loader.start()
        wait_until(lambda: httpx.get(url + "/proxy/health", timeout=5).json()["in_flight"] == 2,
                   within=10, what="both requests in flight")
        process.send_signal(signal.SIGTERM)
        streaming.join(20)
        loader.join(20)
        assert process.wait(timeout=20) == 0
        log = process.stderr.read()
    assert json.loads(streamed[0])["done"] is False
    assert json.loads(streamed[-1]) == {"error": CUT}
    (refused,) = loading
    assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
    assert openai.message(refused.json()["error"]) == CUT
    assert "Traceback" not in log and "CancelledError" not in log, log
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    cut = [line for line in lines if "ran out" in line["msg"]]
    assert [(c["level"], c["msg"]) for c in cut] == [
        ("warning", "shutdown grace (0.5s) ran out: 2 requests still in progress were cut")]
    with sqlite3.connect(tmp_path / "journal.db") as db:
        rows = db.execute("SELECT coalesce(client_request_id, request_id), status, http_status, "
                          "error FROM requests ORDER BY 1").fetchall()
    assert rows == [("loading", "failed", 503, CUT), ("streaming", "failed", 200, CUT)]


@pytest.mark.anyio
async def test_a_cut_interrupts_only_armed_regions_and_only_its_own_cancellation() -> None:
    from server.runtime.holds import Cut, Holds

    holds = Holds()
    parked = asyncio.Event()
    outcomes: dict[str, str] = {}

    async def request(name: str, *, armed: bool) -> None:
        with holds.hold() as hold:
            try:
                if armed:
                    with hold.armed():
                        parked.set()
                        await asyncio.sleep(30)
                else:
                    await asyncio.sleep(0.05)  # cleanup-like work: a cut must not interrupt it
                    with hold.armed():  # ... but the next armed region is refused at once
                        outcomes[name] = "entered"
            except Cut:
                task = asyncio.current_task()
                assert task is not None and task.cancelling() == 0  # nothing left pending
                outcomes[name] = "cut"

    armed = asyncio.create_task(request("armed", armed=True))
    unarmed = asyncio.create_task(request("unarmed", armed=False))
    await parked.wait()
    assert len(holds) == 2 and not await holds.wait_empty(0.01)
    assert holds.cut_all() == 2
    assert await holds.wait_empty(5)
    await asyncio.gather(armed, unarmed)
    assert outcomes == {"armed": "cut", "unarmed": "cut"} and holds.interrupted() == 2

    # Someone else's cancellation (the ASGI server's) stays a cancellation, cut or not.
    parked.clear()
    foreign = asyncio.create_task(request("foreign", armed=True))
    await parked.wait()
    foreign.cancel()
    holds.cut_all()
    with pytest.raises(asyncio.CancelledError):
        await foreign
    assert "foreign" not in outcomes and await holds.wait_empty(1) and holds.interrupted() == 2
