"""The Journal: the request path hands records over; background tasks get them into the database.

Ownership: `start()` creates three tasks (writer, retry, purge) and the spill thread; `stop()` ends
all of them after writing everything it holds — to the database if it answers, otherwise to the
fallback file. Nothing here runs a blocking call on the event loop: SQLite and file I/O go through
worker threads, PostgreSQL is natively async.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import Any, Literal

import msgspec

from policy.load import JournalSettings
from schemas.journal import JournalRecord
from server.journal import analytics
from server.journal.admissions import AdmissionLog, recover
from server.journal.analytics import AnalyticsQuery, compute
from server.journal.analytics_worker import AnalyticsWorker
from server.journal.dsn import Target
from server.journal.fallback import FallbackSpool
from server.journal.records import Stamper, StorePrompts
from server.journal.replay import ReplayReport, replay_all
from server.journal.spill import SpillWriter
from server.journal.store import Store, StoreError, StoreRejected, StoreUnavailable

log = logging.getLogger(__name__)

State = Literal["new", "running", "stopping", "stopped"]


class Journal:
    def __init__(
        self,
        store: Store,
        spool: FallbackSpool,
        *,
        store_prompts: StorePrompts = "hash",
        retention_seconds: float | None = None,
        batch_size: int = 500,
        gather: float = 0.02,
        max_pending: int = 10_000,
        retry_initial: float = 0.5,
        retry_max: float = 30.0,
        purge_interval: float = 3600.0,
        target: Target | None = None,
        instance: str | None = None,
    ) -> None:
        self._store = store
        self._instance = instance
        # Where the database is, for the analytics worker process (None: reports are computed in
        # a thread of this process, from `store` — for stores made by hand, as in tests).
        self._analytics = AnalyticsWorker(target) if target is not None else None
        self._spool = spool
        self._stamper = Stamper(store_prompts, instance)
        self._retention = retention_seconds if retention_seconds else None
        self._batch_size = batch_size
        self._gather = gather
        self._max_pending = max_pending
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._purge_interval = purge_interval
        self._pending: deque[JournalRecord] = deque()
        self._writing: list[JournalRecord] = []  # the writer's batch in hand
        self._wake = asyncio.Event()  # writer: records are waiting
        self._retry_wake = asyncio.Event()  # retry loop: something went to the fallback file
        self._stop_event = asyncio.Event()
        self._purge_soon = asyncio.Event()  # a reload changed the retention
        self._replay_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._spill: SpillWriter | None = None
        self._state: State = "new"
        self._connected = False
        self._migrated = False
        self._written = 0
        self._spilled = 0
        self._replayed = 0
        self._quarantined = 0
        self._bad_files: set[str] = set()
        self._last_error: str | None = None
        self._fallback_writable = True  # the last write to the fallback file succeeded
        self._idle = asyncio.Event()  # the writer holds nothing: queue empty, no batch in hand
        self._idle.set()
        self._admissions = AdmissionLog(spool.directory)
        self._lost = 0  # records that found no place at shutdown (logged where it happened)
        self._recovered = 0

    # -- the request path ---------------------------------------------------------------------

    def admit(self, record: JournalRecord) -> None:
        """A request was accepted; `record` (status interrupted, revision 0) is what stays of it
        if the process dies before its real record is written. Never blocks, never raises."""
        if self._state != "running":
            return  # before start() or after stop(): no admission log to write to
        # Encoding a record we built and putting it on a queue: nothing here can fail.
        if record.instance is None and self._instance is not None:
            record = msgspec.structs.replace(record, instance=self._instance)
        self._admissions.admit(record)

    def submit(self, record: JournalRecord) -> None:
        """Hand a record over. Never blocks, never awaits the database, never raises."""
        self._admissions.ended(record.request_id)
        try:
            prepared = self._stamper.prepare(record)
            if self._state == "running" and len(self._pending) >= self._max_pending:
                # The writer is behind (a slow or hanging database): the disk takes the overflow.
                assert self._spill is not None
                self._spill.put(self._stamper.redact([prepared])[0])
                self._spilled += 1
            elif self._state in ("new", "running", "stopping"):
                # Before start() the records simply wait; start() begins with writing them. While
                # stopping, the writer (or stop() itself) still takes them, off the event loop.
                self._pending.append(prepared)
                self._idle.clear()
                self._wake.set()
            else:
                # After stop() there is no writer left; a direct append is the last resort and
                # only happens on shutdown, when blocking for one line no longer delays anyone.
                self._spool.append(self._stamper.redact([prepared]))
        except Exception:  # the request path must not fail because of its journal record
            log.exception("journal: could not take record %r", getattr(record, "request_id", None))

    def configure(self, settings: JournalSettings) -> None:
        """A reload's [journal] settings: `store_prompts` applies to every record not yet written
        (it is applied as a record leaves memory: the writer's batch, the spill, the shutdown
        path); a changed `retention` is purged within moments, not at the next hourly pass."""
        self._stamper.store_prompts = settings.store_prompts
        retention = settings.retention or None
        if retention != self._retention:
            self._retention = retention
            self._purge_soon.set()

    # -- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        if self._state != "new":
            raise RuntimeError(f"journal already {self._state}")
        loop = asyncio.get_running_loop()
        try:
            await self._store.open()
            await self._ensure_ready()
        except StoreError as exc:
            self._mark_down(exc)
        # Requests a killed predecessor had accepted and not finished: into the spool as
        # `interrupted` (replay keeps any real record, which has the higher revision).
        try:
            logs, found = await asyncio.to_thread(recover, self._spool.directory, self._spool.append)
        except OSError as exc:
            self._last_error = f"admission recovery: {exc}"
            log.error("journal: could not recover admission logs: %s", exc)
        else:
            if logs:
                self._recovered = found
                log.warning("journal: %d admission log(s) of a sidecar that did not stop cleanly: "
                            "%d request(s) re-journalled; those with no record of their end are "
                            "now 'interrupted'", logs, found)
        await asyncio.to_thread(self._admissions.start)
        await asyncio.to_thread(self._spool.rescan)
        self._bad_files = {p.name for p in await asyncio.to_thread(self._spool.bad_files)}
        def wake_retry() -> None:  # called from the spill thread
            loop.call_soon_threadsafe(self._retry_wake.set)

        self._spill = SpillWriter(self._spool, wake_retry)
        self._spill.start()
        self._state = "running"
        self._tasks = [
            asyncio.create_task(self._writer(), name="journal-writer"),
            asyncio.create_task(self._retry_loop(), name="journal-retry"),
            asyncio.create_task(self._purge_loop(), name="journal-purge"),
        ]
        for task in self._tasks:
            task.add_done_callback(_report_crash)

    async def stop(self) -> None:
        """Write everything held, end every task and thread, close the database."""
        if self._state == "new":
            self._state = "stopped"
            await self._store.close()
            return
        if self._state != "running":
            return
        self._state = "stopping"
        self._stop_event.set()
        self._wake.set()
        self._retry_wake.set()
        for task in self._tasks:
            if task.get_name() == "journal-purge":
                # Nothing waits on a purge; one stuck on a lock must not hold up shutdown.
                task.cancel()
        # The writer returns only once `pending` is empty; a crashed task was already logged.
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        # After the drain: the records matter more than a report nobody will read now, and a
        # worker busy with a slow query is ended after a short grace, never waited for.
        if self._analytics is not None:
            await self._analytics.stop()
        if self._spill is not None:
            await asyncio.to_thread(self._spill.stop)
        # Whatever the writer did not take (handed over after it returned, or left by a crash).
        while self._pending:
            leftover = self._stamper.redact(list(self._pending))
            self._pending.clear()
            try:
                await asyncio.to_thread(self._spool.append, leftover)
            except OSError as exc:
                self._lost += len(leftover)
                log.error("journal: lost %d record(s) at shutdown: %s", len(leftover), exc)
        self._idle.set()
        # Every record handed over is in the database or the spool: the admission logs are
        # needed no more — unless a record was lost, or a request never ended.
        spilled_lost = self._spill.lost if self._spill is not None else 0
        await asyncio.to_thread(self._admissions.stop, clean=self._lost + spilled_lost == 0)
        self._state = "stopped"  # from here on submit() appends to the fallback file itself
        if self._connected and self._spool.pending_lines:
            with contextlib.suppress(StoreError):  # what stays on disk replays at next start
                await self.replay()
        await asyncio.to_thread(self._spool.close)
        await self._store.close()
        self._state = "stopped"

    async def flush(self) -> None:
        """Wait until the writer has taken every submitted record to the database or the
        fallback file (callers bound it with asyncio.timeout). Overflow records handed to the
        spill thread are not waited for."""
        await self._idle.wait()

    # -- background work ----------------------------------------------------------------------

    async def _writer(self) -> None:
        while True:
            if not self._pending:
                self._idle.set()
                if self._spill is None or self._spill.idle():
                    # Every record handed over so far is in the database or the spool.
                    self._admissions.settled()
                if self._state != "running":
                    return
                self._wake.clear()
                await self._wake.wait()
                if self._gather > 0 and self._state == "running":
                    # Records come one per finished request: gathering what ends within a few
                    # milliseconds makes one database write (one thread hand-off, one commit) of
                    # many under load, instead of one per request.
                    await asyncio.sleep(self._gather)
                continue
            count = min(self._batch_size, len(self._pending))
            batch = [self._pending.popleft() for _ in range(count)]
            self._writing = batch  # still found by lookup() until it is in the database
            try:
                await self._write(self._stamper.redact(batch))
            finally:
                self._writing = []

    async def _write(self, batch: list[JournalRecord]) -> None:
        if self._connected:
            try:
                await self._store.upsert(batch)
                self._written += len(batch)
                return
            except StoreUnavailable as exc:
                self._mark_down(exc)
            except StoreRejected as exc:
                # Replay retries record by record and moves the refused one aside.
                self._last_error = str(exc)
                log.warning("journal: batch refused (%s); via the fallback file", exc)
        while True:
            try:
                await asyncio.to_thread(self._spool.append, batch)
                self._fallback_writable = True
                self._retry_wake.set()
                return
            except OSError as exc:
                self._fallback_writable = False
                self._last_error = f"fallback file unwritable: {exc}"
                if self._state != "running":
                    self._lost += len(batch)
                    log.error("journal: lost %d record(s) at shutdown: %s", len(batch), exc)
                    return
                log.error("journal: fallback file unwritable (%s); retrying", exc)
                await asyncio.sleep(self._retry_initial)

    async def _ensure_ready(self) -> None:
        if not self._migrated:
            applied = await self._store.migrate()
            if applied:
                log.info("journal: applied migrations %s on %s", applied, self._store.target)
            self._migrated = True
        await self._store.ping()
        if not self._connected and self._last_error is not None:
            log.info("journal: database %s answers again", self._store.target)
        self._connected = True

    def _mark_down(self, exc: BaseException) -> None:
        if self._connected or self._last_error is None:
            log.warning("journal: database unavailable, using the fallback file: %s", exc)
        self._connected = False
        self._last_error = str(exc)
        self._retry_wake.set()

    async def _sleep(self, seconds: float, wake: asyncio.Event | None = None) -> bool:
        """Sleep unless stopping (or `wake` is set); True if stop() was called."""
        events = [self._stop_event, *([wake] if wake is not None else [])]
        waiters = [asyncio.create_task(e.wait()) for e in events]
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
        return self._stop_event.is_set()

    async def _retry_loop(self) -> None:
        delay = self._retry_initial
        while self._state == "running":
            if self._connected and not self._spool.pending_lines:
                self._retry_wake.clear()
                await self._retry_wake.wait()
                continue
            if not self._connected and await self._sleep(delay):
                return  # stop() makes the last attempt itself
            try:
                await self._ensure_ready()
                report = await self.replay()
                # Files held by another live process: look again later, not in a tight loop.
                delay = self._retry_initial
                if report.skipped and await self._sleep(delay):
                    return
            except StoreError as exc:
                self._mark_down(exc)
                delay = min(delay * 2, self._retry_max)
            except OSError as exc:
                # The fallback directory itself misbehaves (permissions, disk): report, back off.
                self._last_error = f"fallback replay: {exc}"
                log.error("journal: fallback replay failed: %s", exc)
                delay = min(delay * 2, self._retry_max)
                if await self._sleep(delay):
                    return

    async def _purge_loop(self) -> None:
        delay = min(60.0, self._purge_interval)  # first purge soon after start-up
        while not await self._sleep(delay, wake=self._purge_soon):
            delay = self._purge_interval
            self._purge_soon.clear()
            if self._retention is None or not self._connected:
                continue
            try:
                removed = await self._store.purge(time.time() - self._retention)
            except StoreError as exc:
                log.warning("journal: retention purge failed: %s", exc)
                continue
            if removed:
                log.info("journal: retention removed %d record(s)", removed)

    # -- operations -----------------------------------------------------------------------------

    async def replay(self) -> ReplayReport:
        """Replay the fallback files now (also what the retry loop and start-up do)."""
        async with self._replay_lock:
            try:
                report = await replay_all(self._store, self._spool, batch_size=self._batch_size)
            finally:
                await asyncio.to_thread(self._spool.rescan)
        self._replayed += report.records
        self._quarantined += report.bad_lines
        self._bad_files.update(report.bad_files)
        return report

    async def purge(self, before: float) -> int:
        return await self._store.purge(before)

    async def lookup(self, request_id: str) -> JournalRecord | None:
        """One request's latest record: still waiting to be written (newest hand-off wins), else
        from the database. StoreUnavailable when the database does not answer. Records that sit
        in the fallback file during an outage are found once they are replayed."""
        # As the database ranks them: the journal's own id first, else the newest by the
        # client's id (clients reuse ids); of one record's hand-offs, the newest wins.
        held = [*self._writing, *self._pending]
        mine = [r for r in held if r.request_id == request_id]
        if mine:
            return self._stamper.redact([max(mine, key=lambda r: r.revision)])[0]
        stored = await self._store.get(request_id)
        if stored is not None and stored.request_id == request_id:
            return stored
        found = [r for r in held if r.client_request_id == request_id] + ([stored] if stored else [])
        if not found:
            return None
        newest = max(found, key=lambda r: (r.received_at, r.revision))
        return newest if newest is stored else self._stamper.redact([newest])[0]

    async def analytics(
        self, hours: Any = 24, group_by: Any = "model", limit: Any = 10, *, now: float | None = None,
        instance: Any = None, backend: Any = None,
    ) -> dict[str, Any]:
        """The analytics report (JSON-able). AnalyticsError on bad parameters (→ 400),
        StoreUnavailable when the database does not answer (→ 503). `instance`: only the records
        of that sidecar (None: every sidecar writing to this journal); `backend`: only those one
        Ollama server served (None: whichever, and none)."""
        query = AnalyticsQuery.parse(hours=hours, group_by=group_by, limit=limit, instance=instance,
                                     backend=backend)
        at = time.time() if now is None else now
        if self._analytics is None:
            return await compute(self._store, query, at)
        return await self._analytics.report(query, at, analytics.MAX_ROWS)

    def health(self) -> dict[str, Any]:
        return {
            "backend": self._store.dialect,
            "target": self._store.target,
            "instance": self._instance,  # the name this sidecar's records carry
            "state": self._state,
            "connected": self._connected,
            "pending": len(self._pending) + (self._spill.qsize() if self._spill else 0),
            "fallback_dir": str(self._spool.directory),
            "fallback_lines": self._spool.pending_lines,
            "fallback_writable": self._fallback_writable,
            "written": self._written,
            "spilled": self._spilled,
            "replayed": self._replayed,
            "open_admissions": self._admissions.open_requests,
            "admission_failures": self._admissions.failed,
            "recovered_admissions": self._recovered,
            "quarantined_lines": self._quarantined,
            "bad_files": sorted(self._bad_files),
            "last_error": self._last_error,
        }


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("journal: task %s crashed", task.get_name(), exc_info=task.exception())


__all__ = ["Journal"]
