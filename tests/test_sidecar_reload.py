"""Hot reload: a valid edit reorders the waiting queue without a restart; a broken edit changes
nothing and says why; edits racing with dispatch lose no request. Plus the CLI process itself:
SIGHUP reloads, SIGTERM exits 0."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import sqlite3
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from sidecar_fixtures import (
    RunningSidecar,
    SidecarFactory,
    cli_process,
    make_policy,
    wait_until,
    wait_upstream_up,
)

from policy.holder import PolicyHolder

MODEL = "llama3.2:1b"


def with_offsets(offsets: str, max_parallel: int = 1) -> str:
    terms = f"""
[policies.test.terms.vram]
loaded = 0
fits = 100
[policies.test.terms.class_offset]
offsets = {{ {offsets} }}
"""
    return make_policy(max_parallel=max_parallel, terms=terms)


BATCH_FIRST = with_offsets("interactive = 50")
INTERACTIVE_FIRST = with_offsets("batch = 50")


def waiting_ids(proxy: RunningSidecar) -> list[str]:
    return [t["request_id"] for t in proxy.queue()["waiting"]]


def edit(proxy: RunningSidecar, text: str) -> None:
    """Replace the file at once, as editors do, so the watcher never reads half of it."""
    partial = proxy.policy_path.with_suffix(".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, proxy.policy_path)


def enqueue_two(proxy: RunningSidecar, pool: concurrent.futures.Executor) -> list[Any]:
    body = {"model": MODEL, "prompt": "hi", "stream": False}
    futures = []
    for rid, cls in (("b", "batch"), ("i", "interactive")):
        futures.append(pool.submit(
            httpx.post, proxy.url + "/api/generate", json=body, timeout=30,
            headers={"x-request-id": rid, "x-request-class": cls},
        ))
        proxy.wait_depth(len(futures))
    return futures


def test_valid_edit_reorders_the_waiting_queue(
    sidecar_factory: SidecarFactory, ollama_emulator: Any
) -> None:
    proxy = sidecar_factory(upstream=ollama_emulator.url, policy=BATCH_FIRST)
    version = proxy.health()["policy"]["version"]
    proxy.admin("POST", "/proxy/pause")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futures = enqueue_two(proxy, pool)
        assert waiting_ids(proxy) == ["b", "i"]
        edit(proxy, INTERACTIVE_FIRST)
        health = proxy.wait_for(lambda h: h["policy"]["version"] != version, within=5)
        assert health["policy"]["last_reload_error"] is None
        assert waiting_ids(proxy) == ["i", "b"]
        proxy.admin("POST", "/proxy/resume")
        assert [f.result().status_code for f in futures] == [200, 200]
    proxy.wait_idle()
    assert [r.client_request_id for r in proxy.journal.records] == ["i", "b"]
    assert proxy.journal.records[0].policy_version == health["policy"]["version"]
    metrics = httpx.get(proxy.url + "/metrics").text
    assert 'smart_proxy_policy_reloads_total{result="ok"} 1.0' in metrics


def test_broken_edit_changes_nothing(sidecar_factory: SidecarFactory, ollama_emulator: Any) -> None:
    proxy = sidecar_factory(upstream=ollama_emulator.url, policy=BATCH_FIRST)
    before = proxy.health()["policy"]
    proxy.admin("POST", "/proxy/pause")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futures = enqueue_two(proxy, pool)
        edit(proxy, BATCH_FIRST.replace("max_parallel = 1", "max_parallel = -3"))
        health = proxy.wait_for(lambda h: h["policy"]["last_reload_error"] is not None, within=5)
        error = health["policy"]["last_reload_error"]
        assert "backend.max_parallel: -3" in error and str(proxy.policy_path) in error
        assert health["policy"]["version"] == before["version"]
        assert health["status"] == "degraded"
        assert waiting_ids(proxy) == ["b", "i"]
        # The endpoint reports the same problem, as a 422.
        reload = proxy.admin("POST", "/proxy/policy/reload")
        assert reload.status_code == 422 and reload.json()["ok"] is False
        assert "backend.max_parallel" in reload.json()["error"]
        proxy.admin("POST", "/proxy/resume")
        assert [f.result().status_code for f in futures] == [200, 200]
    metrics = httpx.get(proxy.url + "/metrics").text
    assert 'smart_proxy_policy_reloads_total{result="error"} 2.0' in metrics
    # Fixing the file clears the error.
    edit(proxy, INTERACTIVE_FIRST)
    proxy.wait_for(lambda h: h["policy"]["last_reload_error"] is None and h["status"] == "ok")


def test_reload_endpoint(sidecar_factory: SidecarFactory, ollama_emulator: Any) -> None:
    proxy = sidecar_factory(upstream=ollama_emulator.url, policy=BATCH_FIRST, watch_interval=3600)
    same = proxy.admin("POST", "/proxy/policy/reload").json()
    assert same["ok"] is True and same["changed"] is False
    edit(proxy, INTERACTIVE_FIRST)
    changed = proxy.admin("POST", "/proxy/policy/reload").json()
    assert changed["ok"] is True and changed["changed"] is True
    assert proxy.health()["policy"]["version"] == changed["version"]
    shown = proxy.admin("GET", "/proxy/policy").json()
    assert shown["version"] == changed["version"] and shown["active"] == "test"
    assert shown["file"]["policies"]["test"]["terms"]["class_offset"]["offsets"] == {"batch": 50}


def test_edits_racing_with_dispatch_lose_no_request(
    sidecar_factory: SidecarFactory, ollama_emulator: Any
) -> None:
    """60 requests while the file is rewritten 30 times (slots 1..3, two orderings): every
    request is answered once, nothing stays queued or in flight."""
    proxy = sidecar_factory(upstream=ollama_emulator.url, policy=with_offsets("batch = 50", 2))
    versions = [with_offsets(o, n) for n in (1, 3) for o in ("batch = 50", "interactive = 50")]
    versions.append("this is = not [valid")
    stop = threading.Event()

    def rewrite() -> int:
        count = 0
        while not stop.is_set():
            edit(proxy, versions[count % len(versions)])
            count += 1
            proxy.admin("POST", "/proxy/policy/reload")
            stop.wait(0.005)  # pace the edits; ends at once when the requests are done
        return count

    body = {"model": MODEL, "prompt": "hi", "stream": False}
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        editor = pool.submit(rewrite)
        calls = [
            pool.submit(httpx.post, proxy.url + "/api/generate", json=body, timeout=60,
                        headers={"x-request-class": ("batch", "interactive")[i % 2],
                                 "x-client-id": f"c{i % 5}"})
            for i in range(60)
        ]
        codes = [c.result().status_code for c in calls]
        stop.set()
        assert editor.result() >= 5
    assert codes == [200] * 60
    proxy.wait_idle()
    assert sorted(r.status for r in proxy.journal.records) == ["completed"] * 60


def test_cli_serve_reloads_on_sighup_and_exits_cleanly_on_sigterm(
    tmp_path: Path, ollama_emulator: Any
) -> None:
    policy = tmp_path / "policies.toml"
    policy.write_text(BATCH_FIRST, encoding="utf-8")
    env = {**os.environ, "SMART_PROXY_UPSTREAM": ollama_emulator.url,
           "SMART_PROXY_DB": str(tmp_path / "journal.db"), "SMART_PROXY_LOG_FORMAT": "json"}
    serve = ["serve", "--policy", str(policy), "--host", "127.0.0.1", "--port", "0"]
    with cli_process(serve, env) as process:
        assert process.stderr is not None
        url = ""
        for line in process.stderr:
            if line.startswith("smart-proxy listening on "):
                url = line.split()[3]
                break
        assert url.startswith("http://127.0.0.1:")
        wait_upstream_up(url, within=10)
        reply = httpx.post(url + "/api/generate", json={"model": MODEL, "prompt": "hi", "stream": False})
        assert reply.status_code == 200
        version = httpx.get(url + "/proxy/health").json()["policy"]["version"]
        policy.write_text(INTERACTIVE_FIRST, encoding="utf-8")
        process.send_signal(signal.SIGHUP)
        wait_until(lambda: httpx.get(url + "/proxy/health").json()["policy"]["version"] != version,
                   within=5, what="the SIGHUP reload")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        rest = process.stderr.read()
        assert '"msg":"policy reloaded' in rest and '"request_id":' in rest
    # The journal was flushed on the way out: the one request is in the database.
    with sqlite3.connect(tmp_path / "journal.db") as db:
        rows = db.execute("SELECT status, model, endpoint FROM requests").fetchall()
    assert rows == [("completed", MODEL, "/api/generate")]


def test_a_reload_to_an_unusable_backend_url_is_refused(
    sidecar_factory: SidecarFactory, ollama_emulator: Any
) -> None:
    """A backend.url httpx cannot use (a bad port, an unclosed IPv6 bracket) is a policy error:
    the reload is refused with the reason and the sidecar keeps serving on the old file."""
    good = make_policy().replace("[backend]", f'[backend]\nurl = "{ollama_emulator.url}"')
    proxy = sidecar_factory(upstream=None, policy=good, watch_interval=3600)
    proxy.wait_for(lambda h: h["upstream"]["up"])
    body = {"model": MODEL, "prompt": "hi", "stream": False}
    for bad in ("http://127.0.0.1:99999", "http://[::1"):
        edit(proxy, good.replace(ollama_emulator.url, bad))
        refused = proxy.admin("POST", "/proxy/policy/reload")
        assert refused.status_code == 422 and "backend.url" in refused.text
        assert httpx.post(proxy.url + "/api/generate", json=body, timeout=10).status_code == 200


def test_an_unusable_upstream_override_is_a_502_and_the_poller_survives_it(
    sidecar_factory: SidecarFactory,
) -> None:
    """An upstream URL from outside the policy (--upstream, SMART_PROXY_UPSTREAM) that httpx cannot
    use answers 502 in each dialect, never a 500, and the poller keeps reporting Ollama down."""
    proxy = sidecar_factory(upstream="http://127.0.0.1:99999")
    body = {"model": MODEL, "prompt": "hi", "stream": False}
    native = httpx.post(proxy.url + "/api/generate", json=body, timeout=10)
    assert native.status_code == 502 and "Ollama" in native.json()["error"]
    openai = httpx.post(proxy.url + "/v1/completions", json=body, timeout=10)
    assert openai.status_code == 502 and openai.json()["error"]["type"] == "api_error"
    assert httpx.get(proxy.url + "/api/tags", timeout=10).status_code == 502
    proxy.wait_for(lambda h: not h["upstream"]["up"] and h["upstream"]["last_error"] is not None)
    proxy.wait_for(lambda h: h["in_flight"] == 0)


def test_sizes_ollama_reported_are_kept_while_requests_still_go_to_it(
    sidecar_factory: SidecarFactory, ollama_emulator: Any
) -> None:
    """Sizes come from the Ollama requests go to. With the upstream given from outside the file
    (--upstream), an edit of backend.url changes nothing that is asked, so nothing is forgotten."""
    proxy = sidecar_factory(upstream=ollama_emulator.url)
    body = {"model": MODEL, "prompt": "hi", "stream": False}
    assert httpx.post(proxy.url + "/api/generate", json=body, timeout=10).status_code == 200

    def sizes() -> dict[str, float]:
        return dict(proxy.call(lambda: proxy.sidecar.scheduler.residency_model.ps_sizes))

    wait_until(lambda: MODEL in sizes(), within=5, what="the size from /api/ps")
    edited = make_policy().replace("[backend]\n", '[backend]\nurl = "http://127.0.0.1:1"\n', 1)
    proxy.policy_path.write_text(edited, encoding="utf-8")
    assert proxy.admin("POST", "/proxy/policy/reload").status_code == 200
    assert MODEL in sizes()
    assert httpx.post(proxy.url + "/api/generate", json=body, timeout=10).status_code == 200


class GatedHolder(PolicyHolder):
    """A PolicyHolder whose read-and-compile step waits for the test: `entered` is set once a
    reload is inside it; it goes on only after `release`, and sets `left` when done."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.entered, self.release, self.left = threading.Event(), threading.Event(), threading.Event()

    def prepare(self, *, only_if_changed: bool = False) -> Any:
        self.entered.set()
        assert self.release.wait(10), "the test never released the reload"
        try:
            return super().prepare(only_if_changed=only_if_changed)
        finally:
            self.left.set()


