"""Every kind of bad input gets a clear 4xx (or the documented 5xx) in the client's dialect: an
OpenAI error object on /v1/*, {"error": "..."} on /api/* — never a traceback, never a 500."""

from __future__ import annotations

import socket
from typing import Any

import httpx
import pytest
from sidecar_fixtures import RunningSidecar, SidecarFactory, make_policy

DIALECTS = ["/api/chat", "/v1/chat/completions"]


def message_of(path: str, response: httpx.Response) -> str:
    """The error message, after checking the body has exactly the dialect's shape."""
    body = response.json()
    if path.startswith("/v1/"):
        assert set(body) == {"error"}
        error = body["error"]
        assert set(error) == {"message", "type", "param", "code"}
        expected_type = {400: "invalid_request_error", 404: "not_found_error",
                         413: "invalid_request_error", 429: "rate_limit_error"}
        assert error["type"] == expected_type.get(response.status_code, "api_error")
        message: str = error["message"]
        return message
    assert set(body) == {"error"} and isinstance(body["error"], str)
    text: str = body["error"]
    return text


@pytest.fixture
def proxy(sidecar_factory: SidecarFactory, ollama_emulator: Any) -> RunningSidecar:
    extra = """
[limits]
max_body = 2048
max_queue = 3
max_queued_per_client = 2
"""
    return sidecar_factory(upstream=ollama_emulator.url, policy=make_policy(extra=extra))


# (case, raw body, expected status, words the message must contain)
BODY_CASES = [
    ("empty body", b"", 400, "missing request body"),
    ("whitespace body", b"  \n", 400, "missing request body"),
    ("malformed JSON", b'{"model": "x",', 400, "invalid JSON"),
    ("not an object", b'["llama3.2:1b"]', 400, "Expected `object`, got `array`"),
    ("missing model", b'{"messages": []}', 400, "model is required"),
    ("empty model", b'{"model": "  "}', 400, "model is required"),
    ("model not a string", b'{"model": 7}', 400, "Expected `str`, got `int` - at `$.model`"),
    ("stream not a bool", b'{"model": "m", "stream": "yes"}', 400, "at `$.stream`"),
    ("options not an object", b'{"model": "m", "options": [1]}', 400, "at `$.options`"),
    ("keep_alive wrong type", b'{"model": "m", "keep_alive": [1]}', 400, "at `$.keep_alive`"),
    ("not UTF-8", b'{"model": "\xff"}', 400, "invalid"),
    ("body over max_body", b'{"model": "m", "prompt": "' + b"x" * 4096 + b'"}', 413, "larger than the limit of 2048 bytes"),
    ("nested too deeply", b'{"model": "m", "x": ' + b"[" * 1000 + b"]" * 1000 + b"}", 400, "nested too deeply"),
]


@pytest.mark.parametrize("path", DIALECTS)
@pytest.mark.parametrize(("case", "body", "status", "words"), BODY_CASES, ids=[c[0] for c in BODY_CASES])
def test_bad_bodies(
    proxy: RunningSidecar, path: str, case: str, body: bytes, status: int, words: str
) -> None:
    response = httpx.post(proxy.url + path, content=body, timeout=10,
                          headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert words in message_of(path, response)
    assert response.headers["x-request-id"]


def test_body_over_limit_without_content_length(proxy: RunningSidecar) -> None:
    """A chunked upload is cut off at the limit too, not read to the end."""

    def chunks() -> Any:
        yield b'{"model": "m", "prompt": "'
        for _ in range(100):
            yield b"x" * 100
        yield b'"}'

    response = httpx.post(proxy.url + "/api/generate", content=chunks(), timeout=10)
    assert response.status_code == 413


@pytest.mark.parametrize("path", DIALECTS)
def test_unknown_path_and_wrong_method(proxy: RunningSidecar, path: str) -> None:
    base = path.rsplit("/", 1)[0]
    missing = httpx.post(proxy.url + base + "/nothing-here", json={}, timeout=10)
    assert missing.status_code == 404
    assert "no such endpoint" in message_of(path, missing)
    wrong = httpx.get(proxy.url + path, timeout=10)
    assert wrong.status_code == 405
    assert "not allowed" in message_of(path, wrong)
    assert "POST" in wrong.headers["allow"]


@pytest.mark.parametrize("path", DIALECTS)
def test_queue_full_and_per_client_cap(proxy: RunningSidecar, path: str) -> None:
    """Per-client cap -> 429, whole queue full -> 503, both with Retry-After; nothing leaks."""
    import concurrent.futures

    body = {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "hi"}], "stream": False}
    assert proxy.admin("POST", "/proxy/pause").status_code == 200
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        first = [pool.submit(httpx.post, proxy.url + path, json=body, timeout=30,
                             headers={"x-client-id": "a"}) for _ in range(2)]
        proxy.wait_depth(2)
        capped = httpx.post(proxy.url + path, json=body, headers={"x-client-id": "a"}, timeout=10)
        assert capped.status_code == 429 and int(capped.headers["retry-after"]) >= 1
        assert "too many queued requests from this client" in message_of(path, capped)
        third = pool.submit(httpx.post, proxy.url + path, json=body, timeout=30,
                            headers={"x-client-id": "b"})
        proxy.wait_depth(3)
        full = httpx.post(proxy.url + path, json=body, headers={"x-client-id": "c"}, timeout=10)
        assert full.status_code == 503 and int(full.headers["retry-after"]) >= 1
        assert "queue is full" in message_of(path, full)
        proxy.admin("POST", "/proxy/resume")
        assert [f.result().status_code for f in [*first, third]] == [200, 200, 200]
    proxy.wait_idle()
    rejected = [r for r in proxy.journal.records if r.status == "rejected"]
    assert [r.http_status for r in rejected] == [429, 503]


