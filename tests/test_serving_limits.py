"""The serving layer's limits: a stalled request head or body is timed out, connections past the
cap get a 503 in the client's dialect, the process survives a descriptor limit without a log
storm, and HTTP/2 cleartext streams survive a response that leaves its request body unread."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sidecar_fixtures import BASE_POLICY, SidecarFactory, wait_upstream_up

MODEL = "llama3.2:1b"


@contextmanager
def serve_process(
    tmp_path: Path, upstream: str, extra: Sequence[str] = (), prefix: Sequence[str] = ()
) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    """`smart-proxy serve` as its own process (under `prefix`, e.g. prlimit), its log in a file so
    its size can be measured; yields (process, url, log path). Killed however the test ends."""
    policy = tmp_path / "policies.toml"
    policy.write_text(BASE_POLICY, encoding="utf-8")
    logfile = tmp_path / "serve.log"
    env = {**os.environ, "SMART_PROXY_UPSTREAM": upstream, "SMART_PROXY_LOG_FORMAT": "json",
           "SMART_PROXY_DB": str(tmp_path / "journal.db")}
    args = [*prefix, sys.executable, "-m", "server.cli", "serve", "--policy", str(policy),
            "--host", "127.0.0.1", "--port", "0", *extra]
    with logfile.open("wb") as sink:
        process = subprocess.Popen(args, env=env, stderr=sink)
    try:
        deadline = time.monotonic() + 30
        url = ""
        while not url:
            for line in logfile.read_text(encoding="utf-8", errors="replace").splitlines():
                if line.startswith("smart-proxy listening on "):
                    url = line.split()[3]
            assert process.poll() is None, logfile.read_text(encoding="utf-8", errors="replace")
            assert time.monotonic() < deadline, "the sidecar never said where it listens"
            time.sleep(0.05)
        wait_upstream_up(url)
        yield process, url, logfile
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def read_until_closed(sock: socket.socket, within: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took;
    AssertionError if it is still open after `within` seconds."""
    start = time.monotonic()
    sock.settimeout(within)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        raise AssertionError(f"still open after {within}s; got {data!r}") from None
    except ConnectionResetError:
        pass
    return data, time.monotonic() - start


def partial_body(path: str) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Content-Length: 100\r\n\r\n{\"model\":").encode()


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--header-timeout", "0"], {}, "must be a positive, finite number of seconds"),
        (["--body-timeout", "-3"], {}, "must be a positive, finite number of seconds"),
        (["--body-timeout", "inf"], {}, "must be a positive, finite number of seconds"),
        (["--header-timeout", "nan"], {}, "must be a positive, finite number of seconds"),
        (["--header-timeout", "soon"], {}, "is not a number of seconds"),
        (["--max-connections", "0"], {}, "must be at least 1"),
        (["--max-connections", "2.5"], {}, "is not a whole number"),
        ([], {"SMART_PROXY_BODY_TIMEOUT": "0"}, "must be a positive, finite number of seconds"),
        ([], {"SMART_PROXY_HEADER_TIMEOUT": "x"}, "is not a number of seconds"),
        ([], {"SMART_PROXY_MAX_CONNECTIONS": "-1"}, "must be at least 1"),
    ],
)
@pytest.mark.parametrize("verb", ["serve", "demo"])
def test_bad_limit_options_are_usage_errors(
    verb: str, argv: list[str], env: dict[str, str], message: str,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    from server.cli.main import build_parser

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SystemExit) as exited:  # parsing only: nothing is started if it passes
        build_parser().parse_args([verb, *argv])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert message in err.splitlines()[-1] and "Traceback" not in err


def test_limit_options_reach_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    from server.cli.main import build_parser

    monkeypatch.setenv("SMART_PROXY_MAX_CONNECTIONS", "7")
    args = build_parser().parse_args(["serve", "--header-timeout", "2.5", "--body-timeout", "4"])
    assert (args.header_timeout, args.body_timeout, args.max_connections) == (2.5, 4.0, 7)


