"""A reload applies every key of the file, at once, end to end: the journal's privacy and retention
settings, the limits and the backend's timeouts. Each case edits one key of a running sidecar,
reloads through the admin endpoint, and checks the next request sees the new value."""

from __future__ import annotations

import concurrent.futures
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sidecar_fixtures import RunningSidecar, SidecarFactory, make_policy, wait_until

MODEL = "llama3.2:1b"


def edit(proxy: RunningSidecar, text: str) -> None:
    partial = proxy.policy_path.with_suffix(".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, proxy.policy_path)


def reload_to(proxy: RunningSidecar, text: str) -> None:
    edit(proxy, text)
    reply = proxy.admin("POST", "/proxy/policy/reload")
    assert reply.status_code == 200 and reply.json()["changed"], reply.text


def generate(proxy: RunningSidecar, prompt: str = "hi", **headers: str) -> httpx.Response:
    body = {"model": MODEL, "prompt": prompt, "stream": False}
    return httpx.post(proxy.url + "/api/generate", json=body, headers=headers, timeout=30)


# -- [journal] ------------------------------------------------------------------------------------


def sqlite_journal(path: Path) -> Callable[[Any], Any]:
    from server.journal import open_journal

    def make(compiled: Any) -> Any:
        return open_journal(
            str(path), store_prompts=compiled.journal.store_prompts,
            retention_seconds=compiled.journal.retention, fallback_dir=path.parent / "fallback",
        )

    return make


def stored_prompt(db: Path, request_id: str) -> tuple[bool, str | None]:
    """(whether the record is in the database yet, its prompt column)."""
    with sqlite3.connect(db) as conn:
        row = conn.execute(
            "SELECT prompt FROM requests WHERE request_id = ? OR client_request_id = ?",
            [request_id, request_id],
        ).fetchone()
    return (row is not None, row[0] if row else None)


def prompt_of(db: Path, request_id: str) -> str | None:
    wait_until(lambda: stored_prompt(db, request_id)[0], within=10, what=f"{request_id} journaled")
    return stored_prompt(db, request_id)[1]


def test_store_prompts_applies_from_the_next_request(
    sidecar_factory: SidecarFactory, ollama_emulator: Any, tmp_path: Path
) -> None:
    """Full → hash → none: a privacy setting that answered "reloaded" applies, without a restart."""
    db = tmp_path / "journal.db"
    policy = make_policy(extra='[journal]\nstore_prompts = "full"\n')
    proxy = sidecar_factory(upstream=ollama_emulator.url, policy=policy, journal=sqlite_journal(db),
                            watch_interval=3600)
    assert generate(proxy, "secret one", **{"x-request-id": "one"}).status_code == 200
    assert prompt_of(db, "one") == "secret one"
    reload_to(proxy, policy.replace('"full"', '"hash"'))
    assert generate(proxy, "secret two", **{"x-request-id": "two"}).status_code == 200
    hashed = prompt_of(db, "two")
    assert hashed is not None and hashed.startswith("sha256:") and "secret" not in hashed
    reload_to(proxy, policy.replace('"full"', '"none"'))
    assert generate(proxy, "secret three", **{"x-request-id": "three"}).status_code == 200
    assert prompt_of(db, "three") is None


def test_a_shorter_retention_is_purged_at_once(
    sidecar_factory: SidecarFactory, ollama_emulator: Any, tmp_path: Path
) -> None:
    """Retention 30d → 1d: a two-day-old record goes now, not at the next hourly pass (and never,
    before this was fixed, until a restart); today's stays."""
    db = tmp_path / "journal.db"
    policy = make_policy(extra='[journal]\nretention = "30d"\n')
    proxy = sidecar_factory(upstream=ollama_emulator.url, policy=policy, journal=sqlite_journal(db),
                            watch_interval=3600)
    assert generate(proxy, **{"x-request-id": "today"}).status_code == 200
    prompt_of(db, "today")  # written, so the schema is there
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO requests (request_id, client, endpoint, received_at, status, revision)"
            " VALUES ('two-days-old', 'alice', '/api/generate', ?, 'completed', 1)",
            [time.time() - 2 * 86400],
        )
    reload_to(proxy, policy.replace('"30d"', '"1d"'))

    def ids() -> list[str]:
        with sqlite3.connect(db) as conn:
            return [r[0] for r in conn.execute("SELECT coalesce(client_request_id, request_id) FROM requests")]

    wait_until(lambda: ids() == ["today"], within=10, what="the two-day-old record purged")


# -- [limits] and [backend] -------------------------------------------------------------------------


LIMITS: dict[str, tuple[str, int]] = {
    # edit appended to the file -> what the second request of one client gets while the first waits
    "max_queue": ("[limits]\nmax_queue = 1\nmax_queued_per_client = 1\n", 503),
    "max_queued_per_client": ("[limits]\nmax_queued_per_client = 1\n", 429),
    "rate window": ('[limits.rate.burst]\nwindow = "1m"\nmax_requests = 1\n', 429),
}


@pytest.mark.parametrize("key", list(LIMITS))
def test_a_limit_applies_from_the_next_request(
    key: str, sidecar_factory: SidecarFactory, ollama_emulator: Any
) -> None:
    extra, status = LIMITS[key]
    proxy = sidecar_factory(upstream=ollama_emulator.url, policy=make_policy(), watch_interval=3600)
    proxy.admin("POST", "/proxy/pause")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        first = pool.submit(generate, proxy)
        proxy.wait_depth(1)
        reload_to(proxy, make_policy(extra=extra))
        second = generate(proxy)
        assert second.status_code == status, second.text
        proxy.admin("POST", "/proxy/resume")
        assert first.result(timeout=30).status_code == 200


def test_max_body_applies_from_the_next_request(
    sidecar_factory: SidecarFactory, ollama_emulator: Any
) -> None:
    proxy = sidecar_factory(upstream=ollama_emulator.url, policy=make_policy(), watch_interval=3600)
    assert generate(proxy, "x" * 500).status_code == 200
    reload_to(proxy, make_policy(extra="[limits]\nmax_body = 200\n"))
    assert generate(proxy, "x" * 500).status_code == 413


def test_queue_timeout_applies_to_requests_admitted_after_the_reload(
    sidecar_factory: SidecarFactory, ollama_emulator: Any
) -> None:
    """One snapshot per request: the timeout a request waits under is that of the file it was
    admitted by — a reload does not shorten the wait of a request already queued."""
    proxy = sidecar_factory(upstream=ollama_emulator.url, policy=make_policy(queue_timeout="30s"),
                            watch_interval=3600)
    proxy.admin("POST", "/proxy/pause")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        before = pool.submit(generate, proxy)
        proxy.wait_depth(1)
        reload_to(proxy, make_policy(queue_timeout="300ms"))
        after = generate(proxy)
        assert after.status_code == 504 and "queue timeout (0.3s)" in after.text
        assert not before.done()  # still waiting under its own 30 s
        proxy.admin("POST", "/proxy/resume")
        assert before.result(timeout=30).status_code == 200


def test_max_parallel_is_read_from_the_file_in_force(
    sidecar_factory: SidecarFactory, ollama_emulator: Any
) -> None:
    proxy = sidecar_factory(upstream=ollama_emulator.url, policy=make_policy(max_parallel=1),
                            watch_interval=3600)
    assert proxy.health()["max_parallel"] == 1
    reload_to(proxy, make_policy(max_parallel=3))
    assert proxy.health()["max_parallel"] == 3
    assert proxy.queue()["max_parallel"] == 3
