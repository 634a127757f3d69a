"""What crash-safe admission costs: event-loop time per request, and the loss window.

Every accepted request writes one line to the admission log (server/journal/admissions.py) so a
kill -9 leaves an `interrupted` record instead of none. Measured in one run, in process:

- loop cost: admit() + ended() per request, against the journal hand-off every request already
  pays (building its final record and submit()) — the ratio is what admission adds to it;
- loss window: how long an admitted line waits in memory before its fsync completes (what a
  kill -9 at that instant loses), at several arrival rates, with the group size (lines per fsync).

Writes bench/results/admission.json and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import ROOT, report_header
from server.journal.admissions import AdmissionLog, _File
from server.journal.fallback import FallbackSpool
from server.journal.journal import Journal
from server.proxy.facts import RequestFacts


class _NullStore:
    """The journal's hand-off alone: nothing behind it is measured here."""

    dialect, target = "sqlite", "nowhere"


def _facts(i: int) -> RequestFacts:
    return RequestFacts(request_id=f"req-{i:08d}", endpoint="/api/chat", received_at=time.time(),
                        client="bench", model="llama3.2:1b", cls="interactive",
                        policy_name="balanced", policy_version="abc123", ip="127.0.0.1")


def loop_cost(n: int, directory: Path) -> dict[str, Any]:
    log = AdmissionLog(directory)
    log.start()
    facts = [_facts(i) for i in range(n)]
    started = time.perf_counter()
    for f in facts:
        log.admit(f.admission())
        log.ended(f.request_id)
    admit_s = time.perf_counter() - started
    log.flush(60)
    log.stop(clean=True)
    journal = Journal(_NullStore(), FallbackSpool(directory / "spool"), max_pending=n + 1)  # type: ignore[arg-type]
    started = time.perf_counter()
    for f in facts:
        journal.submit(f.finish("completed", 200, None))
    submit_s = time.perf_counter() - started
    return {
        "requests": n,
        "admit_us_per_request": round(admit_s / n * 1e6, 2),
        "final_record_us_per_request": round(submit_s / n * 1e6, 2),
        "admission_over_final_record": round(admit_s / submit_s, 2),
    }


class _Timed(AdmissionLog):
    """Notes when each line was queued and when its fsync completed."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.queued: dict[bytes, float] = {}
        self.windows: list[float] = []

    def _commit(self, target: _File, lines: list[bytes]) -> None:
        super()._commit(target, lines)
        now = time.perf_counter()
        self.windows.extend(now - self.queued.pop(line, now) for line in lines)


def loss_window(rate: int, seconds: float, directory: Path) -> dict[str, Any]:
    log = _Timed(directory)
    log.start()
    total = int(rate * seconds)
    started = time.perf_counter()
    for i in range(total):
        record = _facts(i).admission()
        log.queued[msgspec.json.encode(record) + b"\n"] = time.perf_counter()
        log.admit(record)
        log.ended(record.request_id)
        # Arrivals at `rate` per second (a burst loop would measure only the largest group).
        pause = started + (i + 1) / rate - time.perf_counter()
        if pause > 0:
            threading.Event().wait(pause)
    log.flush(60)
    log.stop(clean=True)
    windows = sorted(log.windows)
    return {
        "rate_per_s": rate,
        "requests": total,
        "fsyncs": log.commits,
        "lines_per_fsync": round(log.written / max(1, log.commits), 1),
        "window_p50_ms": round(statistics.median(windows) * 1000, 2),
        "window_p99_ms": round(windows[int(len(windows) * 0.99) - 1] * 1000, 2),
        "window_max_ms": round(windows[-1] * 1000, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--dir", help="where the logs go (default: a temporary directory)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "admission.json"))
    args = parser.parse_args()
    if args.dir and not Path(args.dir).is_dir():
        parser.error(f"--dir {args.dir}: not an existing directory")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        base = Path(tmp)
        cost = loop_cost(args.requests, base / "cost")
        windows = [loss_window(rate, args.seconds, base / f"rate-{rate}") for rate in (100, 1000, 5000)]
    report = {**report_header("admission_cost"), "loop_cost": cost, "loss_window": windows,
              "log_directory": args.dir or tempfile.gettempdir()}
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"loop cost: {cost['admit_us_per_request']} µs per request to admit, against "
          f"{cost['final_record_us_per_request']} µs for the final record "
          f"(x{cost['admission_over_final_record']})")
    for w in windows:
        print(f"{w['rate_per_s']:>5}/s: {w['lines_per_fsync']} lines per fsync, loss window "
              f"p50 {w['window_p50_ms']} ms, p99 {w['window_p99_ms']} ms, max {w['window_max_ms']} ms")


if __name__ == "__main__":
    main()
