"""Every error the emulator gives, in Ollama's words and in each dialect, over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from sim.testing import RunningEmulator, running_emulator


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    emulator: RunningEmulator
    with running_emulator(preset="tiny-8gb", time_scale=0.0) as emulator, httpx.Client(base_url=emulator.url) as client:
        yield client


UNKNOWN = "model 'nope:1b' not found"
UNKNOWN_EMBED = 'model "nope:1b" not found, try pulling it first'

NATIVE: list[tuple[str, str, bytes | None, int, str]] = [
    # (method, path, body, status, error message)
    # -- bodies
    ("POST", "/api/generate", b"", 400, "missing request body"),
    ("POST", "/api/chat", b"   ", 400, "missing request body"),
    ("POST", "/api/generate", b"{", 400, "unexpected EOF"),
    ("POST", "/api/chat", b"hello", 400, "invalid character 'h' looking for beginning of value"),
    ("POST", "/api/generate", b'{"model": "llama3.2:1b", "stream": "yes"}', 400,
     "json: cannot unmarshal string into Go struct field GenerateRequest.stream of type bool"),
    # -- model names
    ("POST", "/api/generate", b'{"prompt": "hi"}', 400, "model is required"),
    ("POST", "/api/chat", b'{"messages": [{"role": "user", "content": "hi"}]}', 400, "model is required"),
    ("POST", "/api/generate", b'{"model": "nope:1b", "prompt": "hi"}', 404, UNKNOWN),
    ("POST", "/api/chat", b'{"model": "nope:1b", "messages": [{"role": "user", "content": "x"}]}', 404, UNKNOWN),
    ("POST", "/api/generate", b'{"model": "nope:1b"}', 404, UNKNOWN),  # a load request too
    ("POST", "/api/embed", b'{"model": "nope:1b", "input": "x"}', 404, UNKNOWN_EMBED),
    ("POST", "/api/embeddings", b'{"model": "nope:1b", "prompt": "x"}', 404, UNKNOWN_EMBED),
    ("POST", "/api/show", b'{"model": "nope:1b"}', 404, UNKNOWN),
    ("POST", "/api/show", b"{}", 400, "model is required"),
    ("DELETE", "/api/delete", b'{"model": "nope:1b"}', 404, UNKNOWN),
    ("POST", "/api/copy", b'{"source": "nope:1b", "destination": "x"}', 404, UNKNOWN),
    ("POST", "/api/create", b'{"model": "x"}', 400, "neither 'from' or 'files' was specified"),
    # -- capabilities and options
    ("POST", "/api/generate", b'{"model": "nomic-embed-text", "prompt": "hi"}', 400,
     '"nomic-embed-text" does not support generate'),
    ("POST", "/api/generate", b'{"model": "llama3.2:1b", "prompt": "hi", "keep_alive": "-1"}', 400,
     'time: missing unit in duration "-1"'),
    ("POST", "/api/chat", b'{"model": "llama3.2:1b", "keep_alive": "soon"}', 400,
     'time: invalid duration "soon"'),
    # -- a failure before streaming starts is a plain status
    ("POST", "/api/pull", b'{"model": "nope:1b", "stream": false}', 500,
     "pull model manifest: file does not exist"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "message"), NATIVE)
def test_native_errors(http: httpx.Client, method: str, path: str, body: bytes | None,
                       status: int, message: str) -> None:
    """Native endpoints answer {"error": "..."} with Ollama's status and wording."""
    response = http.request(method, path, content=body)
    assert (response.status_code, response.json()) == (status, {"error": message})


OPENAI: list[tuple[str, bytes, int, str, str]] = [
    # (path, body, status, type, message)
    ("/v1/chat/completions", b"", 400, "invalid_request_error", "missing request body"),
    ("/v1/chat/completions", b"{", 400, "invalid_request_error", "unexpected EOF"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}]}', 400,
     "invalid_request_error", "model is required"),
    ("/v1/chat/completions", b'{"model": "nope:1b", "messages": [{"role": "user", "content": "x"}]}',
     404, "not_found_error", UNKNOWN),
    ("/v1/chat/completions", b'{"model": "llama3.2:1b", "messages": []}', 400,
     "invalid_request_error", "[] is too short - 'messages'"),
    ("/v1/completions", b'{"model": "nope:1b", "prompt": "x"}', 404, "not_found_error", UNKNOWN),
    ("/v1/completions", b"[1, 2", 400, "invalid_request_error", "unexpected EOF"),
    ("/v1/embeddings", b'{"model": "nope:1b", "input": "x"}', 404, "not_found_error", UNKNOWN_EMBED),
    ("/v1/embeddings", b'{"model": "nomic-embed-text", "input": []}', 400,
     "invalid_request_error", "invalid input"),
]


@pytest.mark.parametrize(("path", "body", "status", "kind", "message"), OPENAI)
def test_openai_errors(http: httpx.Client, path: str, body: bytes, status: int, kind: str,
                       message: str) -> None:
    """/v1/* errors are OpenAI error objects with the matching type."""
    response = http.post(path, content=body)
    expected: dict[str, Any] = {"message": message, "type": kind, "param": None, "code": None}
    assert (response.status_code, response.json()) == (status, {"error": expected})


def test_openai_unknown_model_retrieve(http: httpx.Client) -> None:
    """GET /v1/models/{unknown} is a 404 OpenAI error."""
    response = http.get("/v1/models/nope:1b")
    assert response.status_code == 404 and response.json()["error"]["type"] == "not_found_error"


@pytest.mark.parametrize(
    ("method", "path", "status", "text"),
    [
        ("GET", "/api/nothing", 404, "404 page not found"),
        ("GET", "/v2/chat", 404, "404 page not found"),
        ("GET", "/api/generate", 405, "405 method not allowed"),
        ("POST", "/api/delete", 405, "405 method not allowed"),
        ("POST", "/api/tags", 405, "405 method not allowed"),
        ("GET", "/v1/chat/completions", 405, "405 method not allowed"),
    ],
)
def test_unknown_paths_and_wrong_methods_are_plain_text(http: httpx.Client, method: str, path: str,
                                                        status: int, text: str) -> None:
    """Routing errors are Go's plain-text pages, not JSON, on both dialects."""
    response = http.request(method, path)
    assert (response.status_code, response.text) == (status, text)
    assert response.headers["content-type"].startswith("text/plain")


def test_pull_error_after_streaming_began_is_a_line_with_200(http: httpx.Client) -> None:
    """Once progress is on the wire, a failure is an {"error"} line and the status stays 200."""
    response = http.post("/api/pull", json={"model": "nope:1b"})
    lines = response.text.splitlines()
    assert response.status_code == 200
    assert lines[0] == '{"status":"pulling manifest"}'
    assert lines[-1] == '{"error":"pull model manifest: file does not exist"}'
