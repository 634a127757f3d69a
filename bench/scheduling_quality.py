"""Scheduling quality on the simulator's traces, side by side in one run: plain Ollama, the example
policy file as it was before the scheduling-quality work (`--before`, a git ref), and as it is.

- flood: a CI client dumps 300 batch requests every ten minutes beside four people. Refusals,
  people's wait p95 / max (and with the flooder left out of the trace), makespan.
  Again on the example file's own `max_parallel = 2`.
- agents and many-models: model loads and wait p95 against plain Ollama; `throughput` holds a swap
  back for its `swap_hold` (2 min), and `balanced` is also run with the hold its comments offer (70 s).
- overload: six agent workers alternating a 32B and an 8B faster than the card serves, beside
  people. Interactive waits against their class's limits, interactive refusals while batch work
  waited, and requests that waited out their timeout (504) instead of being refused at once;
  again on seeds 1 to 8 for `balanced` and `throughput`.
- mixed-ctx: three tools sending num_ctx 4k, 8k and 16k. Reloads for plain Ollama, `balanced`
  (no normalisation), `balanced` with `[policies.balanced.num_ctx] normalise = true`, and
  `throughput` (which normalises).

The simulator replays each trace through the real scheduler on a virtual clock, so the figures do
not depend on this machine's load. `--max-parallel` sets the sidecar's slots (default 6, the
workstation-24gb card's `num_parallel × max_loaded_models`).

Run:  python bench/scheduling_quality.py [--before 67dc4f6] [--requests 2000]
Writes bench/results/scheduling_quality.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from harness import ROOT, report_header, write_report

from policy.load import CompiledFile, load_policy_file
from sim.replay.gpu import choose
from sim.replay.run import replay_plain, replay_policy
from sim.replay.synth import synthesize
from sim.replay.workload import Workload, classify, prepare

RESULTS = ROOT / "bench" / "results" / "scheduling_quality.json"
FLOODER = "ci-batch"
OVERLOAD_SEEDS = range(1, 9)


def _compiled(text: str, max_parallel: int) -> CompiledFile:
    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / "policies.toml"
        path.write_text(text, encoding="utf-8")
        compiled = load_policy_file(path)
    backend = dataclasses.replace(compiled.backend, max_parallel=max_parallel)
    return dataclasses.replace(compiled, backend=backend)


def _figures(row: Any) -> dict[str, Any]:
    f = row.figures
    by_class = f["wait_s_by_class"]
    return {
        "loads": f["loads"], "reloads": f["reloads"], "refused": sum(f["refused"].values()), "timed_out": f["timed_out"],
        "completed": f["completed"], "makespan_s": f["makespan_s"], "wait_p95_s": f["wait_s"]["p95"],
        "interactive_wait_p95_s": by_class.get("interactive", {}).get("p95"),
        "interactive_wait_max_s": by_class.get("interactive", {}).get("max"),
        "over_max_wait": f["over_max_wait"], "jain": f["jain"],
        "refused_by_class": f["refused_by_class"], "timed_out_by_class": f["timed_out_by_class"],
        "refused_over_less_urgent": f["refused_over_less_urgent"],
        "timed_out_last_arrival_s": f["timed_out_last_arrival_s"],
    }


def _run(workload: Workload, compiled: CompiledFile, *others: str) -> dict[str, Any]:
    """Plain Ollama, `balanced`, and `others` of the file's policies, on the trace's card."""
    gpu = choose(workload.models(), preset=None, config=None).settings
    policy = compiled.active
    plain = replay_plain(workload, gpu, policy.max_wait, None, policy.class_max_wait)
    out = {"plain": _figures(plain)}
    for name in ("balanced", *others):
        out[name] = _figures(replay_policy(workload, gpu, compiled, name))
    return out


def _overload_seeds(compiled: CompiledFile, requests: int) -> list[dict[str, Any]]:
    """The overload preset again on seeds 1 to 8, `balanced` and `throughput`: one trace can be
    lucky, and the drain estimate's errors depend on the order arrivals happen to come in."""
    rows = []
    for seed in OVERLOAD_SEEDS:
        ran = _run(classify(prepare(synthesize("overload", requests, seed=seed)), compiled), compiled, "throughput")
        rows.append({"seed": seed, **{name: {k: ran[name][k] for k in ("timed_out", "completed", "refused",
                                                                    "timed_out_by_class", "refused_over_less_urgent",
                                                                    "interactive_wait_p95_s")}
                                      for name in ("balanced", "throughput")}})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="67dc4f6", help="git ref of the example to compare with")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--max-parallel", type=int, default=6)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    old_text = subprocess.run(["git", "show", f"{args.before}:policies.example.toml"], cwd=ROOT,
                              check=True, capture_output=True, text=True).stdout
    files = {
        "before": _compiled(old_text, args.max_parallel),
        "now": _compiled((ROOT / "policies.example.toml").read_text(encoding="utf-8"), args.max_parallel),
    }
    report = report_header("scheduling_quality")
    report.update({"before": args.before, "max_parallel": args.max_parallel, "requests": args.requests,
                   "traces": {}})
    now_text = (ROOT / "policies.example.toml").read_text(encoding="utf-8")
    assert '# swap_hold = "70s"' in now_text, "balanced's commented swap_hold moved: update this bench"
    held = _compiled(now_text.replace('# swap_hold = "70s"', 'swap_hold = "70s"', 1), args.max_parallel)
    for preset in ("flood", "agents", "many-models", "overload"):
        records = synthesize(preset, args.requests, seed=1)
        out: dict[str, Any] = {}
        if preset in ("agents", "many-models"):
            out["balanced_swap_hold_70s"] = _run(classify(prepare(records), held), held)["balanced"]
        for name, compiled in files.items():
            rows = _run(classify(prepare(records), compiled), compiled, *(("throughput",) if name == "now" else ()))
            out["plain"] = rows["plain"]
            out[f"balanced_{name}"] = rows["balanced"]
            if "throughput" in rows:
                out["throughput_now"] = rows["throughput"]
        if preset == "flood":  # people's waits with the flooder absent: the 1.5× reference
            quiet = [r for r in records if r.client != FLOODER]
            compiled = files["now"]
            out["without_flooder"] = _run(classify(prepare(quiet), compiled), compiled)["balanced"]
            # And on the example file's own two slots, where long batch answers fill every slot.
            two = _compiled((ROOT / "policies.example.toml").read_text(encoding="utf-8"), 2)
            both = _run(classify(prepare(records), two), two)
            out["two_slots"] = {"plain": both["plain"], "balanced_now": both["balanced"],
                                "without_flooder": _run(classify(prepare(quiet), two), two)["balanced"]}
        report["traces"][preset] = out
    report["overload_seeds"] = _overload_seeds(files["now"], args.requests)
    records = synthesize("mixed-ctx", args.requests, seed=1)
    normalising = _compiled(now_text + "\n[policies.balanced.num_ctx]\nnormalise = true\n", args.max_parallel)
    off = _run(classify(prepare(records), files["now"]), files["now"], "throughput")
    on = _run(classify(prepare(records), normalising), normalising)
    report["traces"]["mixed-ctx"] = {"plain": off["plain"], "balanced_now": off["balanced"],
                                     "balanced_normalised": on["balanced"], "throughput_now": off["throughput"]}
    write_report(Path(args.out), report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
