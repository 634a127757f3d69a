"""Every benchmark, one after another, then the README's performance section (`make bench`).

Each benchmark starts its own emulator and sidecar processes and writes bench/results/NAME.json;
running them one at a time, each once the load average has settled, keeps them from measuring
each other. About 25 minutes on a 2-core machine. Then bench/report.py renders the README table and the charts from the results files.

    .venv/bin/python bench/run_all.py [--only NAME ...] [--skip NAME ...] [--list]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from harness import ROOT

# (name, script, arguments): the order runs the quick ones first, so a broken set-up shows early.
BENCHMARKS = [
    ("engine", "engine_pick.py", []),
    ("emulator", "emulator_throughput.py", []),
    ("admission", "admission_cost.py", []),
    ("upstream_hop", "upstream_hop.py", []),
    ("profile", "profile_sidecar.py", []),
    ("proxy_overhead", "proxy_overhead.py", []),
    ("stream_soak", "stream_soak.py", []),
    ("event_subscribers", "event_subscribers.py", []),
    ("queue_eta", "queue_eta.py", []),
    ("loop_lag", "loop_lag.py", []),
    ("simulate", "simulate_speed.py", []),
    ("scheduling_quality", "scheduling_quality.py", []),
    ("multi_gpu", "multi_gpu.py", []),
]


def settle(quiet: float = 0.6, longest: float = 90.0) -> None:
    """Wait (at most `longest` seconds) for the 1-minute load average to fall below `quiet`, so
    that a benchmark does not start in the wake of the one before it (or of a test run)."""
    waited = 0.0
    while os.getloadavg()[0] > quiet and waited < longest:
        time.sleep(5)  # a script between benchmarks, not async code
        waited += 5
    if waited:
        print(f"   waited {waited:.0f} s for the machine to settle (load {os.getloadavg()[0]:.2f})", flush=True)


def main() -> int:
    names = [name for name, _, _ in BENCHMARKS]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=names, metavar="NAME", help="run only these")
    parser.add_argument("--skip", action="append", choices=names, default=[], metavar="NAME")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args()
    if args.list:
        for name, script, _ in BENCHMARKS:
            print(f"{name:18} bench/{script}")
        return 0
    failed = []
    for name, script, extra in BENCHMARKS:
        if (args.only and name not in args.only) or name in args.skip:
            continue
        print(f"== {name} (bench/{script})", flush=True)
        settle()
        began = time.monotonic()
        done = subprocess.run([sys.executable, str(ROOT / "bench" / script), *extra], cwd=ROOT,
                              stdout=subprocess.DEVNULL)
        took = time.monotonic() - began
        print(f"   {'ok' if done.returncode == 0 else f'FAILED (exit {done.returncode})'} in {took:.0f} s", flush=True)
        if done.returncode != 0:
            failed.append(name)
    subprocess.run([sys.executable, str(ROOT / "bench" / "report.py")], cwd=ROOT, check=True)
    if failed:
        print(f"bench: {', '.join(failed)} failed; their old results (if any) are in the table", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
