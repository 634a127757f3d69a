"""Forwarding, checked against a recording upstream (a plain HTTP server on loopback): the body
byte for byte, Host rewritten, hop-by-hop and admin headers dropped, the answer returned raw, and
an upstream that hangs or breaks off mid-answer."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from sidecar_fixtures import SidecarFactory, make_policy

ANSWER = b'{"model":"m","response":"h\xc3\xa9","done":false}\n{"model":"m","response":"","done":true,"eval_count":7}\n'


class Recorder(ThreadingHTTPServer):
    daemon_threads = True
    seen: list[tuple[str, str, dict[str, str], list[tuple[str, str]], bytes]]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Recorder

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", "0"))
        body = self.rfile.read(length)
        self.server.seen.append(
            (self.command, self.path, dict(self.headers.items()), list(self.headers.items()), body)
        )
        model = json.loads(body).get("model") if body.startswith(b"{") else None
        if model == "slow":
            time.sleep(0.8)
        if model == "breaks":
            # Half an answer, then the connection drops without ending the chunked body.
            self.send_response(200)
            self.send_header("content-type", "application/x-ndjson")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            line = b'{"model":"breaks","response":"a","done":false}\n{"model":"bre'
            self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
            self.wfile.flush()
            self.close_connection = True
            return
        self.send_response(418 if model == "teapot" else 200)
        self.send_header("content-type", "application/x-ndjson")
        self.send_header("x-request-id", "upstream-id")
        self.send_header("content-length", str(len(ANSWER)))
        self.end_headers()
        self.wfile.write(ANSWER)

    do_DELETE = do_POST

    def do_GET(self) -> None:
        self.server.seen.append((self.command, self.path, dict(self.headers.items()), [], b""))
        payload = b'{"models": []}'
        self.send_response(200)
        self.send_header("set-cookie", "gateway=for-one-client; Path=/")
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture
def recorder() -> Iterator[tuple[str, Recorder]]:
    server = Recorder(("127.0.0.1", 0), Handler)
    server.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_body_reaches_upstream_byte_for_byte_and_answer_comes_back_raw(
    sidecar_factory: SidecarFactory, recorder: tuple[str, Recorder]
) -> None:
    """Every parameter the client sent arrives unchanged; the answer's bytes, status and type too."""
    url, server = recorder
    proxy = sidecar_factory(upstream=url)
    body = b'{ "model" : "m",  "prompt":"h\\u00e9", "options": {"num_ctx": 8192, "x-unknown": [1,2]},"raw":true }'
    headers = {
        "content-type": "application/json",
        "authorization": "Bearer client-key",
        "user-agent": "curl/8",
        "x-admin-key": "secret",
        "x-admin-token": "token",
        "cookie": "smart_proxy_session=abc",
        "connection": "keep-alive, x-hop",
        "x-hop": "dropped because Connection names it",
        "keep-alive": "timeout=5",
        "te": "trailers",
        "proxy-authorization": "Basic xx",
    }
    response = httpx.post(proxy.url + "/api/generate", content=body, headers=headers, timeout=30)
    assert response.status_code == 200
    assert response.content == ANSWER
    assert response.headers["content-type"] == "application/x-ndjson"
    assert response.headers["x-request-id"] != "upstream-id"
    method, path, seen, raw_headers, seen_body = server.seen[-1]
    assert (method, path, seen_body) == ("POST", "/api/generate", body)
    lowered = {k.lower(): v for k, v in seen.items()}
    assert lowered["host"] == url.removeprefix("http://")
    assert lowered["authorization"] == "Bearer client-key"
    assert lowered["user-agent"] == "curl/8"
    for dropped in ("x-admin-key", "x-admin-token", "cookie", "x-hop", "keep-alive", "te",
                    "proxy-authorization"):
        assert dropped not in lowered, dropped
    assert sum(1 for k, _ in raw_headers if k.lower() == "host") == 1


