"""Analytics: seeded data with answers worked out by hand, the same on SQLite and PostgreSQL.

The seed: arrivals alternate models A B A B, the scheduler dispatched them A A B B — so the
dispatch runs are longer than the arrival runs, which is exactly what the grouping figures show.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest
from pg_fixtures import PgServer

from schemas.journal import JournalRecord
from server.journal import AnalyticsError, Journal, analytics, open_journal
from server.journal.analytics import (
    GROUP_BY,
    AnalyticsQuery,
    bucket_seconds,
    compute,
    percentile,
    report,
    run_lengths,
)

pytestmark = pytest.mark.anyio

T0 = 1_767_225_600.0  # a multiple of 300 s, so the 5-minute buckets start exactly at T0
NOW = T0 + 3600


def rec(rid: str, t: float, model: str | None, client: str, ip: str, cls: str, status: Any,
        **more: Any) -> JournalRecord:
    return JournalRecord(request_id=rid, received_at=T0 + t, model=model, client=client, ip=ip,
                         request_class=cls, status=status, endpoint="/api/chat", **more)


SEED = [
    rec("a", 10, "A", "alice", "10.0.0.1", "interactive", "completed", queue_wait_ms=100.0,
        duration_ms=1000.0, score=10.0, resident=True, dispatched_at=T0 + 10.1),
    rec("b", 20, "B", "bob", "10.0.0.2", "batch", "completed", queue_wait_ms=10300.0,
        duration_ms=3000.0, score=200.0, resident=False, dispatched_at=T0 + 30.3),
    rec("c", 30, "A", "alice", "10.0.0.1", "interactive", "completed", queue_wait_ms=200.0,
        duration_ms=2000.0, score=20.0, resident=True, dispatched_at=T0 + 30.2),
    rec("d", 40, "B", "bob", "10.0.0.2", "batch", "failed", error="upstream timeout",
        queue_wait_ms=400.0, duration_ms=5000.0, score=400.0, resident=True, dispatched_at=T0 + 40.4),
    rec("e", 50, "A", "carol", "10.0.0.1", "interactive", "rejected", error="queue full", http_status=429),
    rec("f", 3000, "C", "carol", "10.0.0.3", "batch", "failed", error="upstream timeout",
        queue_wait_ms=50.0, duration_ms=100.0, score=800.0, resident=False, dispatched_at=T0 + 3000.05),
    rec("h", 3500, "A", "alice", "10.0.0.1", "interactive", "cancelled", error="client went away",
        duration_ms=50.0),
    # Outside the one-hour window: must not count anywhere.
    rec("old", -10, "Z", "zed", "10.9.9.9", "batch", "failed", error="ancient", score=1e6),
]


def stat(count: int, mean: float | None, p50: float | None, p95: float | None, mx: float | None) -> dict[str, Any]:
    return {"count": count, "mean": mean, "p50": p50, "p95": p95, "max": mx}


A_ROW = {"key": "A", "requests": 4, "errors": 1, "error_rate": 0.25,
         "wait_ms": stat(2, 150.0, 100.0, 200.0, 200.0),
         "duration_ms": stat(3, 1016.667, 1000.0, 2000.0, 2000.0)}
B_ROW = {"key": "B", "requests": 2, "errors": 1, "error_rate": 0.5,
         "wait_ms": stat(2, 5350.0, 400.0, 10300.0, 10300.0),
         "duration_ms": stat(2, 4000.0, 3000.0, 5000.0, 5000.0)}
C_ROW = {"key": "C", "requests": 1, "errors": 1, "error_rate": 1.0,
         "wait_ms": stat(1, 50.0, 50.0, 50.0, 50.0), "duration_ms": stat(1, 100.0, 100.0, 100.0, 100.0)}


# SEED as two sidecars (host-1, host-2) with two backends each would write it: models A and C ran
# on gpu0, B on gpu1; e (rejected) and h (cancelled while queued) reached no backend.
PLACED = {"a": ("host-1", "gpu0"), "b": ("host-1", "gpu1"), "c": ("host-2", "gpu0"),
          "d": ("host-2", "gpu1"), "e": ("host-1", None), "f": ("host-2", "gpu0"),
          "h": ("host-2", None), "old": ("host-1", "gpu1")}
SEED_ON_BACKENDS = [msgspec.structs.replace(r, instance=PLACED[r.request_id][0],
                                            backend=PLACED[r.request_id][1]) for r in SEED]


@contextlib.asynccontextmanager
async def seeded_journal(
    dsn: str, tmp_path: Path, seed: Sequence[JournalRecord] = SEED
) -> AsyncIterator[Journal]:
    """A started journal holding `seed`, stopped however the block ends."""
    journal = open_journal(dsn, fallback_dir=tmp_path / "fallback")
    await journal.start()
    for record in seed:
        journal.submit(record)
    await journal.flush()
    try:
        yield journal
    finally:
        await journal.stop()


async def seeded_report(
    dsn: str, tmp_path: Path, seed: Sequence[JournalRecord] = SEED, **params: Any
) -> dict[str, Any]:
    async with seeded_journal(dsn, tmp_path, seed) as journal:
        return await journal.analytics(now=NOW, **params)


@pytest.mark.parametrize("where", ["worker process", "thread"])
async def test_a_window_beyond_the_row_cap_reports_on_its_newest_rows(
    journal_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """More rows than a report may read: the newest ones, and the report says it was cut — from
    the journal's worker process (what the sidecar uses) and from a thread (a store made by hand)."""
    async with seeded_journal(journal_dsn, tmp_path) as journal:
        if where == "thread":
            query = AnalyticsQuery.parse(hours=1, group_by="model", limit=10)
            r = await compute(journal._store, query, NOW, max_rows=3)
        else:
            monkeypatch.setattr(analytics, "MAX_ROWS", 3)
            r = await journal.analytics(hours=1, group_by="model", limit=10, now=NOW)
    assert r["window"]["truncated"] is True and r["window"]["rows"] == 3
    # The three newest arrivals in the window: h (3500 s), f (3000 s), e (50 s).
    assert r["by_model"] == [{"key": "A", "requests": 2}, {"key": "C", "requests": 1}]


