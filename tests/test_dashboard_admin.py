"""Queue administration end to end: clear the queue, cancel a waiting or a running request (its
client gets the error in its own dialect, the upstream request is closed, the slot freed), one
request's detail with the journal's record, and who may do any of it (the session, the
cross-site check)."""

from __future__ import annotations

import concurrent.futures
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sidecar_fixtures import SidecarFactory, make_policy, running_sidecar, wait_until
from sse import EventReader

MODEL = "llama3.2:1b"
KEY = "dashboard-admin-key"


def _post(proxy: Any, path: str, body: dict[str, Any], rid: str) -> httpx.Response:
    return httpx.post(proxy.url + path, json=body, headers={"x-request-id": rid}, timeout=30)


def test_clearing_the_queue_answers_each_client_503_in_its_dialect(
    sidecar_factory: SidecarFactory, ollama_emulator: Any
) -> None:
    proxy = sidecar_factory(upstream=ollama_emulator.url, policy=make_policy(max_parallel=1))
    proxy.admin("POST", "/proxy/pause")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        ollama = pool.submit(_post, proxy, "/api/generate",
                             {"model": MODEL, "prompt": "hi", "stream": False}, "w1")
        openai = pool.submit(_post, proxy, "/v1/chat/completions",
                             {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}, "w2")
        proxy.wait_depth(2)
        cleared = proxy.admin("DELETE", "/proxy/queue")
        assert cleared.status_code == 200 and cleared.json() == {"cleared": 2, "in_flight": 0}
        first, second = ollama.result(), openai.result()
    assert first.status_code == 503 and "administrator" in first.json()["error"]
    assert second.status_code == 503
    error = second.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and "administrator" in error["message"]
    wait_until(lambda: len(proxy.journal.records) == 2, within=5, what="two records")
    assert {r.status for r in proxy.journal.records} == {"cancelled"}
    assert proxy.admin("DELETE", "/proxy/queue").json() == {"cleared": 0, "in_flight": 0}
    proxy.admin("POST", "/proxy/resume")
    assert proxy.health()["queue_depth"] == 0


def _long_seed(model: str, text: str) -> int:
    from sim.textgen import plan_reply, seeded

    return next(s for s in range(1000) if plan_reply(seeded(model, text, s), None)[0] >= 100)


