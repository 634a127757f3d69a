"""Ollama's newer routes through the sidecar, each with its official client against the emulator:
`/v1/responses` and `/v1/audio/transcriptions` with `openai`, `/v1/messages` with `anthropic`.
Each is queued and journaled like the older routes, passed through byte for byte, and answers
errors in its own dialect — Anthropic's shape on `/v1/messages`. Also the newer pass-through
routes (`/api/status` public; `/api/me`, `/api/signout`, `/api/experimental/*` admin)."""

from __future__ import annotations

import json
import threading
from typing import Any

import anthropic
import httpx
import openai
import pytest
from sidecar_fixtures import SidecarFactory, make_policy, wait_until

MODEL = "llama3.2:1b"


def _record(proxy: Any, endpoint: str, nth: int = 1) -> Any:
    """The `nth` record for `endpoint`, once it is there (a record is handed over just after the
    client has read the last byte, so it may trail the answer by a moment)."""
    def mine() -> list[Any]:
        return [r for r in proxy.journal.records if r.endpoint == endpoint]

    wait_until(lambda: len(mine()) >= nth, within=5, what=f"record {nth} for {endpoint}")
    return mine()[nth - 1]


def test_responses_api_with_the_openai_client(sidecar_factory: SidecarFactory, ollama_emulator: Any) -> None:
    proxy = sidecar_factory(upstream=ollama_emulator.url)
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="ollama", max_retries=0)
    whole = client.responses.create(model=MODEL, input="Why is the sky blue?", max_output_tokens=40)
    assert whole.status == "completed" and whole.output_text
    assert whole.usage is not None and whole.usage.output_tokens > 0
    record = _record(proxy, "/v1/responses")
    assert record.status == "completed" and record.model == MODEL and record.score is not None
    assert record.prompt_eval_count == whole.usage.input_tokens
    assert record.eval_count == whole.usage.output_tokens

    text, kinds = "", []
    with client.responses.stream(model=MODEL, input=[{"role": "user", "content": "Count to ten"}],
                                 max_output_tokens=30) as stream:
        for event in stream:
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                text += event.delta
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert text and final.output_text == text
    streamed = _record(proxy, "/v1/responses", 2)
    assert streamed.eval_count == final.usage.output_tokens  # type: ignore[union-attr]

    with pytest.raises(openai.NotFoundError):  # Ollama's 404, passed through
        client.responses.create(model="no-such-model", input="hi")
    refused = httpx.post(proxy.url + "/v1/responses", json={"input": "hi"}, timeout=10)
    assert refused.status_code == 400 and refused.json()["error"]["type"] == "invalid_request_error"


