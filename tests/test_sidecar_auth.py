"""Who is admin: the matrix of networks, keys, session tokens, X-Forwarded-For and IPv6, checked
against real sidecars (GET /proxy/queue is the probe: admin only)."""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sidecar_fixtures import RunningSidecar, make_policy, running_sidecar

KEY = "s3cret-admin-key"
OUTSIDE = '["10.9.9.9/32"]'  # an admin network the test's own address is not in

CONFIGS: dict[str, tuple[str, dict[str, str]]] = {
    # name: (extra policy text, environment)
    "loopback_no_key": ("", {}),
    "no_key": (f"[admin]\nnetworks = {OUTSIDE}\n", {}),
    "key": (f"[admin]\nnetworks = {OUTSIDE}\n", {"PROXY_ADMIN_KEY": KEY}),
    "rate": (f"[admin]\nnetworks = {OUTSIDE}\nauth_attempts_per_minute = 4\n", {"PROXY_ADMIN_KEY": KEY}),
    "short_sessions": (f'[admin]\nnetworks = {OUTSIDE}\nsession_lifetime = "300ms"\n', {"PROXY_ADMIN_KEY": KEY}),
    "behind_proxy": (f'[admin]\nnetworks = {OUTSIDE}\n[clients]\ntrusted_proxies = ["127.0.0.1/32"]\n', {}),
    "ipv6": ('[admin]\nnetworks = ["::1/128"]\n', {}),
    # A reverse proxy on the same host: trusted, and inside the default (loopback) admin networks.
    "proxy_is_admin": ('[clients]\ntrusted_proxies = ["127.0.0.1/32"]\n', {}),
}


@pytest.fixture(scope="module")
def sidecars(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, RunningSidecar]]:
    with socket.socket() as s:  # no upstream is needed to decide who is admin
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    directory = tmp_path_factory.mktemp("auth")
    with contextlib.ExitStack() as stack:
        started = {}
        for name, (extra, env) in CONFIGS.items():
            path = directory / f"{name}.toml"
            path.write_text(make_policy(extra=extra), encoding="utf-8")
            hosts = ("127.0.0.1", "::1") if name == "ipv6" else ("127.0.0.1",)
            started[name] = stack.enter_context(running_sidecar(path, dead, env=env, hosts=hosts))
        yield started


def token_for(proxy: RunningSidecar) -> str:
    response = httpx.post(proxy.url + "/proxy/auth", json={"key": KEY}, timeout=10)
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    assert response.cookies["smart_proxy_session"] == token
    return token


