"""`policy tune`: search a policy's numeric parameters for the best figures on a trace.

Successive halving over random candidates: every candidate (the base policy is always the first)
is replayed on the first quarter of the trace; the best third of them — constraints met first,
then by the objective — are replayed on the whole trace, and the best of those wins. Random draws
come from one seeded generator, so a seed gives the same candidates and the same winner. The
replays run in worker processes (one per core, at most four), each holding the trace and the GPU
once.
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing
import operator
import os
import random
import re
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from policy.load import CompiledFile, load_policy_text
from sim.config import Settings
from sim.replay.run import replay_policy
from sim.replay.space import Dimension, apply, dimensions, keep_tier_order
from sim.replay.workload import Workload

# Figures a constraint or the objective may name, read from a report row; lower is better except
# where noted in HIGHER_BETTER.
METRICS: dict[str, Callable[[dict[str, Any]], float]] = {
    "loads": lambda r: r["loads"],
    "evictions": lambda r: r["evictions"],
    "gpu_load_s": lambda r: r["gpu_load_s"],
    "makespan": lambda r: r["makespan_s"],
    "mean_wait": lambda r: r["wait_s"]["mean"],
    "p50_wait": lambda r: r["wait_s"]["p50"],
    "p95_wait": lambda r: r["wait_s"]["p95"],
    "p99_wait": lambda r: r["wait_s"]["p99"],
    "max_wait": lambda r: r["wait_s"]["max"],
    "over_max_wait": lambda r: r["over_max_wait"],
    "timed_out": lambda r: r["timed_out"],
    "refused": lambda r: sum(r["refused"].values()),
    "jain": lambda r: r["jain"],
}
HIGHER_BETTER = {"jain"}
OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}
UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "%": 0.01}


class TuneError(ValueError):
    """A bad objective or constraint; the message says which and why."""


@dataclasses.dataclass(frozen=True, slots=True)
class Constraint:
    metric: str
    op: str
    bound: float

    def holds(self, row: dict[str, Any]) -> bool:
        return bool(OPS[self.op](METRICS[self.metric](row), self.bound))

    def violation(self, row: dict[str, Any]) -> float:
        """How far off, relative to the bound (0 when it holds)."""
        if self.holds(row):
            return 0.0
        value = METRICS[self.metric](row)
        return abs(value - self.bound) / max(abs(self.bound), 1e-9)

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.bound:g}"


def parse_constraints(text: str) -> list[Constraint]:
    out = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        match = re.fullmatch(r"([a-z_0-9]+)\s*(<=|>=|<|>)\s*([-+0-9.eE]+)\s*(s|m|h|%)?", part)
        if match is None:
            raise TuneError(f"{part!r} is not a constraint like p95_wait<=60s or jain>=0.9")
        metric, op, number, unit = match.groups()
        if metric not in METRICS:
            raise TuneError(f"{metric!r} is not a figure; use one of {', '.join(METRICS)}")
        try:
            bound = float(number) * UNITS[unit or ""]
        except ValueError:
            raise TuneError(f"{part!r}: {number!r} is not a number") from None
        if not math.isfinite(bound):
            raise TuneError(f"{part!r}: the bound must be finite")
        out.append(Constraint(metric, op, bound))
    return out


@dataclasses.dataclass(frozen=True, slots=True)
class Goal:
    objective: str
    maximize: bool
    constraints: tuple[Constraint, ...]

    def key(self, row: dict[str, Any]) -> tuple[float, float]:
        """Sort key: constraints met first (0 violation), then the objective."""
        violation = sum(c.violation(row) for c in self.constraints)
        value = METRICS[self.objective](row)
        return (violation, -value if self.maximize else value)

    def feasible(self, row: dict[str, Any]) -> bool:
        return all(c.holds(row) for c in self.constraints)


@dataclasses.dataclass(frozen=True, slots=True)
class Candidate:
    number: int  # 0 is the base policy
    values: tuple[float, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Result:
    candidate: Candidate
    row: dict[str, Any]


# -- the worker side: one trace, one GPU, one policy file per process --------------------------

_STATE: dict[str, Any] = {}


def _init(raw: dict[str, Any], base: str, workload: Workload, gpu: Settings, max_parallel: int | None,
          dims: list[Dimension]) -> None:
    _STATE.update(raw=raw, base=base, workload=workload, gpu=gpu, max_parallel=max_parallel, dims=dims)


def _compile(doc: dict[str, Any], max_parallel: int | None) -> CompiledFile:
    import tomli_w

    compiled = load_policy_text(tomli_w.dumps(doc).encode(), "<candidate>")
    if max_parallel is not None:
        compiled = compiled.with_backend(max_parallel=max_parallel)
    return compiled


def _evaluate(values: tuple[float, ...], requests: int) -> dict[str, Any]:
    s = _STATE
    doc = apply(s["raw"], s["base"], "candidate", s["dims"], list(values), "tune candidate")
    compiled = _compile(doc, s["max_parallel"])
    workload: Workload = s["workload"]
    part = dataclasses.replace(workload, requests=workload.requests[:requests])
    return replay_policy(part, s["gpu"], compiled, "candidate").figures


# -- the search ------------------------------------------------------------------------------------


def draw(dims: list[Dimension], budget: int, seed: int) -> list[Candidate]:
    rng = random.Random(f"tune:{seed}")
    out = [Candidate(0, tuple(d.base for d in dims))]
    seen = {out[0].values}
    while len(out) < budget:
        values = tuple(keep_tier_order(dims, [d.draw(rng) for d in dims]))
        if values not in seen:  # integer-only spaces can repeat; a repeat teaches nothing
            seen.add(values)
            out.append(Candidate(len(out), values))
        elif len(seen) >= budget * 4:  # a tiny space: stop drawing
            break
    return out


def search(
    raw: dict[str, Any], compiled: CompiledFile, base: str, workload: Workload, gpu: Settings,
    goal: Goal, *, budget: int, seed: int, max_parallel: int | None = None, workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[Dimension], list[Result]]:
    """The finalists replayed on the whole trace, best first; the base policy is always among
    them (so the winner can be compared with it on equal terms)."""
    dims = dimensions(compiled, base)
    if not dims:
        raise TuneError(f"policy {base!r} has no numeric parameter to tune")
    candidates = draw(dims, budget, seed)
    n = len(workload.requests)
    first = max(1, n // 4)
    keep = max(2, math.ceil(len(candidates) / 3))
    total = len(candidates) + keep
    done = 0
    context = multiprocessing.get_context("spawn")  # the caller may run threads (a progress bar)
    pool = ProcessPoolExecutor(workers or max(1, min(4, os.cpu_count() or 1)), mp_context=context,
                               initializer=_init, initargs=(raw, base, workload, gpu, max_parallel, dims))
    try:

        def run(batch: list[Candidate], requests: int) -> list[Result]:
            nonlocal done
            results = []
            futures = [pool.submit(_evaluate, c.values, requests) for c in batch]
            for c, future in zip(batch, futures, strict=True):
                try:
                    results.append(Result(c, future.result()))
                except Exception as exc:  # a worker that died, or a candidate that did not compile
                    raise TuneError(f"candidate {c.number} could not be replayed: "
                                    f"{type(exc).__name__}: {exc}") from None
                done += 1
                if progress is not None:
                    progress(done, total)
            return results

        screened = run(candidates, first)
        screened.sort(key=lambda r: (goal.key(r.row), r.candidate.number))
        finalists = [r.candidate for r in screened[:keep]]
        if all(c.number != 0 for c in finalists):
            finalists.append(candidates[0])
        final = run(finalists, n)
    finally:
        # On an error or Ctrl-C, pending candidates are dropped rather than waited for.
        pool.shutdown(wait=True, cancel_futures=True)
    final.sort(key=lambda r: (goal.key(r.row), r.candidate.number))
    return dims, final
