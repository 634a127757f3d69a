"""Hostile input at the HTTP edge: a trailing slash with a forged Host, a crash inside a route,
reload-forcing options of the wrong type, bad query parameters on /proxy/*, an upstream error with
no message, and guessing another client's X-Request-Id on /proxy/queue/{id}. Each is a clear 4xx
(or a 500 with the request id) in the caller's dialect — never a redirect, a traceback or a bare 500.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from sidecar_fixtures import RunningSidecar, SidecarFactory, make_policy, running_sidecar

KEY = "hardening-admin-key"
ADMIN = {"x-admin-key": KEY}
# Loopback is not an admin network here, so "admin" means the key and a bare caller is a client.
POLICY = make_policy(
    max_parallel=1,
    extra='[admin]\nnetworks = ["192.0.2.0/24"]\n[clients]\nidentify_by = ["header", "ip"]\n',
)
ENV = {"PROXY_ADMIN_KEY": KEY}
CHAT, EMBED = "llama3.2:1b", "nomic-embed-text"


def shape_ok(path: str, response: httpx.Response) -> str:
    """The error message, after checking the body is the error object of the path's dialect."""
    body = response.json()
    if path.startswith("/v1/"):
        assert set(body["error"]) == {"message", "type", "param", "code"}, body
        message: str = body["error"]["message"]
    else:
        assert set(body) == {"error"} and isinstance(body["error"], str), body
        message = body["error"]
    return message


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, shared_ollama_emulator: Any) -> Iterator[RunningSidecar]:
    """One sidecar for the read-only tables, with a real SQLite journal (analytics answers 200)."""
    from server.journal import open_journal

    tmp = tmp_path_factory.mktemp("hardening")
    (tmp / "policy.toml").write_text(POLICY, encoding="utf-8")

    def journal(compiled: Any) -> Any:
        return open_journal(f"sqlite:///{tmp / 'db.sqlite'}", fallback_dir=tmp / "fallback")

    with running_sidecar(tmp / "policy.toml", shared_ollama_emulator.url, env=ENV, journal=journal) as running:
        yield running


# -- 1. a trailing slash is a 404, never a redirect built from the client's Host ------------

@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/tags/"), ("GET", "/api/version/"), ("GET", "/api/ps/"), ("POST", "/api/chat/"),
        ("POST", "/v1/chat/completions/"), ("POST", "/v1/embeddings/"), ("GET", "/proxy/health/"),
        ("GET", "/proxy/queue/"), ("GET", "/proxy/analytics/"), ("GET", "/metrics/"),
    ],
)
def test_trailing_slash_is_a_404_without_a_redirect(proxy: RunningSidecar, method: str, path: str) -> None:
    response = httpx.request(method, proxy.url + path, headers={"host": "evil.example", **ADMIN},
                             follow_redirects=False, timeout=10)
    assert response.status_code == 404 and "location" not in response.headers
    assert "no such endpoint" in shape_ok(path, response)
    assert response.headers["x-request-id"]


# -- 2. an unexpected exception: a 500 in the dialect, with X-Request-Id, logged once --------

class Boom(RuntimeError):
    pass


@pytest.mark.parametrize("path", ["/api/boom", "/v1/boom", "/proxy/boom"])
def test_a_crash_is_a_500_with_the_request_id(
    sidecar_factory: SidecarFactory, shared_ollama_emulator: Any, caplog: pytest.LogCaptureFixture,
    path: str,
) -> None:
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def boom(request: Request) -> Response:
        raise Boom("a bug in the sidecar")

    running = sidecar_factory(upstream=shared_ollama_emulator.url)
    running.app.router.routes.append(Route(path, boom, methods=["GET"]))
    caplog.set_level(logging.ERROR)
    response = httpx.get(running.url + path, headers={"x-request-id": "crash-1"}, timeout=10)
    assert response.status_code == 500 and response.headers["x-request-id"] == "crash-1"
    assert shape_ok(path, response) == "internal error in the proxy; see its log"
    logged = [r for r in caplog.records if r.exc_info and isinstance(r.exc_info[1], Boom)]
    assert len(logged) == 1 and "Boom" not in response.text


