"""The journal on both databases: records round-trip, upsert by id, migrations, prompts, retention."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import msgspec
import psycopg
import pytest
from journal_fixtures import T0, Flaky, ids, rec, until

from schemas.journal import JournalRecord
from server.journal import migrations, open_journal, open_store, resolve
from server.journal.fallback import FallbackSpool
from server.journal.migrations import LATEST, Migration
from server.journal.records import COLUMN_NAMES, record_from_row

pytestmark = pytest.mark.anyio




async def read_all(dsn: str) -> dict[str, JournalRecord]:
    store = open_store(resolve(dsn))
    await store.open()
    try:
        rows = await store.fetch(COLUMN_NAMES, 0.0, 1e12)
    finally:
        await store.close()
    return {r.request_id: r for r in (record_from_row(COLUMN_NAMES, row) for row in rows)}


# -- round trip ------------------------------------------------------------------------------------


async def test_every_field_round_trips(journal_dsn: str, tmp_path: Path) -> None:
    """A record comes back from the database exactly as submitted (plus its revision)."""
    full = rec(
        "r1", ip="10.0.0.7", model="llama3:8b", request_class="interactive", policy_name="fast",
        policy_version="3", dispatched_at=T0 + 0.25, first_byte_at=T0 + 0.5, completed_at=T0 + 2.0,
        queue_wait_ms=250.0, duration_ms=2000.0, http_status=200, error=None, score=-12.5,
        score_terms={"vram": 100.0, "fairness": 10.0, "aging": -122.5}, rank=0, queue_depth=4,
        resident=True, prompt_eval_count=42, eval_count=310, total_duration=2_000_000_000,
        load_duration=1_000_000, prompt_eval_duration=50_000_000, eval_duration=1_900_000_000,
        prompt="why is the sky blue?\x00", response="Rayleigh scattering.", backend="gpu1",
    )
    journal = open_journal(journal_dsn, store_prompts="full", fallback_dir=tmp_path / "fb")
    await journal.start()
    journal.submit(full)
    journal.submit(rec("r2", status="rejected", http_status=429, error="queue full", resident=False))
    await journal.stop()

    found = await read_all(journal_dsn)
    assert set(found) == {"r1", "r2"}
    # NUL cannot live in PostgreSQL text; both backends store the same replacement.
    expected = msgspec.structs.replace(full, prompt="why is the sky blue?\ufffd", revision=found["r1"].revision)
    assert found["r1"] == expected
    assert found["r2"].resident is False and found["r2"].error == "queue full"
    assert (found["r1"].backend, found["r2"].backend) == ("gpu1", None)
    assert found["r1"].revision > 0


@pytest.mark.parametrize(
    ("setting", "prompt", "response"),
    [
        ("full", "hello", "world"),
        ("hash", "sha256:" + hashlib.sha256(b"hello").hexdigest(), "sha256:" + hashlib.sha256(b"world").hexdigest()),
        ("none", None, None),
    ],
)
async def test_store_prompts_setting(journal_dsn: str, tmp_path: Path, setting: Any, prompt: Any, response: Any) -> None:
    """journal.store_prompts decides whether text, its SHA-256, or nothing reaches the database."""
    journal = open_journal(journal_dsn, store_prompts=setting, fallback_dir=tmp_path / "fb")
    await journal.start()
    journal.submit(rec("p1", prompt="hello", response="world"))
    await journal.stop()
    found = (await read_all(journal_dsn))["p1"]
    assert (found.prompt, found.response) == (prompt, response)


async def test_derived_timings_when_server_leaves_them_out(journal_dsn: str, tmp_path: Path) -> None:
    """queue_wait_ms and duration_ms are filled from the timestamps when not given."""
    journal = open_journal(journal_dsn, fallback_dir=tmp_path / "fb")
    await journal.start()
    journal.submit(rec("t1", dispatched_at=T0 + 1.5, completed_at=T0 + 4.0))
    await journal.stop()
    found = (await read_all(journal_dsn))["t1"]
    assert (found.queue_wait_ms, found.duration_ms) == (1500.0, 4000.0)


# -- upsert by request id --------------------------------------------------------------------------


async def test_later_submission_wins(journal_dsn: str, tmp_path: Path) -> None:
    """A request journalled twice is one row holding the later state."""
    journal = open_journal(journal_dsn, fallback_dir=tmp_path / "fb")
    await journal.start()
    journal.submit(rec("u1", status="failed", error="interim"))
    await journal.flush()
    journal.submit(rec("u1", status="completed", eval_count=7))
    await journal.stop()
    found = await read_all(journal_dsn)
    assert list(found) == ["u1"]
    assert (found["u1"].status, found["u1"].error, found["u1"].eval_count) == ("completed", None, 7)


async def test_older_revision_never_overwrites_newer(journal_dsn: str) -> None:
    """A stale copy arriving late (a fallback replay) leaves the newer row alone."""
    store = open_store(resolve(journal_dsn))
    await store.open()
    try:
        await store.migrate()
        await store.upsert([rec("v1", status="completed", revision=20)])
        await store.upsert([rec("v1", status="failed", revision=10)])
        await store.upsert([rec("v2", status="failed", revision=10)])
        await store.upsert([rec("v2", status="completed", revision=20)])
        assert await store.count() == 2
    finally:
        await store.close()
    found = await read_all(journal_dsn)
    assert (found["v1"].status, found["v2"].status) == ("completed", "completed")


# -- migrations and retention ----------------------------------------------------------------------


async def test_migrations_are_versioned_and_idempotent(journal_dsn: str) -> None:
    """migrate() applies each version once; the table has exactly the record's columns."""
    store = open_store(resolve(journal_dsn))
    await store.open()
    try:
        assert await store.applied() == []
        assert await store.migrate() == list(range(1, LATEST + 1))
        assert await store.migrate() == []
        assert [m.version for m in await store.applied()] == list(range(1, LATEST + 1))
        # Selecting every column proves the table and the schema agree on names.
        assert await store.fetch(COLUMN_NAMES, 0.0, 1.0) == []
    finally:
        await store.close()