@pytest.mark.parametrize(("path", "content_type", "body"), [
    ("/v1/messages", "application/json",
     b'{"model":"m", "max_tokens": 9,"messages":[{"role":"user","content":"h\\u00e9"}],"x-extra":1}'),
    ("/v1/responses", "application/json", b'{ "model": "m", "input": "hi",  "store": false }'),
    ("/v1/audio/transcriptions", "multipart/form-data; boundary=b0undary",
     b'--b0undary\r\nContent-Disposition: form-data; name="model"\r\n\r\nm\r\n'
     b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
     b'Content-Type: audio/wav\r\n\r\nRIFF\x00\x01\xff\xfe\r\n--b0undary--\r\n'),
])
def test_the_newer_routes_reach_upstream_byte_for_byte(
    sidecar_factory: SidecarFactory, recorder: tuple[str, Recorder], path: str, content_type: str,
    body: bytes,
) -> None:
    """Messages, Responses and a multipart upload are scheduled like the rest, and what Ollama
    gets is what the client sent, byte for byte (binary audio included)."""
    url, server = recorder
    proxy = sidecar_factory(upstream=url)
    headers = {"content-type": content_type, "anthropic-version": "2023-06-01"}
    response = httpx.post(proxy.url + path, content=body, headers=headers, timeout=30)
    assert response.status_code == 200 and response.content == ANSWER
    assert "x-queue-wait-ms" in response.headers  # it went through the queue
    method, seen_path, seen, _, seen_body = server.seen[-1]
    assert (method, seen_path, seen_body) == ("POST", path, body)
    lowered = {k.lower(): v for k, v in seen.items()}
    assert lowered["content-type"] == content_type and lowered["anthropic-version"] == "2023-06-01"


def test_credentials_in_ollamas_url_become_its_authorization(
    sidecar_factory: SidecarFactory, recorder: tuple[str, Recorder]
) -> None:
    """Ollama behind a gateway with basic auth (`backend.url = "http://user:pass@host"`): the
    request carries those credentials as Basic auth in place of the client's own Authorization
    (a client's bearer key is how the sidecar identifies it, so most requests have one)."""
    import base64

    url, server = recorder
    proxy = sidecar_factory(upstream=url.replace("http://", "http://gate:p%40ss@"))
    response = httpx.post(proxy.url + "/api/generate", json={"model": "m", "prompt": "hi"},
                          headers={"authorization": "Bearer client-key"}, timeout=30)
    assert response.status_code == 200, response.text
    lowered = {k.lower(): v for k, v in server.seen[-1][2].items()}
    assert lowered["authorization"] == "Basic " + base64.b64encode(b"gate:p@ss").decode()
    assert lowered["host"] == url.removeprefix("http://")
    proxy.wait_idle()


def test_upstream_status_passes_through(
    sidecar_factory: SidecarFactory, recorder: tuple[str, Recorder]
) -> None:
    """Ollama's own error status and body reach the client unchanged."""
    url, _ = recorder
    proxy = sidecar_factory(upstream=url)
    response = httpx.post(proxy.url + "/api/chat", json={"model": "teapot"}, timeout=30)
    assert response.status_code == 418 and response.content == ANSWER
    proxy.wait_idle()
    assert proxy.journal.records[-1].status == "failed"
    assert proxy.journal.records[-1].http_status == 418


@pytest.mark.parametrize(
    ("path", "check"),
    [
        ("/api/generate", lambda body: body == {"error": body["error"]}),
        ("/v1/completions", lambda body: body["error"]["type"] == "api_error"),
    ],
)
def test_upstream_that_hangs_is_a_504(
    sidecar_factory: SidecarFactory, recorder: tuple[str, Recorder], path: str, check: Any
) -> None:
    """No answer within the request timeout: 504 in the dialect, slot released."""
    url, _ = recorder
    proxy = sidecar_factory(upstream=url, policy=make_policy(request_timeout="300ms"))
    response = httpx.post(proxy.url + path, json={"model": "slow"}, timeout=30)
    assert response.status_code == 504
    assert "did not answer in time" in response.text and check(response.json())
    proxy.wait_idle()