@pytest.mark.parametrize("path", ["/v1/uncaught-refusal", "/api/uncaught-refusal"])
def test_a_proxy_error_a_route_forgot_to_catch_is_answered_in_the_dialect(
    sidecar_factory: SidecarFactory, shared_ollama_emulator: Any, path: str
) -> None:
    """ProxyError has a handler of the app's own: a route that lets one escape answers with its
    status, message and Retry-After in the path's dialect, not a 500."""
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from server.http.dialects import ProxyError

    async def refuses(request: Request) -> Response:
        raise ProxyError(429, "slow down", retry_after=7)

    running = sidecar_factory(upstream=shared_ollama_emulator.url)
    running.app.router.routes.append(Route(path, refuses, methods=["GET"]))
    response = httpx.get(running.url + path, timeout=10)
    assert response.status_code == 429 and response.headers["retry-after"] == "7"
    assert shape_ok(path, response) == "slow down"


# -- 3. an upstream error whose message is empty still says what happened -------------------

@contextlib.contextmanager
def _upstream(behaviour: str) -> Iterator[int]:
    """A real listening socket on loopback that misbehaves as Ollama might: `refuse` (nothing
    listens), `hang` (accepts, never answers), `close` (accepts, reads, closes without a byte),
    `garbage` (answers something that is not HTTP), `half` (a status line and headers promising
    more body than it sends, then closes)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    if behaviour == "refuse":
        listener.close()
        yield port
        return
    listener.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            held.append(conn)
            if behaviour != "read_all":
                conn.recv(65536)
            if behaviour == "close":
                conn.close()
            elif behaviour == "garbage":
                conn.sendall(b"\x00\x01 not http at all\r\n\r\n")
                conn.close()
            elif behaviour == "read_all":  # reads the whole body, however slowly it comes
                head = b""
                while b"\r\n\r\n" not in head:
                    head += conn.recv(65536)
                head, _, body = head.partition(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                conn.settimeout(30)
                while len(body) < length:
                    body += conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
            elif behaviour == "half":
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                             b"content-length: 100\r\n\r\n{\"model\":")
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        listener.close()


@pytest.mark.parametrize(
    ("behaviour", "status", "expected"),
    [
        ("refuse", 502, "Ollama is unreachable at http://127.0.0.1:{port}: ClientConnectorError: "),
        ("close", 502, "Ollama is unreachable at http://127.0.0.1:{port}: ServerDisconnectedError"),
        ("garbage", 502, "Ollama is unreachable at http://127.0.0.1:{port}: ClientResponseError: "),
        ("hang", 504, "Ollama did not answer in time ("),
    ],
)
@pytest.mark.anyio
async def test_upstream_errors_are_named(behaviour: str, status: int, expected: str) -> None:
    """Each way Ollama can fail before its status line is a ProxyError that says what happened,
    where (without the user:password of the backend URL), and which error it was."""
    from server.http.dialects import ProxyError
    from server.http.upstream_hop import UpstreamHop

    hop = UpstreamHop()
    try:
        with _upstream(behaviour) as port, pytest.raises(ProxyError) as caught:
            await hop.open(method="POST", url=f"http://user:secret@127.0.0.1:{port}/api/chat",
                           headers=[], content=b"{}", upstream_timeout=0.5)
    finally:
        await hop.aclose()
    assert caught.value.status == status
    assert caught.value.message.startswith(expected.format(port=port)), caught.value.message
    assert "secret" not in caught.value.message


@pytest.mark.parametrize("url", ["http://127.0.0.1:99999/api/chat", "ftp://127.0.0.1/api/chat",
                                 "http:///api/chat"])
@pytest.mark.anyio
async def test_an_unusable_upstream_url_is_a_502(url: str) -> None:
    from server.http.dialects import ProxyError
    from server.http.upstream_hop import UpstreamHop

    hop = UpstreamHop()
    try:
        with pytest.raises(ProxyError) as caught:
            await hop.open(method="GET", url=url, headers=[], content=b"", upstream_timeout=1.0)
    finally:
        await hop.aclose()
    assert caught.value.status == 502
    assert caught.value.message.startswith(("Ollama's URL is unusable", "Ollama is unreachable")), (
        caught.value.message)


@pytest.mark.anyio
async def test_a_body_ollama_stops_reading_times_out_as_a_504() -> None:
    """Ollama accepts the connection but reads no more: a body larger than the sockets' buffers
    cannot be sent, and the request ends at the upstream timeout instead of holding its slot."""
    from server.http.dialects import ProxyError
    from server.http.upstream_hop import UpstreamHop

    hop = UpstreamHop()
    try:
        with _upstream("hang") as port, pytest.raises(ProxyError) as caught:
            await hop.open(method="POST", url=f"http://127.0.0.1:{port}/api/blobs/sha256:x",
                           headers=[], content=b"x" * (64 * 1024 * 1024), upstream_timeout=1.0)
    finally:
        await hop.aclose()
    assert caught.value.status == 504, caught.value.message


@pytest.mark.anyio
async def test_a_slow_upload_that_keeps_moving_is_never_cut() -> None:
    """A streamed upload (a multi-gigabyte blob) may take far longer than the upstream timeout:
    what is timed is Ollama taking each piece and then answering, not the whole."""
    from server.http.upstream_hop import UpstreamHop

    pieces = 8

    async def body() -> AsyncIterator[bytes]:
        for _ in range(pieces):
            await asyncio.sleep(0.25)  # 2 s in all, against an upstream timeout of 0.5 s
            yield b"x" * 1000

    hop = UpstreamHop()
    try:
        with _upstream("read_all") as port:
            answer = await hop.open(method="POST", url=f"http://127.0.0.1:{port}/api/blobs/sha256:x",
                                    headers=[(b"content-length", str(pieces * 1000).encode())],
                                    content=body(), upstream_timeout=0.5)
            assert answer.status_code == 200
            await answer.aclose()
    finally:
        await hop.aclose()


@pytest.mark.anyio
async def test_a_streamed_upload_ollama_stops_taking_times_out() -> None:
    from server.http.dialects import ProxyError
    from server.http.upstream_hop import UpstreamHop

    async def body() -> AsyncIterator[bytes]:
        for _ in range(1024):  # 256 MB offered; Ollama reads none of it
            yield b"x" * (256 * 1024)

    hop = UpstreamHop()
    try:
        with _upstream("hang") as port, pytest.raises(ProxyError) as caught:
            await hop.open(method="POST", url=f"http://127.0.0.1:{port}/api/blobs/sha256:x",
                           headers=[(b"content-length", str(1024 * 256 * 1024).encode())],
                           content=body(), upstream_timeout=1.0)
    finally:
        await hop.aclose()
    assert caught.value.status == 504, caught.value.message


@pytest.mark.anyio
async def test_a_client_body_that_breaks_off_is_not_blamed_on_ollama() -> None:
    """A streamed upload whose client goes away mid-body is the client's doing: UploadBroken,
    not a 502 "Ollama is unreachable" (which would also set off an upstream poll)."""
    from server.http.upstream_hop import UploadBroken, UpstreamHop

    async def body() -> AsyncIterator[bytes]:
        yield b"x" * 65536
        raise ConnectionResetError("the client went away")

    hop = UpstreamHop()
    try:
        with _upstream("hang") as port, pytest.raises(UploadBroken, match="went away"):
            await hop.open(method="POST", url=f"http://127.0.0.1:{port}/api/blobs/sha256:x",
                           headers=[(b"content-length", b"1000000")], content=body(),
                           upstream_timeout=5.0)
    finally:
        await hop.aclose()


@pytest.mark.anyio
async def test_an_answer_cut_short_is_upstream_broken() -> None:
    from server.http.upstream_hop import UpstreamBroken, UpstreamHop

    hop = UpstreamHop()
    try:
        with _upstream("half") as port:
            answer = await hop.open(method="POST", url=f"http://127.0.0.1:{port}/api/chat",
                                    headers=[], content=b"{}", upstream_timeout=5.0)
            assert (answer.status_code, answer.has_length) == (200, True)
            with pytest.raises(UpstreamBroken, match="ClientPayloadError"):
                async for _ in answer.chunks():
                    pass
            await answer.aclose()
    finally:
        await hop.aclose()


@pytest.mark.anyio
async def test_a_poll_error_without_a_message_is_named() -> None:
    from server.runtime.upstream import UpstreamPoller

    def fail(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("")

    health: list[bool] = []
    async with httpx.AsyncClient(transport=httpx.MockTransport(fail)) as client:
        poller = UpstreamPoller(client, base_url=lambda: "http://127.0.0.1:11434", interval=lambda: 1.0,
                                on_state=lambda ps, tags: None, on_health=health.append)
        await poller.poll_once()
    assert (poller.up, poller.last_error, health) == (False, "ConnectError", [False])


# -- 4. reload-forcing options must be sane integers, checked at intake ----------------------

ROUTES = {
    "/api/chat": {"model": CHAT, "messages": [{"role": "user", "content": "hi"}], "stream": False},
    "/api/generate": {"model": CHAT, "prompt": "hi", "stream": False},
    "/api/embed": {"model": EMBED, "input": "hi"},
    "/api/embeddings": {"model": EMBED, "prompt": "hi"},
    "/v1/chat/completions": {"model": CHAT, "messages": [{"role": "user", "content": "hi"}]},
    "/v1/completions": {"model": CHAT, "prompt": "hi"},
    "/v1/embeddings": {"model": EMBED, "input": "hi"},
}


def nested(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


BAD_VALUES = {
    "nested object": nested(500),  # ~3 KB; decodes, and used to reach the scheduler as a key
    "string": '"2048"',
    "bool": "true",
    "huge number": "9" * 400,
    "too large": str(1 << 40),
    "fraction": "2048.5",
    "negative": "-2",
}


def _post(url: str, path: str, options: str) -> httpx.Response:
    body = httpx.Request("POST", "/", json=ROUTES[path]).content  # the route's body, as JSON
    raw = body[:-1] + b', "options": {"' + options.encode() + b"}}"
    return httpx.post(url + path, content=raw, headers={"content-type": "application/json"}, timeout=30)


@pytest.mark.parametrize("option", ["num_ctx", "num_gpu"])
@pytest.mark.parametrize("case", list(BAD_VALUES))
@pytest.mark.parametrize("path", list(ROUTES))
def test_bad_reload_options_are_a_400_naming_them(
    proxy: RunningSidecar, path: str, case: str, option: str
) -> None:
    response = _post(proxy.url, path, f'{option}": {BAD_VALUES[case]}')
    assert response.status_code == 400, response.text
    assert f"options.{option} must be an integer" in shape_ok(path, response)


@pytest.mark.parametrize("depth", [998, 1000, 5000])
@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
def test_options_nested_too_deep_for_the_decoder_are_a_400(proxy: RunningSidecar, path: str, depth: int) -> None:
    response = _post(proxy.url, path, f'num_ctx": {nested(depth)}')
    assert response.status_code == 400, response.text
    shape_ok(path, response)


@pytest.mark.parametrize("path", list(ROUTES))
def test_sane_reload_options_still_pass(proxy: RunningSidecar, path: str) -> None:
    """Integers in range, and null for "the model's default", reach Ollama."""
    response = _post(proxy.url, path, 'num_ctx": 4096, "num_gpu": -1, "num_predict": null')
    assert response.status_code == 200, response.text
    assert response.headers["x-queue-id"]  # every scheduled answer names its ticket


@pytest.mark.parametrize(
    ("options", "variant"),
    [
        ({"num_ctx": 4096.0}, "num_ctx=4096"),  # Ollama reads a whole float as its integer
        ({"num_ctx": None, "num_gpu": -1}, "num_gpu=-1"),
        ({"num_ctx": 1 << 24, "num_gpu": 0}, "num_ctx=16777216,num_gpu=0"),
    ],
)
def test_variant_of_sane_options(options: dict[str, Any], variant: str) -> None:
    from engine.variants import variant_of

    assert variant_of(options) == variant


# -- 5. every query parameter of every /proxy route is checked ------------------------------

def proxy_routes() -> list[tuple[str, str]]:
    """(method, path) of every /proxy route the app serves, so a new route joins the table."""
    from starlette.routing import Route

    from server.admin import routes as routes_admin

    routes = [r for r in routes_admin.routes() if isinstance(r, Route) and r.path.startswith("/proxy/")]
    return [
        (method, route.path.replace("{request_id}", "no-such-ticket"))
        for route in routes
        for method in sorted(route.methods or ()) if method != "HEAD"
    ]


@pytest.mark.parametrize(("method", "path"), proxy_routes())
def test_unknown_query_parameters_are_a_400(proxy: RunningSidecar, method: str, path: str) -> None:
    response = httpx.request(method, proxy.url + path + "?bogus=1&" + "x" * 300 + "=2", headers=ADMIN,
                             timeout=10)
    assert response.status_code == 400, response.text
    message = shape_ok(path, response)
    assert message.startswith("query parameter 'bogus' is not accepted by " + path), message
    assert ("x" * 41) not in message  # an echo is cut short


BAD_ANALYTICS = [
    ("hours", "abc"), ("hours", "-inf"), ("hours", "nan"), ("hours", "1e400"), ("hours", "0"),
    ("hours", "-5"), ("hours", "1_0"), ("hours", "9" * 400), ("hours", "10000"), ("hours", ""),
    ("group_by", "-inf"), ("group_by", "MODEL"), ("group_by", ""), ("limit", "9" * 400),
    ("limit", "0"), ("limit", "-1"), ("limit", "1.5"), ("limit", "abc"), ("limit", "1001"),
]


@pytest.mark.parametrize(("name", "value"), BAD_ANALYTICS)
def test_bad_analytics_parameters_are_a_400_naming_them(proxy: RunningSidecar, name: str, value: str) -> None:
    response = httpx.get(proxy.url + "/proxy/analytics", params={name: value}, headers=ADMIN, timeout=10)
    assert response.status_code == 400, response.text
    message = shape_ok("/proxy/analytics", response)
    assert message.startswith(f"query parameter {name!r} must be"), message
    if name == "group_by":  # an enum names what it takes
        assert "model, client, ip, class, endpoint, status" in message


def test_analytics_parameters_given_twice_and_good_ones(proxy: RunningSidecar) -> None:
    twice = httpx.get(proxy.url + "/proxy/analytics?hours=1&hours=2", headers=ADMIN, timeout=10)
    assert twice.status_code == 400 and "'hours' is given more than once" in twice.json()["error"]
    several = httpx.get(proxy.url + "/proxy/analytics?limit=0&group_by=x", headers=ADMIN, timeout=10)
    assert several.status_code == 400 and "'limit'" in several.text and "'group_by'" in several.text
    good = httpx.get(proxy.url + "/proxy/analytics", params={"hours": "0.5", "group_by": "client",
                                                            "limit": "1000"}, headers=ADMIN, timeout=10)
    assert good.status_code == 200, good.text
    assert good.json()["window"] | {"since": 0, "until": 0, "rows": 0} == {
        "hours": 0.5, "group_by": "client", "limit": 1000, "since": 0, "until": 0,
        "truncated": False, "rows": 0, "instance": None, "backend": None,
    }
    one = httpx.get(proxy.url + "/proxy/analytics?group_by=backend&backend=gpu-1", headers=ADMIN, timeout=10)
    assert one.status_code == 200, one.text
    assert (one.json()["window"]["backend"], one.json()["groups"]["by"]) == ("gpu-1", "backend")
    for bad in ("gpu%200", "-gpu", "x" * 64, "gpu%2F0"):
        refused = httpx.get(proxy.url + f"/proxy/analytics?backend={bad}", headers=ADMIN, timeout=10)
        assert refused.status_code == 400 and "'backend'" in refused.json()["error"], bad


def test_a_non_admin_learns_nothing_from_a_bad_query(proxy: RunningSidecar) -> None:
    """The admin check comes first: a 403, not the route's parameter names."""
    response = httpx.get(proxy.url + "/proxy/analytics?hours=abc", timeout=10)
    assert response.status_code == 403


