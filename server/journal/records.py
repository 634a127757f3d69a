"""How a JournalRecord becomes a database row and back, and what the journal adds on hand-off.

The column list is derived from the record schema once, so the two backends, the migrations and
the fallback file can never disagree about which fields exist.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

from schemas.journal import JournalRecord
from schemas.policy_file import StorePrompts

# Column kinds; each backend maps them to its own SQL types (see migrations.py).
_KIND_BY_FIELD: dict[str, str] = {
    "request_id": "key",
    "score_terms": "json",
    "resident": "bool",
}


def _kind(name: str, annotation: Any) -> str:
    if name in _KIND_BY_FIELD:
        return _KIND_BY_FIELD[name]
    text = repr(annotation)
    if "float" in text:
        return "float"
    if "int" in text:
        return "int"
    return "text"


COLUMNS: tuple[tuple[str, str], ...] = tuple(
    (f.name, _kind(f.name, f.type)) for f in msgspec.structs.fields(JournalRecord)
)
COLUMN_NAMES: tuple[str, ...] = tuple(name for name, _ in COLUMNS)
_JSON_COLUMNS = frozenset(name for name, kind in COLUMNS if kind == "json")
_BOOL_COLUMNS = frozenset(name for name, kind in COLUMNS if kind == "bool")
_REQUIRED = frozenset(f.name for f in msgspec.structs.fields(JournalRecord) if f.required)
REQUIRED_COLUMNS: frozenset[str] = _REQUIRED


def to_row(record: JournalRecord) -> tuple[Any, ...]:
    """Column values in COLUMN_NAMES order; dicts as JSON text and booleans as 0/1 on both DBs."""
    values: list[Any] = []
    for name in COLUMN_NAMES:
        value = getattr(record, name)
        if name in _JSON_COLUMNS:
            value = msgspec.json.encode(value).decode()
        elif name in _BOOL_COLUMNS and value is not None:
            value = int(value)
        elif isinstance(value, str) and "\x00" in value:
            # PostgreSQL text cannot hold NUL; replace it on both DBs so they store the same.
            value = value.replace("\x00", "\ufffd")
        values.append(value)
    return tuple(values)


def from_row(names: Sequence[str], row: Sequence[Any]) -> dict[str, Any]:
    """A row (any subset of columns) as plain Python values, identical whichever DB it came from."""
    out: dict[str, Any] = {}
    for name, value in zip(names, row, strict=True):
        if value is not None:
            if name in _JSON_COLUMNS:
                value = msgspec.json.decode(value)
            elif name in _BOOL_COLUMNS:
                value = bool(value)
        out[name] = value
    return out


_ENCODE_NAME = {f.name: f.encode_name for f in msgspec.structs.fields(JournalRecord)}


def record_from_row(names: Sequence[str], row: Sequence[Any]) -> JournalRecord:
    values = from_row(names, row)
    # convert() expects the JSON spelling ("class"), columns use the attribute name.
    return msgspec.convert({_ENCODE_NAME[k]: v for k, v in values.items()}, JournalRecord)


def lookup_sql(placeholder: str) -> str:
    """One request's record: by the journal's id first, else the newest by the client's id."""
    names = ", ".join(name for name, _ in COLUMNS)
    return (
        f"SELECT {names} FROM requests WHERE request_id = {placeholder}"
        f" OR client_request_id = {placeholder}"
        f" ORDER BY (request_id = {placeholder}) DESC, received_at DESC LIMIT 1"
    )


def window_query(
    placeholder: str, columns: Sequence[str], since: float, until: float, limit: int | None, *,
    instance: str | None = None, backend: str | None = None,
) -> tuple[str, list[Any]]:
    """How the journal reads a time window, as SQL and its parameters: the rows (of one sidecar
    instance and of one backend, when given), the newest `limit` of them (None: all)."""
    where = [f"received_at >= {placeholder}", f"received_at < {placeholder}"]
    params: list[Any] = [since, until]
    for column, value in (("instance", instance), ("backend", backend)):
        if value is not None:
            where.append(f"{column} = {placeholder}")
            params.append(value)
    sql = f"SELECT {', '.join(columns)} FROM requests WHERE {' AND '.join(where)}"
    if limit is not None:
        sql += f" ORDER BY received_at DESC LIMIT {int(limit)}"
    return sql, params


