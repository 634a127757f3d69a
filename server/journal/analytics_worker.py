"""Analytics in a process of their own: the rows are read and the report computed where neither
can hold the sidecar's GIL. A worker thread is not enough — 200,000 rows are seconds of Python,
and a thread that long takes the GIL from the event loop every few milliseconds, so every stream
relayed meanwhile stutters (bench/loop_lag.py measured it).

One worker process, started on the first report ("spawn": a fork of a threaded asyncio process is
unsafe) and kept for the next; it opens its own connection to the journal's database (SQLite read
only), so only the query goes in and only the report comes out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import sqlite3
from concurrent.futures import BrokenExecutor, ProcessPoolExecutor
from pathlib import Path
from typing import Any

from server.journal.analytics import COLUMNS, AnalyticsQuery, report
from server.journal.dsn import Target
from server.journal.records import from_row, window_query
from server.journal.store import StoreUnavailable

log = logging.getLogger(__name__)

# A report the database takes longer than this to answer is abandoned by the database itself
# (PostgreSQL's statement_timeout; SQLite's busy timeout bounds its lock waits).
QUERY_TIMEOUT_S = 30
# How long stop() waits for a report in progress before it ends the worker process.
STOP_GRACE_S = 2.0


class AnalyticsBusy(StoreUnavailable):
    """A report is being computed; one at a time (the server answers 503, try again)."""


def _fetch(
    target: Target, since: float, until: float, limit: int, query: AnalyticsQuery
) -> list[tuple[Any, ...]]:
    sql, params = window_query("?" if target.kind == "sqlite" else "%s", COLUMNS, since, until,
                               limit, instance=query.instance, backend=query.backend)
    if target.kind == "sqlite":
        try:
            # A path with '?' or '#' in it must not end up in the URI's query: as_uri escapes it.
            uri = Path(target.location).resolve().as_uri() + "?mode=ro"
            conn = sqlite3.connect(uri, uri=True, timeout=5)
            try:
                return conn.execute(sql, params).fetchall()
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"sqlite: {exc}") from None
    import psycopg

    try:
        with psycopg.connect(
            target.location, connect_timeout=5, options=f"-c statement_timeout={QUERY_TIMEOUT_S}s"
        ) as pg:
            return pg.execute(sql, params).fetchall()
    except psycopg.Error as exc:
        raise StoreUnavailable(f"postgresql: {str(exc).strip()}") from None


def report_for(target: Target, query: AnalyticsQuery, now: float, max_rows: int) -> dict[str, Any]:
    """Runs in the worker: the whole report for the window ending at `now`."""
    since = now - query.hours * 3600
    raw = _fetch(target, since, now, max_rows + 1, query)
    rows = [from_row(COLUMNS, r) for r in raw[:max_rows]]  # newest first
    return report(rows, query, since, now, truncated=len(raw) > max_rows)


class AnalyticsWorker:
    def __init__(self, target: Target) -> None:
        self._target = target
        self._pool: ProcessPoolExecutor | None = None
        self._busy = False

    async def report(self, query: AnalyticsQuery, now: float, max_rows: int) -> dict[str, Any]:
        if self._busy:
            # One worker, one report: a queue of them behind a slow database helps nobody.
            raise AnalyticsBusy("an analytics report is being computed; try again shortly")
        loop = asyncio.get_running_loop()
        if self._pool is None:
            self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        pool = self._pool
        self._busy = True
        try:
            return await loop.run_in_executor(pool, report_for, self._target, query, now, max_rows)
        except BrokenExecutor:  # the worker died (killed, out of memory): a new one next time
            if self._pool is pool:
                self._pool = None
            pool.shutdown(wait=False, cancel_futures=True)  # reaps what is left of it
            raise StoreUnavailable("the analytics worker process died; try again") from None
        finally:
            self._busy = False

    async def stop(self) -> None:
        """End the worker. A report still running gets STOP_GRACE_S, then its process is
        terminated: shutting the sidecar down must not wait for a slow query."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        processes = list(getattr(pool, "_processes", {}).values())  # no public accessor
        pool.shutdown(wait=False, cancel_futures=True)
        deadline = asyncio.get_running_loop().time() + STOP_GRACE_S
        while any(p.is_alive() for p in processes):
            if asyncio.get_running_loop().time() >= deadline:
                log.warning("analytics: worker still busy at shutdown; terminating it")
                for process in processes:
                    with contextlib.suppress(Exception):
                        process.terminate()
                break
            await asyncio.sleep(0.05)
        for process in processes:
            await asyncio.to_thread(process.join, 1.0)
