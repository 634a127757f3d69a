"""Queue status in band (opt-in): a streamed request on an event-stream route hears
`: queued, position P of N, est Ss` comment lines while it waits, which the official clients
ignore; an error after the first line (a queue timeout, Ollama's own error) arrives as the
stream's error event; native and non-streamed requests are untouched."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import re
from typing import Any

import httpx
import openai
import pytest
from sidecar_fixtures import SidecarFactory, make_policy, wait_until

from engine.eta import ServiceTimes, wait_estimate

MODEL = "llama3.2:1b"
STATUS = '[queue_status]\nenabled = true\nevery = "200ms"\n'
LINE = re.compile(r"^: queued, position (\d+) of (\d+), est (\d+)s$")


def _stream(proxy: Any, body: dict[str, Any], path: str = "/v1/chat/completions") -> tuple[int, str]:
    with httpx.stream("POST", proxy.url + path, json=body, timeout=60) as response:
        return response.status_code, "".join(response.iter_text())


def _chat(model: str = MODEL, stream: bool = True) -> dict[str, Any]:
    return {"model": model, "stream": stream, "max_tokens": 5,
            "messages": [{"role": "user", "content": "hi"}]}


def test_a_waiting_stream_hears_its_place_then_gets_its_answer(
    sidecar_factory: SidecarFactory, ollama_emulator: Any
) -> None:
    proxy = sidecar_factory(upstream=ollama_emulator.url, policy=make_policy(max_parallel=1, extra=STATUS))
    proxy.admin("POST", "/proxy/pause")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        first = pool.submit(_stream, proxy, _chat())
        proxy.wait_depth(1)
        second = pool.submit(_stream, proxy, _chat())
        proxy.wait_depth(2)
        _wait_a_line(proxy)
        proxy.admin("POST", "/proxy/resume")
        (status_a, text_a), (status_b, text_b) = first.result(), second.result()
    assert status_a == status_b == 200
    for text, place in ((text_a, "1"), (text_b, "2")):
        comments = [m for m in (LINE.match(x) for x in text.splitlines()) if m]
        assert comments, text
        # While both waited, each heard its own place (later lines may show the queue moving).
        assert any(m.group(1) == place and m.group(2) == "2" for m in comments), text
        assert text.rstrip().endswith("data: [DONE]")  # then the answer, whole
    # The official client reads such a stream as if the comments were not there.
    proxy.admin("POST", "/proxy/pause")
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="x", max_retries=0)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        chunks = pool.submit(lambda: list(client.chat.completions.create(**_chat())))  # type: ignore[call-overload]
        proxy.wait_depth(1)
        _wait_a_line(proxy)
        proxy.admin("POST", "/proxy/resume")
        received = chunks.result()
    assert "".join(c.choices[0].delta.content or "" for c in received if c.choices)


def test_an_error_after_the_first_line_is_an_error_event(
    sidecar_factory: SidecarFactory, ollama_emulator: Any
) -> None:
    proxy = sidecar_factory(upstream=ollama_emulator.url, policy=make_policy(
        max_parallel=1, queue_timeout="1s", extra=STATUS,
    ))
    proxy.admin("POST", "/proxy/pause")
    status, text = _stream(proxy, _chat())  # waits out the 1 s queue timeout, hearing lines
    assert status == 200 and LINE.match(text.splitlines()[0])
    last = json.loads(text.rstrip().split("\n\n")[-1].removeprefix("data: "))
    assert "queue timeout" in last["error"]["message"]
    wait_until(lambda: len(proxy.journal.records) == 1, within=5, what="its record")
    record = proxy.journal.records[-1]
    assert record.status == "failed" and record.http_status == 504
    # Ollama's own error after the lines began: its message, as an error event.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        missing = pool.submit(_stream, proxy, _chat(model="no-such-model"))
        proxy.wait_depth(1)
        _wait_a_line(proxy)
        proxy.admin("POST", "/proxy/resume")
        status, text = missing.result()
    assert status == 200
    last = json.loads(text.rstrip().split("\n\n")[-1].removeprefix("data: "))
    assert "not found" in last["error"]["message"]
    wait_until(lambda: len(proxy.journal.records) == 2, within=5, what="its record")
    assert proxy.journal.records[-1].http_status == 404


def _wait_a_line(proxy: Any) -> None:
    """Long enough for at least one status line (every 200 ms), without sleeping blind."""
    import time

    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        proxy.health()


def test_native_and_unstreamed_requests_hear_nothing(
    sidecar_factory: SidecarFactory, ollama_emulator: Any
) -> None:
    proxy = sidecar_factory(upstream=ollama_emulator.url, policy=make_policy(max_parallel=1, extra=STATUS))
    proxy.admin("POST", "/proxy/pause")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        native = pool.submit(_stream, proxy, {"model": MODEL, "messages": [], "stream": True}, "/api/chat")
        whole = pool.submit(lambda: httpx.post(proxy.url + "/v1/chat/completions", json=_chat(stream=False), timeout=60))
        proxy.wait_depth(2)
        _wait_a_line(proxy)
        proxy.admin("POST", "/proxy/resume")
        assert ": queued" not in native.result()[1]
        answer = whole.result()
    assert answer.status_code == 200 and answer.json()["choices"]


def test_the_estimate() -> None:
    times = ServiceTimes(prior=10.0)
    assert times.mean() == 10.0 and wait_estimate(3, 2, times.mean()) == 15.0
    times.observe("a", 4.0)
    assert times.mean() == 4.0 and times.mean("a") == 4.0 and times.mean("b") == 4.0
    times.observe("a", 14.0)
    assert 4.0 < times.mean("a") < 14.0
    assert wait_estimate(0, 2, 5.0) == 0.0 and wait_estimate(4, 0, 5.0) == 20.0


def test_a_model_load_after_dispatch_keeps_the_lines_going(
    sidecar_factory: SidecarFactory, slow_emulator: Any
) -> None:
    """Nothing waits ahead, but Ollama takes most of a second to load slow:700b and sends no byte
    meanwhile: the client hears `: dispatched, loading MODEL` lines (never a queue place), then
    the answer — a proxy in front sees bytes flowing through the load."""
    proxy = sidecar_factory(upstream=slow_emulator.url, policy=make_policy(vram_gb=96, extra=(
        '[queue_status]\nenabled = true\nevery = "100ms"\n')))
    status, text = _stream(proxy, _chat("slow:700b"))
    assert status == 200
    lines = text.splitlines()
    assert ": dispatched, loading slow:700b" in lines, text
    assert not any(LINE.match(x) for x in lines)
    assert text.rstrip().endswith("data: [DONE]")
    # Loaded now: a second request hears at most that Ollama is preparing the answer.
    status, text = _stream(proxy, _chat("slow:700b"))
    assert status == 200 and ": dispatched, loading slow:700b" not in text.splitlines()
    wait_until(lambda: len(proxy.journal.records) == 2, within=5, what="two records")
    assert {r.status for r in proxy.journal.records} == {"completed"}


@pytest.mark.anyio
async def test_an_answer_that_arrives_with_the_cancel_is_given_back() -> None:
    """Ollama's answer and the client's disconnect in the same loop step: the answer nobody will
    read is closed (its connection goes back), not left to the garbage collector."""
    from server.proxy.queue_status import await_with_status

    ready, discarded = asyncio.Event(), []

    async def opening() -> str:
        await ready.wait()
        return "answer"

    async def say() -> None:
        pass

    async def close(answer: str) -> None:
        discarded.append(answer)

    waiting = asyncio.create_task(await_with_status(opening(), 10.0, say, close))
    await asyncio.sleep(0)  # it is waiting now
    ready.set()
    waiting.cancel()  # in the same step: the opening finishes first, then the cancel lands
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert discarded == ["answer"]


def test_a_model_name_cannot_break_out_of_its_comment_line() -> None:
    from server.proxy.queue_status import dispatched_line

    assert dispatched_line("m:latest", False) == b": dispatched, loading m:latest\n\n"
    line = dispatched_line("x\n\ndata: {\"forged\": 1}\r", False)
    assert line.count(b"\n") == 2 and line.endswith(b"\n\n") and b"\r" not in line
    assert dispatched_line("m:latest", True) == b": dispatched, waiting for Ollama\n\n"
