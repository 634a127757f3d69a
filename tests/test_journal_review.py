"""Review findings: each test pins a journal defect that was fixed (both databases where it applies)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import msgspec
import pytest
from test_journal_fallback import Flaky

from schemas.journal import JournalRecord
from server.journal import migrations, open_journal, open_store, resolve
from server.journal.fallback import FallbackSpool
from server.journal.migrations import LATEST, Migration

pytestmark = pytest.mark.anyio

T0 = 1_767_225_600.0


def rec(i: int, **fields: Any) -> JournalRecord:
    base: dict[str, Any] = {"request_id": f"r{i}", "client": "c", "endpoint": "/api/chat",
                            "received_at": T0 + i, "status": "completed"}
    return JournalRecord(**(base | fields))


async def ids(dsn: str) -> list[str]:
    store = open_store(resolve(dsn))
    await store.open()
    try:
        return sorted(r[0] for r in await store.fetch(("request_id",), 0.0, 1e12))
    finally:
        await store.close()


async def test_counter_too_big_for_bigint_is_moved_aside_not_a_dead_writer(journal_dsn: str, tmp_path: Path) -> None:
    """Ollama's counters are unbounded in the schema; one beyond BIGINT is refused by both databases
    alike (moved to .bad) and the writer carries on with every other record."""
    fallback = tmp_path / "fb"
    journal = open_journal(journal_dsn, fallback_dir=fallback, retry_initial=0.02)
    await journal.start()
    journal.submit(rec(0))
    journal.submit(rec(1, eval_count=2**63))
    journal.submit(rec(2))
    await asyncio.wait_for(journal.flush(), 5)
    journal.submit(rec(3))
    await asyncio.wait_for(journal.flush(), 5)
    for _ in range(500):
        if journal.health()["fallback_lines"] == 0:
            break
        await asyncio.sleep(0.01)
    health = journal.health()
    await journal.stop()
    assert await ids(journal_dsn) == ["r0", "r2", "r3"]
    assert health["quarantined_lines"] == 1 and len(health["bad_files"]) == 1


async def test_migration_3_over_a_v2_database_applies_once(journal_dsn: str) -> None:
    """A database created at v2 (before client_request_id) migrates to the latest, and again is a no-op."""
    store = open_store(resolve(journal_dsn))
    await store.open()
    try:
        with mock.patch.object(migrations, "MIGRATIONS", migrations.MIGRATIONS[:2]):
            assert await store.migrate() == [1, 2]
        assert await store.migrate() == [3]
        assert await store.migrate() == []
        await store.upsert([rec(1, client_request_id="mine")])
        assert await store.fetch(("client_request_id",), 0.0, 1e12) == [("mine",)]
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
        assert await store.migrate() == [3]
        assert [m.version for m in await store.applied()] == list(range(1, LATEST + 1))
    finally:
        await store.close()


class SlowUpserts(Flaky):
    """A real store whose every upsert takes a while (a busy database)."""

    async def upsert(self, records: Sequence[JournalRecord]) -> None:
        await asyncio.sleep(0.2)
        await self.inner.upsert(records)


async def test_records_submitted_while_stopping_never_touch_the_disk_on_the_loop(
    journal_dsn: str, tmp_path: Path
) -> None:
    """In-flight requests finish while stop() drains the writer: their records must not be
    written (and fsynced) to the fallback file on the event loop, and all reach the database."""
    from server.journal.journal import Journal

    store = SlowUpserts(open_store(resolve(journal_dsn)))
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
    await asyncio.sleep(0.05)  # the writer is inside its slow upsert
    stopping = asyncio.create_task(journal.stop())
    await asyncio.sleep(0.05)
    assert journal.health()["state"] == "stopping"
    for i in range(1, 6):
        journal.submit(rec(i))
    await stopping
    assert on_loop == []
    assert await ids(journal_dsn) == [f"r{i}" for i in range(6)]


async def test_an_unreadable_fallback_file_does_not_block_the_others(journal_dsn: str, tmp_path: Path) -> None:
    """A fallback entry that cannot be read (permissions, a directory by that name) is reported and
    left; the files after it still replay."""
    from server.journal.replay import replay_all

    spool = FallbackSpool(tmp_path)
    spool.append([rec(1), rec(2)])
    spool.close()
    (tmp_path / "journal-0-unreadable.jsonl").mkdir()  # sorts first
    store = open_store(resolve(journal_dsn))
    await store.open()
    try:
        await store.migrate()
        report = await replay_all(store, FallbackSpool(tmp_path))
        assert (report.files, report.records) == (1, 2)
        assert any("journal-0-unreadable.jsonl" in p for p in report.problems)
    finally:
        await store.close()
    assert await ids(journal_dsn) == ["r1", "r2"]


def test_backfill_with_an_unreadable_file_is_a_message_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from test_journal_cli import run

    (tmp_path / "fb" / "journal-0.jsonl").mkdir(parents=True)
    code = run("db", "backfill", "--db", f"sqlite:///{tmp_path / 'd.db'}", "--fallback-dir", str(tmp_path / "fb"))
    err = capsys.readouterr().err
    assert code == 1 and "journal-0.jsonl" in err and "Traceback" not in err


async def test_a_new_fallback_file_never_appends_to_a_crashed_ones_cut_line(journal_dsn: str, tmp_path: Path) -> None:
    """A restarted process can get the same pid within the same second (pid 1 in a container):
    its new file must not continue the old file's truncated last line, or the first new record is lost."""
    import itertools
    import os

    from server.journal import fallback

    stale = tmp_path / f"journal-20260101T000000-{os.getpid()}-0000.jsonl"
    stale.write_bytes(b'{"request_id": "cut-by-kill-9", "cli')
    with mock.patch.object(fallback, "_serial", itertools.count()), \
            mock.patch.object(fallback.time, "strftime", return_value="20260101T000000"):
        spool = FallbackSpool(tmp_path)
        spool.append([rec(1), rec(2)])
        spool.close()
    store = open_store(resolve(journal_dsn))
    await store.open()
    try:
        await store.migrate()
        from server.journal.replay import replay_all

        report = await replay_all(store, FallbackSpool(tmp_path))
    finally:
        await store.close()
    assert await ids(journal_dsn) == ["r1", "r2"]
    assert report.bad_lines == 1


