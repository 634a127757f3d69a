"""Analytics over the journal, computed in Python from plain rows so both databases agree exactly.

SQL does only the portable part (a time window on an indexed column, at most `MAX_ROWS` of the
newest rows); grouping, percentiles and run lengths happen here, over rows sorted by
(received_at, request_id) in Python, so neither a dialect's percentile functions nor its text
collation can make SQLite and PostgreSQL differ. The sidecar runs it in a worker process
(analytics_worker.py), never on the event loop: 200,000 rows take seconds of CPU.

Definitions: an *error* is a request that failed or was rejected (a client cancelling is counted
apart); percentiles are nearest-rank; a *model load* is a dispatch whose model was not resident;
a *run* is a maximal sequence of consecutive dispatches (or arrivals) of the same model.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import msgspec

from schemas.figures import percentile
from schemas.journal import BACKEND_PATTERN, INSTANCE_PATTERN, STATUSES
from server.journal.records import from_row
from server.journal.store import Store

GROUP_BY = ("model", "client", "ip", "class", "endpoint", "status", "instance", "backend")
MAX_HOURS = 24 * 366.0
MAX_LIMIT = 1000
MAX_ROWS = 500_000  # rows one report reads; beyond it the report covers the newest and says so
_BUCKETS = (60, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 604800)
_MAX_BUCKETS = 48
_HISTOGRAM_BINS = 10
COLUMNS = (
    "request_id", "client", "ip", "model", "endpoint", "request_class", "status", "error",
    "received_at", "dispatched_at", "queue_wait_ms", "duration_ms", "score", "resident", "instance",
    "backend",
)
INSTANCE = re.compile(INSTANCE_PATTERN)
BACKEND = re.compile(BACKEND_PATTERN)
_FIELD_OF = {"class": "request_class"}
_ERRORS = ("failed", "rejected", "interrupted")  # interrupted: the sidecar died under it

Row = dict[str, Any]


class AnalyticsError(ValueError):
    """Bad analytics parameters; the message lists every problem (the server answers 400)."""


class AnalyticsQuery(msgspec.Struct, frozen=True):
    hours: float
    group_by: str
    limit: int
    instance: str | None = None  # one sidecar's records only (a journal several share)
    backend: str | None = None  # one Ollama server's records only (a sidecar may feed several)

    @classmethod
    def parse(
        cls, *, hours: Any, group_by: Any, limit: Any, instance: Any = None, backend: Any = None
    ) -> AnalyticsQuery:
        """Accepts query-string text or numbers; reports every bad parameter at once."""
        errors: list[str] = []
        h = _number(hours, float)
        if h is None or not (0 < h <= MAX_HOURS):
            errors.append(f"hours: {hours!r} is not valid; give a number of hours above 0 and at most {MAX_HOURS:g}")
        if group_by not in GROUP_BY:
            errors.append(f"group_by: {group_by!r} is not valid; use one of {', '.join(GROUP_BY)}")
        n = _number(limit, int)
        if n is None or not (1 <= n <= MAX_LIMIT):
            errors.append(f"limit: {limit!r} is not valid; give a whole number from 1 to {MAX_LIMIT}")
        if instance is not None and not (isinstance(instance, str) and INSTANCE.match(instance)):
            errors.append(f"instance: {instance!r} is not valid; give a sidecar's instance name "
                          "(letters, digits and . _ : -, at most 128)")
        if backend is not None and not (isinstance(backend, str) and BACKEND.match(backend)):
            errors.append(f"backend: {backend!r} is not valid; give a backend's name "
                          "(letters, digits and . _ -, at most 63)")
        if errors:
            raise AnalyticsError("; ".join(errors))
        assert h is not None and n is not None
        return cls(hours=h, group_by=str(group_by), limit=n, instance=instance, backend=backend)


def _number(value: Any, kind: Callable[[str], Any]) -> Any:
    if isinstance(value, bool):
        return None
    try:
        number = kind(value.strip()) if isinstance(value, str) else value
    except ValueError:
        return None
    if kind is int and not isinstance(number, int):
        return None
    if not isinstance(number, int | float) or not math.isfinite(number):
        return None
    return number


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def stats(values: Iterable[float | None]) -> dict[str, Any]:
    data = sorted(v for v in values if v is not None)
    if not data:
        return {"count": 0, "mean": None, "p50": None, "p95": None, "max": None}
    return {
        "count": len(data),
        "mean": _r(math.fsum(data) / len(data)),
        "p50": _r(percentile(data, 0.50)),
        "p95": _r(percentile(data, 0.95)),
        "max": _r(data[-1]),
    }


def _key(row: Row, dimension: str) -> Any:
    return row[_FIELD_OF.get(dimension, dimension)]


def _ranked(counter: Counter[Any], limit: int) -> list[tuple[Any, int]]:
    # Most first; ties by key so the order never depends on the database's row order.
    return sorted(counter.items(), key=lambda kv: (-kv[1], "" if kv[0] is None else str(kv[0])))[:limit]


def _counts(rows: Sequence[Row], dimension: str, limit: int) -> list[dict[str, Any]]:
    counter = Counter(_key(r, dimension) for r in rows)
    return [{"key": k, "requests": n} for k, n in _ranked(counter, limit)]


def _latency(rows: Sequence[Row], dimension: str, limit: int) -> list[dict[str, Any]]:
    groups: dict[Any, list[Row]] = {}
    for row in rows:
        groups.setdefault(_key(row, dimension), []).append(row)
    ranked = _ranked(Counter({k: len(v) for k, v in groups.items()}), limit)
    out = []
    for key, count in ranked:
        members = groups[key]
        errors = sum(1 for r in members if r["status"] in _ERRORS)
        out.append({
            "key": key,
            "requests": count,
            "errors": errors,
            "error_rate": _r(errors / count),
            "wait_ms": stats(r["queue_wait_ms"] for r in members),
            "duration_ms": stats(r["duration_ms"] for r in members),
        })
    return out


def _scores(rows: Sequence[Row]) -> dict[str, Any]:
    data = sorted(r["score"] for r in rows if r["score"] is not None)
    summary = stats(data)
    summary["min"] = _r(data[0]) if data else None
    histogram: list[dict[str, Any]] = []
    if data:
        low, high = data[0], data[-1]
        width = (high - low) / _HISTOGRAM_BINS if high > low else 0.0
        bins = _HISTOGRAM_BINS if width else 1
        counts = [0] * bins
        for value in data:
            index = min(int((value - low) / width), bins - 1) if width else 0
            counts[index] += 1
        for i, count in enumerate(counts):
            top = high if i == bins - 1 else low + (i + 1) * width
            histogram.append({"from": _r(low + i * width), "to": _r(top), "count": count})
    summary["histogram"] = histogram
    return summary


def _errors(rows: Sequence[Row], limit: int) -> dict[str, Any]:
    total = len(rows)
    by_status = Counter(r["status"] for r in rows)
    errors = sum(by_status[s] for s in _ERRORS)
    messages = Counter(r["error"] for r in rows if r["status"] in _ERRORS and r["error"])
    return {
        "requests": total,
        "errors": errors,
        "error_rate": _r(errors / total) if total else None,
        "cancelled": by_status["cancelled"],
        "by_status": {s: by_status[s] for s in STATUSES},
        "top_messages": [{"message": m, "count": n} for m, n in _ranked(messages, limit)],
    }


def bucket_seconds(hours: float) -> int:
    window = hours * 3600
    for size in _BUCKETS:
        if window / size <= _MAX_BUCKETS:
            return size
    return _BUCKETS[-1]


def _timeline(rows: Sequence[Row], since: float, until: float, hours: float) -> dict[str, Any]:
    size = bucket_seconds(hours)
    # Buckets sit on multiples of their size (UTC), so two reports of the same hour line up.
    first = math.floor(since / size) * size
    count = max(1, math.ceil((until - first) / size))
    requests, errors = [0] * count, [0] * count
    for row in rows:
        index = min(int((row["received_at"] - first) // size), count - 1)
        requests[index] += 1
        errors[index] += row["status"] in _ERRORS
    return {
        "bucket_seconds": size,
        "buckets": [
            {"start": float(first + i * size), "requests": requests[i], "errors": errors[i]}
            for i in range(count)
        ],
    }


def run_lengths(models: Sequence[Any]) -> list[int]:
    runs: list[int] = []
    previous: Any = object()
    for model in models:
        if runs and model == previous:
            runs[-1] += 1
        else:
            runs.append(1)
        previous = model
    return runs


def _runs_summary(runs: Sequence[int]) -> dict[str, Any]:
    ordered = sorted(runs)
    return {
        "runs": len(runs),
        "mean": _r(sum(runs) / len(runs)) if runs else None,
        "p50": percentile(ordered, 0.5),
        "max": ordered[-1] if ordered else None,
    }


def _residency(rows: Sequence[Row]) -> dict[str, Any]:
    dispatched = sorted(
        (r for r in rows if r["dispatched_at"] is not None),
        key=lambda r: (r["dispatched_at"], r["request_id"]),
    )
    known = [r for r in dispatched if r["resident"] is not None]
    hits = sum(1 for r in known if r["resident"])
    # Runs are per GPU, i.e. per (instance, backend): each sidecar sharing a journal, and each
    # backend of one sidecar, orders its own stream; interleaved, their streams would be runs of
    # nothing.
    streams: dict[Any, list[Row]] = {}
    for r in dispatched:
        streams.setdefault((r.get("instance"), r.get("backend")), []).append(r)
    by_dispatch = [n for rs in streams.values() for n in run_lengths([r["model"] for r in rs])]
    # The seed's "bunching": runs of the same model in ARRIVAL order — what clients sent, not what
    # the scheduler did. Same requests, two orders; the ratio is the scheduler's grouping gain.
    by_arrival = [n for rs in streams.values() for n in run_lengths(
        [r["model"] for r in sorted(rs, key=lambda r: (r["received_at"], r["request_id"]))])]
    dispatch_summary, arrival_summary = _runs_summary(by_dispatch), _runs_summary(by_arrival)
    gain = None
    if dispatch_summary["mean"] and arrival_summary["mean"]:
        gain = _r(dispatch_summary["mean"] / arrival_summary["mean"])
    return {
        "residency": {
            "dispatched": len(dispatched),
            "known": len(known),
            "resident_hits": hits,
            "hit_rate": _r(hits / len(known)) if known else None,
            "model_loads": len(known) - hits,
            "model_switches": max(0, len(by_dispatch) - len(streams)),  # within each stream
        },
        "grouping": {
            "dispatch_runs": dispatch_summary,
            "arrival_runs": arrival_summary,
            "grouping_gain": gain,
        },
    }


def report(
    rows: Sequence[Row], query: AnalyticsQuery, since: float, until: float, *, truncated: bool = False
) -> dict[str, Any]:
    """The whole report from rows already limited to the window. Pure: no I/O, no clock."""
    rows = sorted(rows, key=lambda r: (r["received_at"], r["request_id"]))
    limit = query.limit
    return {
        "window": {
            "hours": query.hours, "since": since, "until": until,
            "group_by": query.group_by, "limit": limit, "instance": query.instance,
            "backend": query.backend,
            # More than MAX_ROWS requests in the window: the report covers the newest of them.
            "truncated": truncated, "rows": len(rows),
        },
        "totals": _errors(rows, limit)["by_status"] | {"requests": len(rows)},
        "by_model": _counts(rows, "model", limit),
        "by_client": _counts(rows, "client", limit),
        "by_ip": _counts(rows, "ip", limit),
        "groups": {"by": query.group_by, "rows": _latency(rows, query.group_by, limit)},
        "latency": {
            "by_model": _latency(rows, "model", limit),
            "by_class": _latency(rows, "class", limit),
        },
        "scores": _scores(rows),
        "errors": _errors(rows, limit),
        "timeline": _timeline(rows, since, until, query.hours),
        **_residency(rows),
    }


async def compute(
    store: Store, query: AnalyticsQuery, now: float, *, max_rows: int = MAX_ROWS
) -> dict[str, Any]:
    since = now - query.hours * 3600
    raw = await store.fetch(COLUMNS, since, now, max_rows + 1, instance=query.instance,
                            backend=query.backend)
    truncated = len(raw) > max_rows

    def build() -> dict[str, Any]:
        rows = [from_row(COLUMNS, r) for r in raw[:max_rows]]  # fetched newest first
        return report(rows, query, since, now, truncated=truncated)

    return await asyncio.to_thread(build)


__all__ = [
    "COLUMNS", "GROUP_BY", "MAX_ROWS", "AnalyticsError", "AnalyticsQuery", "bucket_seconds", "compute", "percentile",
    "report", "run_lengths", "stats",
]
