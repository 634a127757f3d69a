"""Journal → replayable trace (schemas/trace.py): one JSON line per request, oldest first."""

from __future__ import annotations

from collections.abc import Iterator

import msgspec

from schemas.trace import TraceRecord
from server.journal.records import from_row
from server.journal.store import Store

_COLUMNS = (
    "request_id", "received_at", "client", "request_class", "model", "endpoint",
    "prompt_eval_count", "eval_count", "status", "num_ctx",
)


async def trace_lines(store: Store, since: float, until: float) -> Iterator[bytes]:
    """Encoded trace lines for requests received in [since, until)."""
    rows = [from_row(_COLUMNS, r) for r in await store.fetch(_COLUMNS, since, until)]
    rows.sort(key=lambda r: (r["received_at"], r["request_id"]))
    start = rows[0]["received_at"] if rows else since
    records = (
        TraceRecord(
            arrival=round(r["received_at"] - start, 6),
            at=r["received_at"],
            client=r["client"],
            request_class=r["request_class"],
            model=r["model"],
            endpoint=r["endpoint"],
            prompt_tokens=r["prompt_eval_count"],
            output_tokens=r["eval_count"],
            status=r["status"],
            num_ctx=r["num_ctx"],
        )
        for r in rows
    )
    return (msgspec.json.encode(t) + b"\n" for t in records)


__all__ = ["trace_lines"]