# -- 6. /proxy/queue/{id}: the X-Queue-Id is the capability, an X-Request-Id only its owner's -

def _wait_queued(running: RunningSidecar, depth: int) -> dict[str, Any]:
    def queued(_: dict[str, Any]) -> bool:
        return len(httpx.get(running.url + "/proxy/queue", headers=ADMIN, timeout=10).json()["waiting"]) == depth

    running.wait_for(queued)
    view: dict[str, Any] = httpx.get(running.url + "/proxy/queue", headers=ADMIN, timeout=10).json()
    return view


def test_queue_position_needs_the_queue_id_or_the_owner(
    sidecar_factory: SidecarFactory, ollama_emulator: Any
) -> None:
    running = sidecar_factory(upstream=ollama_emulator.url, policy=POLICY, env=ENV)
    assert httpx.post(running.url + "/proxy/pause", headers=ADMIN, timeout=10).status_code == 200
    body = {"model": CHAT, "prompt": "hi", "stream": False}
    alice = {"x-client-id": "alice", "x-request-id": "order-1"}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        pending = pool.submit(httpx.post, running.url + "/api/generate", json=body, headers=alice, timeout=30)
        (entry,) = _wait_queued(running, 1)["waiting"]
        queue_id = entry["queue_id"]
        assert entry["request_id"] == "order-1" and len(queue_id) >= 22  # 128 random bits

        def ask(ticket: str, **headers: str) -> httpx.Response:
            return httpx.get(f"{running.url}/proxy/queue/{ticket}", headers=headers, timeout=10)

        guessed = ask("order-1", **{"x-client-id": "mallory"})
        absent = ask("order-2", **{"x-client-id": "mallory"})
        assert (guessed.status_code, absent.status_code) == (404, 404)
        assert guessed.json()["error"].replace("order-1", "") == absent.json()["error"].replace("order-2", "")
        assert ask("order-1").status_code == 404  # no client header: identified by address, not alice
        own = ask("order-1", **{"x-client-id": "alice"})
        assert own.status_code == 200 and own.json()["state"] == "waiting"
        assert ask("order-1", **ADMIN).status_code == 200
        held = ask(queue_id, **{"x-client-id": "mallory"})
        assert held.status_code == 200 and held.json()["position"] == 1
        # The same X-Request-Id again while it waits: refused, and the first ticket unharmed.
        duplicate = httpx.post(running.url + "/api/generate", json=body, headers=alice, timeout=30)
        assert duplicate.status_code == 400 and "x-queue-id" not in duplicate.headers
        assert ask(queue_id).status_code == 200 and ask("order-1", **{"x-client-id": "alice"}).status_code == 200
        assert httpx.post(running.url + "/proxy/resume", headers=ADMIN, timeout=10).status_code == 200
        answer = pending.result()
    assert answer.status_code == 200 and answer.headers["x-queue-id"] == queue_id
    assert answer.headers["x-request-id"] == "order-1"
    assert ask(queue_id).status_code == 404  # finished: the id leads nowhere any more


