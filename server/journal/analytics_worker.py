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
import multiprocessing
import sqlite3
from concurrent.futures import BrokenExecutor, ProcessPoolExecutor
from typing import Any

from server.journal.analytics import COLUMNS, AnalyticsQuery, report, window_sql
from server.journal.dsn import Target
from server.journal.records import from_row
from server.journal.store import StoreUnavailable


def _fetch(target: Target, since: float, until: float, limit: int) -> list[tuple[Any, ...]]:
    if target.kind == "sqlite":
        try:
            conn = sqlite3.connect(f"file:{target.location}?mode=ro", uri=True, timeout=5)
            try:
                return conn.execute(window_sql("?", limit), [since, until]).fetchall()
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"sqlite: {exc}") from None
    import psycopg

    try:
        with psycopg.connect(target.location, connect_timeout=5) as pg:
            return pg.execute(window_sql("%s", limit), [since, until]).fetchall()
    except psycopg.Error as exc:
        raise StoreUnavailable(f"postgresql: {str(exc).strip()}") from None


def report_for(target: Target, query: AnalyticsQuery, now: float, max_rows: int) -> dict[str, Any]:
    """Runs in the worker: the whole report for the window ending at `now`."""
    since = now - query.hours * 3600
    raw = _fetch(target, since, now, max_rows + 1)
    rows = [from_row(COLUMNS, r) for r in raw[:max_rows]]  # newest first
    return report(rows, query, since, now, truncated=len(raw) > max_rows)


class AnalyticsWorker:
    def __init__(self, target: Target) -> None:
        self._target = target
        self._pool: ProcessPoolExecutor | None = None

    async def report(self, query: AnalyticsQuery, now: float, max_rows: int) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        if self._pool is None:
            self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        try:
            return await loop.run_in_executor(
                self._pool, report_for, self._target, query, now, max_rows
            )
        except BrokenExecutor:  # the worker died (killed, out of memory): a new one next time
            self._pool = None
            raise StoreUnavailable("the analytics worker process died; try again") from None

    async def stop(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)
