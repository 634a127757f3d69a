"""Fallback files: crash-cut lines, duplicates, poison records, locked files, DB gone mid-replay."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest

from schemas.journal import JournalRecord
from server.journal import open_journal, open_store, resolve
from server.journal.fallback import FallbackSpool
from server.journal.replay import replay_all
from server.journal.store import AppliedMigration, Store, StoreRejected, StoreUnavailable

pytestmark = pytest.mark.anyio

T0 = 1_767_225_600.0


def rec(i: int, **fields: Any) -> JournalRecord:
    base: dict[str, Any] = {"request_id": f"r{i}", "client": "c", "endpoint": "/api/generate",
                            "received_at": T0 + i, "status": "completed", "revision": 100 + i}
    return JournalRecord(**(base | fields))


def write_spool(directory: Path, records: Sequence[JournalRecord]) -> Path:
    spool = FallbackSpool(directory)
    spool.append(records)
    spool.close()
    [path] = spool.files()
    return path


async def statuses(store: Store) -> dict[str, tuple[str, int]]:
    rows = await store.fetch(("request_id", "status", "revision"), 0.0, 1e12)
    return {r[0]: (r[1], r[2]) for r in rows}


async def test_crash_cut_file_replays_whole_lines_and_reports_the_partial_one(
    journal_dsn: str, tmp_path: Path
) -> None:
    """A file cut mid-line (kill -9) replays at start-up; the partial line goes to .bad, reported."""
    fallback = tmp_path / "fallback"
    path = write_spool(fallback, [rec(i) for i in range(5)])
    # A duplicate id later in the file with a higher revision, a garbage line, then a cut line.
    with path.open("ab") as out:
        out.write(msgspec.json.encode(rec(2, status="failed", revision=999)) + b"\n")
        out.write(b"{not json at all\n")
        out.write(msgspec.json.encode(rec(7))[:40])

    journal = open_journal(journal_dsn, fallback_dir=fallback, retry_initial=0.05)
    await journal.start()
    for _ in range(400):
        if journal.health()["fallback_lines"] == 0:
            break
        await asyncio.sleep(0.01)
    health = journal.health()
    found = await statuses(journal._store)
    await journal.stop()

    assert found == {"r0": ("completed", 100), "r1": ("completed", 101), "r2": ("failed", 999),
                     "r3": ("completed", 103), "r4": ("completed", 104)}
    assert not path.exists()
    bad_path = path.with_name(path.name + ".bad")
    bad = [msgspec.json.decode(line) for line in bad_path.read_bytes().splitlines()]
    assert [b["number"] for b in bad] == [7, 8]
    assert bad[0]["text"] == "{not json at all"
    assert bad[1]["reason"].startswith("truncated line (no newline at end of file)")
    assert (health["replayed"], health["quarantined_lines"]) == (5, 2)
    assert health["bad_files"] == [bad_path.name]


class Flaky:
    """A real store that fails on demand: unreachable after N upserts, or refusing one id."""

    def __init__(self, inner: Store, *, fail_after: int | None = None, refuse: str | None = None) -> None:
        self.inner, self.fail_after, self.refuse = inner, fail_after, refuse
        self.dialect, self.target = inner.dialect, inner.target
        self.upserts = 0

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def migrate(self) -> list[int]:
        return await self.inner.migrate()

    async def applied(self) -> list[AppliedMigration]:
        return await self.inner.applied()

    async def ping(self) -> None:
        await self.inner.ping()

    async def fetch(
        self, columns: Sequence[str], since: float, until: float, limit: int | None = None
    ) -> list[tuple[Any, ...]]:
        return await self.inner.fetch(columns, since, until, limit)

    async def purge(self, before: float) -> int:
        return await self.inner.purge(before)

    async def count(self) -> int:
        return await self.inner.count()

    async def upsert(self, records: Sequence[JournalRecord]) -> None:
        if self.refuse and any(r.request_id == self.refuse for r in records):
            raise StoreRejected("value out of range")
        if self.fail_after is not None and self.upserts >= self.fail_after:
            raise StoreUnavailable("connection refused")
        self.upserts += 1
        await self.inner.upsert(records)


async def migrated(dsn: str) -> Store:
    store = open_store(resolve(dsn))
    await store.open()
    await store.migrate()
    return store


async def test_file_stays_whole_when_the_database_fails_mid_replay(journal_dsn: str, tmp_path: Path) -> None:
    """Part-committed files are kept; the next replay commits the rest without duplicates."""
    path = write_spool(tmp_path, [rec(i) for i in range(10)])
    store = await migrated(journal_dsn)
    try:
        flaky = Flaky(store, fail_after=1)
        with pytest.raises(StoreUnavailable):
            await replay_all(flaky, FallbackSpool(tmp_path), batch_size=4)
        assert path.exists() and len(await statuses(store)) == 4
        report = await replay_all(store, FallbackSpool(tmp_path), batch_size=4)
        assert (report.files, report.records, report.bad_lines) == (1, 10, 0)
        assert not path.exists() and len(await statuses(store)) == 10
    finally:
        await store.close()


async def test_a_refused_record_is_moved_aside_and_the_rest_committed(journal_dsn: str, tmp_path: Path) -> None:
    """One record the database refuses cannot block its file: it goes to .bad with the reason."""
    path = write_spool(tmp_path, [rec(i) for i in range(6)])
    store = await migrated(journal_dsn)
    try:
        report = await replay_all(Flaky(store, refuse="r3"), FallbackSpool(tmp_path), batch_size=4)
        assert (report.files, report.records, report.bad_lines) == (1, 5, 1)
        assert sorted(await statuses(store)) == ["r0", "r1", "r2", "r4", "r5"]
        assert report.problems == [f"{path.name}:4: database refused it: value out of range"]
        assert not path.exists()
    finally:
        await store.close()


async def test_a_file_held_by_a_live_writer_is_left_alone(journal_dsn: str, tmp_path: Path) -> None:
    """Another process's open fallback file (flock held) is skipped, not read half-written."""
    writer = FallbackSpool(tmp_path)
    writer.append([rec(1)])
    store = await migrated(journal_dsn)
    try:
        report = await replay_all(store, FallbackSpool(tmp_path))
        assert (report.files, report.skipped) == (0, 1)
        assert await statuses(store) == {}
        writer.close()
        report = await replay_all(store, FallbackSpool(tmp_path))
        assert (report.files, report.records) == (1, 1)
    finally:
        await store.close()


async def test_replaying_the_same_file_twice_changes_nothing(journal_dsn: str, tmp_path: Path) -> None:
    """Replay is idempotent: a copy of an already-replayed file adds no row and undoes no update."""
    path = write_spool(tmp_path, [rec(i) for i in range(3)])
    copy = path.read_bytes()
    store = await migrated(journal_dsn)
    try:
        await replay_all(store, FallbackSpool(tmp_path))
        await store.upsert([rec(1, status="cancelled", revision=10_000)])
        path.write_bytes(copy)
        await replay_all(store, FallbackSpool(tmp_path))
        assert await statuses(store) == {"r0": ("completed", 100), "r1": ("cancelled", 10_000),
                                         "r2": ("completed", 102)}
    finally:
        await store.close()