# (case, sidecar, address family, headers; "TOKEN" is replaced by a fresh session token, expected)
MATRIX = [
    # -- networks only
    ("loopback is admin by default", "loopback_no_key", "v4", {}, 200),
    ("outside the admin networks", "no_key", "v4", {}, 403),
    # -- no key configured: no key can ever match, not even an empty one
    ("no key set, empty key sent", "no_key", "v4", {"x-admin-key": ""}, 403),
    ("no key set, some key sent", "no_key", "v4", {"x-admin-key": "anything"}, 403),
    # -- a key configured
    ("wrong key", "key", "v4", {"x-admin-key": "wrong"}, 403),
    ("right key", "key", "v4", {"x-admin-key": KEY}, 200),
    ("right key with a different case", "key", "v4", {"x-admin-key": KEY.upper()}, 403),
    # -- session tokens
    ("token in the header", "key", "v4", {"x-admin-token": "TOKEN"}, 200),
    ("token in the cookie", "key", "v4", {"cookie": "smart_proxy_session=TOKEN"}, 200),
    ("forged token", "key", "v4", {"x-admin-token": "forged-" + "a" * 40}, 403),
    ("the key is not a token", "key", "v4", {"x-admin-token": KEY}, 403),
    # -- X-Forwarded-For
    ("spoofed XFF from an untrusted peer", "no_key", "v4", {"x-forwarded-for": "10.9.9.9"}, 403),
    ("XFF through a trusted proxy", "behind_proxy", "v4", {"x-forwarded-for": "10.9.9.9"}, 200),
    ("trusted proxy, client outside", "behind_proxy", "v4", {"x-forwarded-for": "203.0.113.7"}, 403),
    ("trusted proxy, spoofed first hop", "behind_proxy", "v4",
     {"x-forwarded-for": "10.9.9.9, 203.0.113.7"}, 403),
    ("trusted proxy, garbage hop", "behind_proxy", "v4", {"x-forwarded-for": "not-an-ip"}, 403),
    ("trusted proxy, admin client with a port", "behind_proxy", "v4",
     {"x-forwarded-for": "10.9.9.9:5555"}, 200),
    ("trusted proxy, admin client in RFC 7239 form", "behind_proxy", "v4",
     {"forwarded": "for=10.9.9.9;proto=https"}, 200),
    # -- an unusable forwarded address never borrows the (admin) trusted proxy's own address
    ("proxy's own request is admin", "proxy_is_admin", "v4", {}, 200),
    ("proxy is admin, client with a port", "proxy_is_admin", "v4",
     {"x-forwarded-for": "203.0.113.7:5555"}, 403),
    ("proxy is admin, unknown", "proxy_is_admin", "v4", {"x-forwarded-for": "unknown"}, 403),
    ("proxy is admin, client then unknown", "proxy_is_admin", "v4",
     {"x-forwarded-for": "203.0.113.7, unknown"}, 403),
    ("proxy is admin, empty header", "proxy_is_admin", "v4", {"x-forwarded-for": ""}, 403),
    ("proxy is admin, Forwarded unknown", "proxy_is_admin", "v4", {"forwarded": "for=unknown"}, 403),
    ("proxy is admin, Forwarded obfuscated", "proxy_is_admin", "v4", {"forwarded": 'for="_hidden"'}, 403),
    ("proxy is admin, Forwarded without for", "proxy_is_admin", "v4", {"forwarded": "proto=https"}, 403),
    ("proxy is admin, Forwarded v6 with port", "proxy_is_admin", "v4",
     {"forwarded": 'for="[2001:db8::7]:4711"'}, 403),
    ("proxy is admin, the two headers disagree", "proxy_is_admin", "v4",
     {"x-forwarded-for": "127.0.0.1", "forwarded": "for=203.0.113.7"}, 403),
    # -- IPv6
    ("IPv6 peer in an IPv6 admin network", "ipv6", "v6", {}, 200),
    ("IPv4 peer, IPv6-only admin network", "ipv6", "v4", {}, 403),
]


@pytest.mark.parametrize(
    ("case", "config", "family", "headers", "expected"), MATRIX, ids=[m[0] for m in MATRIX]
)
def test_admin_matrix(
    sidecars: dict[str, RunningSidecar],
    case: str,
    config: str,
    family: str,
    headers: dict[str, str],
    expected: int,
) -> None:
    proxy = sidecars[config]
    url = proxy.urls[1] if family == "v6" else proxy.urls[0]
    if any("TOKEN" in v for v in headers.values()):
        token = token_for(proxy)
        headers = {k: v.replace("TOKEN", token) for k, v in headers.items()}
    response = httpx.get(url + "/proxy/queue", headers=headers, timeout=10)
    assert response.status_code == expected, response.text
    if expected == 403:
        assert "admin only" in response.json()["error"]


def test_expired_token(sidecars: dict[str, RunningSidecar]) -> None:
    proxy = sidecars["short_sessions"]
    token = token_for(proxy)
    assert httpx.get(proxy.url + "/proxy/queue", headers={"x-admin-token": token}).status_code == 200
    time.sleep(0.4)
    assert httpx.get(proxy.url + "/proxy/queue", headers={"x-admin-token": token}).status_code == 403


def test_auth_endpoint_answers(sidecars: dict[str, RunningSidecar]) -> None:
    """No key configured -> 403 explaining why; wrong key -> 401; too many attempts -> 429."""
    refused = httpx.post(sidecars["no_key"].url + "/proxy/auth", json={"key": "x"}, timeout=10)
    assert refused.status_code == 403
    assert "no admin key is configured (set PROXY_ADMIN_KEY)" in refused.json()["error"]
    proxy = sidecars["rate"]
    codes = [
        httpx.post(proxy.url + "/proxy/auth", json={"key": "wrong"}, timeout=10).status_code
        for _ in range(5)
    ]
    assert codes == [401, 401, 401, 401, 429]  # 4 attempts per minute, right or wrong
    limited = httpx.post(proxy.url + "/proxy/auth", json={"key": KEY}, timeout=10)
    assert limited.status_code == 429 and 1 <= int(limited.headers["retry-after"]) <= 60
    assert "too many authentication attempts" in limited.json()["error"]