def upsert_sql(placeholder: str) -> str:
    """One portable statement for both dialects: insert, or replace a row with a LOWER revision.

    The revision guard is what makes replay order irrelevant: an old copy from a fallback file that
    arrives after a newer state was written directly is simply ignored.
    """
    cols = ", ".join(COLUMN_NAMES)
    marks = ", ".join([placeholder] * len(COLUMN_NAMES))
    updates = ", ".join(f"{c} = excluded.{c}" for c in COLUMN_NAMES if c != "request_id")
    return (
        f"INSERT INTO requests ({cols}) VALUES ({marks}) "
        f"ON CONFLICT (request_id) DO UPDATE SET {updates} "
        "WHERE requests.revision <= excluded.revision"
    )


def latest_per_id(records: Iterable[JournalRecord]) -> list[JournalRecord]:
    """Keep one record per request id: the highest revision, the later one on a tie."""
    best: dict[str, JournalRecord] = {}
    for record in records:
        seen = best.get(record.request_id)
        if seen is None or record.revision >= seen.revision:
            best[record.request_id] = record
    return list(best.values())


def _digest(text: str | None) -> str | None:
    if text is None:
        return None
    return "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


_HASHED = re.compile(r"sha256:[0-9a-f]{64}")


class Stamper:
    """Prepares a record on hand-off: prompt policy, derived timings and a strictly rising revision.

    Revisions are wall-clock nanoseconds so they keep rising across restarts of the sidecar; the
    max(+1) keeps them strictly rising within a process even if the clock steps back.
    """

    def __init__(self, store_prompts: StorePrompts, instance: str | None = None) -> None:
        self.store_prompts = store_prompts
        self.instance = instance
        self._last = 0

    def next_revision(self) -> int:
        self._last = max(time.time_ns(), self._last + 1)
        return self._last

    def prepare(self, record: JournalRecord) -> JournalRecord:
        """On hand-off: the revision, the derived timings and the prompt policy in force. `redact`
        applies the policy again when the record leaves memory, so a record gets the stricter of
        the setting at hand-off and the setting at writing (a reload reaches waiting records)."""
        record = self._redact_one(record)
        changes: dict[str, Any] = {"revision": self.next_revision()}
        if record.instance is None and self.instance is not None:
            changes["instance"] = self.instance
        if record.queue_wait_ms is None and record.dispatched_at is not None:
            changes["queue_wait_ms"] = max(0.0, (record.dispatched_at - record.received_at) * 1000)
        if record.duration_ms is None and record.completed_at is not None:
            changes["duration_ms"] = max(0.0, (record.completed_at - record.received_at) * 1000)
        return msgspec.structs.replace(record, **changes)

    def redact(self, records: list[JournalRecord]) -> list[JournalRecord]:
        """The prompt policy in force now, applied to records about to be written anywhere."""
        if self.store_prompts == "full":
            return records
        return [self._redact_one(r) for r in records]

    def _redact_one(self, record: JournalRecord) -> JournalRecord:
        changes: dict[str, Any] = {}
        if self.store_prompts == "full":
            return record
        if self.store_prompts == "none":
            if record.prompt is not None or record.response is not None:
                changes = {"prompt": None, "response": None}
        else:
            # A value already hashed (a record handed over twice) is not hashed again — only a
            # digest exactly: a prompt that merely starts with "sha256:" is still text.
            for name in ("prompt", "response"):
                value = getattr(record, name)
                if value is not None and not _HASHED.fullmatch(value):
                    changes[name] = _digest(value)
        return msgspec.structs.replace(record, **changes) if changes else record


__all__ = [
    "COLUMNS",
    "COLUMN_NAMES",
    "REQUIRED_COLUMNS",
    "Stamper",
    "StorePrompts",
    "from_row",
    "latest_per_id",
    "record_from_row",
    "to_row",
    "upsert_sql",
    "window_query",
]
