"""The analytics worker process: a database path URI-escaped, one report at a time, a dead worker
replaced, and a stop that never waits for a slow query."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest
from journal_fixtures import T0, rec

from server.journal import open_journal, open_store, resolve
from server.journal.analytics import AnalyticsQuery
from server.journal.analytics_worker import STOP_GRACE_S, AnalyticsBusy, AnalyticsWorker
from server.journal.store import StoreUnavailable

pytestmark = pytest.mark.anyio

QUERY = AnalyticsQuery.parse(hours=24, group_by="model", limit=10)


async def seeded(path: Path) -> None:
    journal = open_journal(str(path), fallback_dir=path.parent / "fb")
    await journal.start()
    for i in range(3):
        journal.submit(rec(i, model="m"))
    await journal.stop()


async def test_a_path_with_uri_characters(tmp_path: Path) -> None:
    """'?' and '#' in the journal's path are part of the file name, not the URI's query."""
    directory = tmp_path / "odd?mode=rw#x"
    directory.mkdir()
    db = directory / "journal.db"
    await seeded(db)
    worker = AnalyticsWorker(resolve(str(db)))
    try:
        report = await worker.report(QUERY, T0 + 60, 1000)
    finally:
        await worker.stop()
    assert report["totals"]["requests"] == 3


@pytest.fixture
async def locked_db(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A journal database an exclusive lock keeps every reader waiting on (the busy timeout)."""
    db = tmp_path / "journal.db"
    await seeded(db)
    store = open_store(resolve(str(db)))
    await store.open()
    await store.close()
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA journal_mode=DELETE")  # WAL readers would not wait
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    yield db
    holder.execute("ROLLBACK")
    holder.close()


async def test_one_report_at_a_time_and_stop_does_not_wait(locked_db: Path) -> None:
    worker = AnalyticsWorker(resolve(str(locked_db)))
    slow = asyncio.create_task(worker.report(QUERY, T0 + 60, 1000))
    await asyncio.sleep(0.1)
    with pytest.raises(AnalyticsBusy):
        await worker.report(QUERY, T0 + 60, 1000)
    # Let the worker process start and block on the lock, then stop: bounded by the grace.
    await asyncio.sleep(1.5)
    began = time.monotonic()
    await worker.stop()
    assert time.monotonic() - began < STOP_GRACE_S + 2.5
    with pytest.raises(StoreUnavailable):
        await slow


async def test_a_killed_worker_is_replaced(tmp_path: Path) -> None:
    db = tmp_path / "journal.db"
    await seeded(db)
    worker = AnalyticsWorker(resolve(str(db)))
    try:
        assert (await worker.report(QUERY, T0 + 60, 1000))["totals"]["requests"] == 3
        pool = worker._pool
        assert pool is not None
        for process in list(pool._processes.values()):
            process.kill()
        with pytest.raises(StoreUnavailable, match="died"):
            await worker.report(QUERY, T0 + 60, 1000)
        assert (await worker.report(QUERY, T0 + 60, 1000))["totals"]["requests"] == 3
    finally:
        await worker.stop()
