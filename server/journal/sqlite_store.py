"""The embedded backend: SQLite through sqlite-utils, in WAL mode, driven from a worker thread.

sqlite3 calls block, so every operation runs in a thread (asyncio.to_thread) and a lock keeps
the single connection to one thread at a time; the event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import sqlite_utils

from schemas.journal import JournalRecord
from server.journal.migrations import MIGRATIONS_TABLE, Dialect, pending, render
from server.journal.records import (
    COLUMN_NAMES,
    lookup_sql,
    record_from_row,
    to_row,
    upsert_sql,
    window_query,
)
from server.journal.store import AppliedMigration, StoreRejected, StoreUnavailable

T = TypeVar("T")
_UPSERT = upsert_sql("?")
_LOOKUP = lookup_sql("?")


class SqliteStore:
    dialect: Dialect = "sqlite"

    def __init__(self, path: Path, *, busy_timeout: float = 5.0) -> None:
        self.path = path
        self.target = str(path)
        self._busy_timeout = busy_timeout
        self._db: sqlite_utils.Database | None = None
        self._lock = threading.Lock()

    # -- plumbing ---------------------------------------------------------------------------

    def _database(self) -> sqlite_utils.Database:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                str(self.path), timeout=self._busy_timeout, check_same_thread=False
            )
            db = sqlite_utils.Database(conn)
            # WAL lets analytics read while the writer writes; NORMAL sync is durable across
            # process crashes in WAL mode, which is the failure the journal must survive.
            db.enable_wal()
            db.execute("PRAGMA synchronous=NORMAL")
            self._db = db
        return self._db

    def _run(self, fn: Callable[[sqlite_utils.Database], T]) -> T:
        with self._lock:
            try:
                return fn(self._database())
            except (sqlite3.IntegrityError, sqlite3.DataError, sqlite3.ProgrammingError) as exc:
                raise StoreRejected(f"sqlite refused the data: {exc}") from exc
            except (OverflowError, UnicodeEncodeError) as exc:
                # A value sqlite3 cannot bind (an int beyond 64 bits, a lone surrogate): refused
                # data, as PostgreSQL reports it, not a crash of the writer or the retry loop.
                raise StoreRejected(f"sqlite refused the data: {exc}") from exc
            except (sqlite3.Error, OSError) as exc:
                # A broken connection is not reused: the next call reconnects.
                self._close_locked()
                raise StoreUnavailable(f"sqlite {self.path}: {exc}") from exc

    async def _call(self, fn: Callable[[sqlite_utils.Database], T]) -> T:
        return await asyncio.to_thread(self._run, fn)

    def _close_locked(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            db.close()

    def _close(self) -> None:
        with self._lock:
            self._close_locked()

    # -- Store ------------------------------------------------------------------------------

    async def open(self) -> None:
        await self._call(lambda db: None)

    async def close(self) -> None:
        await asyncio.to_thread(self._close)

    async def migrate(self) -> list[int]:
        def apply(db: sqlite_utils.Database) -> list[int]:
            done: list[int] = []
            with db.conn:
                db.execute(render(MIGRATIONS_TABLE, "sqlite"))
            # sqlite3 runs DDL outside any transaction unless one is begun explicitly; IMMEDIATE
            # also keeps a second migrator from reading the same pending list meanwhile.
            with db.conn:
                db.execute("BEGIN IMMEDIATE")
                applied = {row[0] for row in db.execute("SELECT version FROM schema_migrations")}
                for migration in pending(applied):
                    # All pending migrations in one transaction: a crash leaves each applied or not.
                    for statement in migration.statements:
                        db.execute(render(statement, "sqlite"))
                    db.execute(
                        "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                        [migration.version, migration.name, time.time()],
                    )
                    done.append(migration.version)
            return done

        return await self._call(apply)

    async def applied(self) -> list[AppliedMigration]:
        def read(db: sqlite_utils.Database) -> list[AppliedMigration]:
            if "schema_migrations" not in db.table_names():
                return []
            rows = db.execute("SELECT version, name, applied_at FROM schema_migrations ORDER BY version")
            return [AppliedMigration(*row) for row in rows]

        return await self._call(read)

    async def ping(self) -> None:
        await self._call(lambda db: db.execute("SELECT 1").fetchone())

    async def upsert(self, records: Sequence[JournalRecord]) -> None:
        rows = [to_row(r) for r in records]

        def write(db: sqlite_utils.Database) -> None:
            with db.conn:
                db.conn.executemany(_UPSERT, rows)

        await self._call(write)

    async def fetch(
        self, columns: Sequence[str], since: float, until: float, limit: int | None = None,
        instance: str | None = None, backend: str | None = None,
    ) -> list[tuple[Any, ...]]:
        sql, params = window_query("?", columns, since, until, limit,
                                   instance=instance, backend=backend)
        return await self._call(lambda db: [tuple(r) for r in db.execute(sql, params)])

    async def purge(self, before: float) -> int:
        def delete(db: sqlite_utils.Database) -> int:
            with db.conn:
                return db.execute("DELETE FROM requests WHERE received_at < ?", [before]).rowcount

        return await self._call(delete)

    async def count(self) -> int:
        return await self._call(lambda db: db["requests"].count)

    async def get(self, request_id: str) -> JournalRecord | None:
        def read(db: sqlite_utils.Database) -> JournalRecord | None:
            row = db.execute(_LOOKUP, [request_id] * 3).fetchone()
            return None if row is None else record_from_row(COLUMN_NAMES, row)

        return await self._call(read)


__all__ = ["SqliteStore"]