async def test_known_answers(journal_dsn: str, tmp_path: Path) -> None:
    """Every figure of the report, field by field, on each database."""
    r = await seeded_report(journal_dsn, tmp_path, hours=1, group_by="model", limit=10)

    assert r["window"] == {"hours": 1.0, "since": T0, "until": NOW, "group_by": "model", "limit": 10, "instance": None,
                           "backend": None, "truncated": False, "rows": 7}
    assert r["totals"] == {"requests": 7, "completed": 3, "failed": 2, "cancelled": 1, "rejected": 1,
                           "interrupted": 0}
    # -- who asked
    assert r["by_model"] == [{"key": "A", "requests": 4}, {"key": "B", "requests": 2}, {"key": "C", "requests": 1}]
    assert r["by_client"] == [{"key": "alice", "requests": 3}, {"key": "bob", "requests": 2},
                              {"key": "carol", "requests": 2}]
    assert r["by_ip"] == [{"key": "10.0.0.1", "requests": 4}, {"key": "10.0.0.2", "requests": 2},
                          {"key": "10.0.0.3", "requests": 1}]
    # -- waits and durations
    assert r["groups"] == {"by": "model", "rows": [A_ROW, B_ROW, C_ROW]}
    assert r["latency"]["by_model"] == [A_ROW, B_ROW, C_ROW]
    assert r["latency"]["by_class"] == [
        A_ROW | {"key": "interactive"},
        {"key": "batch", "requests": 3, "errors": 2, "error_rate": 0.667,
         "wait_ms": stat(3, 3583.333, 400.0, 10300.0, 10300.0),
         "duration_ms": stat(3, 2700.0, 3000.0, 5000.0, 5000.0)},
    ]
    # -- scores: 10 equal bins from the lowest to the highest score
    scores = r["scores"]
    assert {k: scores[k] for k in ("count", "min", "max", "mean", "p50", "p95")} == {
        "count": 5, "min": 10.0, "max": 800.0, "mean": 286.0, "p50": 200.0, "p95": 800.0}
    assert [b["count"] for b in scores["histogram"]] == [2, 0, 1, 0, 1, 0, 0, 0, 0, 1]
    assert (scores["histogram"][0]["from"], scores["histogram"][-1]["to"]) == (10.0, 800.0)
    # -- errors
    assert r["errors"] == {
        "requests": 7, "errors": 3, "error_rate": 0.429, "cancelled": 1,
        "by_status": {"completed": 3, "failed": 2, "cancelled": 1, "rejected": 1, "interrupted": 0},
        "top_messages": [{"message": "upstream timeout", "count": 2}, {"message": "queue full", "count": 1}],
    }
    # -- over time: twelve 5-minute buckets
    timeline = r["timeline"]
    assert timeline["bucket_seconds"] == 300 and len(timeline["buckets"]) == 12
    assert timeline["buckets"][0] == {"start": T0, "requests": 5, "errors": 2}
    assert timeline["buckets"][10] == {"start": T0 + 3000, "requests": 1, "errors": 1}
    assert timeline["buckets"][11] == {"start": T0 + 3300, "requests": 1, "errors": 0}
    assert sum(b["requests"] for b in timeline["buckets"]) == 7
    # -- residency and what the scheduler grouped
    assert r["residency"] == {"dispatched": 5, "known": 5, "resident_hits": 3, "hit_rate": 0.6,
                              "model_loads": 2, "model_switches": 2}
    assert r["grouping"] == {
        "dispatch_runs": {"runs": 3, "mean": 1.667, "p50": 2, "max": 2},
        "arrival_runs": {"runs": 5, "mean": 1.0, "p50": 1, "max": 1},
        "grouping_gain": 1.667,
    }