async def _in_thread(event: threading.Event) -> None:
    import asyncio

    assert await asyncio.to_thread(event.wait, 10)


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["sighup", "admin endpoint"])
async def test_a_reload_in_progress_when_the_sidecar_stops_never_swaps(how: str, tmp_path: Path) -> None:
    """stop() while a reload compiles: the task SIGHUP started is stopped with the reloader, a
    reload someone else awaits (the admin endpoint's) answers that it was not applied — and in
    neither case does the holder, or anything told by `on_swap`, ever see the new file."""
    import asyncio

    from server.runtime.reload import Reloader

    path = tmp_path / "policy.toml"
    path.write_text(BATCH_FIRST, encoding="utf-8")
    holder = GatedHolder(path)
    before = holder.current.version
    swapped: list[object] = []
    reloader = Reloader(holder, on_swap=swapped.append, on_result=lambda _: None, interval=3600)
    reloader.start()
    path.write_text(INTERACTIVE_FIRST, encoding="utf-8")
    awaited = None
    if how == "sighup":
        reloader.reload_soon()
    else:
        awaited = asyncio.create_task(reloader.reload())
    await _in_thread(holder.entered)
    stopping = asyncio.create_task(reloader.stop())
    await asyncio.sleep(0)  # stop() has begun: it marks the reloader stopped first
    holder.release.set()
    await stopping
    await _in_thread(holder.left)  # the compile finished: had it swapped, it would have by now
    if awaited is not None:
        result = await awaited
        assert not result.ok and not result.changed and "not applied" in (result.error or "")
    reloads = [t for t in asyncio.all_tasks() if "Reloader" in t.get_coro().__qualname__]
    assert reloads == []
    assert holder.current.version == before
    assert swapped == []


