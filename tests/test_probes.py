"""`/livez` and `/readyz` as a kubelet sees them: Kubernetes' plain-text format, 200 or 503, each
check listed with `?verbose`; ready only while Ollama answers, the journal has a place to write
and the sidecar is not draining; alive whatever Ollama does."""

from __future__ import annotations

import socket
from typing import Any

import httpx
from sidecar_fixtures import SidecarFactory, wait_until

from server.admin.probes import journal_ok


def _probe(url: str, verbose: bool = True) -> tuple[int, list[str]]:
    answer = httpx.get(url + ("?verbose" if verbose else ""), timeout=10)
    assert answer.headers["content-type"].startswith("text/plain")
    return answer.status_code, answer.text.splitlines()


def test_ready_while_ollama_answers_alive_regardless(
    sidecar_factory: SidecarFactory, ollama_emulator: Any
) -> None:
    proxy = sidecar_factory(upstream=ollama_emulator.url)
    wait_until(lambda: _probe(proxy.url + "/readyz")[0] == 200, within=10, what="ready")
    assert _probe(proxy.url + "/readyz") == (200, [
        "[+]policy ok", "[+]journal ok", "[+]upstream ok", "[+]shutdown ok", "readyz check passed",
    ])
    assert _probe(proxy.url + "/readyz", verbose=False) == (200, ["readyz check passed"])
    assert _probe(proxy.url + "/livez") == (200, ["[+]ping ok", "[+]shutdown ok", "livez check passed"])
    bad = httpx.get(proxy.url + "/readyz?verbos=1", timeout=10)
    assert bad.status_code == 400 and "verbose" in bad.json()["error"]


def test_not_ready_without_ollama_but_still_alive(sidecar_factory: SidecarFactory) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    proxy = sidecar_factory(upstream=dead)
    status, lines = _probe(proxy.url + "/readyz")
    assert status == 503 and "[-]upstream failed: reason withheld" in lines
    assert lines[-1] == "readyz check failed" and dead not in "\n".join(lines)  # nothing leaks
    assert _probe(proxy.url + "/livez")[0] == 200


def test_draining_fails_both(sidecar_factory: SidecarFactory, ollama_emulator: Any) -> None:
    proxy = sidecar_factory(upstream=ollama_emulator.url)
    proxy.call(proxy.sidecar.begin_shutdown)
    status, lines = _probe(proxy.url + "/livez")
    assert status == 503 and "[-]shutdown failed: reason withheld" in lines
    assert _probe(proxy.url + "/readyz")[0] == 503


def test_the_journal_check() -> None:
    assert journal_ok({"backend": "none"})
    assert journal_ok({"backend": "sqlite", "state": "running", "connected": True})
    # The database is down: records go to the fallback file, which still takes them.
    assert journal_ok({"backend": "postgresql", "state": "running", "connected": False,
                       "fallback_writable": True, "last_error": "postgresql: connection refused"})
    assert not journal_ok({"backend": "postgresql", "state": "running", "connected": False,
                           "fallback_writable": False, "last_error": "postgresql: connection refused"})
    assert not journal_ok({"backend": "sqlite", "state": "stopped", "connected": False})