@pytest.mark.parametrize("dialect", ["ollama", "openai"])
def test_cancelling_a_running_stream_ends_it_with_an_error_chunk(
    sidecar_factory: SidecarFactory, slow_emulator: Any, dialect: str
) -> None:
    proxy = sidecar_factory(upstream=slow_emulator.url, policy=make_policy(vram_gb=96))
    prompt = "tell me everything"
    if dialect == "ollama":
        path = "/api/generate"
        body: dict[str, Any] = {"model": "slow:700b", "prompt": prompt, "stream": True,
                                "options": {"seed": _long_seed("slow:700b", prompt)}}
    else:
        path = "/v1/chat/completions"
        body = {"model": "slow:700b", "stream": True, "seed": _long_seed("slow:700b", f"user: {prompt}"),
                "messages": [{"role": "user", "content": prompt}]}
    first_chunk = threading.Event()
    result: dict[str, Any] = {}

    def stream() -> None:
        with httpx.stream("POST", proxy.url + path, json=body, timeout=60,
                          headers={"x-request-id": "long"}) as response:
            result["status"] = response.status_code
            text = ""
            for piece in response.iter_text():
                text += piece
                first_chunk.set()
            result["text"] = text

    reader = threading.Thread(target=stream)
    reader.start()
    assert first_chunk.wait(30), "no first chunk"
    cancelled = proxy.admin("POST", "/proxy/requests/long/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json() == {"request_id": "long", "cancelled": True, "state": "in_flight"}
    reader.join(30)
    assert result["status"] == 200  # the answer had begun: the error comes as its last chunk
    last = result["text"].strip().splitlines()[-1]
    error = json.loads(last.removeprefix("data: "))["error"]
    message = error if dialect == "ollama" else error["message"]
    assert "administrator cancelled" in message
    wait_until(lambda: proxy.health()["in_flight"] == 0, within=10, what="the slot freed")
    wait_until(lambda: slow_emulator.stats()["requests_cancelled"] == 1, within=10,
               what="the upstream request closed")
    record = next(r for r in proxy.journal.records if r.request_id == "long" or r.client_request_id == "long")
    assert record.status == "cancelled" and "administrator" in (record.error or "")
    assert proxy.admin("POST", "/proxy/requests/long/cancel").status_code == 404


def test_cancelling_a_waiting_request_and_an_unknown_one(
    sidecar_factory: SidecarFactory, ollama_emulator: Any
) -> None:
    proxy = sidecar_factory(upstream=ollama_emulator.url, policy=make_policy(max_parallel=1))
    proxy.admin("POST", "/proxy/pause")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(_post, proxy, "/api/chat",
                              {"model": MODEL, "stream": False, "messages": []}, "wq")
        proxy.wait_depth(1)
        by_queue_id = proxy.queue()["waiting"][0]["queue_id"]  # either id names it
        answer = proxy.admin("POST", f"/proxy/requests/{by_queue_id}/cancel")
        assert answer.json() == {"request_id": "wq", "cancelled": True, "state": "waiting"}
        assert waiting.result().status_code == 503
    missing = proxy.admin("POST", "/proxy/requests/nobody/cancel")
    assert missing.status_code == 404 and "nobody" in missing.json()["error"]


def test_a_request_s_detail_shows_its_live_state_then_its_record(
    tmp_path: Path, ollama_emulator: Any
) -> None:
    from server.journal import open_journal

    def journal(compiled: Any) -> Any:
        return open_journal(f"sqlite:///{tmp_path / 'requests.db'}",
                            store_prompts=compiled.journal.store_prompts,
                            fallback_dir=tmp_path / "fallback")

    policy = tmp_path / "policy.toml"
    policy.write_text(make_policy(max_parallel=1, extra='[journal]\nstore_prompts = "full"\n'),
                      encoding="utf-8")
    with running_sidecar(policy, ollama_emulator.url, journal=journal) as proxy:
        proxy.admin("POST", "/proxy/pause")
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            answer = pool.submit(_post, proxy, "/api/generate",
                                 {"model": MODEL, "prompt": "why is the sky blue", "stream": False}, "d1")
            proxy.wait_depth(1)
            live = proxy.admin("GET", "/proxy/requests/d1").json()
            assert live["state"] == "waiting" and live["record"] is None
            assert live["live"]["position"] == 1 and set(live["live"]["terms"]) == {"vram", "fairness"}
            proxy.admin("POST", "/proxy/resume")
            assert answer.result().status_code == 200
        detail = proxy.admin("GET", "/proxy/requests/d1").json()
        assert detail["state"] == "ended" and detail["live"] is None
        record = detail["record"]
        assert record["status"] == "completed" and record["client_request_id"] == "d1"
        assert record["prompt"] == "why is the sky blue" and record["response"]
        assert record["eval_count"] > 0 and set(record["score_terms"]) == {"vram", "fairness"}
        # By the journal's own id too; unknown ids are a 404.
        assert proxy.admin("GET", f"/proxy/requests/{record['request_id']}").json()["record"] == record
        assert proxy.admin("GET", "/proxy/requests/nope").status_code == 404


# -- who may ------------------------------------------------------------------------------------

ACTIONS = [
    ("GET", "/proxy/events"), ("GET", "/proxy/overview"), ("GET", "/proxy/requests/x"),
    ("POST", "/proxy/requests/x/cancel"), ("DELETE", "/proxy/queue"), ("POST", "/proxy/pause"),
    ("POST", "/proxy/resume"), ("POST", "/proxy/policy/reload"),
]


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    path = tmp_path_factory.mktemp("guarded") / "policy.toml"
    path.write_text(make_policy(extra='[admin]\nnetworks = ["10.9.9.9/32"]\nauth_attempts_per_minute = 1000\n'), encoding="utf-8")
    with running_sidecar(path, dead, env={"PROXY_ADMIN_KEY": KEY}) as proxy:
        yield proxy


@pytest.mark.parametrize(("method", "path"), ACTIONS)
def test_every_dashboard_action_needs_admin(guarded: Any, method: str, path: str) -> None:
    refused = httpx.request(method, guarded.url + path, timeout=10)
    assert refused.status_code == 403 and "admin only" in refused.json()["error"]
    with httpx.Client(base_url=guarded.url, timeout=10) as session:
        assert session.post("/proxy/auth", json={"key": KEY}).status_code == 200
        if path == "/proxy/events":
            with session.stream("GET", path) as response:
                assert response.status_code == 200
            return
        allowed = session.request(method, path, headers={"x-smart-proxy-csrf": "1"})
        assert allowed.status_code != 403, allowed.text


CROSS_SITE = [
    ("a form post from another site", {"origin": "https://evil.example", "sec-fetch-site": "cross-site"}),
    ("another origin, no fetch metadata", {"origin": "http://evil.example"}),
    ("an opaque origin", {"origin": "null"}),
    ("same-site but another port", {"sec-fetch-site": "same-site"}),
    ("the cookie alone, no CSRF header", {}),
]


@pytest.mark.parametrize(("case", "headers"), CROSS_SITE, ids=[c for c, _ in CROSS_SITE])
def test_a_cross_site_request_is_refused_even_with_the_session(
    guarded: Any, case: str, headers: dict[str, str]
) -> None:
    with httpx.Client(base_url=guarded.url, timeout=10) as session:
        assert session.post("/proxy/auth", json={"key": KEY}).status_code == 200
        for method, path in (("POST", "/proxy/pause"), ("DELETE", "/proxy/queue"),
                             ("POST", "/proxy/requests/x/cancel")):
            refused = session.request(method, path, headers=headers)
            assert refused.status_code == 403, (case, path, refused.text)
        # The page's own requests pass: same origin, with the header.
        same = {"origin": guarded.url, "sec-fetch-site": "same-origin", "x-smart-proxy-csrf": "1"}
        assert session.post("/proxy/pause", headers=same).status_code == 200
        assert session.post("/proxy/resume", headers=same).status_code == 200
        # A cross-site login attempt is refused before the key is even looked at.
        login = httpx.post(guarded.url + "/proxy/auth", json={"key": KEY}, timeout=10,
                           headers={"origin": "https://evil.example", "sec-fetch-site": "cross-site"})
        assert login.status_code == 403


def test_logout_ends_the_session(guarded: Any) -> None:
    with httpx.Client(base_url=guarded.url, timeout=10) as session:
        assert session.post("/proxy/auth", json={"key": KEY}).status_code == 200
        assert session.get("/proxy/overview").status_code == 200
        out = session.post("/proxy/auth/logout", headers={"x-smart-proxy-csrf": "1"})
        assert out.status_code == 200 and "smart_proxy_session" not in session.cookies
        assert session.get("/proxy/overview").status_code == 403


def test_logging_out_ends_an_open_event_stream(guarded: Any) -> None:
    """A stream opened with the session is admin data flowing: when the session ends, so does the
    stream (at the next event or heartbeat, five seconds at most)."""
    with httpx.Client(base_url=guarded.url, timeout=10) as session:
        assert session.post("/proxy/auth", json={"key": KEY}).status_code == 200
        token = session.cookies["smart_proxy_session"]
        stream = EventReader(guarded.url + "/proxy/events",
                             headers={"cookie": f"smart_proxy_session={token}"})
        try:
            assert stream.status == 200
            out = session.post("/proxy/auth/logout", headers={"x-smart-proxy-csrf": "1"})
            assert out.status_code == 200
            assert stream.next(within=10) is None  # ended, not merely quiet
        finally:
            stream.close()


def test_the_page_is_static_offline_and_locked_down(guarded: Any) -> None:
    page = httpx.get(guarded.url + "/proxy/dashboard", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    for name in ("app.js", "charts.js", "style.css"):
        asset = httpx.get(f"{guarded.url}/proxy/dashboard/{name}", timeout=10)
        assert asset.status_code == 200 and asset.headers["content-security-policy"] == csp
        # Nothing from another host: no CDN, no remote font.
        assert "http://" not in asset.text and "https://" not in asset.text
    assert "http" not in page.text.replace("http-equiv", "")
    assert "<script>" not in page.text and " style=" not in page.text  # nothing inline
    assert httpx.get(guarded.url + "/proxy/dashboard/secret.py", timeout=10).status_code == 404


def test_a_browser_reaching_the_sidecar_by_name_is_not_admin_by_network(
    sidecar_factory: SidecarFactory, ollama_emulator: Any
) -> None:
    """DNS rebinding: another site's page whose name now resolves to the sidecar. From loopback
    (an admin network) a browser naming an address is admin; one naming a host is not; a tool
    naming a host (no browser headers) still is."""
    proxy = sidecar_factory(upstream=ollama_emulator.url)
    port = proxy.url.rsplit(":", 1)[1]
    browser = {"sec-fetch-site": "same-origin", "sec-fetch-mode": "cors"}
    for host, headers, expected in [
        (f"127.0.0.1:{port}", browser, 200),
        (f"localhost:{port}", browser, 200),
        (f"attacker.example:{port}", browser, 403),
        (f"attacker.example:{port}", {"origin": f"http://attacker.example:{port}"}, 403),
        (f"attacker.example:{port}", {}, 200),
    ]:
        answer = httpx.get(proxy.url + "/proxy/overview", headers={"host": host, **headers}, timeout=10)
        assert answer.status_code == expected, (host, headers, answer.text)


def test_model_management_refuses_another_site_s_form(
    sidecar_factory: SidecarFactory, ollama_emulator: Any
) -> None:
    proxy = sidecar_factory(upstream=ollama_emulator.url)
    forged = httpx.post(
        proxy.url + "/api/pull", content=b'{"model": "llama3.2:1b"}', timeout=10,
        headers={"content-type": "text/plain", "origin": "https://evil.example",
                 "sec-fetch-site": "cross-site"},
    )
    assert forged.status_code == 403 and "cross-site" in forged.json()["error"]


def test_a_removed_request_s_id_stays_taken_until_its_client_is_answered(
    sidecar_factory: SidecarFactory, ollama_emulator: Any
) -> None:
    proxy = sidecar_factory(upstream=ollama_emulator.url, policy=make_policy(max_parallel=1))
    proxy.admin("POST", "/proxy/pause")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(_post, proxy, "/api/generate",
                              {"model": MODEL, "prompt": "hi", "stream": False}, "dup")
        proxy.wait_depth(1)
        dispatcher = proxy.sidecar.dispatcher
        # In one step on the sidecar's loop: removed, and the id still known (the exchange has
        # not answered its client yet), so a new request reusing it cannot slip in.
        assert proxy.call(lambda: (dispatcher.remove("dup"), dispatcher.known("dup"))) == (True, True)
        assert waiting.result().status_code == 503
    wait_until(lambda: not proxy.call(lambda: dispatcher.known("dup")), within=5, what="id free")
    proxy.admin("POST", "/proxy/resume")
    assert _post(proxy, "/api/generate", {"model": MODEL, "prompt": "hi", "stream": False},
                 "dup").status_code == 200
