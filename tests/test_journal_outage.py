"""Database outages at the journal level: nothing lost, nothing duplicated, submit() never stalls.

PostgreSQL is really stopped and restarted under a steady stream; SQLite is really locked by another
connection. Every request is journalled twice (an interim state, then its final one) so the test
also proves the final state wins however the two copies travel (direct, fallback file, or both).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from journal_fixtures import T0, ids, rec, until
from pg_fixtures import PgServer

from schemas.journal import JournalRecord
from server.journal import Journal, open_journal
from server.journal.fallback import FallbackSpool
from server.journal.sqlite_store import SqliteStore

pytestmark = pytest.mark.anyio


def interim(i: int) -> JournalRecord:
    return JournalRecord(request_id=f"req-{i:05d}", client=f"c{i % 7}", endpoint="/api/chat",
                         received_at=T0 + i, status="failed", error="interim", model="m")


def final(i: int) -> JournalRecord:
    return JournalRecord(request_id=f"req-{i:05d}", client=f"c{i % 7}", endpoint="/api/chat",
                         received_at=T0 + i, status="completed", http_status=200, model="m",
                         eval_count=i, completed_at=T0 + i + 0.5)


class LoopLag:
    """Measures the longest the event loop went without running a 5 ms ticker."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            self.worst = max(self.worst, now - last - 0.005)
            last = now

    def __enter__(self) -> LoopLag:
        self._task = asyncio.get_running_loop().create_task(self._tick())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


async def drive(journal: Journal, n: int, outage_start: Any, outage_end: Any) -> dict[str, float]:
    """Submit n requests at a steady pace; each gets its final state 3 requests later.

    Calls outage_start() at n/3 and outage_end() at 2n/3 (both blocking; run in a thread so the
    stream continues while the database goes down and comes back). Returns timings.
    """
    slowest_submit = 0.0
    restarted_at = 0.0
    drained: asyncio.Task[float] | None = None
    with LoopLag() as lag:
        for i in range(n + 3):
            if i == n // 3:
                down = asyncio.create_task(asyncio.to_thread(outage_start))
            if i == 2 * n // 3:
                await down
                await asyncio.to_thread(outage_end)
                restarted_at = time.perf_counter()
                # Watched while the stream goes on: how long until the fallback file is empty.
                drained = asyncio.create_task(wait_drained(journal, backlog_only=True))
            started = time.perf_counter()
            if i < n:
                journal.submit(interim(i))
            if i >= 3:
                journal.submit(final(i - 3))
            slowest_submit = max(slowest_submit, time.perf_counter() - started)
            await asyncio.sleep(0.004)
        await wait_drained(journal)
        # health()'s "pending" leaves out the batch in the writer's hands: wait for that one too,
        # or the check below can read the database one batch early.
        await asyncio.wait_for(journal.flush(), 30)
    assert drained is not None
    return {"slowest_submit": slowest_submit, "loop_lag": lag.worst,
            "drain_seconds": await drained - restarted_at}


async def wait_drained(journal: Journal, limit: float = 30.0, *, backlog_only: bool = False) -> float:
    """When the journal was connected with no fallback line left (and, unless backlog_only,
    nothing pending in memory either)."""
    for _ in range(int(limit / 0.005)):
        h = journal.health()
        if h["connected"] and h["fallback_lines"] == 0 and (backlog_only or h["pending"] == 0):
            return time.perf_counter()
        await asyncio.sleep(0.005)
    raise AssertionError(f"journal did not drain: {journal.health()}")


async def check_exactly_once(journal: Journal, n: int, fallback: Path) -> None:
    store = journal._store
    rows = await store.fetch(("request_id", "status", "eval_count", "error"), 0.0, 1e12)
    ids = [r[0] for r in rows]
    assert len(ids) == n and len(set(ids)) == n, "every request exactly once"
    wrong = [r for r in rows if r[1] != "completed" or r[2] != int(r[0][4:]) or r[3] is not None]
    assert wrong == [], "every request holds its final state"
    left = await asyncio.to_thread(lambda: sorted(fallback.iterdir()))
    assert left == [], "fallback directory ends empty"


