"""What the sidecar needs of a journal: `server.journal.Journal` fits, and so does `NullJournal`
(no journal configured)."""

from __future__ import annotations

from typing import Any, Protocol

from policy.load import JournalSettings
from schemas.journal import JournalRecord
from server.journal.store import StoreUnavailable


class Journal(Protocol):
    """What the sidecar needs of a journal (server.journal.Journal fits; so does NullJournal)."""

    def submit(self, record: JournalRecord) -> None: ...

    def admit(self, record: JournalRecord) -> None:
        """A request was accepted: `record` is what a crash before its end would leave."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def health(self) -> dict[str, Any]: ...

    def configure(self, settings: JournalSettings) -> None:
        """A reload's `[journal]` settings, for every record handed over from now on."""
        ...

    async def analytics(
        self, hours: Any, group_by: Any, limit: Any, *, instance: Any = None, backend: Any = None
    ) -> dict[str, Any]:
        """server.journal's report; AnalyticsError (400) or StoreUnavailable (503)."""
        ...

    async def lookup(self, request_id: str) -> JournalRecord | None:
        """One request's latest record (by the journal's id or the client's); StoreUnavailable
        when the database does not answer."""
        ...


class NullJournal:
    """No journal configured: records are dropped."""

    def submit(self, record: JournalRecord) -> None:
        return None

    def admit(self, record: JournalRecord) -> None:
        return None

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def health(self) -> dict[str, Any]:
        return {"backend": "none"}

    def configure(self, settings: JournalSettings) -> None:
        return None

    async def analytics(
        self, hours: Any, group_by: Any, limit: Any, *, instance: Any = None, backend: Any = None
    ) -> dict[str, Any]:
        raise StoreUnavailable("no journal is configured")

    async def lookup(self, request_id: str) -> JournalRecord | None:
        return None