async def test_group_by_and_limit(journal_dsn: str, tmp_path: Path) -> None:
    """group_by picks the dimension of `groups`; limit trims every top-N list."""
    r = await seeded_report(journal_dsn, tmp_path, hours="1", group_by="client", limit="2")
    assert [row["key"] for row in r["groups"]["rows"]] == ["alice", "bob"]
    assert r["by_model"] == [{"key": "A", "requests": 4}, {"key": "B", "requests": 2}]
    assert r["errors"]["top_messages"] == [{"message": "upstream timeout", "count": 2},
                                          {"message": "queue full", "count": 1}]


@pytest.mark.parametrize("where", ["worker process", "thread"])
async def test_group_by_backend_and_the_backend_filter(
    journal_dsn: str, tmp_path: Path, where: str
) -> None:
    """group_by=backend compares the Ollama servers (requests no backend served under null);
    backend=NAME keeps one server's records, in the database, alone or with instance=NAME — from
    the worker process (the sidecar's path) and from a thread (a store made by hand)."""
    async with seeded_journal(journal_dsn, tmp_path, SEED_ON_BACKENDS) as journal:

        async def run(**params: Any) -> dict[str, Any]:
            params = {"hours": 1, "group_by": "model", "limit": 10} | params
            if where == "thread":
                return await compute(journal._store, AnalyticsQuery.parse(**params), NOW)
            return await journal.analytics(now=NOW, **params)

        grouped = await run(group_by="backend")
        assert [(g["key"], g["requests"], g["errors"]) for g in grouped["groups"]["rows"]] == [
            ("gpu0", 3, 1), (None, 2, 1), ("gpu1", 2, 1)]
        assert grouped["groups"]["rows"][0]["wait_ms"] == stat(3, 116.667, 100.0, 200.0, 200.0)

        gpu1 = await run(backend="gpu1")
        assert gpu1["window"]["backend"] == "gpu1" and gpu1["window"]["rows"] == 2
        assert gpu1["by_model"] == [{"key": "B", "requests": 2}]  # "old" is outside the window
        assert gpu1["totals"]["failed"] == 1

        both = await run(backend="gpu0", instance="host-2", group_by="backend")
        assert [(g["key"], g["requests"]) for g in both["groups"]["rows"]] == [("gpu0", 2)]
        assert (both["window"]["instance"], both["window"]["backend"]) == ("host-2", "gpu0")
        assert (await run(backend="gpu9"))["totals"]["requests"] == 0


@pytest.mark.postgres
async def test_sqlite_and_postgresql_answer_identically(pg_server: PgServer, tmp_path: Path) -> None:
    """The whole report, compared as one value, for every group_by."""
    assert "backend" in GROUP_BY
    for group_by in GROUP_BY:
        lite = await seeded_report(f"sqlite:///{tmp_path / group_by / 'r.db'}", tmp_path / group_by,
                                   SEED_ON_BACKENDS, hours=2, group_by=group_by, limit=3)
        pg = await seeded_report(pg_server.new_database(), tmp_path / group_by, SEED_ON_BACKENDS,
                                 hours=2, group_by=group_by, limit=3)
        assert lite == pg


# -- parameters ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"hours": "0"}, "hours: '0' is not valid"),
        ({"hours": "abc"}, "hours: 'abc' is not valid"),
        ({"hours": 10_000}, "hours: 10000 is not valid"),
        ({"hours": True}, "hours: True is not valid"),
        ({"group_by": "colour"}, "group_by: 'colour' is not valid; use one of model, client, ip, class, endpoint, status"),
        ({"limit": "0"}, "limit: '0' is not valid; give a whole number from 1 to 1000"),
        ({"limit": "2.5"}, "limit: '2.5' is not valid"),
        ({"limit": 1.0}, "limit: 1.0 is not valid"),
        ({"backend": "gpu 0"}, "backend: 'gpu 0' is not valid; give a backend's name"),
        ({"backend": "gpu0\n"}, r"backend: 'gpu0\\n' is not valid"),  # \Z, not $
        ({"backend": "x" * 64}, "backend: 'xxxx"),
        ({"backend": 3}, "backend: 3 is not valid"),
    ],
)
def test_bad_parameters_are_named(params: dict[str, Any], message: str) -> None:
    """Each bad parameter gets a message naming it, its value and what is allowed."""
    query = {"hours": 24, "group_by": "model", "limit": 10} | params
    with pytest.raises(AnalyticsError, match="^" + message.replace(".", r"\.").replace("(", r"\(")):
        AnalyticsQuery.parse(**query)