def test_answer_broken_off_midway_ends_with_an_error_line(
    sidecar_factory: SidecarFactory, recorder: tuple[str, Recorder]
) -> None:
    """The client sees the part that arrived, then an error line like Ollama's own; the slot is
    released and the journal says failed."""
    url, _ = recorder
    proxy = sidecar_factory(upstream=url)
    with httpx.stream("POST", proxy.url + "/api/generate", json={"model": "breaks"}, timeout=30) as r:
        lines = list(r.iter_lines())
    assert lines[0] == '{"model":"breaks","response":"a","done":false}'
    assert lines[1] == '{"model":"bre'
    assert "broke off" in json.loads(lines[2])["error"]
    proxy.wait_idle()
    record = proxy.journal.records[-1]
    assert record.status == "failed" and "broke off" in (record.error or "")


def test_upstream_cookies_go_back_to_their_client_only(
    sidecar_factory: SidecarFactory, recorder: tuple[str, Recorder]
) -> None:
    """A Set-Cookie from upstream reaches the client that caused it; the shared upstream client
    keeps no cookie jar, so no later request (anyone's) carries it upstream."""
    url, server = recorder
    proxy = sidecar_factory(upstream=url)
    first = httpx.get(proxy.url + "/api/tags", timeout=10)
    assert first.headers["set-cookie"] == "gateway=for-one-client; Path=/"
    httpx.get(proxy.url + "/api/ps", timeout=10)
    httpx.post(proxy.url + "/api/generate", json={"model": "m"}, timeout=10)
    forwarded = [seen for seen in server.seen if seen[1] in ("/api/ps", "/api/generate")]
    assert len(forwarded) >= 2
    assert all("cookie" not in {k.lower() for k in headers} for _, _, headers, _, _ in forwarded)


def test_blob_upload_streams_through_for_admins(
    sidecar_factory: SidecarFactory, recorder: tuple[str, Recorder]
) -> None:
    """A model layer (larger than max_body) passes through whole, with its length, unbuffered."""
    url, server = recorder
    proxy = sidecar_factory(upstream=url, policy=make_policy(extra="[limits]\nmax_body = 1024\n"))
    blob = bytes(range(256)) * 8192  # 2 MiB
    response = httpx.post(proxy.url + "/api/blobs/sha256:" + "ab" * 32, content=blob, timeout=30)
    assert response.status_code == 200
    method, path, headers, _, body = server.seen[-1]
    assert (method, path) == ("POST", "/api/blobs/sha256:" + "ab" * 32)
    lowered = {k.lower(): v for k, v in headers.items()}
    assert body == blob and lowered["content-length"] == str(len(blob))
    assert "transfer-encoding" not in lowered


@pytest.mark.parametrize(("method", "path"), [("POST", "/api/generate"), ("GET", "/api/tags")])
def test_non_ascii_header_value_is_forwarded_as_sent(
    sidecar_factory: SidecarFactory, recorder: tuple[str, Recorder], method: str, path: str
) -> None:
    """HTTP allows any byte above 0x7f in a header value (a UTF-8 user agent, a name); it reaches
    Ollama byte for byte instead of failing the request with a 500."""
    url, server = recorder
    proxy = sidecar_factory(upstream=url)
    value = "café ☕".encode()
    response = httpx.request(method, proxy.url + path, json={"model": "m"}, timeout=30,
                             headers={"x-user-note": value})
    assert response.status_code == 200, response.text
    lowered = {k.lower(): v for k, v in server.seen[-1][2].items()}
    assert lowered["x-user-note"].encode("latin-1") == value
    proxy.wait_idle()


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_dot_segments_cannot_walk_out_of_a_passthrough_route(
    sidecar_factory: SidecarFactory, recorder: tuple[str, Recorder], method: str
) -> None:
    """`/v1/models/{model}` is public; httpx resolves `..` in the URL it is given, so without a
    check `/v1/models/../../api/blobs/…` reached an admin-only Ollama endpoint for anyone."""
    import socket

    url, server = recorder
    extra = '[admin]\nnetworks = ["10.9.9.9/32"]\n'  # the test's own address is not admin
    proxy = sidecar_factory(upstream=url, policy=make_policy(extra=extra))
    host, port = proxy.url.removeprefix("http://").split(":")
    for path in ("/v1/models/../../api/blobs/sha256:00", "/v1/models/./../api/delete"):
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert not any(seen[1].startswith(("/api/blobs", "/api/delete")) for seen in server.seen)