def test_position_polls_are_rate_limited_per_address(
    sidecar_factory: SidecarFactory, ollama_emulator: Any, request: pytest.FixtureRequest
) -> None:
    """GET /proxy/queue/{id} is public and polled: each client address gets a burst of 10 and 5 a
    second after it — a new X-Client-Id per poll does not escape it; another address's answers
    are left alone; admins are not counted."""
    running = sidecar_factory(upstream=ollama_emulator.url, policy=POLICY, env=ENV)
    http = httpx.Client(timeout=10)  # one kept-alive connection: 30 polls in well under a second
    # Another machine, as far as the sidecar can tell: all of 127/8 is loopback on Linux.
    other = httpx.Client(timeout=10, transport=httpx.HTTPTransport(local_address="127.0.0.2"))
    request.addfinalizer(http.close)
    request.addfinalizer(other.close)

    def ask(client: str, via: httpx.Client = http, **headers: str) -> int:
        return via.get(f"{running.url}/proxy/queue/nothing-{client}",
                       headers={"x-client-id": client, **headers}).status_code

    codes = [ask(f"rotating-{i}") for i in range(30)]
    assert codes[:10] == [404] * 10 and 429 in codes[10:]  # 404: no such ticket, but answered
    limited = httpx.get(f"{running.url}/proxy/queue/x", headers={"x-client-id": "fresh"}, timeout=10)
    assert limited.status_code == 429 and float(limited.headers["retry-after"]) > 0
    assert "position queries" in limited.json()["error"]
    assert ask("someone-else", via=other) == 404
    assert {ask("poller", **ADMIN) for _ in range(20)} == {404}


def test_streamed_and_removed_answers_carry_their_queue_id(
    sidecar_factory: SidecarFactory, ollama_emulator: Any
) -> None:
    running = sidecar_factory(upstream=ollama_emulator.url, policy=POLICY, env=ENV)
    seen = set()
    for path, body in (("/api/chat", {**ROUTES["/api/chat"], "stream": True}),
                       ("/v1/chat/completions", {**ROUTES["/v1/chat/completions"], "stream": True})):
        with httpx.stream("POST", running.url + path, json=body, timeout=30) as response:
            assert response.status_code == 200 and response.headers["x-queue-id"]
            seen.add(response.headers["x-queue-id"])
            response.read()
    assert len(seen) == 2  # one per ticket
    httpx.post(running.url + "/proxy/pause", headers=ADMIN, timeout=10)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(httpx.post, running.url + "/api/generate", json=ROUTES["/api/generate"], timeout=30)
        (entry,) = _wait_queued(running, 1)["waiting"]
        removed = httpx.delete(f"{running.url}/proxy/queue/{entry['queue_id']}", headers=ADMIN, timeout=10)
        assert removed.status_code == 200
        answer = pending.result()
    assert answer.status_code == 503 and answer.headers["x-queue-id"] == entry["queue_id"]