@pytest.mark.parametrize("path", DIALECTS)
def test_rate_window(sidecar_factory: SidecarFactory, ollama_emulator: Any, path: str) -> None:
    """A hard rate window: the request over the limit gets 429 and Retry-After."""
    extra = '[limits.rate.minute]\nwindow = "1m"\nmax_requests = 2\n'
    proxy = sidecar_factory(upstream=ollama_emulator.url, policy=make_policy(extra=extra))
    body = {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "hi"}], "stream": False}
    codes = [httpx.post(proxy.url + path, json=body, timeout=10).status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    limited = httpx.post(proxy.url + path, json=body, timeout=10)
    assert "rate limit 'minute' exceeded" in message_of(path, limited)
    assert limited.headers["retry-after"] == "60"


@pytest.mark.parametrize("path", DIALECTS)
def test_upstream_down_is_a_502(sidecar_factory: SidecarFactory, path: str) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proxy = sidecar_factory(upstream=f"http://127.0.0.1:{port}")
    body = {"model": "llama3.2:1b", "messages": [], "stream": False}
    response = httpx.post(proxy.url + path, json=body, timeout=10)
    assert response.status_code == 502
    assert "Ollama is unreachable" in message_of(path, response)
    health = proxy.wait_for(lambda h: h["in_flight"] == 0)
    assert health["upstream"]["up"] is False and health["status"] == "degraded"


@pytest.mark.parametrize("path", DIALECTS)
def test_queue_timeout_is_a_504_and_the_ticket_leaves(
    sidecar_factory: SidecarFactory, ollama_emulator: Any, path: str
) -> None:
    proxy = sidecar_factory(upstream=ollama_emulator.url, policy=make_policy(queue_timeout="300ms"))
    proxy.admin("POST", "/proxy/pause")
    body = {"model": "llama3.2:1b", "messages": [], "stream": False}
    response = httpx.post(proxy.url + path, json=body, timeout=10)
    assert response.status_code == 504
    assert "queue timeout (0.3s)" in message_of(path, response)
    assert proxy.health()["queue_depth"] == 0


def test_duplicate_request_id_in_progress(proxy: RunningSidecar) -> None:
    """A client reusing the id of a request still in progress gets a 400, not someone's slot."""
    import concurrent.futures

    body = {"model": "llama3.2:1b", "prompt": "hi", "stream": False}
    proxy.admin("POST", "/proxy/pause")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        first = pool.submit(httpx.post, proxy.url + "/api/generate", json=body, timeout=30,
                            headers={"x-request-id": "same-id"})
        proxy.wait_depth(1)
        again = httpx.post(proxy.url + "/api/generate", json=body, timeout=10,
                           headers={"x-request-id": "same-id", "x-client-id": "other"})
        assert again.status_code == 400 and "already used" in again.json()["error"]
        assert proxy.health()["queue_depth"] == 1
        proxy.admin("POST", "/proxy/resume")
        assert first.result().status_code == 200
    proxy.wait_idle()


def test_bad_auth_body(proxy: RunningSidecar) -> None:
    for body in (b"", b"[]", b'{"key": 1}', b'{"key": "k", "extra": 1}', b"{bad", b'{"key": "\xff"}'):
        response = httpx.post(proxy.url + "/proxy/auth", content=body, timeout=10)
        assert response.status_code == 400, body
        assert "expected" in response.json()["error"]


def test_unknown_queue_entry(proxy: RunningSidecar) -> None:
    assert httpx.get(proxy.url + "/proxy/queue/nope", timeout=10).status_code == 404
    assert httpx.delete(proxy.url + "/proxy/queue/nope", timeout=10).status_code == 404


@pytest.mark.parametrize("path", DIALECTS)
def test_number_out_of_range_is_forwarded_not_a_500(proxy: RunningSidecar, path: str) -> None:
    """A field scheduling does not read is Ollama's to judge; reading the prompt for the journal
    must not turn a number beyond float range into a 500."""
    body = b'{"model": "llama3.2:1b", "prompt": "hi", "stream": false, "x": 1e999}'
    response = httpx.post(proxy.url + path, content=body, timeout=10)
    assert response.status_code != 500, response.text
    assert "x-queue-wait-ms" in response.headers  # scheduled and forwarded, as sent
    proxy.wait_idle()
