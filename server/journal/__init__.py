"""The request journal: one record per request, in SQLite or PostgreSQL, never lost.

The server calls only this:

    journal = open_journal(dsn, store_prompts="hash", retention_seconds=30 * 86400)
    await journal.start()          # migrate, replay fallback files, start the background writer
    journal.submit(record)         # on the request path: non-blocking, never raises
    await journal.analytics(hours=24, group_by="model", limit=10)   # AnalyticsError → 400
    journal.health()               # backend, connected, pending, fallback lines, last error
    await journal.stop()           # flush everything, stop every task
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from server.journal.analytics import GROUP_BY, AnalyticsError
from server.journal.analytics_worker import AnalyticsBusy
from server.journal.dsn import ENV_VAR, JournalConfigError, Target, resolve
from server.journal.fallback import FallbackSpool
from server.journal.journal import Journal
from server.journal.records import StorePrompts
from server.journal.replay import ReplayReport
from server.journal.store import Store, StoreError, StoreRejected, StoreUnavailable


def open_store(target: Target, *, timeout: float = 5.0) -> Store:
    """The backend for a target. `timeout`: how long one operation may wait for the database
    (a pool connection, a SQLite lock) before it counts as unavailable."""
    if target.kind == "postgresql":
        from server.journal.pg_store import PostgresStore

        return PostgresStore(target.location, pool_timeout=timeout)
    from server.journal.sqlite_store import SqliteStore

    return SqliteStore(Path(target.location), busy_timeout=timeout)


def open_journal(
    dsn: str | None = None,
    *,
    store_prompts: StorePrompts = "hash",
    retention_seconds: float | None = None,
    fallback_dir: Path | str | None = None,
    store_timeout: float = 5.0,
    instance: str | None = None,
    **tuning: Any,
) -> Journal:
    """A Journal for `dsn` (None: $SMART_PROXY_DB, else ./db/requests.db); not started yet.

    `retention_seconds` None or 0 keeps records forever. `store_timeout`: how long a write may
    wait for the database before its records go to the fallback file instead. `tuning` passes batch_size, max_pending,
    retry_initial, retry_max and purge_interval through to Journal. JournalConfigError on a bad DSN.
    `instance`: the name this sidecar's records carry (several may share one database).
    """
    if store_prompts not in ("full", "hash", "none"):
        raise JournalConfigError(f"journal.store_prompts: {store_prompts!r}; use full, hash or none")
    if retention_seconds is not None and retention_seconds < 0:
        raise JournalConfigError(f"journal.retention: {retention_seconds!r} must be zero or more seconds")
    target = resolve(dsn)
    directory = Path(fallback_dir) if fallback_dir is not None else target.default_fallback_dir()
    return Journal(
        open_store(target, timeout=store_timeout),
        FallbackSpool(directory),
        store_prompts=store_prompts,
        retention_seconds=retention_seconds,
        target=target,
        instance=instance,
        **tuning,
    )


__all__ = [
    "ENV_VAR",
    "GROUP_BY",
    "AnalyticsBusy",
    "AnalyticsError",
    "Journal",
    "JournalConfigError",
    "ReplayReport",
    "Store",
    "StoreError",
    "StoreRejected",
    "StoreUnavailable",
    "open_journal",
    "open_store",
    "resolve",
]