async def test_purge_removes_only_old_records(journal_dsn: str, tmp_path: Path) -> None:
    """Retention deletes records received before the cut-off and nothing else."""
    journal = open_journal(journal_dsn, retention_seconds=86400, fallback_dir=tmp_path / "fb")
    await journal.start()
    for i in range(3):
        journal.submit(rec(f"old{i}", received_at=T0 - 10 * 86400))
    journal.submit(rec("new", received_at=T0))
    await journal.flush()
    assert await journal.purge(T0 - 86400) == 3
    await journal.stop()
    assert list(await read_all(journal_dsn)) == ["new"]


def test_bad_dsn_is_a_clear_error() -> None:
    """An unknown scheme names the DSN and what to write instead."""
    with pytest.raises(ValueError, match=r"unknown scheme 'mysql'.*postgresql://"):
        open_journal("mysql://localhost/db")


async def test_migrations_over_a_v2_database_apply_once(journal_dsn: str) -> None:
    """A database created at v2 (before client_request_id, the num_ctx columns, instance and
    backend) migrates to the latest, and again is a no-op."""
    store = open_store(resolve(journal_dsn))
    await store.open()
    try:
        with mock.patch.object(migrations, "MIGRATIONS", migrations.MIGRATIONS[:2]):
            assert await store.migrate() == [1, 2]
        assert await store.migrate() == [3, 4, 5, 6]
        assert await store.migrate() == []
        await store.upsert([rec(1, client_request_id="mine", num_ctx=2048, num_ctx_forwarded=8192,
                                instance="gpu-0", backend="gpu1")])
        assert await store.fetch(("client_request_id", "num_ctx", "num_ctx_forwarded", "instance",
                                  "backend"), 0.0, 1e12) == [("mine", 2048, 8192, "gpu-0", "gpu1")]
    finally:
        await store.close()


async def _sql(dsn: str, statement: str) -> list[tuple[Any, ...]]:
    """One statement straight to the database, past the store: what an older sidecar wrote."""
    target = resolve(dsn)
    if target.kind == "sqlite":
        with sqlite3.connect(target.location) as conn:
            return conn.execute(statement).fetchall()
    async with await psycopg.AsyncConnection.connect(target.location, autocommit=True) as conn:
        cur = await conn.execute(statement)
        return await cur.fetchall() if cur.description else []


async def test_a_v5_database_gains_the_backend_column_and_keeps_its_rows(journal_dsn: str) -> None:
    """A journal a v5 sidecar wrote (no backend column) migrates to v6 once: its rows read back
    with no backend, new rows keep theirs and filter by it, and the filter's index is there."""
    store = open_store(resolve(journal_dsn))
    await store.open()
    try:
        with mock.patch.object(migrations, "MIGRATIONS", migrations.MIGRATIONS[:5]):
            assert await store.migrate() == [1, 2, 3, 4, 5]
        await _sql(journal_dsn, "INSERT INTO requests (request_id, client, endpoint, received_at, "
                   f"status, revision, instance) VALUES ('old', 'c', '/api/chat', {T0}, 'completed', 1, 'h')")
        assert await store.migrate() == [6]
        assert await store.migrate() == []
        assert [m.version for m in await store.applied()] == [1, 2, 3, 4, 5, 6]
        await store.upsert([rec(1, backend="gpu0"), rec(2, backend="gpu1")])
        assert sorted(await store.fetch(("request_id", "backend"), 0.0, 1e12)) == [
            ("old", None), ("r1", "gpu0"), ("r2", "gpu1")]
        assert await store.fetch(("request_id",), 0.0, 1e12, backend="gpu1") == [("r2",)]
        assert (await store.get("old")) == JournalRecord(
            request_id="old", client="c", endpoint="/api/chat", received_at=T0, status="completed",
            revision=1, instance="h")
        index = ("SELECT name FROM sqlite_master WHERE type = 'index'" if store.dialect == "sqlite"
                 else "SELECT indexname FROM pg_indexes WHERE tablename = 'requests'")
        assert ("ix_requests_backend_received",) in await _sql(journal_dsn, index)
    finally:
        await store.close()


