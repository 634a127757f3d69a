"""The /proxy endpoints and /metrics as an operator (and a waiting client) sees them, and the
demo command's promise: the curl line it prints works."""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import shlex
import signal
import time
from typing import Any

import httpx
from sidecar_fixtures import SidecarFactory, cli_process, make_policy, wait_until, wait_upstream_up

MODEL = "llama3.2:1b"


def metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name + (f"{{{wanted}}}" if wanted else "")) + r" ([0-9.e+-]+)$"
    match = re.search(pattern, text, re.MULTILINE)
    assert match, f"{name} {labels} not in metrics"
    return float(match.group(1))


def test_queue_position_cancel_and_metrics(
    sidecar_factory: SidecarFactory, ollama_emulator: Any
) -> None:
    proxy = sidecar_factory(upstream=ollama_emulator.url, policy=make_policy(max_parallel=1))
    body = {"model": MODEL, "prompt": "hi", "stream": False}
    assert proxy.admin("POST", "/proxy/pause").json() == {"paused": True, "queue_depth": 0}
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        futures = {}
        for rid, client in (("r1", "alice"), ("r2", "bob"), ("r3", "alice")):
            futures[rid] = pool.submit(
                httpx.post, proxy.url + "/api/generate", json=body, timeout=30,
                headers={"x-request-id": rid, "x-client-id": client},
            )
            proxy.wait_depth(len(futures))
        view = proxy.queue()
        assert view["paused"] is True and view["depth"] == 3
        assert [(w["request_id"], w["client"], w["class"], w["position"]) for w in view["waiting"]] == [
            ("r2", "bob", "interactive", 1), ("r1", "alice", "interactive", 2),
            ("r3", "alice", "interactive", 3),
        ]
        assert set(view["waiting"][0]["terms"]) == {"vram", "fairness"}
        assert view["waiting"][0]["score"] == sum(view["waiting"][0]["terms"].values())
        mine = httpx.get(proxy.url + "/proxy/queue/r3").json()
        assert (mine["state"], mine["position"], mine["depth"], mine["model"]) == ("waiting", 3, 3, MODEL)
        assert "client" not in mine  # a waiting client learns about its own ticket only
        text = httpx.get(proxy.url + "/metrics").text
        assert metric(text, "smart_proxy_queue_depth", model=MODEL) == 3
        assert metric(text, "smart_proxy_paused") == 1
        removed = proxy.admin("DELETE", "/proxy/queue/r1")
        assert removed.json() == {"request_id": "r1", "cancelled": True}
        answer = futures["r1"].result()
        assert answer.status_code == 503 and "administrator removed" in answer.json()["error"]
        assert proxy.admin("POST", "/proxy/resume").json()["paused"] is False
        assert futures["r2"].result().status_code == 200
        assert futures["r3"].result().status_code == 200
    proxy.wait_idle()
    text = httpx.get(proxy.url + "/metrics").text
    assert metric(text, "smart_proxy_requests_total", endpoint="/api/generate", model=MODEL,
                  status="completed") == 2
    assert metric(text, "smart_proxy_requests_total", endpoint="/api/generate", model=MODEL,
                  status="cancelled") == 1
    assert metric(text, "smart_proxy_queue_wait_seconds_count", **{"class": "interactive"}, model=MODEL) == 2
    assert metric(text, "smart_proxy_request_duration_seconds_count", model=MODEL) == 3
    assert metric(text, "smart_proxy_time_to_first_byte_seconds_count", model=MODEL) == 2
    completed = [r for r in proxy.journal.records if r.status == "completed"]
    assert metric(text, "smart_proxy_output_tokens_total", model=MODEL) == sum(
        r.eval_count or 0 for r in completed) > 0
    assert metric(text, "smart_proxy_input_tokens_total", model=MODEL) == sum(
        r.prompt_eval_count or 0 for r in completed) > 0
    assert metric(text, "smart_proxy_dispatches_total", action="load") == 1
    assert metric(text, "smart_proxy_dispatches_total", action="attach") == 1
    assert metric(text, "smart_proxy_in_flight") == 0
    assert metric(text, "smart_proxy_upstream_up") == 1
    for name in ("a:1", "b:2"):  # a path parameter never becomes a label of its own
        httpx.get(proxy.url + "/v1/models/" + name)
    text = httpx.get(proxy.url + "/metrics").text
    assert metric(text, "smart_proxy_requests_total", endpoint="/v1/models/{model}", model="none",
                  status="failed") == 2
    vram = httpx.get(proxy.url + "/proxy/vram").json()
    assert [m["model"] for m in vram["residency"]["models"]] == [MODEL]
    deadline = time.monotonic() + 5
    while not vram["last_ps"]["models"]:  # the next poll sees what the requests loaded
        assert time.monotonic() < deadline
        time.sleep(0.05)
        vram = httpx.get(proxy.url + "/proxy/vram").json()
    assert vram["last_ps"]["models"][0]["name"] == MODEL