def test_public_endpoints_need_no_admin(sidecars: dict[str, RunningSidecar]) -> None:
    """Health, metrics and one's own position are public (health names no client); the rest
    of /proxy is admin only."""
    proxy = sidecars["no_key"]
    health = httpx.get(proxy.url + "/proxy/health", timeout=10)
    assert health.status_code == 200
    assert set(health.json()) == {
        "status", "queue_depth", "in_flight", "max_parallel", "paused", "upstream", "policy",
        "reasons", "backends",
    }
    assert httpx.get(proxy.url + "/metrics", timeout=10).status_code == 200


README = Path(__file__).resolve().parent.parent / "README.md"
_ROUTE = re.compile(r"^(?:([A-Z|\\]+) )?(/\S*)")
_PARAM = re.compile(r"\{[^}]*\}")  # {id}, {request_id}, {model:path}: a parameter, whatever named


def readme_routes() -> dict[tuple[str, str], str]:
    """(method, path) -> "public" or "admin", from the README's route table: a method applies to
    the paths after it in the same cell until the next method."""
    out: dict[tuple[str, str], str] = {}
    text = README.read_text(encoding="utf-8")
    table = text[text.index("| route | what happens | auth |"):].split("\n\n", 1)[0]
    for row in table.splitlines()[2:]:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]]
        routes, auth = cells[0], cells[-1].split()[0]
        methods: list[str] = []
        for item in routes.split(", "):
            match = _ROUTE.match(item.strip("` ").split("`")[0])
            assert match, f"README route table: cannot read {item!r}"
            if match.group(1):
                methods = match.group(1).replace("\\", "").split("|")
            for method in methods:
                out[(method, _PARAM.sub("{}", match.group(2)))] = auth
    return out


def app_routes(proxy: RunningSidecar) -> set[tuple[str, str]]:
    from starlette.routing import Route

    return {
        (method, _PARAM.sub("{}", route.path))
        for route in proxy.app.router.routes if isinstance(route, Route)
        for method in route.methods or ()
        # Starlette answers HEAD wherever GET is routed; the table lists HEAD only where it says so.
        if method != "HEAD" or "GET" not in (route.methods or ())
    }


def test_every_route_has_the_access_the_readme_gives_it(sidecars: dict[str, RunningSidecar]) -> None:
    """Walk the app's route table: each route is in the README's table, and a caller outside the
    admin networks with no key gets a 403 exactly from those the table marks admin."""
    proxy = sidecars["key"]
    documented = readme_routes()
    served = app_routes(proxy)
    assert served - set(documented) == set(), "routes the README's table does not list"
    assert {r for r in documented if r[0] != "HEAD"} - served == set(), "listed, but not served"
    for method, path in sorted(served):
        url = proxy.url + path.replace("{}", "nobody")
        status = httpx.request(method, url, timeout=10).status_code
        expected = documented[(method, path)]
        assert (status == 403) == (expected == "admin"), f"{method} {path}: {status}, README: {expected}"


def test_secrets_never_reach_the_log(
    sidecars: dict[str, RunningSidecar], caplog: pytest.LogCaptureFixture
) -> None:
    proxy = sidecars["key"]
    with caplog.at_level(logging.DEBUG, logger="smart_proxy"):
        httpx.get(proxy.url + "/proxy/queue", headers={"x-admin-key": KEY}, timeout=10)
        httpx.post(proxy.url + "/api/generate", headers={"x-admin-key": KEY}, timeout=10,
                   json={"model": "m", "prompt": "p"})
        httpx.post(proxy.url + "/api/pull", headers={"x-admin-key": KEY}, timeout=10,
                   json={"model": "m"})
    text = "\n".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records)
    assert caplog.records  # the requests were logged ...
    assert KEY not in text  # ... without the key


@pytest.mark.parametrize("forwarded", ["203.0.113.7:5555", "unknown", "203.0.113.7, unknown"])
def test_model_management_behind_an_admin_proxy(
    sidecars: dict[str, RunningSidecar], forwarded: str
) -> None:
    """The model-management pass-through is admin too: a garbled hop is refused in Ollama's shape."""
    proxy = sidecars["proxy_is_admin"]
    response = httpx.post(
        proxy.url + "/api/pull", json={"model": "x"}, headers={"x-forwarded-for": forwarded}, timeout=10
    )
    assert response.status_code == 403, response.text
    assert isinstance(response.json()["error"], str)
