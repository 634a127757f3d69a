"""Replay of fallback files into the database: idempotent, per file, nothing lost or duplicated.

Idempotent because the store upserts by request id with a revision guard, so replaying a file twice
(or after the same records were written directly) changes nothing. A file is deleted only once all
its records are committed; if the database goes away mid-file the file stays, whole, for next time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import msgspec

from schemas.journal import JournalRecord
from server.journal.fallback import BadLine, Claimed, FallbackSpool, Line
from server.journal.store import Store, StoreRejected

log = logging.getLogger(__name__)


class ReplayReport(msgspec.Struct):
    files: int = 0  # files fully committed and removed
    records: int = 0  # distinct records committed from them
    bad_lines: int = 0  # lines moved aside to .bad files
    skipped: int = 0  # files held by a live writer (another process), left for later
    bad_files: list[str] = msgspec.field(default_factory=list)
    problems: list[str] = msgspec.field(default_factory=list)  # "file:line: reason"

    def add(self, other: ReplayReport) -> None:
        self.files += other.files
        self.records += other.records
        self.bad_lines += other.bad_lines
        self.skipped += other.skipped
        self.bad_files.extend(f for f in other.bad_files if f not in self.bad_files)
        self.problems.extend(other.problems)


async def _commit(
    store: Store, records: Sequence[tuple[JournalRecord, Line]], batch_size: int
) -> list[BadLine]:
    """Upsert in batches; a batch the DB refuses is retried record by record to isolate the bad ones.

    StoreUnavailable propagates: the caller keeps the file.
    """
    refused: list[BadLine] = []
    for start in range(0, len(records), batch_size):
        batch = records[start : start + batch_size]
        try:
            await store.upsert([record for record, _ in batch])
            continue
        except StoreRejected:
            pass
        for record, line in batch:
            try:
                await store.upsert([record])
            except StoreRejected as exc:
                text = line.raw.decode("utf-8", "backslashreplace")
                refused.append(BadLine(line.number, f"database refused it: {exc}", text))
    return refused


async def replay_file(store: Store, spool: FallbackSpool, claimed: Claimed, batch_size: int) -> ReplayReport:
    report = ReplayReport()
    refused = await _commit(store, claimed.records, batch_size)
    bad = sorted([*claimed.bad, *refused], key=lambda b: b.number)
    await asyncio.to_thread(spool.finish, claimed, bad)
    report.files = 1
    report.records = len(claimed.records) - len(refused)
    report.bad_lines = len(bad)
    if bad:
        report.bad_files.append(claimed.path.name + ".bad")
        report.problems.extend(f"{claimed.path.name}:{b.number}: {b.reason}" for b in bad)
    return report


async def replay_all(store: Store, spool: FallbackSpool, *, batch_size: int = 500) -> ReplayReport:
    """Replay every fallback file not in use. Raises StoreUnavailable if the DB goes away."""
    report = ReplayReport()
    # Start a new file for anything spilled from now on, so the current one can be replayed.
    await asyncio.to_thread(spool.rotate)
    for path in await asyncio.to_thread(spool.files):
        try:
            claimed = await asyncio.to_thread(spool.claim, path)
        except OSError as exc:
            # Unreadable (permissions, not a file): report it and leave it, but never let it
            # block the files after it.
            log.error("journal: fallback file %s cannot be read: %s", path.name, exc)
            report.skipped += 1
            report.problems.append(f"{path.name}: cannot be read: {exc}")
            continue
        if claimed is None:
            report.skipped += 1
            continue
        try:
            report.add(await replay_file(store, spool, claimed, batch_size))
        finally:
            await asyncio.to_thread(claimed.release)
    if report.files:
        log.info(
            "journal: replayed %d fallback file(s), %d record(s), %d bad line(s)",
            report.files, report.records, report.bad_lines,
        )
    return report


__all__ = ["ReplayReport", "replay_all", "replay_file"]
