"""The web dashboard in a real headless Chromium (Debian's package, driven by Playwright through
its executable path; no browser is downloaded): log in, watch the queue fill, see a swap, open a
request's detail, cancel a waiting request and see its client get the error, see a broken policy
edit reported. Screenshots go to tests/artifacts/ (and to $SMART_PROXY_SCREENSHOTS when set).

Run by `make test-browser` (its own step of .ci/run); `make test` leaves it out because it needs
the chromium package, which a fresh machine does not have.
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sidecar_fixtures import SidecarFactory, make_policy, wait_until

pytestmark = pytest.mark.browser

KEY = "web-dashboard-key"
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
SMALL, OTHER = "llama3.2:1b", "llama3.2:3b"
# What this machine's closed network needs (no calls home, no component updates); see docs.
FLAGS = ["--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def _chromium() -> str:
    path = os.environ.get("SMART_PROXY_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    assert Path(path).exists(), (
        f"no Chromium at {path}: install Debian's chromium package (apt-get install chromium) "
        "or set SMART_PROXY_CHROMIUM"
    )
    return path


def _shot(page: Any, name: str) -> None:
    targets = [ARTIFACTS] + ([Path(d)] if (d := os.environ.get("SMART_PROXY_SCREENSHOTS")) else [])
    for directory in targets:
        directory.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(directory / name), full_page=True)


# One model at a time on this card, as OLLAMA_MAX_LOADED_MODELS=1 would have it: serving the
# other model is a swap. Time runs at a twentieth, so requests take a moment to serve.
EMULATOR = f"""
[node]
vram_gb = 8
max_loaded_models = 1
num_parallel = 1
time_scale = 0.05
[[models]]
name = "{SMALL}"
[[models]]
name = "{OTHER}"
"""


@pytest.fixture
def one_model_emulator() -> Iterator[Any]:
    import time

    from sim.config import load_text
    from sim.testing import running_emulator

    with running_emulator(load_text(EMULATOR, "browser", time.time())) as emulator:
        yield emulator


@pytest.fixture
def browser_page() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), headless=True, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(15_000)
            yield page
        finally:
            browser.close()


def _send(proxy: Any, rid: str, client: str, model: str) -> httpx.Response:
    return httpx.post(proxy.url + "/api/generate", timeout=60,
                      json={"model": model, "prompt": "hello", "stream": False},
                      headers={"x-request-id": rid, "x-client-id": client})


def test_the_dashboard_in_a_real_browser(
    sidecar_factory: SidecarFactory, one_model_emulator: Any, browser_page: Any
) -> None:
    from playwright.sync_api import expect

    proxy = sidecar_factory(
        upstream=one_model_emulator.url, env={"PROXY_ADMIN_KEY": KEY}, heartbeat_interval=0.3,
        policy=make_policy(max_parallel=1, max_loaded_models=1,
                           extra='[admin]\nnetworks = ["10.9.9.9/32"]\n'),
    )
    assert _send(proxy, "warm", "setup", OTHER).status_code == 200  # OTHER is loaded now
    page = browser_page
    errors: list[str] = []
    # Script errors only: the browser also logs every 4xx the page expects (the 403 before login).
    page.on("console", lambda m: errors.append(m.text)
            if m.type == "error" and not m.text.startswith("Failed to load resource") else None)
    page.on("pageerror", lambda e: errors.append(str(e)))

    page.goto(proxy.url + "/proxy/dashboard")
    expect(page.locator("#login")).to_be_visible()
    page.fill("#key", "wrong")
    page.click("#login-form button")
    expect(page.locator("#login-error")).to_contain_text("wrong admin key")
    page.fill("#key", KEY)
    page.click("#login-form button")
    expect(page.locator("#board")).to_be_visible()
    expect(page.locator("#live")).to_contain_text("live")
    expect(page.locator("#status")).to_have_text("ok")
    # A one-backend file's backend is "default"; a "backend" event turns its row at once, and
    # the snapshot the page then re-reads says it is up again (as it really is).
    backend = page.locator('#backends tbody tr[data-backend="default"]')
    expect(page.locator("#backends tbody tr")).to_have_count(1)
    expect(backend.locator(".backend-up")).to_have_text("up")
    flipped = page.evaluate("""() => {
      onEvent("backend", { at: Date.now() / 1000, backend: "default", up: false, error: "refused" });
      return document.querySelector('#backends tr[data-backend="default"]').textContent;
    }""")
    assert "down" in flipped and "refused" in flipped, flipped
    expect(backend.locator(".backend-up")).to_have_text("up")
    expect(page.locator("#events")).to_contain_text("backend default down refused")

    page.click("#pause")
    expect(page.locator("#resume")).to_be_visible()
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        answers = {
            rid: pool.submit(_send, proxy, rid, client, SMALL)
            for rid, client in (("ask-1", "alice"), ("ask-2", "bob"), ("ask-3", "carol"))
        }
        rows = page.locator("#queue tbody tr")
        expect(rows).to_have_count(3)  # the queue fills live, through the event stream
        expect(page.locator("#queue")).to_contain_text("fairness")
        page.locator("#queue tbody tr", has_text="ask-3").click()
        expect(page.locator("#detail")).to_be_visible()
        expect(page.locator("#detail-table")).to_contain_text("waiting")
        _shot(page, "dashboard-web-queue.png")

        page.locator("#queue tbody tr", has_text="ask-2").locator("button").click()
        cancelled = answers["ask-2"].result(timeout=30)
        assert cancelled.status_code == 503 and "administrator" in cancelled.json()["error"]
        expect(rows).to_have_count(2)
        # A failed action says why, and the refreshes that follow do not wipe it.
        page.evaluate("cancel('no-such-request')")
        expect(page.locator("#banner")).to_contain_text("could not cancel no-such-request")
        answers["ask-4"] = pool.submit(_send, proxy, "ask-4", "dave", SMALL)
        expect(rows).to_have_count(3)  # redrawn from a fresh snapshot...
        expect(page.locator("#banner")).to_contain_text("could not cancel")  # ...error kept

        page.click("#resume")  # the next action that succeeds clears it
        expect(page.locator("#banner")).to_be_hidden()
        assert all(answers[r].result(timeout=30).status_code == 200 for r in ("ask-1", "ask-3", "ask-4"))
    expect(page.locator("#queue tbody tr")).to_have_count(0)
    expect(page.locator("#recent")).to_contain_text("swap")  # SMALL pushed OTHER out
    expect(page.locator("#figure-list")).to_contain_text("cancelled")
    wait_until(lambda: len(httpx.get(proxy.url + "/proxy/overview", headers={"x-admin-key": KEY},
                                      timeout=10).json()["series"]) >= 3,
               within=10, what="a few heartbeats for the charts")
    _shot(page, "dashboard-web.png")

    proxy.policy_path.write_text("active = 'missing'\n", encoding="utf-8")
    page.click("#reload")
    expect(page.locator("#banner")).to_be_visible()
    expect(page.locator("#banner")).to_contain_text("policy reload failed")
    _shot(page, "dashboard-web-reload-error.png")

    page.click("#logout")
    expect(page.locator("#login")).to_be_visible()
    assert not errors, errors
