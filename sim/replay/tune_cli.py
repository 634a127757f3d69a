"""`smart-proxy policy tune`: the command line of sim/replay/tune.py (docs/simulator.md).

Exit 0 with the winner printed (and written with -o); 1 when no candidate meets the constraints;
2 for bad input, on one line.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path
from typing import Any

import tomli_w
from rich.console import Console
from rich.table import Table

from policy.errors import PolicyError
from policy.load import load_policy_text
from sim.cli_args import CliError, output_file, positive_count, write_output
from sim.replay.cli import add_setup_arguments, load_setup, progress_bar
from sim.replay.space import apply
from sim.replay.tune import (
    HIGHER_BETTER,
    METRICS,
    Goal,
    Result,
    TuneError,
    parse_constraints,
    search,
)

SHOWN = ("loads", "p95_wait", "max_wait", "jain", "timed_out", "refused")


def _objective(text: str) -> str:
    if text not in METRICS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a figure; use one of {', '.join(METRICS)}")
    return text


def _constraints(text: str) -> Any:
    try:
        return parse_constraints(text)
    except TuneError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _fmt(metric: str, value: float) -> str:
    return f"{value:.3f}" if metric == "jain" else f"{value:,.1f}" if isinstance(value, float) else f"{value:,}"


def cmd_tune(args: argparse.Namespace) -> int:
    setup = load_setup(args)
    base = args.base or setup.compiled.active.name
    if base not in setup.compiled.policies:
        raise CliError(f"--base: {base!r} is not a policy of {args.policy} "
                       f"(it has: {', '.join(setup.compiled.policies)})")
    if args.output is not None and Path(args.output).resolve() == Path(args.policy).resolve():
        raise CliError(f"-o: {args.output} is the --policy file itself; write the tuned file "
                       "elsewhere (it is re-serialised, so the original's comments would be lost)")
    objective = args.minimize or args.maximize
    goal = Goal(objective, args.maximize is not None, tuple(args.subject_to or ()))
    try:
        raw = tomllib.loads(Path(args.policy).read_text(encoding="utf-8"))
    except OSError as exc:
        raise CliError(f"{args.policy}: cannot read: {exc.strerror}") from None
    with progress_bar(args.budget + args.budget // 3 + 2, 1) as factory:
        advance = factory("candidates") if factory else None
        try:
            dims, final = search(
                raw, setup.compiled, base, setup.workload, setup.gpu.settings, goal,
                budget=args.budget, seed=args.seed, max_parallel=args.max_parallel,
                progress=(lambda done, total: advance(done)) if advance else None,
            )
        except TuneError as exc:
            raise CliError(str(exc)) from None
    console = Console(width=None if sys.stdout.isatty() else 120)
    base_result = next(r for r in final if r.candidate.number == 0)
    winner = final[0]
    _render(console, final[:5] + ([] if base_result in final[:5] else [base_result]), goal)
    if not goal.feasible(winner.row):
        console.print(f"no candidate meets {', '.join(map(str, goal.constraints))}; nothing written")
        return 1
    if winner.candidate.number == 0:
        console.print(f"no candidate beat {base!r} on {objective} within the constraints; nothing written")
        return 0
    params = Table(title=f"{base}-tuned: the parameters that changed", header_style="bold")
    for heading in ("parameter", base, f"{base}-tuned"):
        params.add_column(heading, justify="left" if heading == "parameter" else "right")
    for dim, value in zip(dims, winner.candidate.values, strict=True):
        if value != dim.base:
            params.add_row(dim.label, f"{dim.base:g}", f"{value:g}")
    console.print(params)
    if args.output is not None:
        name = f"{base}-tuned"
        shown = ", ".join(f"{k} {_fmt(k, METRICS[k](winner.row))}" for k in SHOWN[:4])
        doc = apply(raw, base, name, dims, list(winner.candidate.values),
                    f"{base}, tuned by `policy tune` for {objective} on {args.trace}: {shown}")
        text = tomli_w.dumps(doc)
        try:
            load_policy_text(text.encode(), args.output)  # what we write must pass `policy check`
        except PolicyError as exc:
            raise CliError(f"the tuned file would not compile: {exc}") from None
        write_output(args.output, text)
        console.print(f"wrote {args.output}: policy {name!r} beside the others "
                      f"(`active` unchanged: set active = \"{name}\" to use it)")
    return 0


def _render(console: Console, results: list[Result], goal: Goal) -> None:
    metrics = list(dict.fromkeys([goal.objective, *(c.metric for c in goal.constraints), *SHOWN]))
    table = Table(title="best candidates on the whole trace (0 = the base policy)", header_style="bold")
    table.add_column("candidate", justify="right")
    for m in metrics:
        arrow = "↑" if m in HIGHER_BETTER else "↓"
        table.add_column(f"{m} {arrow}", justify="right")
    table.add_column("meets constraints")
    for r in results:
        table.add_row(str(r.candidate.number), *(_fmt(m, METRICS[m](r.row)) for m in metrics),
                      "yes" if goal.feasible(r.row) else "no")
    console.print(table)


def register_tune(verbs: argparse._SubParsersAction) -> None:
    tune = verbs.add_parser(
        "tune", help="search a policy's weights for better figures on a trace",
        description="Replay a trace under random variations of a policy's numeric parameters "
        "(successive halving, deterministic for a seed) and print the best beside the base "
        "policy; -o writes the winner into a copy of the file. See docs/simulator.md.",
    )
    add_setup_arguments(tune)
    tune.add_argument("--base", metavar="NAME", help="the policy to start from (default: the active one)")
    goal = tune.add_mutually_exclusive_group(required=True)
    goal.add_argument("--minimize", type=_objective, metavar="FIGURE",
                      help=f"the figure to make small: {', '.join(METRICS)}")
    goal.add_argument("--maximize", type=_objective, metavar="FIGURE", help="or large (e.g. jain)")
    tune.add_argument("--subject-to", type=_constraints, metavar="RULES",
                      help='constraints, e.g. "p95_wait<=60s,max_wait<=300s,jain>=0.9"')
    tune.add_argument("--budget", type=positive_count, default=200, metavar="N",
                      help="candidates to try, the base included (default 200)")
    tune.add_argument("--seed", type=int, default=1, metavar="S", help="random seed (default 1)")
    tune.add_argument("-o", "--output", type=output_file, metavar="FILE",
                      help="write the policy file with the winner added as NAME-tuned")
    tune.set_defaults(run=cmd_tune, cli_prog=tune.prog)
