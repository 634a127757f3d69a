"""More than one GPU, side by side in one run: the simulator's multi-model traces replayed against
two and four emulated Ollama servers (one per GPU, each the trace's card) behind

- round-robin: a plain balancer sending each request to the next server in turn;
- least-outstanding: a plain balancer sending it to the server with the fewest requests sent and
  not finished (what most gateways offer beyond round-robin);
- the sidecar with the example's `balanced` policy, in front of all of them ([backends.NAME]);
  again with the 70-s `swap_hold` its comments offer, and with `throughput` (a 2-min hold).

Each trace's arrivals are compressed by the number of servers, so every server sees about the
load one card saw in the single-GPU replays. Figures: model loads, wait p95 / max, Jain's
fairness index over clients, requests completed, refused and timed out. And, for scale, the best
fixed placement of the trace's models on the cards (each within its VRAM and
max_loaded_models): how many requests ask for a model it leaves on no card, which a policy that
never leaves a slot idle beside waiting work must load for (`unplaced`).

Run:  python bench/multi_gpu.py [--requests 2000]
Writes bench/results/multi_gpu.json.
"""

from __future__ import annotations

import argparse
import functools
import itertools
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
from harness import ROOT, report_header, write_report

from policy.load import load_policy_file, load_policy_text
from schemas.model_name import canonical_model
from sim.config import Settings
from sim.replay.cluster import ROUTES
from sim.replay.gpu import choose
from sim.replay.run import Row, replay_plain, replay_policy
from sim.replay.synth import synthesize
from sim.replay.workload import Workload, classify, prepare

RESULTS = ROOT / "bench" / "results" / "multi_gpu.json"
PRESETS = ("agents", "many-models")
NODES = (2, 4)


def _figures(row: Row) -> dict[str, Any]:
    f = row.figures
    return {"loads": f["loads"], "wait_p95_s": f["wait_s"]["p95"], "wait_max_s": f["wait_s"]["max"],
            "jain": f["jain"], "completed": f["completed"], "refused": sum(f["refused"].values()),
            "timed_out": f["timed_out"]}


def _unplaced(workload: Workload, gpu: Settings, nodes: int) -> dict[str, Any]:
    """The fixed placement of the models on `nodes` cards that leaves the fewest requests without
    their model on any card (exact: the cards are filled one by one over every feasible set)."""
    demand = Counter(r.model for r in workload.requests)
    sizes = {canonical_model(m.name): m.size * m.resident_factor for m in gpu.models}
    names = sorted(m for m in demand if m in sizes)
    fits = [frozenset(c) for k in range(gpu.max_loaded_models + 1) for c in itertools.combinations(names, k)
            if sum(sizes[m] for m in c) <= gpu.vram]

    @functools.cache
    def best(card: int, used: frozenset[str]) -> tuple[int, tuple[frozenset[str], ...]]:
        if card == nodes:
            return 0, ()
        options = []
        for one in fits:
            if not one & used:
                served, rest = best(card + 1, used | one)
                options.append((served + sum(demand[m] for m in one), (one, *rest)))
        return max(options, key=lambda o: o[0])

    served, cards = best(0, frozenset())
    return {"requests": sum(demand.values()) - served, "cards": [sorted(c) for c in cards]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    compiled = load_policy_file(ROOT / "policies.example.toml")
    policy = compiled.policies["balanced"]
    text = (ROOT / "policies.example.toml").read_text(encoding="utf-8")
    assert '# swap_hold = "70s"' in text, "balanced's commented swap_hold moved: update this bench"
    held = load_policy_text(text.replace('# swap_hold = "70s"', 'swap_hold = "70s"', 1).encode(), "held.toml")
    report = report_header("multi_gpu")
    report.update({"requests": args.requests, "traces": {}})
    for preset in PRESETS:
        records = synthesize(preset, args.requests, seed=1)
        for nodes in NODES:
            # Arrivals nodes× as fast: each server sees about one card's load.
            faster = [msgspec.structs.replace(r, arrival=r.arrival / nodes, at=r.at / nodes) for r in records]
            workload = classify(prepare(faster), compiled)
            gpu = choose(workload.models(), preset=None, config=None).settings
            out: dict[str, Any] = {}
            for route in ROUTES:
                out[route] = _figures(replay_plain(workload, gpu, policy.max_wait, None,
                                                   policy.class_max_wait, nodes=nodes, route=route))
            out["balanced"] = _figures(replay_policy(workload, gpu, compiled, "balanced", nodes=nodes))
            out["balanced_swap_hold_70s"] = _figures(replay_policy(workload, gpu, held, "balanced", nodes=nodes))
            out["throughput"] = _figures(replay_policy(workload, gpu, compiled, "throughput", nodes=nodes))
            out["unplaced"] = _unplaced(workload, gpu, nodes)
            report["traces"][f"{preset}/{nodes}"] = out
            rr, lo = out["round-robin"], out["least-outstanding"]
            print(f"{preset} × {nodes}: loads / p95: round-robin {rr['loads']} / {rr['wait_p95_s']} s, "
                  f"least-outstanding {lo['loads']} / {lo['wait_p95_s']} s, " + ", ".join(
                      f"{k} {out[k]['loads']} / {out[k]['wait_p95_s']} s"
                      for k in ("balanced", "balanced_swap_hold_70s", "throughput")))
    write_report(Path(args.out), report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
