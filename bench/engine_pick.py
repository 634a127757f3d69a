"""Engine micro-benchmark: choosing the next ticket with 10,000 waiting across 500 clients and
20 models (target ≤ 100 µs per decision; with 4 backends, ≤ 150 µs). For scale, the same
decisions are also made by scoring every waiting ticket, as the seed did on each dispatch.

Two queues, since the pick takes two roads: arrivals spread over the last 4 minutes, so no
ticket is past the example policies' 5-minute `max_wait` and every pick is the bounded search
by score; and over the last 10 minutes, so half the queue is overdue and a pick mostly takes the
oldest eligible overdue ticket.

Run:  python bench/engine_pick.py [--decisions 2000] [--policy balanced]
Writes bench/results/engine.json and prints a summary.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import statistics
import time
from pathlib import Path

from harness import ROOT, report_header, write_report

from engine.clock import ManualClock
from engine.residency import GIB
from engine.scheduler import Scheduler
from policy.load import NodeSettings, load_policy_file

SPREADS = (240.0, 600.0)  # seconds the queue's arrivals span: none overdue, half overdue
SIZES = [1.5, 2.4, 4.9, 6.0, 6.0, 8.1, 9.1, 10.0, 11.0, 12.0, 14.0, 17.0, 20.0, 20.0, 23.0,
         24.0, 26.0, 30.0, 40.0, 48.0]  # fmt: skip


def setup(
    policy: str, waiting: int, clients: int, seed: int, backends: int = 1, spread: float = 600.0
) -> tuple[Scheduler, ManualClock, random.Random]:
    example = load_policy_file(ROOT / "policies.example.toml").with_active(policy)
    backend = dataclasses.replace(example.backend, max_parallel=1, vram_gb=80.0, num_parallel=4)
    nodes = tuple(NodeSettings(f"gpu{i}", f"http://gpu{i}:11434", 1, 4, 80.0, backend.max_loaded_models)
                  for i in range(backends)) if backends > 1 else ()
    clock = ManualClock(0.0)
    s = Scheduler(dataclasses.replace(example, backend=backend, backends=nodes), clock=clock)
    models = [f"model{i:02d}:{int(gb)}b" for i, gb in enumerate(SIZES)]
    s.learn_tags(
        {
            "models": [
                {"name": m, "size": int(gb / 1.2 * GIB)}
                for m, gb in zip(models, SIZES, strict=True)
            ]
        }
    )
    for b, name in enumerate(s.backends):  # each backend has its own five models loaded
        s.reconcile(
            {
                "models": [
                    {"name": m, "size": int(gb * GIB)}
                    for m, gb in list(zip(models, SIZES, strict=True))[5 * b:5 * b + 5]
                ]
            },
            name,
        )
    rng = random.Random(seed)
    s.pause()
    for i in range(waiting):  # arrivals spread over the last `spread` seconds
        clock.advance(spread / waiting)
        s.enqueue(
            request_id=f"w{i}",
            model=rng.choice(models),
            client=f"client{rng.randrange(clients)}",
            cls="batch" if rng.random() < 0.2 else "interactive",
        )
    s.resume()
    s._models = models  # type: ignore[attr-defined]
    return s, clock, rng


def measure(
    policy: str, decisions: int, waiting: int, clients: int, seed: int = 1, backends: int = 1,
    spread: float = 600.0,
) -> dict:
    s, clock, rng = setup(policy, waiting, clients, seed, backends, spread)
    models = s._models  # type: ignore[attr-defined]
    times, full = [], []
    pol = s._policy_source()
    if backends > 1:  # every backend busy but one, as after a request ends: one pick per decision
        busy = s.dispatch()
        s.finish(busy[0].ticket.id)
        for i in range(len(busy)):  # the queue back to its size
            s.enqueue(request_id=f"p{i}", model=rng.choice(models), client=f"client{rng.randrange(clients)}",
                      cls="interactive")
        waiting = s.depth
    for i in range(decisions):
        clock.advance(0.01)
        t0 = time.perf_counter_ns()
        grants = s.dispatch()
        times.append(time.perf_counter_ns() - t0)
        assert len(grants) == 1 and s.depth == waiting - 1
        if i % 50 == 0:  # the seed's way, for scale: score every waiting ticket
            t0 = time.perf_counter_ns()
            min(
                s._waiting.values(),
                key=lambda t: pol.order_key(t, pol.score(t, s.state, clock.now)),
            )
            full.append(time.perf_counter_ns() - t0)
        g = grants[0]
        s.first_byte(g.ticket.id)
        s.finish(g.ticket.id)
        s.enqueue(  # keep the queue at its size
            request_id=f"n{i}",
            model=rng.choice(models),
            client=f"client{rng.randrange(clients)}",
            cls="batch" if rng.random() < 0.2 else "interactive",
        )
    times.sort()
    return {
        "policy": policy,
        "backends": backends,
        "spread_s": spread,
        "waiting": waiting,
        "clients": clients,
        "models": len(models),
        "decisions": decisions,
        "median_us": round(statistics.median(times) / 1000, 1),
        "p99_us": round(times[int(len(times) * 0.99) - 1] / 1000, 1),
        "max_us": round(times[-1] / 1000, 1),
        "rescore_all_median_us": round(statistics.median(full) / 1000, 1),
    }


def _median_run(args: argparse.Namespace, policy: str, backends: int, spread: float) -> dict:
    runs = [measure(policy, args.decisions, args.waiting, args.clients, seed, backends, spread)
            for seed in range(1, args.repeat + 1)]
    middle = sorted(runs, key=lambda r: r["median_us"])[len(runs) // 2]  # the run with the median median
    middle["median_us_runs"] = [r["median_us"] for r in runs]
    middle["median_us_spread"] = [min(middle["median_us_runs"]), max(middle["median_us_runs"])]
    return middle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=2000)
    parser.add_argument("--waiting", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument(
        "--policy", action="append", help="default: balanced, throughput, fair, seed"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per policy (queues from different seeds)")
    parser.add_argument("--backends", type=int, default=4, help="backends of the multi-backend run")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "engine.json"))
    args = parser.parse_args()
    results = []
    for spread in SPREADS:
        for policy in args.policy or ["balanced", "throughput", "fair", "seed"]:
            results.append(_median_run(args, policy, 1, spread))
        results.append(_median_run(args, "balanced", args.backends, spread))
    report = {**report_header("engine pick-next"), "target_us": 100, "target_us_backends": 150,
              "results": results}
    write_report(Path(args.out), report)
    for r in results:
        print(
            f"{r['policy']:<10} {r['waiting']} waiting / {r['clients']} clients / {r['models']} models / "
            f"{r['backends']} backends, arrivals over {r['spread_s']:.0f} s: "
            f"median {r['median_us']} µs, p99 {r['p99_us']} µs per decision "
            f"(scoring every ticket: {r['rescore_all_median_us']} µs)"
        )


if __name__ == "__main__":
    main()
