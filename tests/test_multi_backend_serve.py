"""`smart-proxy serve` in front of several Ollama servers ([backends.NAME]): each request goes where
its model is loaded, a backend that refuses connections is marked down and its requests go to
another (once, before any byte was sent), work only a down backend may serve waits for it, and a
reload adds and removes backends.

Real parts: the sidecar under Hypercorn, and one emulated Ollama per backend, each on its own port
and each holding one model at a time (so every change of model on a backend is a load it counts).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest
from emulator_fixtures import ONE_AT_A_TIME
from sidecar_fixtures import RunningSidecar, SidecarFactory, wait_until

SMALL, LARGE = "llama3.2:1b", "llama3.2:3b"
CLOUD = "gpt-oss:120b-cloud"


class Emulators:
    """Emulated Ollama servers that a test can stop and start again on the same port."""

    def __init__(self, stack: ExitStack) -> None:
        self._stack = stack
        self.urls: list[str] = []
        self._running: dict[str, ExitStack] = {}
        self.handles: dict[str, Any] = {}

    def start(self, port: int = 0, config: str = ONE_AT_A_TIME) -> str:
        from sim.config import load_text
        from sim.testing import running_emulator

        own = ExitStack()
        settings = load_text(config, "one-at-a-time", time.time())
        emulator = own.enter_context(running_emulator(settings, port=port))
        self._stack.callback(own.close)
        self._running[emulator.url] = own
        self.handles[emulator.url] = emulator
        if emulator.url not in self.urls:
            self.urls.append(emulator.url)
        return emulator.url

    def stop(self, url: str) -> None:
        self._running.pop(url).close()

    def restart(self, url: str) -> None:
        self.start(port=int(url.rsplit(":", 1)[1]))

    def loads(self, url: str) -> int:
        return int(self.handles[url].stats()["loads"])


@pytest.fixture
def emulators() -> Iterator[Emulators]:
    with ExitStack() as stack:
        yield Emulators(stack)


def policy(
    backends: dict[str, str], *, poll: str = "200ms", models: dict[str, str] | None = None,
    queue_timeout: str = "30s",
) -> str:
    tables = "".join(
        f"""
[backends.{name}]
url = "{url}"
max_parallel = 1
num_parallel = 1
vram_gb = 8
max_loaded_models = 1
poll_interval = "{poll}"
request_timeout = "30s"
queue_timeout = "{queue_timeout}"
{f'models = ["{models[name]}"]' if models and name in models else ""}
"""
        for name, url in backends.items()
    )
    return f"""\
