"""Shared helpers for the journal's tests: a record maker, the ids in a database, a store that
fails on demand, the `db` verbs run in-process, and an async wait on a condition."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from schemas.journal import JournalRecord
from server.journal import open_store, resolve
from server.journal.store import AppliedMigration, Store, StoreRejected, StoreUnavailable

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z, a multiple of 300 s


def rec(key: int | str, **fields: Any) -> JournalRecord:
    """A completed record: `rec(3)` is request r3, received at T0 + 3 s, revision 103 (so a spool
    written by hand orders like the journal's own); `rec("v1")` is request v1 at T0."""
    if isinstance(key, int):
        base: dict[str, Any] = {"request_id": f"r{key}", "received_at": T0 + key, "revision": 100 + key}
    else:
        base = {"request_id": key, "received_at": T0}
    base |= {"client": "c", "endpoint": "/api/chat", "status": "completed"}
    return JournalRecord(**(base | fields))


async def ids(dsn: str) -> list[str]:
    """The request ids in the database at `dsn`, sorted."""
    store = open_store(resolve(dsn))
    await store.open()
    try:
        return sorted(r[0] for r in await store.fetch(("request_id",), 0.0, 1e12))
    finally:
        await store.close()


def run_db(*argv: str) -> int:
    """`smart-proxy ARGV` for the `db` verbs, in this process."""
    from server.cli.db import register

    parser = argparse.ArgumentParser(prog="smart-proxy")
    register(parser.add_subparsers(dest="verb", required=True))
    args = parser.parse_args(argv)
    return int(args.run(args))


async def until(
    check: Callable[[], bool | Awaitable[bool]], *, within: float = 5.0, what: str = "the condition"
) -> None:
    """Wait for `check` (sync or async) to hold, yielding to the loop between looks."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if await result if isinstance(result, Awaitable) else result:
            return
        assert time.monotonic() < deadline, f"{what}: not within {within}s"
        await asyncio.sleep(0.01)


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
        self, columns: Sequence[str], since: float, until: float, limit: int | None = None,
        instance: str | None = None, backend: str | None = None,
    ) -> list[tuple[Any, ...]]:
        return await self.inner.fetch(columns, since, until, limit, instance, backend)

    async def purge(self, before: float) -> int:
        return await self.inner.purge(before)

    async def count(self) -> int:
        return await self.inner.count()

    async def get(self, request_id: str) -> JournalRecord | None:
        return await self.inner.get(request_id)

    async def upsert(self, records: Sequence[JournalRecord]) -> None:
        if self.refuse and any(r.request_id == self.refuse for r in records):
            raise StoreRejected("value out of range")
        if self.fail_after is not None and self.upserts >= self.fail_after:
            raise StoreUnavailable("connection refused")
        self.upserts += 1
        await self.inner.upsert(records)