def test_in_flight_view(sidecar_factory: SidecarFactory) -> None:
    """While a request runs, the queue view lists it with its elapsed time; the client can see
    that its request left the queue."""
    from sim.config import load_text
    from sim.testing import running_emulator

    slow = '[node]\ntime_scale = 0.3\n[[models]]\nname = "slow:70b"\nsize_gb = 0.5\nparameter_size = "70B"\nquantization = "Q4_K_M"\nfamily = "llama"\n'
    with running_emulator(load_text(slow, "slow", time.time())) as emulator:
        proxy = sidecar_factory(upstream=emulator.url)
        body = {"model": "slow:70b", "prompt": "tell me everything"}
        with httpx.stream("POST", proxy.url + "/api/generate", json=body, timeout=30,
                          headers={"x-request-id": "long-one"}) as response:
            lines = response.iter_lines()  # kept: dropping the iterator closes the connection
            next(lines)
            (flying,) = proxy.queue()["in_flight"]
            assert flying["request_id"] == "long-one" and flying["model"] == "slow:70b"
            assert flying["elapsed_s"] > 0
            mine = httpx.get(proxy.url + "/proxy/queue/long-one").json()
            assert mine["state"] == "in_flight" and mine["position"] is None
        proxy.wait_idle()


def test_demo_prints_a_curl_line_that_works(tmp_path: Any) -> None:
    """`smart-proxy demo`: the emulator in-process, the banner's URLs, and a working curl line."""
    env = {**os.environ, "SMART_PROXY_LOG_FORMAT": "human",
           "SMART_PROXY_DB": str(tmp_path / "journal.db")}
    with cli_process(["demo", "--port", "0", "--time-scale", "0.01"], env) as process:
        assert process.stderr is not None
        banner = []
        for line in process.stderr:
            banner.append(line)
            if "Ctrl-C stops both" in line:
                break
        curl = next(line.strip() for line in banner if line.strip().startswith("curl "))
        words = shlex.split(curl)
        url, payload = words[1], json.loads(words[words.index("-d") + 1])
        assert any("emulator" in line for line in banner)
        wait_upstream_up(url.rsplit("/api/", 1)[0])
        answer = httpx.post(url, json=payload, timeout=60)
        assert answer.status_code == 200, answer.text
        assert answer.json()["done"] is True and answer.json()["response"]
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0