async def test_a_long_outage_spools_into_bounded_files(journal_dsn: str, tmp_path: Path) -> None:
    """Replay reads a fallback file whole, so one file per outage would make recovery memory grow
    with the outage's length; files are rotated by size and all of them replay."""
    from server.journal.replay import replay_all

    spool = FallbackSpool(tmp_path, max_bytes=4000)
    for start in range(0, 100, 5):
        spool.append([rec(i) for i in range(start, start + 5)])
    spool.close()
    sizes = [p.stat().st_size for p in spool.files()]
    one_batch = sum(len(msgspec.json.encode(rec(i))) + 1 for i in range(95, 100))
    assert len(sizes) > 1 and max(sizes) < 4000 + one_batch
    store = open_store(resolve(journal_dsn))
    await store.open()
    try:
        await store.migrate()
        report = await replay_all(store, FallbackSpool(tmp_path))
        assert (report.files, report.records) == (len(sizes), 100)
    finally:
        await store.close()
    assert len(await ids(journal_dsn)) == 100


@pytest.mark.postgres
async def test_a_postgres_write_blocked_on_a_lock_goes_to_the_fallback_within_store_timeout(
    pg_server: Any, tmp_path: Path
) -> None:
    """store_timeout bounds a write, not only the pool checkout: a table lock held elsewhere (an
    operator's transaction, a VACUUM FULL) must not hang the writer — and with it flush() and stop()."""
    import psycopg

    dsn = pg_server.new_database()
    journal = open_journal(dsn, fallback_dir=tmp_path / "fb", store_timeout=0.5, retry_initial=0.05)
    await journal.start()
    blocker = await psycopg.AsyncConnection.connect(dsn)
    try:
        await blocker.execute("LOCK TABLE requests IN ACCESS EXCLUSIVE MODE")
        journal.submit(rec(1))
        await asyncio.wait_for(journal.flush(), 3.0)
        assert journal.health()["fallback_lines"] >= 1
    finally:
        await blocker.rollback()
        await blocker.close()
    for _ in range(300):
        h = journal.health()
        if h["connected"] and h["fallback_lines"] == 0:
            break
        await asyncio.sleep(0.01)
    await asyncio.wait_for(journal.stop(), 5.0)
    assert await ids(dsn) == ["r1"]


@pytest.mark.postgres
async def test_stop_does_not_wait_for_a_retention_purge_stuck_on_a_lock(pg_server: Any, tmp_path: Path) -> None:
    """The purge deletes nothing anyone waits for: stop() ends it rather than hanging behind it."""
    import psycopg

    dsn = pg_server.new_database()
    journal = open_journal(dsn, fallback_dir=tmp_path / "fb", retention_seconds=60, purge_interval=0.05)
    await journal.start()
    blocker = await psycopg.AsyncConnection.connect(dsn)
    try:
        await blocker.execute("LOCK TABLE requests IN ACCESS EXCLUSIVE MODE")
        await asyncio.sleep(0.2)  # the purge is now waiting for the lock
        await asyncio.wait_for(journal.stop(), 3.0)
    finally:
        await blocker.rollback()
        await blocker.close()


@pytest.mark.parametrize("value", ["inf", "nan", "0", "-1"])
def test_cli_timeout_must_be_a_positive_number(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    """--timeout inf waited forever for an unreachable PostgreSQL; nan/0/-1 made no sense either."""
    from test_journal_cli import run

    with pytest.raises(SystemExit) as info:
        run("db", "status", "--db", "postgresql://nobody@127.0.0.1:1/x", "--timeout", value)
    assert info.value.code == 2
    assert "--timeout" in capsys.readouterr().err