def test_holder_start_up_does_not_miss_an_edit_made_while_it_compiled(tmp_path, monkeypatch):
    """The holder compiled the file, then read it a second time for its digest: an edit between
    the two reads was taken as already active, so the watcher never loaded it."""
    import policy.holder
    import policy.load

    path = tmp_path / "p.toml"
    path.write_text('active = "a"\n[policies.a]\n')
    real = policy.load.load_policy_text

    def compile_then_edit(data: bytes, file: str):
        compiled = real(data, file)
        path.write_text('active = "b"\n[policies.b]\n')  # the operator saves again meanwhile
        return compiled

    monkeypatch.setattr(policy.load, "load_policy_text", compile_then_edit)
    monkeypatch.setattr(policy.holder, "load_policy_text", compile_then_edit)
    holder = policy.holder.PolicyHolder(path)
    assert holder.current.active.name == "a"
    monkeypatch.setattr(policy.load, "load_policy_text", real)
    monkeypatch.setattr(policy.holder, "load_policy_text", real)
    result = holder.check_changed()
    assert result.changed and holder.current.active.name == "b"


@pytest.mark.anyio
async def test_a_failing_swap_is_reported_and_retried(tmp_path: Path) -> None:
    """If what follows the holder (scheduler, journal) raises while taking a new file, the reload
    answers an error, is counted as one, and the watcher tries the whole step again at its next
    look — instead of the file passing for applied."""
    from server.runtime.reload import Reloader

    path = tmp_path / "policy.toml"
    path.write_text(BATCH_FIRST, encoding="utf-8")
    holder = PolicyHolder(path)
    outcomes: list[str] = []
    applied: list[object] = []
    failures = [RuntimeError("scheduler refused")]

    def on_swap(compiled: object) -> None:
        if failures:
            raise failures.pop()
        applied.append(compiled)

    reloader = Reloader(
        holder, on_swap=on_swap, on_result=lambda r: outcomes.append("ok" if r.ok else "error"),
        interval=3600,
    )
    path.write_text(INTERACTIVE_FIRST, encoding="utf-8")
    first = await reloader.reload(only_if_changed=True)
    assert not first.ok and "scheduler refused" in (first.error or "")
    assert outcomes == ["error"] and holder.last_error is not None
    second = await reloader.reload(only_if_changed=True)  # what the watcher does next
    assert second.ok and second.changed and len(applied) == 1
    assert outcomes == ["error", "ok"] and holder.last_error is None