def test_journal_and_analytics(
    sidecar_factory: SidecarFactory, ollama_emulator: Any, tmp_path: Any
) -> None:
    """With a real journal (SQLite): one record per request, and the analytics report (admin)."""
    from server.journal import open_journal

    def journal(compiled: Any) -> Any:
        return open_journal(str(tmp_path / "journal.db"), store_prompts="hash",
                            fallback_dir=tmp_path / "fallback")

    proxy = sidecar_factory(upstream=ollama_emulator.url, journal=journal)
    body = {"model": MODEL, "prompt": "hi", "stream": False}
    for _ in range(3):
        assert httpx.post(proxy.url + "/api/generate", json=body, timeout=30).status_code == 200
    assert httpx.post(proxy.url + "/api/generate", json={"model": 1}, timeout=30).status_code == 400
    deadline = time.monotonic() + 10
    while True:
        report = httpx.get(proxy.url + "/proxy/analytics?hours=1&group_by=client").json()
        if report["totals"]["requests"] == 4:
            break
        assert time.monotonic() < deadline, report["totals"]
        time.sleep(0.05)
    assert report["totals"]["completed"] == 3 and report["totals"]["rejected"] == 1
    assert report["by_model"] == [{"key": MODEL, "requests": 3}, {"key": None, "requests": 1}]
    bad = httpx.get(proxy.url + "/proxy/analytics?hours=-1&group_by=nope")
    assert bad.status_code == 400 and "group_by" in bad.json()["error"]
    state = httpx.get(proxy.url + "/proxy/journal").json()
    assert state["backend"] == "sqlite" and state["connected"] is True


# (request id, headers, expected client id, expected class) — default identify_by:
# api_key, then the x-client-id header, then the address.
IDENTITIES = [
    ("key", {"authorization": "Bearer k-alice", "x-client-id": "ignored"}, "alice", "interactive"),
    ("unknown-key", {"authorization": "Bearer nope", "x-client-id": "bob"}, "bob", "interactive"),
    ("bad-header", {"x-client-id": "spaces are not ids"}, "127.0.0.1", "interactive"),
    ("nothing", {}, "127.0.0.1", "interactive"),
    ("batch", {"x-client-id": "job", "x-request-class": "batch"}, "job", "batch"),
    ("unknown-class", {"x-client-id": "job", "x-request-class": "vip"}, "job", "interactive"),
]


def test_client_identity_and_class(sidecar_factory: SidecarFactory, ollama_emulator: Any) -> None:
    """API key -> name, else the client header (when well-formed), else the address; a class
    header only picks a class marked selectable."""
    proxy = sidecar_factory(upstream=ollama_emulator.url,
                            env={"SMART_PROXY_API_KEYS": "k-alice=alice, k-carol=carol"})
    body = {"model": MODEL, "prompt": "hi", "stream": False}
    proxy.admin("POST", "/proxy/pause")
    with concurrent.futures.ThreadPoolExecutor(len(IDENTITIES)) as pool:
        futures = []
        for rid, headers, _, _ in IDENTITIES:
            futures.append(pool.submit(httpx.post, proxy.url + "/api/generate", json=body,
                                       timeout=30, headers={"x-request-id": rid, **headers}))
            proxy.wait_depth(len(futures))
        seen = {w["request_id"]: (w["client"], w["class"]) for w in proxy.queue()["waiting"]}
        proxy.admin("POST", "/proxy/resume")
        assert [f.result().status_code for f in futures] == [200] * len(IDENTITIES)
    assert seen == {rid: (client, cls) for rid, _, client, cls in IDENTITIES}


def test_the_event_loop_lag_is_sampled_and_exported(
    sidecar_factory: SidecarFactory, ollama_emulator: Any
) -> None:
    """smart_proxy_event_loop_lag_seconds: a histogram the probe feeds 20 times a second."""
    proxy = sidecar_factory(upstream=ollama_emulator.url)

    def samples() -> float:
        text = httpx.get(proxy.url + "/metrics", timeout=10).text
        return metric(text, "smart_proxy_event_loop_lag_seconds_count")

    wait_until(lambda: samples() >= 3, within=10, what="three lag samples")
    text = httpx.get(proxy.url + "/metrics", timeout=10).text
    count = metric(text, "smart_proxy_event_loop_lag_seconds_count")
    assert metric(text, "smart_proxy_event_loop_lag_seconds_bucket", le="+Inf") == count
    assert 0 <= metric(text, "smart_proxy_event_loop_lag_seconds_bucket", le="0.005") <= count
