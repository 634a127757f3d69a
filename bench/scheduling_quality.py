"""Scheduling quality on the simulator's traces, side by side in one run: plain Ollama, the example
policy file as it was before the scheduling-quality work (`--before`, a git ref), and as it is.

- flood: a CI client dumps 300 batch requests every ten minutes beside four people. Refusals,
  people's wait p95 / max (and with the flooder left out of the trace), makespan.
- agents and many-models: model loads and wait p95 against plain Ollama.

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
        "loads": f["loads"], "refused": sum(f["refused"].values()), "timed_out": f["timed_out"],
        "completed": f["completed"], "makespan_s": f["makespan_s"], "wait_p95_s": f["wait_s"]["p95"],
        "interactive_wait_p95_s": by_class.get("interactive", {}).get("p95"),
        "interactive_wait_max_s": by_class.get("interactive", {}).get("max"),
        "over_max_wait": f["over_max_wait"], "jain": f["jain"],
    }


def _run(workload: Workload, compiled: CompiledFile) -> dict[str, Any]:
    gpu = choose(workload.models(), preset=None, config=None).settings
    policy = compiled.active
    plain = replay_plain(workload, gpu, policy.max_wait, None, policy.class_max_wait)
    return {"plain": _figures(plain), "balanced": _figures(replay_policy(workload, gpu, compiled, "balanced"))}


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
    report.update({"before": args.before, "max_parallel": args.max_parallel, "traces": {}})
    for preset in ("flood", "agents", "many-models"):
        records = synthesize(preset, args.requests, seed=1)
        out: dict[str, Any] = {}
        for name, compiled in files.items():
            rows = _run(classify(prepare(records), compiled), compiled)
            out["plain"] = rows["plain"]
            out[f"balanced_{name}"] = rows["balanced"]
        if preset == "flood":  # people's waits with the flooder absent: the 1.5× reference
            quiet = [r for r in records if r.client != FLOODER]
            compiled = files["now"]
            out["without_flooder"] = _run(classify(prepare(quiet), compiled), compiled)["balanced"]
        report["traces"][preset] = out
    write_report(Path(args.out), report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