def test_messages_api_with_the_anthropic_client(sidecar_factory: SidecarFactory, ollama_emulator: Any) -> None:
    proxy = sidecar_factory(upstream=ollama_emulator.url)
    client = anthropic.Anthropic(base_url=proxy.url, api_key="ollama", max_retries=0)
    message = client.messages.create(
        model=MODEL, max_tokens=40, system="Be brief.",
        messages=[{"role": "user", "content": "Hello, how are you?"}],
    )
    assert message.type == "message" and message.content[0].type == "text"
    assert message.content[0].text and message.stop_reason in ("end_turn", "max_tokens")
    record = _record(proxy, "/v1/messages")
    assert record.status == "completed" and record.model == MODEL
    assert record.prompt_eval_count == message.usage.input_tokens
    assert record.eval_count == message.usage.output_tokens

    with client.messages.stream(model=MODEL, max_tokens=30,
                                messages=[{"role": "user", "content": "Count from 1 to 10"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.content[0].text == text  # type: ignore[union-attr]
    assert _record(proxy, "/v1/messages", 2).eval_count == final.usage.output_tokens

    with pytest.raises(anthropic.NotFoundError) as missing:  # Ollama's own 404
        client.messages.create(model="no-such-model", max_tokens=5,
                               messages=[{"role": "user", "content": "hi"}])
    assert missing.value.status_code == 404
    # The sidecar's own refusals come in Anthropic's shape too, which the client understands.
    refused = httpx.post(proxy.url + "/v1/messages", content=b"{not json", timeout=10,
                         headers={"anthropic-version": "2023-06-01"})
    assert refused.status_code == 400
    body = refused.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "JSON" in body["error"]["message"]
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(model="", max_tokens=5, messages=[{"role": "user", "content": "hi"}])


def test_an_api_key_in_x_api_key_identifies_an_anthropic_client(
    sidecar_factory: SidecarFactory, ollama_emulator: Any
) -> None:
    proxy = sidecar_factory(
        upstream=ollama_emulator.url, env={"SMART_PROXY_API_KEYS": "sk-claude=coder"},
        policy=make_policy(extra='[clients]\nidentify_by = ["api_key", "ip"]\n'),
    )
    client = anthropic.Anthropic(base_url=proxy.url, api_key="sk-claude", max_retries=0)
    client.messages.create(model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert _record(proxy, "/v1/messages").client == "coder"


def test_audio_transcriptions_with_the_openai_client(
    sidecar_factory: SidecarFactory, ollama_emulator: Any
) -> None:
    proxy = sidecar_factory(upstream=ollama_emulator.url)
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="ollama", max_retries=0)
    audio = b"RIFF" + bytes(64_000)  # two seconds of 16 kHz 16-bit silence, near enough
    result = client.audio.transcriptions.create(model=MODEL, file=("speech.wav", audio, "audio/wav"))
    assert result.text
    record = _record(proxy, "/v1/audio/transcriptions")
    assert record.status == "completed" and record.model == MODEL and record.http_status == 200
    assert record.eval_count and record.eval_count > 0
    # The model is a form field: without one the sidecar refuses, in the OpenAI shape.
    missing = httpx.post(proxy.url + "/v1/audio/transcriptions", files={"file": ("a.wav", audio)}, timeout=10)
    assert missing.status_code == 400
    assert "model is required" in missing.json()["error"]["message"]
    garbled = httpx.post(proxy.url + "/v1/audio/transcriptions", content=b"not a form", timeout=10,
                         headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert garbled.status_code == 400 and "multipart" in garbled.json()["error"]["message"]


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/responses"])
def test_a_broken_event_stream_ends_with_an_error_event(
    sidecar_factory: SidecarFactory, slow_emulator: Any, path: str
) -> None:
    proxy = sidecar_factory(upstream=slow_emulator.url, policy=make_policy(vram_gb=96))
    if path == "/v1/messages":
        body: dict[str, Any] = {"model": "slow:700b", "max_tokens": 400, "stream": True,
                                "messages": [{"role": "user", "content": "tell me everything"}]}
    else:
        body = {"model": "slow:700b", "max_output_tokens": 400, "stream": True, "input": "tell me everything"}
    started = threading.Event()
    received: dict[str, Any] = {}

    def read() -> None:
        with httpx.stream("POST", proxy.url + path, json=body, timeout=60,
                          headers={"x-request-id": "broken"}) as response:
            text = ""
            for piece in response.iter_text():
                text += piece
                if "delta" in text:
                    started.set()
            received["text"] = text

    reader = threading.Thread(target=read)
    reader.start()
    assert started.wait(30)
    assert proxy.admin("POST", "/proxy/requests/broken/cancel").status_code == 200
    reader.join(30)
    last = received["text"].rstrip("\n").split("\n\n")[-1]
    event, data = last.split("\n", 1)
    assert event == "event: error"
    payload = json.loads(data.removeprefix("data: "))
    assert payload["type"] == "error"
    message = payload["error"]["message"] if path == "/v1/messages" else payload["message"]
    assert "administrator cancelled" in message


def test_newer_pass_through_routes(sidecar_factory: SidecarFactory, ollama_emulator: Any) -> None:
    proxy = sidecar_factory(
        upstream=ollama_emulator.url, env={"PROXY_ADMIN_KEY": "k"},
        policy=make_policy(extra='[admin]\nnetworks = ["10.9.9.9/32"]\n'),
    )
    status = httpx.get(proxy.url + "/api/status", timeout=10)
    # It reached Ollama (the emulator has no such route: its own 404, not the sidecar's).
    assert "no such endpoint" not in status.text
    for method, path in (("POST", "/api/me"), ("POST", "/api/signout"),
                         ("GET", "/api/experimental/anything"), ("POST", "/api/experimental/a/b")):
        assert httpx.request(method, proxy.url + path, timeout=10).status_code == 403
        forwarded = httpx.request(method, proxy.url + path, headers={"x-admin-key": "k"}, timeout=10)
        assert forwarded.status_code != 403 and "no such endpoint" not in forwarded.text


def test_a_hostile_form_is_refused_at_once() -> None:
    """Thousands of Content-Disposition headers in one part: refused by size, in linear time."""
    from schemas.multipart import FormError, form_field

    ct = "multipart/form-data; boundary=xyz"
    hostile = b"--xyz\r\n" + b"content-disposition:" * 200_000 + b"\r\n\r\nx\r\n--xyz--\r\n"
    with pytest.raises(FormError, match="headers are longer"):
        form_field(hostile, ct, "model")
    quoted = b'--xyz\r\nContent-Disposition: form-data; filename="name=model"; name="model"\r\n\r\nm\r\n--xyz--\r\n'
    assert form_field(quoted, ct, "model") == "m"


@pytest.mark.parametrize(("path", "tail", "expected"), [
    ("/api/chat", b'"}\n', b'{"error":"x"}\n'),
    ("/api/chat", b'"a', b'\n{"error":"x"}\n'),
    ("/v1/messages", b"}\n\n", b"event: error\ndata: "),
    ("/v1/messages", b'}\n', b"\nevent: error\ndata: "),
    ("/v1/responses", b'"a', b"\n\nevent: error\ndata: "),
])
def test_an_error_after_a_cut_starts_where_the_framing_allows(path: str, tail: bytes, expected: bytes) -> None:
    from server.http.dialects import stream_error

    assert stream_error(path, "x", tail=tail).startswith(expected)
