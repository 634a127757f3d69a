"""Streaming through the proxy with the official `ollama` and `openai` clients, both dialects, and
the pass-through routes — against the emulator, through a real sidecar."""

from __future__ import annotations

from typing import Any

import httpx
import ollama
import openai
import pytest
from sidecar_fixtures import SidecarFactory

pytestmark = pytest.mark.anyio

MODEL = "llama3.2:1b"


async def test_ollama_client_streams_chat_and_generate(
    sidecar_factory: SidecarFactory, ollama_emulator: Any
) -> None:
    """Native NDJSON streams arrive chunk by chunk with Ollama's final counters intact."""
    proxy = sidecar_factory(upstream=ollama_emulator.url)
    async with ollama.AsyncClient(host=proxy.url) as client:
        final_count = await _ollama_calls(client)
    proxy.wait_idle()
    # The tap read the final chunk's counters for the journal.
    chat = next(r for r in proxy.journal.records if r.endpoint == "/api/chat")
    assert chat.status == "completed" and chat.eval_count == final_count


async def _ollama_calls(client: ollama.AsyncClient) -> int:
    """Every native call the client offers that the sidecar serves; the chat's eval_count."""
    chunks = [
        c async for c in await client.chat(
            model=MODEL, messages=[{"role": "user", "content": "hello"}], stream=True
        )
    ]
    assert len(chunks) > 2
    assert chunks[-1].done and chunks[-1].eval_count
    assert "".join(c.message.content or "" for c in chunks)
    parts = [c async for c in await client.generate(model=MODEL, prompt="hi", stream=True)]
    assert parts[-1].done and parts[-1].done_reason in ("stop", "length")
    whole = await client.generate(model=MODEL, prompt="hi", stream=False)
    assert whole.response and whole.eval_count
    embedded = await client.embed(model="nomic-embed-text", input=["a", "b"])
    assert len(embedded.embeddings) == 2
    listed = await client.list()
    assert MODEL in [m.model for m in listed.models]
    shown = await client.show(MODEL)
    assert shown.modelinfo is not None
    assert (await client.ps()).models
    assert chunks[-1].eval_count is not None
    return chunks[-1].eval_count


async def test_openai_client_streams_chat_and_completions(
    sidecar_factory: SidecarFactory, ollama_emulator: Any
) -> None:
    """SSE streams end with [DONE]; usage comes through when asked for."""
    proxy = sidecar_factory(upstream=ollama_emulator.url)
    client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="unused", max_retries=0)
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hello"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    assert len(chunks) > 2
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    completion = await client.completions.create(model=MODEL, prompt="hi", stream=True)
    pieces = [c async for c in completion]
    assert "".join(p.choices[0].text for p in pieces if p.choices)
    whole = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}]
    )
    assert whole.choices[0].message.content
    vectors = await client.embeddings.create(model="nomic-embed-text", input="hello")
    assert vectors.data[0].embedding
    models = await client.models.list()
    assert MODEL in [m.id for m in models.data]
    assert (await client.models.retrieve(MODEL)).id == MODEL
    await client.close()
    proxy.wait_idle()
    chat = next(r for r in proxy.journal.records if r.endpoint == "/v1/chat/completions")
    assert chat.eval_count == chunks[-1].usage.completion_tokens


async def test_scheduled_responses_carry_request_id_wait_and_score(
    sidecar_factory: SidecarFactory, ollama_emulator: Any
) -> None:
    """X-Request-Id (the client's own when well-formed), X-Queue-Wait-Ms and the dispatch score."""
    proxy = sidecar_factory(upstream=ollama_emulator.url)
    body = {"model": MODEL, "prompt": "hi", "stream": False}
    async with httpx.AsyncClient(timeout=30) as client:
        mine = await client.post(proxy.url + "/api/generate", json=body, headers={"x-request-id": "job-42.a"})
        assert mine.headers["x-request-id"] == "job-42.a"
        assert int(mine.headers["x-queue-wait-ms"]) >= 0
        float(mine.headers["x-dispatch-score"])
        assert mine.headers["x-dispatch-policy"].startswith("test@")
        bad = await client.post(
            proxy.url + "/api/generate", json=body, headers={"x-request-id": "no spaces <allowed>"}
        )
        assert bad.headers["x-request-id"] != "no spaces <allowed>"
        assert len(bad.headers["x-request-id"]) == 32
        passed = await client.get(proxy.url + "/api/version")
        assert passed.status_code == 200 and passed.headers["x-request-id"]
        root = await client.get(proxy.url + "/")
        assert root.text == "Ollama is running"
        head = await client.head(proxy.url + "/")
        assert head.status_code == 200 and head.content == b""


async def test_admin_only_passthrough(sidecar_factory: SidecarFactory, ollama_emulator: Any) -> None:
    """Pull/delete pass through for admins and are refused, in the dialect, for everyone else."""
    admin = sidecar_factory(upstream=ollama_emulator.url)
    outsider = sidecar_factory(
        upstream=ollama_emulator.url,
        policy=admin.policy_path.read_text() + '\n[admin]\nnetworks = ["10.9.9.9/32"]\n',
    )
    async with httpx.AsyncClient(timeout=30) as client:
        refused = await client.post(outsider.url + "/api/pull", json={"model": MODEL, "stream": False})
        assert refused.status_code == 403 and "admin only" in refused.json()["error"]
        pulled = await client.post(admin.url + "/api/pull", json={"model": MODEL, "stream": False})
        assert pulled.status_code == 200 and pulled.json() == {"status": "success"}
        gone = await client.request("DELETE", outsider.url + "/api/delete", json={"model": MODEL})
        assert gone.status_code == 403