@pytest.mark.parametrize(
    ("sent", "status", "body"),
    [
        # An unfinished head: closed once the head timeout passes, without an answer.
        (b"POST /api/chat HTTP/1.1\r\nHost: x\r\n", None, None),
        (b"", None, None),
        # Half a body: 408 in the client's dialect, then closed.
        (partial_body("/api/chat"), 408, {"error": "the request body stalled for 1 s"}),
        (partial_body("/v1/chat/completions"), 408,
         {"error": {"message": "the request body stalled for 1 s", "type": "api_error",
                    "param": None, "code": None}}),
    ],
)
def test_a_stalled_head_or_body_is_closed(
    tmp_path: Path, ollama_emulator: Any, sent: bytes, status: int | None, body: Any
) -> None:
    limits = ["--header-timeout", "1", "--body-timeout", "1"]
    with serve_process(tmp_path, ollama_emulator.url, limits) as (_process, url, _log):
        with connect(url) as sock:
            sock.sendall(sent)
            data, took = read_until_closed(sock, within=6)
        assert took < 4
        if status is None:
            assert data == b""
        else:
            head, _, payload = data.partition(b"\r\n\r\n")
            assert head.startswith(f"HTTP/1.1 {status} ".encode())
            assert json.loads(payload) == body
        assert httpx.get(url + "/proxy/health").status_code == 200


def test_a_slow_but_steady_upload_is_not_cut(tmp_path: Path, ollama_emulator: Any) -> None:
    """The body timeout bounds the gap between chunks, not the whole upload."""
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi" * 20}],
                       "stream": False}).encode()
    limits = ["--header-timeout", "1", "--body-timeout", "1"]
    with serve_process(tmp_path, ollama_emulator.url, limits) as (_process, url, _log):
        with connect(url) as sock:
            sock.sendall(b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                         b"\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body))
            pieces = [body[i:i + 10] for i in range(0, len(body), 10)]
            started = time.monotonic()
            for piece in pieces:  # about 0.4 s apart: the whole body takes well over 1 s
                sock.sendall(piece)
                time.sleep(0.4 if piece is not pieces[-1] else 0)
            assert time.monotonic() - started > 2
            data, _took = read_until_closed(sock, within=30)
        head, _, payload = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), data
        assert b'"done":true' in payload  # chunked: the one JSON object in one chunk


def test_connections_past_the_cap_get_a_503_in_their_dialect(
    tmp_path: Path, ollama_emulator: Any
) -> None:
    # Hypercorn keeps the server side of a connection its client closed while idle until the
    # header (keep-alive) timeout; a short one gives the places back soon.
    limits = ["--max-connections", "3", "--header-timeout", "3"]
    with serve_process(tmp_path, ollama_emulator.url, limits) as (_process, url, _log):
        idle = [connect(url) for _ in range(3)]
        try:
            deadline = time.monotonic() + 10
            while (native := httpx.get(url + "/api/tags")).status_code != 503:
                assert time.monotonic() < deadline, "the cap never took effect"
                time.sleep(0.05)
            assert native.headers["retry-after"] == "1"
            assert native.json() == {
                "error": "the proxy has too many open connections; retry shortly"}
            openai = httpx.get(url + "/v1/models")
            assert openai.status_code == 503 and openai.headers["retry-after"] == "1"
            assert openai.json()["error"]["message"].startswith("the proxy has too many")
        finally:
            for sock in idle:
                sock.close()
        deadline = time.monotonic() + 10
        while httpx.get(url + "/api/tags").status_code != 200:  # places given back
            assert time.monotonic() < deadline
            time.sleep(0.05)