async def test_a_migration_interrupted_midway_is_rolled_back_whole(journal_dsn: str) -> None:
    """A migration that fails after its ALTER TABLE (a crash, a lock, a full disk) leaves nothing
    behind, so the next start applies it cleanly instead of failing on 'duplicate column' forever."""
    store = open_store(resolve(journal_dsn))
    await store.open()
    try:
        with mock.patch.object(migrations, "MIGRATIONS", migrations.MIGRATIONS[:2]):
            await store.migrate()
        v3 = migrations.MIGRATIONS[2]
        broken = (*migrations.MIGRATIONS[:2],
                  Migration(3, v3.name, (*v3.statements, "CREATE INDEX ix_broken ON no_such_table (x)")))
        with mock.patch.object(migrations, "MIGRATIONS", broken), pytest.raises(Exception):  # noqa: B017
            await store.migrate()
        assert [m.version for m in await store.applied()] == [1, 2]
        assert await store.migrate() == [3, 4, 5, 6]
        assert [m.version for m in await store.applied()] == list(range(1, LATEST + 1))
    finally:
        await store.close()


class HeldUpserts(Flaky):
    """A real store whose upserts wait for the test (a busy database): `entered` once one is
    waiting, and all of them go on once `release` is set."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.entered, self.release = asyncio.Event(), asyncio.Event()

    async def upsert(self, records: Sequence[JournalRecord]) -> None:
        self.entered.set()
        await self.release.wait()
        await self.inner.upsert(records)


async def test_records_submitted_while_stopping_never_touch_the_disk_on_the_loop(
    journal_dsn: str, tmp_path: Path
) -> None:
    """In-flight requests finish while stop() drains the writer: their records must not be
    written (and fsynced) to the fallback file on the event loop, and all reach the database."""
    from server.journal.journal import Journal

    store = HeldUpserts(open_store(resolve(journal_dsn)))
    spool = FallbackSpool(tmp_path / "fb")
    loop_thread = threading.get_ident()
    on_loop: list[int] = []
    original = spool.append

    def append(records: Sequence[JournalRecord]) -> None:
        if threading.get_ident() == loop_thread:
            on_loop.append(len(records))
        original(records)

    spool.append = append  # type: ignore[method-assign]
    journal = Journal(store, spool)
    await journal.start()
    journal.submit(rec(0))
    await store.entered.wait()  # the writer is inside its upsert
    stopping = asyncio.create_task(journal.stop())
    await until(lambda: journal.health()["state"] == "stopping", what="stop() begun")
    for i in range(1, 6):
        journal.submit(rec(i))
    store.release.set()
    await stopping
    assert on_loop == []
    assert await ids(journal_dsn) == [f"r{i}" for i in range(6)]


@pytest.mark.parametrize(("first", "then", "expected"), [("full", "none", None), ("hash", "full", "sha256:")])
async def test_store_prompts_reload_reaches_waiting_records(
    journal_dsn: str, tmp_path: Path, first: Any, then: Any, expected: str | None
) -> None:
    """A record waiting for the writer when a reload changes `store_prompts` is written under the
    stricter of the two settings — applied as the writer takes it, not by re-stamping the queue."""
    from policy.load import JournalSettings

    journal = open_journal(journal_dsn, store_prompts=first, fallback_dir=tmp_path / "fb")
    journal.submit(rec("w1", prompt="secret", response="answer"))  # waits: no writer yet
    journal.configure(JournalSettings(store_prompts=then, retention=0))
    await journal.start()
    await journal.stop()
    found = (await read_all(journal_dsn))["w1"]
    if expected is None:
        assert (found.prompt, found.response) == (None, None)
    else:
        assert found.prompt is not None and found.prompt.startswith(expected)
        assert "secret" not in found.prompt


def test_a_prompt_that_only_looks_hashed_is_still_hashed() -> None:
    from server.journal.records import Stamper

    stamper = Stamper("hash")
    text = "sha256: my password is hunter2"
    digest = "sha256:" + hashlib.sha256(b"x").hexdigest()
    stamped = stamper.prepare(rec("h1", prompt=text, response=digest))
    assert stamped.prompt is not None and "hunter2" not in stamped.prompt
    assert stamped.response == digest  # a real digest is not hashed twice