def test_all_bad_parameters_reported_at_once() -> None:
    """Four bad parameters, one error listing all four."""
    with pytest.raises(AnalyticsError) as info:
        AnalyticsQuery.parse(hours="-1", group_by="x", limit="many", backend="-gpu")
    assert str(info.value).count("is not valid") == 4


# -- building blocks -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [([], 0.5, None), ([7.0], 0.95, 7.0), ([1.0, 2.0], 0.5, 1.0), ([1.0, 2.0, 3.0, 4.0], 0.95, 4.0),
     ([float(i) for i in range(1, 101)], 0.95, 95.0)],
)
def test_nearest_rank_percentile(values: list[float], q: float, expected: float | None) -> None:
    """Percentiles are nearest-rank: always a value that occurred."""
    assert percentile(values, q) == expected


def test_run_lengths() -> None:
    """Consecutive equal models form one run."""
    assert run_lengths(["A", "A", "B", "A", "A", "A"]) == [2, 1, 3]
    assert run_lengths([]) == []


@pytest.mark.parametrize(("hours", "size"), [(0.5, 60), (1, 300), (24, 1800), (168, 21600), (8784, 604800)])
def test_bucket_size_keeps_the_timeline_short(hours: float, size: int) -> None:
    """At most 48 buckets (a year falls back to weeks)."""
    assert bucket_seconds(hours) == size


async def test_a_database_the_worker_cannot_read_is_unavailable_not_a_crash(tmp_path: Path) -> None:
    """The worker process opens the database itself; when it cannot, the caller gets
    StoreUnavailable (the route's 503) and the next report starts over."""
    from server.journal import StoreUnavailable

    db = tmp_path / "journal.db"
    journal = open_journal(f"sqlite:///{db}", fallback_dir=tmp_path / "fallback")
    await journal.start()
    try:
        for name in ("journal.db", "journal.db-wal", "journal.db-shm"):
            (tmp_path / name).unlink(missing_ok=True)
        with pytest.raises(StoreUnavailable, match="sqlite"):
            await journal.analytics(hours=1, now=NOW)
    finally:
        await journal.stop()


def test_runs_are_counted_per_sidecar_in_a_shared_journal() -> None:
    """Two sidecars, each serving one model in a row: interleaved by time they would look like a
    switch at every request; each sidecar's own stream has none."""
    rows = [{"request_id": f"r{i}", "client": "c", "ip": None, "model": "a" if i % 2 else "b",
             "endpoint": "/api/chat", "request_class": "interactive", "status": "completed",
             "error": None, "received_at": T0 + i, "dispatched_at": T0 + i, "queue_wait_ms": 0.0,
             "duration_ms": 1.0, "score": 0.0, "resident": True, "instance": "gpu-a" if i % 2 else "gpu-b"}
            for i in range(8)]
    query = AnalyticsQuery.parse(hours=1, group_by="instance", limit=10)
    r = report(rows, query, T0, T0 + 3600)
    assert r["residency"]["model_switches"] == 0
    assert r["grouping"]["dispatch_runs"]["mean"] == 4.0
    assert {g["key"]: g["requests"] for g in r["groups"]["rows"]} == {"gpu-a": 4, "gpu-b": 4}


def test_runs_are_counted_per_backend_of_one_sidecar() -> None:
    """One sidecar, two backends each serving one model in a row: interleaved by time they would
    look like a switch at every dispatch; each backend's own stream has none."""
    rows = [{"request_id": f"r{i}", "client": "c", "ip": None, "model": "a" if i % 2 else "b",
             "endpoint": "/api/chat", "request_class": "interactive", "status": "completed",
             "error": None, "received_at": T0 + i, "dispatched_at": T0 + i, "queue_wait_ms": 0.0,
             "duration_ms": 1.0, "score": 0.0, "resident": True, "instance": "host",
             "backend": "gpu1" if i % 2 else "gpu0"} for i in range(8)]
    r = report(rows, AnalyticsQuery.parse(hours=1, group_by="backend", limit=10), T0, T0 + 3600)
    assert r["residency"]["model_switches"] == 0
    assert r["grouping"]["dispatch_runs"] == {"runs": 2, "mean": 4.0, "p50": 4, "max": 4}
    assert {g["key"]: g["requests"] for g in r["groups"]["rows"]} == {"gpu0": 4, "gpu1": 4}
