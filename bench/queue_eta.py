"""How good is the wait estimate a waiting client hears (`[queue_status]`, engine/eta.py)?

Replays synthetic traces through the real scheduler in front of the emulator's backend model
(sim/replay), with the example policy's `balanced`. At each arrival it takes the estimate the
sidecar would give — `position × slot time / max_parallel`, the slot time a moving average of
the grants-to-ends seen so far — and compares it with the wait that followed. Requests that waited
less than a second are counted apart (an estimate of "0 s" for them is right enough).

    .venv/bin/python bench/queue_eta.py [--requests 3000]

Results go to bench/results/queue_eta.json.
"""

from __future__ import annotations

import argparse
import statistics

from harness import ROOT, report_header, write_report

from engine.eta import ServiceTimes, wait_estimate
from engine.scheduler import Scheduler
from policy.load import load_policy_file
from schemas.figures import percentile
from sim.replay.gpu import choose
from sim.replay.run import replay_policy
from sim.replay.synth import TRACE_PRESETS, synthesize
from sim.replay.workload import Request, classify, prepare

RESULTS = ROOT / "bench" / "results" / "queue_eta.json"
PRESETS = ("agents", "many-models", "classes")


def measure(preset: str, requests: int) -> dict[str, object]:
    compiled = load_policy_file(ROOT / "policies.example.toml")
    workload = classify(prepare(synthesize(preset, requests, seed=3)), compiled)
    gpu = choose(workload.models(), preset=TRACE_PRESETS[preset].gpu, config=None).settings
    times = ServiceTimes()
    estimate: dict[int, float] = {}
    granted: dict[int, float] = {}
    waits: dict[int, float] = {}

    def on_admit(request: Request, now: float, scheduler: Scheduler) -> None:
        ranked = scheduler.position(str(request.index))
        if ranked is not None:
            estimate[request.index] = wait_estimate(ranked.position, scheduler.max_parallel, times.mean())

    def on_grant(request: Request, now: float) -> None:
        granted[request.index] = now
        waits[request.index] = now - request.arrival

    def on_finish(request: Request, now: float) -> None:
        if request.index in granted:
            times.observe(request.model, now - granted[request.index])

    replay_policy(workload, gpu, compiled, "balanced", on_grant=on_grant, on_admit=on_admit,
                  on_finish=on_finish)
    pairs = [(estimate[i], waits[i]) for i in waits if i in estimate]
    errors = sorted(abs(e - w) for e, w in pairs)
    long = [(e, w) for e, w in pairs if w >= 1.0]
    ratios = sorted(e / w for e, w in long)
    return {
        "requests": len(pairs),
        "waited_1s_or_more": len(long),
        "abs_error_s_p50": round(percentile(errors, 0.5) or 0.0, 2),
        "abs_error_s_p90": round(percentile(errors, 0.9) or 0.0, 2),
        "actual_wait_s_p50": round(statistics.median(w for _, w in pairs), 2) if pairs else None,
        "estimate_over_actual_p50": round(percentile(ratios, 0.5) or 0.0, 2),
        "estimate_over_actual_p10_p90": [round(percentile(ratios, 0.1) or 0.0, 2),
                                         round(percentile(ratios, 0.9) or 0.0, 2)],
        "within_a_factor_of_2": round(sum(0.5 <= r <= 2 for r in ratios) / len(ratios), 3) if ratios else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()
    report = report_header("queue_eta")
    report["policy"] = "balanced (policies.example.toml)"
    report["presets"] = {preset: measure(preset, args.requests) for preset in PRESETS}
    write_report(RESULTS, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