active = "test"
{tables}
[policies.test.terms.vram]
loaded = 0
fits = 100
unknown_size = 600
swap = [{{ up_to_gb = 16, points = 300 }}]
swap_above = 800
"""


def generate(proxy: RunningSidecar, model: str, **kwargs: Any) -> httpx.Response:
    body = {"model": model, "prompt": "hi", "stream": False}
    return httpx.post(proxy.url + "/api/generate", json=body, timeout=30, **kwargs)


def backends_of(proxy: RunningSidecar) -> dict[str, dict[str, Any]]:
    return {b["name"]: b for b in proxy.health()["backends"]}


def metric(proxy: RunningSidecar, name: str, **labels: str) -> float:
    text = httpx.get(proxy.url + "/metrics", timeout=10).text
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and line.split("{", 1)[1].split("}", 1)[0] == want:
            return float(line.rsplit(" ", 1)[1])
        if not labels and line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_each_model_stays_on_the_backend_that_loaded_it(
    sidecar_factory: SidecarFactory, emulators: Emulators
) -> None:
    a, b = emulators.start(), emulators.start()
    proxy = sidecar_factory(upstream=None, policy=policy({"gpu0": a, "gpu1": b}))
    proxy.wait_for(lambda h: all(x["up"] for x in h["backends"]))
    served = []
    for model in [SMALL, LARGE] * 5:
        response = generate(proxy, model)
        assert response.status_code == 200, response.text
        served.append((model, response.headers["x-backend"]))
    # The first of each model chose a backend; every later one went back there: one load each,
    # where round-robin over two one-model cards would load on every request.
    assert dict(served) == {SMALL: "gpu0", LARGE: "gpu1"}
    assert sorted(set(served)) == [(SMALL, "gpu0"), (LARGE, "gpu1")]
    assert (emulators.loads(a), emulators.loads(b)) == (1, 1)
    # Each backend's own residency, as the sidecar sees it and as Ollama reports it.
    vram = proxy.admin("GET", "/proxy/vram").json()["backends"]
    assert [m["model"] for m in vram["gpu0"]["residency"]["models"]] == [SMALL]
    assert [m["model"] for m in vram["gpu1"]["residency"]["models"]] == [LARGE]
    wait_until(lambda: [m["name"] for m in (proxy.admin("GET", "/proxy/vram").json()["backends"]
                                            ["gpu1"]["last_ps"] or {}).get("models", [])] == [LARGE],
               within=10, what="gpu1's poll to list its model")
    health = proxy.health()
    assert [(x["name"], x["up"], x["max_parallel"]) for x in health["backends"]] == [
        ("gpu0", True, 1), ("gpu1", True, 1)]
    assert health["max_parallel"] == 2 and health["status"] == "ok"
    assert metric(proxy, "smart_proxy_backend_dispatches_total", backend="gpu1", action="attach") == 4
    assert metric(proxy, "smart_proxy_backend_up", backend="gpu0") == 1
    assert metric(proxy, "smart_proxy_backend_loaded_models", backend="gpu1") == 1
    records = [r for r in proxy.journal.records if r.status == "completed"]
    assert sorted({(r.model, r.backend) for r in records}) == [(SMALL, "gpu0"), (LARGE, "gpu1")]
    # A pass-through request may name its backend; an unknown name is the client's mistake.
    ps = httpx.get(proxy.url + "/api/ps", headers={"x-backend": "gpu1"}, timeout=10)
    assert [m["name"] for m in ps.json()["models"]] == [LARGE] and ps.headers["x-backend"] == "gpu1"
    wrong = httpx.get(proxy.url + "/api/ps", headers={"x-backend": "gpu9"}, timeout=10)
    assert wrong.status_code == 400 and "gpu9" in wrong.json()["error"]


def test_a_request_goes_to_a_backend_that_has_pulled_its_model(
    sidecar_factory: SidecarFactory, emulators: Emulators
) -> None:
    a, b = emulators.start(), emulators.start()
    gone = httpx.request("DELETE", a + "/api/delete", json={"model": LARGE}, timeout=10)
    assert gone.status_code == 200, gone.text
    # Its size given, so that both backends score it alike (gpu0 no longer knows it from its tags).
    sized = policy({"gpu0": a, "gpu1": b}) + f'[models]\n"{LARGE}" = {{ vram_gb = 3.0 }}\n'
    proxy = sidecar_factory(upstream=None, policy=sized)
    proxy.wait_for(lambda h: all(x["up"] for x in h["backends"]))
    scheduler = proxy.sidecar.scheduler
    wait_until(lambda: proxy.call(lambda: scheduler.is_cloud.listed_on(LARGE)) == {"gpu1"},
               within=10, what="both backends' /api/tags read")
    # Both are idle and gpu0 comes first, but gpu0 would answer 404: the request goes to gpu1.
    response = generate(proxy, LARGE)
    assert response.status_code == 200, response.text
    assert response.headers["x-backend"] == "gpu1"
    assert generate(proxy, SMALL).headers["x-backend"] == "gpu0"  # pulled on both


def test_a_delete_through_the_sidecar_or_a_moved_url_is_seen_at_once(
    sidecar_factory: SidecarFactory, emulators: Emulators
) -> None:
    a, b = emulators.start(), emulators.start()
    sized = policy({"gpu0": a, "gpu1": b}, poll="1h") + f'[models]\n"{LARGE}" = {{ vram_gb = 3.0 }}\n'
    proxy = sidecar_factory(upstream=None, policy=sized)  # no poll will come: only the delete tells
    proxy.wait_for(lambda h: all(x["up"] for x in h["backends"]))
    scheduler = proxy.sidecar.scheduler
    wait_until(lambda: proxy.call(lambda: scheduler.is_cloud.listed_on(LARGE)) == {"gpu0", "gpu1"},
               within=10, what="both backends' /api/tags read")
    gone = httpx.request("DELETE", proxy.url + "/api/delete", json={"model": LARGE},
                         headers={"x-backend": "gpu0"}, timeout=10)
    assert gone.status_code == 200 and gone.headers["x-backend"] == "gpu0", gone.text
    wait_until(lambda: proxy.call(lambda: scheduler.is_cloud.listed_on(LARGE)) == {"gpu1"},
               within=10, what="gpu0's /api/tags read again after the delete")
    response = generate(proxy, LARGE)
    assert response.status_code == 200, response.text
    assert response.headers["x-backend"] == "gpu1"
    # gpu0 moved to another server, which has the model: its list is read at once, not in 4 h.
    c = emulators.start()
    proxy.policy_path.write_text(sized.replace(a, c), encoding="utf-8")
    wait_until(lambda: proxy.call(lambda: scheduler.is_cloud.listed_on(LARGE)) == {"gpu0", "gpu1"},
               within=10, what="the moved gpu0's /api/tags read")


def test_a_refused_connection_sends_the_request_to_another_backend_once(
    sidecar_factory: SidecarFactory, emulators: Emulators
) -> None:
    a, b = emulators.start(), emulators.start()
    # Polls far apart: the request, not a poll, finds gpu1 gone.
    proxy = sidecar_factory(upstream=None, policy=policy({"gpu0": a, "gpu1": b}, poll="1h"))
    proxy.wait_for(lambda h: all(x["up"] for x in h["backends"]))
    assert generate(proxy, SMALL).headers["x-backend"] == "gpu0"
    assert generate(proxy, LARGE).headers["x-backend"] == "gpu1"
    emulators.stop(b)
    response = generate(proxy, LARGE)  # goes to gpu1, where LARGE is loaded; refused there
    assert response.status_code == 200, response.text
    assert response.headers["x-backend"] == "gpu0"
    assert metric(proxy, "smart_proxy_redispatches_total", backend="gpu1") == 1
    # Two dispatches of one request, and one queue wait: each of the two LARGE requests waited once.
    assert metric(proxy, "smart_proxy_backend_dispatches_total", backend="gpu1", action="attach") == 1
    assert metric(proxy, "smart_proxy_queue_wait_seconds_count", model=LARGE, **{"class": "interactive"}) == 2
    down = backends_of(proxy)["gpu1"]
    assert not down["up"] and down["last_error"]
    health = proxy.health()
    assert health["status"] == "degraded" and health["upstream"]["up"]
    assert any("gpu1" in reason for reason in health["reasons"])
    assert metric(proxy, "smart_proxy_backend_up", backend="gpu1") == 0
    # While it is down nothing is sent there, so nothing more is sent twice.
    for _ in range(3):
        assert generate(proxy, LARGE).headers["x-backend"] == "gpu0"
    assert metric(proxy, "smart_proxy_redispatches_total", backend="gpu1") == 1
    completed = [r for r in proxy.journal.records if r.status == "completed"]
    assert len(completed) == 6 and len({r.request_id for r in completed}) == 6  # none lost or doubled
    proxy.wait_idle()  # the refused grant's slot came back
    assert backends_of(proxy)["gpu1"]["in_flight"] == 0


def test_a_second_refusal_is_answered_and_with_every_backend_down_requests_wait(
    sidecar_factory: SidecarFactory, emulators: Emulators
) -> None:
    a, b = emulators.start(), emulators.start()
    proxy = sidecar_factory(upstream=None, policy=policy({"gpu0": a, "gpu1": b}, poll="1h", queue_timeout="1s"))
    proxy.wait_for(lambda h: all(x["up"] for x in h["backends"]))
    emulators.stop(a)
    emulators.stop(b)
    response = generate(proxy, SMALL)  # refused by one, sent to the other, refused again
    assert response.status_code == 502, response.text
    assert response.headers["x-backend"] in ("gpu0", "gpu1")
    assert sum(metric(proxy, "smart_proxy_redispatches_total", backend=n) for n in ("gpu0", "gpu1")) == 1
    health = proxy.wait_for(lambda h: not h["upstream"]["up"])
    assert health["status"] == "degraded" and len(health["reasons"]) == 2
    assert httpx.get(proxy.url + "/readyz", timeout=10).status_code == 503
    waited = generate(proxy, SMALL)  # nowhere to go: it waits its queue timeout
    assert waited.status_code == 504 and "x-backend" not in waited.headers
    proxy.wait_idle()
    records = sorted(proxy.journal.records, key=lambda r: r.received_at)
    assert [(r.status, r.http_status) for r in records] == [("failed", 502), ("failed", 504)]
    assert records[1].backend is None and records[0].backend == response.headers["x-backend"]


def test_work_only_a_down_backend_serves_waits_for_it_to_come_back(
    sidecar_factory: SidecarFactory, emulators: Emulators
) -> None:
    a, b = emulators.start(), emulators.start()
    proxy = sidecar_factory(upstream=None, policy=policy({"gpu0": a, "gpu1": b}, models={"gpu0": SMALL, "gpu1": LARGE}))
    proxy.wait_for(lambda h: all(x["up"] for x in h["backends"]))
    emulators.stop(b)
    proxy.wait_for(lambda h: not backends_of(proxy)["gpu1"]["up"])
    events = httpx.get(proxy.url + "/proxy/overview", timeout=10).json()
    assert not next(x for x in events["health"]["backends"] if x["name"] == "gpu1")["up"]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(generate, proxy, LARGE)
        proxy.wait_depth(1)
        time.sleep(0.5)  # a few polls: it waits rather than fails
        assert not waiting.done()
        assert generate(proxy, SMALL).headers["x-backend"] == "gpu0"  # the rest is served meanwhile
        emulators.restart(b)
        response = waiting.result(timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["x-backend"] == "gpu1"
    assert backends_of(proxy)["gpu1"]["up"]


def test_a_reload_adds_and_removes_backends(sidecar_factory: SidecarFactory, emulators: Emulators) -> None:
    a, b = emulators.start(), emulators.start()
    proxy = sidecar_factory(upstream=None, policy=policy({"gpu0": a}))
    assert generate(proxy, SMALL).headers["x-backend"] == "gpu0"
    proxy.policy_path.write_text(policy({"gpu0": a, "gpu1": b}), encoding="utf-8")
    proxy.wait_for(lambda h: [x["name"] for x in h["backends"]] == ["gpu0", "gpu1"])
    proxy.wait_for(lambda h: all(x["up"] for x in h["backends"]) and h["max_parallel"] == 2)
    # LARGE would evict SMALL on gpu0: the new backend loads it instead.
    assert generate(proxy, LARGE).headers["x-backend"] == "gpu1"
    proxy.policy_path.write_text(policy({"gpu1": b}), encoding="utf-8")
    proxy.wait_for(lambda h: [x["name"] for x in h["backends"]] == ["gpu1"])
    assert generate(proxy, SMALL).headers["x-backend"] == "gpu1"  # gpu0 takes nothing new
    assert emulators.loads(a) == 1
    assert "gpu0" not in proxy.admin("GET", "/proxy/vram").json()["backends"]


def test_upstream_cannot_stand_for_several_backends(
    sidecar_factory: SidecarFactory, emulators: Emulators
) -> None:
    from policy.errors import PolicyError

    a, b = emulators.start(), emulators.start()
    with pytest.raises(PolicyError, match="--upstream"):
        sidecar_factory(upstream=a, policy=policy({"gpu0": a, "gpu1": b}))


def test_a_cloud_request_refused_a_connection_goes_through_another_backend(
    sidecar_factory: SidecarFactory, emulators: Emulators
) -> None:
    with_cloud = ONE_AT_A_TIME + f'[[models]]\nname = "{CLOUD}"\n'
    a, b = emulators.start(config=with_cloud), emulators.start(config=with_cloud)
    proxy = sidecar_factory(upstream=None, policy=policy({"gpu0": a, "gpu1": b}, poll="1h"))
    proxy.wait_for(lambda h: all(x["up"] for x in h["backends"]))
    scheduler = proxy.sidecar.scheduler
    wait_until(lambda: proxy.call(lambda: scheduler.is_cloud.listed_on(CLOUD)) == {"gpu0", "gpu1"},
               within=10, what="both backends' /api/tags read")
    assert generate(proxy, CLOUD).headers["x-backend"] == "gpu0"  # the first that lists it
    emulators.stop(a)
    response = generate(proxy, CLOUD)  # gpu0 refuses: nothing was sent, so through gpu1
    assert response.status_code == 200, response.text
    assert response.headers["x-backend"] == "gpu1"
    assert metric(proxy, "smart_proxy_redispatches_total", backend="gpu0") == 1
    wait_until(lambda: proxy.call(lambda: (scheduler.in_flight_count, scheduler.depth)) == (0, 0),
               within=10, what="its cloud slot freed")


def test_a_cloud_model_goes_through_a_backend_that_lists_it() -> None:
    """Cloud models run on Ollama's service through a server signed in to it: the backend whose
    /api/tags list the model, of those that answer."""
    from engine.cloud import CloudModels
    from policy.load import NodeSettings
    from server.runtime.backends import Backends

    cloud = CloudModels()
    cloud.learn({"models": [{"name": "llama3.2:1b"}]}, "gpu0")
    cloud.learn({"models": [{"name": "gpt-oss:120b-cloud", "remote_host": "https://ollama.com"}]}, "gpu1")
    specs = tuple(NodeSettings(n, f"http://127.0.0.1:{p}", 1, 1, 8.0, 1) for n, p in (("gpu0", 1), ("gpu1", 2)))
    client = httpx.AsyncClient()
    backends = Backends(
        client, nodes=lambda: specs, url=lambda spec: spec.url, interval=lambda: 1.0,
        on_state=lambda *a: None, on_change=lambda *a: None, on_mismatch=lambda *a: None,
        listed_on=cloud.listed_on,
    )
    for b in backends:
        b.poller.up = True
    assert backends.pick_up("gpt-oss:120b-cloud").spec.name == "gpu1"
    assert backends.pick_up(None).spec.name == "gpu0"
    backends.get("gpu1").poller.up = False  # type: ignore[union-attr]
    assert backends.pick_up("gpt-oss:120b-cloud").spec.name == "gpu0"  # the one that answers
    cloud.keep({"gpu0"})
    assert cloud.listed_on("gpt-oss:120b-cloud") == set()
    asyncio.run(client.aclose())  # never used: nothing was started


def test_a_refused_connection_is_told_without_the_address() -> None:
    """The reason goes to the public health page and the event stream: no host, no port."""
    import socket

    from server.http.upstream_hop import Unreachable, UpstreamHop

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # nothing listens once it closes

    async def attempt() -> Unreachable:
        hop = UpstreamHop()
        try:
            await hop.open(method="GET", url=f"http://127.0.0.1:{port}/api/ps", headers=[], content=b"",
                           upstream_timeout=5)
        except Unreachable as exc:
            return exc
        finally:
            await hop.aclose()
        raise AssertionError("connected to a closed port")

    refused = asyncio.run(attempt())
    assert refused.reason == "ConnectionRefusedError: Connection refused"
    assert str(port) in refused.message  # the client's own 502 may say where
