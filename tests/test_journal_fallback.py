"""Fallback files: crash-cut lines, duplicates, poison records, locked files, DB gone mid-replay."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from unittest import mock

import msgspec
import pytest
from journal_fixtures import Flaky, ids, rec, until

from schemas.journal import JournalRecord
from server.journal import open_journal, open_store, resolve
from server.journal.fallback import FallbackSpool
from server.journal.replay import replay_all
from server.journal.store import Store, StoreUnavailable

pytestmark = pytest.mark.anyio




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
    await until(lambda: journal.health()["fallback_lines"] == 0, what="the fallback replayed")
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


async def test_the_backend_survives_the_fallback_file_and_old_lines_replay_without_one(
    journal_dsn: str, tmp_path: Path
) -> None:
    """A record spooled during an outage keeps its backend; a line a sidecar wrote before the
    field existed (no `backend` key) still replays, with none."""
    path = write_spool(tmp_path, [rec(1, backend="gpu1")])
    old = msgspec.json.decode(msgspec.json.encode(rec(2)))
    del old["backend"]
    with path.open("ab") as out:
        out.write(msgspec.json.encode(old) + b"\n")
    store = await migrated(journal_dsn)
    try:
        report = await replay_all(store, FallbackSpool(tmp_path))
        assert (report.records, report.bad_lines) == (2, 0)
        assert sorted(await store.fetch(("request_id", "backend"), 0.0, 1e12)) == [
            ("r1", "gpu1"), ("r2", None)]
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
    await until(lambda: journal.health()["fallback_lines"] == 0, what="the refused line moved aside")
    health = journal.health()
    await journal.stop()
    assert await ids(journal_dsn) == ["r0", "r2", "r3"]
    assert health["quarantined_lines"] == 1 and len(health["bad_files"]) == 1


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
