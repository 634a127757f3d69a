"""Several sidecars, one PostgreSQL journal (one sidecar per GPU server, as docs/many-hosts.md
describes): each record carries the instance that wrote it, analytics group and filter by it, and
an outage of the shared database loses and doubles nothing from either sidecar.

Real parts: two sidecars under Hypercorn in front of the emulator, a real PostgreSQL stopped and
started under them, and each sidecar's own fallback directory."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from pg_fixtures import PgServer
from sidecar_fixtures import RunningSidecar, SidecarFactory, cli_process, wait_until

from server.journal import open_journal, open_store, resolve

BODY = {"model": "llama3.2:1b", "prompt": "hi", "stream": False}
EXAMPLE = Path(__file__).resolve().parent.parent / "policies.example.toml"


def _journal(dsn: str, fallback: Path, instance: str) -> Any:
    def make(compiled: Any) -> Any:
        return open_journal(dsn, fallback_dir=fallback, instance=instance, store_timeout=0.3,
                            retry_initial=0.05, retry_max=0.5)

    return make


def _send(proxy: RunningSidecar, n: int) -> list[str]:
    """n requests; the ids the sidecar answered with (its own: the journal's keys)."""
    ids = []
    for _ in range(n):
        response = httpx.post(proxy.url + "/api/generate", json=BODY, timeout=30)
        assert response.status_code == 200, response.text
        ids.append(response.headers["x-request-id"])
    return ids


def _journal_health(proxy: RunningSidecar) -> dict[str, Any]:
    health: dict[str, Any] = proxy.admin("GET", "/proxy/journal").json()
    return health


def _drained(proxy: RunningSidecar) -> bool:
    h = _journal_health(proxy)
    return bool(h["connected"] and h["fallback_lines"] == 0 and h["pending"] == 0)


@pytest.mark.postgres
def test_two_sidecars_share_one_postgres_journal_through_its_outage(
    pg_server_running: PgServer, sidecar_factory: SidecarFactory, ollama_emulator: Any, tmp_path: Path
) -> None:
    dsn = pg_server_running.new_database()
    sidecars = {
        name: sidecar_factory(upstream=ollama_emulator.url,
                              journal=_journal(dsn, tmp_path / f"fallback-{name}", name))
        for name in ("gpu-a", "gpu-b")
    }
    for proxy in sidecars.values():
        proxy.wait_for(lambda h: h["upstream"]["up"])
    assert {name: _journal_health(p)["instance"] for name, p in sidecars.items()} == {
        "gpu-a": "gpu-a", "gpu-b": "gpu-b"}
    sent: dict[str, list[str]] = {name: _send(p, 10) for name, p in sidecars.items()}

    pg_server_running.stop()  # both sidecars keep serving; their records go to their fallback files
    for name, proxy in sidecars.items():
        sent[name] += _send(proxy, 10)
    for proxy in sidecars.values():  # the writer gives up on the dead database within 0.3 s
        wait_until(lambda p=proxy: _journal_health(p)["fallback_lines"] > 0, within=10,
                   what="the outage sent records to the fallback file")
    pg_server_running.start()
    for name, proxy in sidecars.items():
        sent[name] += _send(proxy, 10)

    wait_until(lambda: all(_drained(p) for p in sidecars.values()), within=60,
               what="both sidecars' fallback files replayed")
    for proxy in sidecars.values():
        assert _journal_health(proxy)["replayed"] > 0

    async def rows() -> list[tuple[Any, ...]]:
        store = open_store(resolve(dsn))
        await store.open()
        try:
            return await store.fetch(("request_id", "instance", "status"), 0.0, 1e12)
        finally:
            await store.close()

    found = asyncio.run(rows())
    ids = [r[0] for r in found]
    assert len(ids) == len(set(ids)) == 60, "every request of both sidecars exactly once"
    for name in sidecars:
        assert sorted(r[0] for r in found if r[1] == name) == sorted(sent[name])
    assert {r[2] for r in found} == {"completed"}

    # Analytics from either sidecar see the whole journal, grouped or filtered by instance.
    a = sidecars["gpu-a"]
    grouped = a.admin("GET", "/proxy/analytics?hours=1&group_by=instance").json()
    assert {row["key"]: row["requests"] for row in grouped["groups"]["rows"]} == {"gpu-a": 30, "gpu-b": 30}
    only_b = a.admin("GET", "/proxy/analytics?hours=1&instance=gpu-b").json()
    assert only_b["totals"]["requests"] == 30 and only_b["window"]["instance"] == "gpu-b"
    bad = a.admin("GET", "/proxy/analytics?instance=not%20a%20name")
    assert bad.status_code == 400 and "instance" in bad.json()["error"]


def test_a_sidecar_named_from_the_environment_serves_and_journals_under_that_name(
    ollama_emulator: Any, tmp_path: Path
) -> None:
    """SMART_PROXY_INSTANCE, as the Kubernetes example sets it from the pod's name: the whole
    path, from the variable through the CLI to a record and /proxy/journal, in a process."""
    env = {**os.environ, "SMART_PROXY_INSTANCE": "ollama-pool-0", "SMART_PROXY_DB": str(tmp_path / "j.db")}
    args = ["serve", "--policy", str(EXAMPLE), "--upstream", ollama_emulator.url, "--host", "127.0.0.1",
            "--port", "0", "--log-format", "json"]
    with cli_process(args, env) as process:
        assert process.stderr is not None
        url = next(line.split()[3] for line in process.stderr
                   if line.startswith("smart-proxy listening on "))
        response = httpx.post(url + "/api/generate", json=BODY, timeout=30)
        assert response.status_code == 200, response.text
        journal = httpx.get(url + "/proxy/journal", timeout=10)
        assert journal.status_code == 200 and journal.json()["instance"] == "ollama-pool-0"
        rid = response.headers["x-request-id"]

        def record() -> dict[str, Any] | None:
            found: dict[str, Any] | None = httpx.get(f"{url}/proxy/requests/{rid}", timeout=10).json().get("record")
            return found

        wait_until(lambda: (record() or {}).get("status") == "completed", within=10, what="the request's record")
        assert (record() or {})["instance"] == "ollama-pool-0"