@pytest.mark.parametrize(
    "cap",
    [
        [],  # the default cap, from the descriptor limit: over-cap connections get a 503
        # A cap above the descriptor limit: accepting fails with EMFILE until the timeouts free
        # descriptors; that is logged once, not once per attempt.
        ["--max-connections", "1000"],
    ],
)
def test_stalled_connections_past_the_descriptor_limit(
    tmp_path: Path, ollama_emulator: Any, cap: list[str]
) -> None:
    """Under `prlimit --nofile=256`, 300 stalled connections: health keeps answering, the stalled
    ones are all answered and closed within the timeouts, and the log stays small."""
    limits = ["--header-timeout", "2", "--body-timeout", "2", *cap]
    prefix = ["prlimit", "--nofile=256:256"]
    with serve_process(tmp_path, ollama_emulator.url, limits, prefix) as (process, url, logfile):
        stalled = []
        try:
            for i in range(300):
                sock = connect(url)
                sock.sendall(partial_body("/api/chat") if i % 2 else b"GET /api/tags HTTP/1.1\r\n")
                stalled.append(sock)
            started = time.monotonic()
            health = httpx.get(url + "/proxy/health", timeout=5)
            assert health.status_code in (200, 503), health.text
            if health.status_code == 503:  # a clear answer from the cap, never a hang
                assert health.headers["retry-after"] == "1" and "too many" in health.json()["error"]
            for sock in stalled:
                read_until_closed(sock, within=max(1.0, started + 10 - time.monotonic()))
        finally:
            for sock in stalled:
                sock.close()
        assert httpx.get(url + "/proxy/health", timeout=5).status_code == 200
        assert process.poll() is None
        assert logfile.stat().st_size < 64 * 1024
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0


async def _over_http2(url: str) -> list[httpx.Response]:
    async with httpx.AsyncClient(http1=False, http2=True, timeout=20) as client:
        replies: list[httpx.Response] = []
        # Rounds of four concurrent streams on one connection. Each round's bodies (40 KB, two
        # DATA frames each) stay well inside HTTP/2's initial 64 KiB flow-control window: near or
        # past it, Hypercorn's h2 and httpx's client can deadlock under CPU load even when the app
        # reads every body (docs/sidecar.md; 2 × 30 KB still hung once in CI under load).
        for _ in range(3):
            replies += await asyncio.gather(
                client.get(url + "/api/tags"),
                # Routes that answer without reading the body (Hypercorn used to drop the whole
                # connection when the rest of such a body arrived).
                client.post(url + "/nope", content=b"x" * 20_000),
                client.post(url + "/v1/nope", content=b"y" * 20_000),
                client.get(url + "/v1/models"),
            )
        return replies


def test_http2_cleartext_survives_unread_request_bodies(
    sidecar_factory: SidecarFactory, ollama_emulator: Any
) -> None:
    proxy = sidecar_factory(upstream=ollama_emulator.url)
    for _ in range(2):
        replies = asyncio.run(_over_http2(proxy.url))
        assert {r.http_version for r in replies} == {"HTTP/2"}
        tags, native_404, openai_404, models = replies[:4]
        assert tags.status_code == 200 and tags.json()["models"]
        assert native_404.status_code == 404 and isinstance(native_404.json()["error"], str)
        assert openai_404.status_code == 404 and openai_404.json()["error"]["type"] == "not_found_error"
        assert models.status_code == 200 and models.json()["object"] == "list"
        assert [r.status_code for r in replies] == [200, 404, 404, 200] * 3



async def _stall_one_stream_over_http2(url: str) -> tuple[httpx.Response, httpx.Response]:
    async def stalling() -> Any:
        yield b'{"model":'
        await asyncio.sleep(2.5)  # past the 1 s body timeout
        yield b"}"

    async with httpx.AsyncClient(http1=False, http2=True, timeout=20) as client:
        stalled = await client.post(url + "/v1/chat/completions", content=stalling())
    async with httpx.AsyncClient(http1=False, http2=True, timeout=20) as client:
        return stalled, await client.get(url + "/api/tags")


def test_a_stalled_body_over_http2_gets_a_408(tmp_path: Path, ollama_emulator: Any) -> None:
    with serve_process(tmp_path, ollama_emulator.url, ["--body-timeout", "1"]) as (_p, url, _log):
        stalled, later = asyncio.run(_stall_one_stream_over_http2(url))
    assert stalled.http_version == "HTTP/2" and stalled.status_code == 408
    assert stalled.json()["error"]["message"] == "the request body stalled for 1 s"
    assert (later.http_version, later.status_code) == ("HTTP/2", 200)