@pytest.mark.postgres
async def test_postgres_outage_mid_stream(pg_server_running: PgServer, tmp_path: Path) -> None:
    """PostgreSQL stopped and restarted under load: every record exactly once, final state, no leftovers."""
    n = 900
    fallback = tmp_path / "fallback"
    journal = open_journal(pg_server_running.new_database(), fallback_dir=fallback, store_timeout=0.3,
                           retry_initial=0.05, retry_max=0.5, batch_size=50)
    await journal.start()
    timings = await drive(journal, n, pg_server_running.stop, pg_server_running.start)
    health = journal.health()
    assert health["replayed"] > 0, "the outage really sent records through the fallback file"
    await check_exactly_once(journal, n, fallback)
    await journal.stop()
    # The request path never waited on the dead database: a submit that did would take the
    # store's whole 0.3 s timeout. (Not a speed bound: a loaded machine stalls a call for ms.)
    assert timings["slowest_submit"] < 0.1
    assert timings["loop_lag"] < 0.25
    print(f"\nOUTAGE postgresql: sent={n} found={n} duplicates=0 "
          f"replayed_from_fallback={health['replayed']} drain={timings['drain_seconds']:.3f}s "
          f"slowest_submit={timings['slowest_submit'] * 1e6:.0f}us loop_lag={timings['loop_lag'] * 1e3:.1f}ms")


async def test_sqlite_locked_mid_stream(tmp_path: Path) -> None:
    """SQLite locked by another process for a while: the same guarantees as the PostgreSQL outage."""
    n = 300
    path, fallback = tmp_path / "requests.db", tmp_path / "fallback"
    journal = Journal(SqliteStore(path, busy_timeout=0.1), FallbackSpool(fallback),
                      retry_initial=0.05, retry_max=0.3, batch_size=50)
    await journal.start()
    blocker = sqlite3.connect(path, check_same_thread=False, isolation_level=None)

    def lock() -> None:
        blocker.execute("BEGIN EXCLUSIVE")

    def unlock() -> None:
        blocker.execute("COMMIT")
        blocker.close()

    timings = await drive(journal, n, lock, unlock)
    health = journal.health()
    assert health["replayed"] > 0
    await check_exactly_once(journal, n, fallback)
    await journal.stop()
    assert timings["slowest_submit"] < 0.1  # waiting on the lock takes its 0.1 s busy timeout
    assert timings["loop_lag"] < 0.25


async def test_overflow_spills_to_disk_and_comes_back(tmp_path: Path) -> None:
    """With the writer stuck, submit() spills past max_pending instead of growing memory."""
    path, fallback = tmp_path / "requests.db", tmp_path / "fallback"
    journal = Journal(SqliteStore(path, busy_timeout=0.5), FallbackSpool(fallback),
                      max_pending=20, retry_initial=0.05, retry_max=0.2)
    await journal.start()
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    for i in range(2000):
        journal.submit(final(i))
    assert journal.health()["spilled"] >= 2000 - 20 - 1
    await asyncio.sleep(0.1)
    blocker.execute("COMMIT")
    blocker.close()
    await wait_drained(journal)
    await check_exactly_once(journal, 2000, fallback)
    await journal.stop()


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
    await until(lambda: journal.health()["connected"] and journal.health()["fallback_lines"] == 0,
                what="the fallback replayed once the lock was gone")
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
    observer = await psycopg.AsyncConnection.connect(dsn, autocommit=True)

    async def purge_waits_on_the_lock() -> bool:
        cursor = await observer.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE wait_event_type = 'Lock' AND query LIKE 'DELETE FROM requests%'"
        )
        row = await cursor.fetchone()
        return row is not None and row[0] > 0

    try:
        await blocker.execute("LOCK TABLE requests IN ACCESS EXCLUSIVE MODE")
        # Not "a moment later": until PostgreSQL itself shows the purge's DELETE stuck on the lock.
        await until(purge_waits_on_the_lock, what="the purge blocked on the lock")
        await asyncio.wait_for(journal.stop(), 3.0)
        assert not await purge_waits_on_the_lock()  # stop() ended it, it did not just return
    finally:
        await blocker.rollback()
        await blocker.close()
        await observer.close()
