"""How fast the simulator replays: 100,000 requests under one policy (target <= 10 s, must <= 30 s)
and `policy tune` with a budget of 200 on a 5,000-request trace (target <= 2 minutes), on this
machine, in one run. Also the replay rate of every row type, so a slow part shows.

    .venv/bin/python bench/simulate_speed.py [--requests 100000] [--tune-requests 5000] [--budget 200]

Results go to bench/results/simulate.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import tomllib
from pathlib import Path

from policy.load import load_policy_file
from sim.replay.gpu import choose
from sim.replay.run import replay_plain, replay_policy
from sim.replay.synth import TRACE_PRESETS, synthesize
from sim.replay.tune import Goal, parse_constraints, search
from sim.replay.workload import classify, prepare

ROOT = Path(__file__).resolve().parent.parent
POLICY = ROOT / "policies.example.toml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--tune-requests", type=int, default=5_000)
    parser.add_argument("--budget", type=int, default=200)
    args = parser.parse_args()
    compiled = load_policy_file(POLICY)
    results: dict[str, object] = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()}}
    replays = {}
    for preset in ("many-models", "office-hours"):
        began = time.perf_counter()
        workload = classify(prepare(synthesize(preset, args.requests, seed=1)), compiled)
        gpu = choose(workload.models(), preset=TRACE_PRESETS[preset].gpu, config=None).settings
        prepared = time.perf_counter() - began
        rows = {}
        for name in ("plain", "balanced", "fifo"):
            began = time.perf_counter()
            row = (replay_plain(workload, gpu, compiled.active.max_wait) if name == "plain"
                   else replay_policy(workload, gpu, compiled, name))
            seconds = time.perf_counter() - began
            rows[name] = {"seconds": round(seconds, 2), "requests_per_s": round(args.requests / seconds),
                          "loads": row.figures["loads"], "wait_p95_s": row.figures["wait_s"]["p95"]}
            print(f"{preset:13s} {name:9s} {args.requests:,} requests in {seconds:6.2f} s", flush=True)
        replays[preset] = {"synthesize_and_prepare_s": round(prepared, 2), "rows": rows}
    results["replay"] = {"requests": args.requests, "presets": replays}

    workload = classify(prepare(synthesize("many-models", args.tune_requests, seed=1)), compiled)
    gpu = choose(workload.models(), preset=None, config=None).settings
    goal = Goal("loads", False, tuple(parse_constraints("p95_wait<=120s,max_wait<=300s,jain>=0.9")))
    began = time.perf_counter()
    _, final = search(tomllib.loads(POLICY.read_text()), compiled, "balanced", workload, gpu, goal,
                      budget=args.budget, seed=1)
    seconds = time.perf_counter() - began
    base = next(r for r in final if r.candidate.number == 0).row
    best = final[0].row
    results["tune"] = {
        "requests": args.tune_requests, "budget": args.budget, "seconds": round(seconds, 1),
        "base_loads": base["loads"], "best_loads": best["loads"],
        "best_p95_wait_s": best["wait_s"]["p95"], "best_jain": best["jain"],
    }
    print(f"tune: {args.budget} candidates on {args.tune_requests:,} requests in {seconds:.1f} s; "
          f"loads {base['loads']} -> {best['loads']}", flush=True)
    out = ROOT / "bench" / "results" / "simulate.json"
    out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
