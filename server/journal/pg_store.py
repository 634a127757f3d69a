"""The production backend: PostgreSQL through psycopg 3, asynchronous, with a connection pool.

The pool is opened without waiting, so the sidecar starts (and journals to the fallback file) even
when PostgreSQL is down; each checkout verifies its connection, so a server restart costs one
failed probe rather than a batch written into a dead socket.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import AsyncConnectionPool, PoolTimeout

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

_UPSERT = upsert_sql("%s")
_LOOKUP = lookup_sql("%s")
# Serialises migrations when several sidecars start at once against one database.
_MIGRATION_LOCK_KEY = 0x534D5052  # "SMPR"


def redact(dsn: str) -> str:
    """The DSN with any password replaced, for logs, health and the CLI."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "postgresql://(unparseable DSN)"
    if "password" in params:
        params["password"] = "***"
    return make_conninfo("", **params)


_FETCH_BATCH = 2000  # rows converted per turn of the event loop


class PostgresStore:
    dialect: Dialect = "postgresql"

    def __init__(
        self, dsn: str, *, connect_timeout: int = 3, pool_timeout: float = 5.0, max_size: int = 4
    ) -> None:
        self._dsn = dsn
        self.target = redact(dsn)
        self._connect_timeout = max(2, connect_timeout)  # libpq ignores values below 2
        self._pool_timeout = pool_timeout
        self._max_size = max_size
        self._pool: AsyncConnectionPool | None = None
        # Set when an operation found the server unreachable; the next ping renews the pool.
        self._suspect = False

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        if self._pool is None:
            raise StoreUnavailable("postgresql journal store is not open")
        try:
            async with self._pool.connection(timeout=self._pool_timeout) as conn:
                yield conn
        except PoolTimeout as exc:
            self._suspect = True
            raise StoreUnavailable(f"postgresql {self.target}: no connection ({exc})") from exc
        except (psycopg.OperationalError, psycopg.InterfaceError, OSError) as exc:
            self._suspect = True
            raise StoreUnavailable(f"postgresql {self.target}: {exc}") from exc
        except psycopg.Error as exc:
            raise StoreRejected(f"postgresql refused the data: {exc}") from exc

    async def open(self) -> None:
        if self._pool is not None:
            return
        self._pool = self._new_pool()
        await self._pool.open(wait=False)

    def _new_pool(self) -> AsyncConnectionPool:
        try:
            return AsyncConnectionPool(
                self._dsn,
                min_size=1,
                max_size=self._max_size,
                open=False,
                timeout=self._pool_timeout,
                kwargs={"connect_timeout": self._connect_timeout},
                check=AsyncConnectionPool.check_connection,
                # The pool's own reconnection doubles its delay without a cap (a long outage would
                # mean minutes of delay after the server is back), so it gives up early and
                # ping() replaces the pool once a direct probe succeeds.
                reconnect_timeout=30.0,
                name="smart-proxy-journal",
            )
        except psycopg.ProgrammingError as exc:
            raise StoreRejected(f"invalid PostgreSQL DSN: {exc}") from exc

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def migrate(self) -> list[int]:
        done: list[int] = []
        async with self._connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", [_MIGRATION_LOCK_KEY])
            await conn.execute(render(MIGRATIONS_TABLE, "postgresql"))
            cur = await conn.execute("SELECT version FROM schema_migrations")
            applied = {row[0] for row in await cur.fetchall()}
            for migration in pending(applied):
                for statement in migration.statements:
                    await conn.execute(render(statement, "postgresql"))
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (%s, %s, %s)",
                    [migration.version, migration.name, time.time()],
                )
                done.append(migration.version)
        return done

    async def applied(self) -> list[AppliedMigration]:
        async with self._connection() as conn:
            cur = await conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
            row = await cur.fetchone()
            if not row or not row[0]:
                return []
            cur = await conn.execute(
                "SELECT version, name, applied_at FROM schema_migrations ORDER BY version"
            )
            return [AppliedMigration(int(v), n, float(a)) for v, n, a in await cur.fetchall()]

    async def ping(self) -> None:
        if self._pool is not None and self._suspect:
            await self._renew_pool()
        async with self._connection() as conn:
            await conn.execute("SELECT 1")

    async def _renew_pool(self) -> None:
        """After an outage: one direct connection proves the server is back, then a fresh pool
        replaces the one that may be sleeping in its reconnection back-off."""
        try:
            probe = await psycopg.AsyncConnection.connect(
                self._dsn, connect_timeout=self._connect_timeout
            )
        except (psycopg.Error, OSError) as exc:
            raise StoreUnavailable(f"postgresql {self.target}: {exc}") from exc
        await probe.close()
        old, self._pool = self._pool, self._new_pool()
        self._suspect = False
        await self._pool.open(wait=False)
        if old is not None:
            # Connections still lent out by the old pool are closed when they come back.
            await old.close(timeout=1.0)

    async def upsert(self, records: Sequence[JournalRecord]) -> None:
        rows = [to_row(r) for r in records]
        try:
            # The pool bounds only the checkout; a write stuck on a lock or a silent server must
            # not hold the writer (and flush(), stop()) forever: its records go to the fallback.
            async with asyncio.timeout(self._pool_timeout):
                async with self._connection() as conn, conn.cursor() as cur:
                    await cur.executemany(_UPSERT, rows)
        except TimeoutError as exc:
            raise StoreUnavailable(
                f"postgresql {self.target}: write timed out after {self._pool_timeout:g}s"
            ) from exc

    async def fetch(
        self, columns: Sequence[str], since: float, until: float, limit: int | None = None,
        instance: str | None = None, backend: str | None = None,
    ) -> list[tuple[Any, ...]]:
        sql, params = window_query("%s", columns, since, until, limit,
                                   instance=instance, backend=backend)
        rows: list[tuple[Any, ...]] = []
        async with self._connection() as conn:
            cur = await conn.execute(sql, params)
            # psycopg turns rows into Python objects as they are fetched, on the event loop: in
            # batches, yielding between them, so 200,000 rows never stall the streams beside.
            while batch := await cur.fetchmany(_FETCH_BATCH):
                rows.extend(batch)
                await asyncio.sleep(0)
        return rows

    async def purge(self, before: float) -> int:
        async with self._connection() as conn:
            cur = await conn.execute("DELETE FROM requests WHERE received_at < %s", [before])
            return cur.rowcount

    async def get(self, request_id: str) -> JournalRecord | None:
        async with self._connection() as conn:
            cur = await conn.execute(_LOOKUP, [request_id] * 3)
            row = await cur.fetchone()
        return None if row is None else record_from_row(COLUMN_NAMES, row)

    async def count(self) -> int:
        async with self._connection() as conn:
            cur = await conn.execute("SELECT count(*) FROM requests")
            row = await cur.fetchone()
            return int(row[0]) if row else 0


__all__ = ["PostgresStore", "redact"]
