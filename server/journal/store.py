"""What the journal needs from a database, and how a backend reports failure.

Two kinds of failure matter and are handled differently: the database is unreachable (keep the
records in the fallback file and retry later) or it refused these particular records (retry them one
by one and move the refused ones aside, so one poison record cannot block a whole file forever).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import msgspec

from schemas.journal import JournalRecord
from server.journal.migrations import Dialect


class StoreError(Exception):
    """Base of every database failure the journal handles."""


class StoreUnavailable(StoreError):
    """The database could not be reached or did not answer; retry later."""


class StoreRejected(StoreError):
    """The database answered but refused the data; retrying the same records will not help."""


class AppliedMigration(msgspec.Struct, frozen=True):
    version: int
    name: str
    applied_at: float


class Store(Protocol):
    """A journal backend. Every method is safe to await from the event loop (never blocks it)."""

    dialect: Dialect
    target: str  # where it writes, with any password removed; shown in health and the CLI

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def migrate(self) -> list[int]:
        """Apply pending migrations; the versions applied now (empty if already current)."""
        ...

    async def applied(self) -> list[AppliedMigration]: ...

    async def ping(self) -> None: ...

    async def upsert(self, records: Sequence[JournalRecord]) -> None:
        """Write records in one transaction; a row is replaced only by a higher-or-equal revision."""
        ...

    async def fetch(
        self, columns: Sequence[str], since: float, until: float, limit: int | None = None,
        instance: str | None = None, backend: str | None = None,
    ) -> list[tuple[Any, ...]]:
        """Rows with since <= received_at < until (of one sidecar instance and one backend, when
        given), in no particular order; the newest `limit` of them when there are more (None:
        all). Never converts many rows on the event loop in one go."""
        ...

    async def purge(self, before: float) -> int:
        """Delete records received before `before`; how many went."""
        ...

    async def get(self, request_id: str) -> JournalRecord | None:
        """The record with this request id, or (when none has it) the newest whose client sent
        this X-Request-Id; None when neither exists."""
        ...

    async def count(self) -> int: ...


__all__ = ["AppliedMigration", "Store", "StoreError", "StoreRejected", "StoreUnavailable"]
