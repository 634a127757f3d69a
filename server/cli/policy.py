"""`smart-proxy policy …`: check, show, explain, snapshot and scale a policy file.

`snapshot` is the workflow for operators' own CI: write the orderings a policy file gives on a
directory of scenarios, commit that file, and let `--check` fail (with what moved) when an edit
changes the order. `scale` rewrites a file for replays against the emulator at a compressed
time scale (docs/policy.md).
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import msgspec
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from engine.scenario import dispatch_sequence, load_scenario, ranking, scenario_files
from policy.errors import PolicyError
from policy.load import CompiledFile, load_policy_file
from policy.scale import scale_policy_text
from policy.show import resolved_toml
from server.cli.args import (
    CliError,
    existing_dir,
    existing_file,
    one_line,
    output_file,
    write_output,
)
from server.cli.policy_from_env import register_from_env
from sim.replay.tune_cli import register_tune

SNAPSHOT_FORMAT = 1


def register(sub: argparse._SubParsersAction) -> None:
    policy = sub.add_parser("policy", help="check, show, explain, snapshot, scale or tune a policy file")
    verbs = policy.add_subparsers(dest="policy_verb", metavar="VERB", required=True)

    check = verbs.add_parser("check", help='print "ok" or every error in the file')
    check.add_argument("file", type=existing_file, metavar="FILE")
    check.set_defaults(run=_check, cli_prog=check.prog)

    show = verbs.add_parser("show", help="print the fully resolved file (all defaults) as TOML")
    show.add_argument("file", type=existing_file, metavar="FILE")
    show.set_defaults(run=_show, cli_prog=show.prog)

    explain = verbs.add_parser("explain", help="rank a scenario's tickets with every term")
    explain.add_argument("file", type=existing_file, metavar="FILE")
    explain.add_argument("--scenario", type=existing_file, required=True, metavar="FILE",
                         help="a scenario TOML file")
    explain.add_argument("--policy", metavar="NAME",
                         help="a policy of the file (default: the active one)")
    explain.add_argument("--json", action="store_true",
                         help="print the ranking and dispatch order as one JSON object")
    explain.set_defaults(run=_explain, cli_prog=explain.prog)

    snap = verbs.add_parser("snapshot", help="write or check the orderings of every policy")
    snap.add_argument("file", type=existing_file, metavar="FILE")
    snap.add_argument("--scenarios", type=existing_dir, required=True, metavar="DIR",
                      help="directory of scenario TOML files")
    snap.add_argument("--check", type=existing_file, metavar="GOLDEN",
                      help="compare with this orderings file")
    snap.add_argument("-o", "--output", metavar="FILE",
                      help="write here instead of standard output")
    snap.set_defaults(run=_snapshot, cli_prog=snap.prog)

    scale = verbs.add_parser(
        "scale", help="multiply every scheduling duration by FACTOR (divide per-second rates)"
    )
    scale.add_argument("file", type=existing_file, metavar="FILE")
    scale.add_argument("--by", type=positive_factor, required=True, metavar="FACTOR",
                       help="e.g. 0.01 for a replay against `smart-proxy sim --time-scale 0.01`")
    scale.add_argument("-o", "--output", type=output_file, metavar="FILE",
                       help="write here instead of standard output")
    scale.set_defaults(run=_scale, cli_prog=scale.prog)

    register_tune(verbs)  # sim/replay/tune_cli.py: it replays traces, so it lives with the simulator
    register_from_env(verbs)


def _load(path: str) -> CompiledFile | None:
    try:
        return load_policy_file(path)
    except PolicyError as exc:
        for line in exc.lines:
            print(line, file=sys.stderr)
        return None


def _check(args: argparse.Namespace) -> int:
    compiled = _load(args.file)
    if compiled is None:
        return 1
    print(
        f"ok: {args.file} — {len(compiled.policies)} policies, active "
        f"{compiled.active.name!r}, version {compiled.version}"
    )
    return 0


def _show(args: argparse.Namespace) -> int:
    compiled = _load(args.file)
    if compiled is None:
        return 1
    sys.stdout.write(resolved_toml(compiled))
    return 0


def positive_factor(text: str) -> float:
    """`--by`: a multiplier above zero, finite (0 would make every duration zero)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be above zero, and finite")
    return value


def _scale(args: argparse.Namespace) -> int:
    if _load(args.file) is None:  # every problem of the file, as `check` reports them
        return 1
    try:
        text = Path(args.file).read_text(encoding="utf-8")
        scaled = scale_policy_text(text, args.file, args.by)
    except (OSError, UnicodeError) as exc:  # it loaded a moment ago: changed or gone since
        raise CliError(f"{args.file}: cannot read the policy file: {exc}") from None
    except PolicyError as exc:  # aging.whole_seconds, or a value scaled out of its range
        for line in exc.lines:
            print(line, file=sys.stderr)
        return 1
    write_output(args.output, scaled)
    return 0


def _pick_policy(compiled: CompiledFile, name: str | None) -> str:
    if name is None:
        return compiled.active.name
    if name not in compiled.policies:
        raise CliError(
            f"argument --policy: no policy named {name!r}; defined: "
            f"{', '.join(compiled.policies)} (in {compiled.path})"
        )
    return name


def _explain(args: argparse.Namespace) -> int:
    compiled = _load(args.file)
    if compiled is None:
        return 1
    name = _pick_policy(compiled, args.policy)
    try:
        scenario = load_scenario(args.scenario)
    except PolicyError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    rows = ranking(compiled, scenario, name)
    terms = [t.name for t in compiled.policies[name].terms]
    sequence = dispatch_sequence(compiled, scenario, name)
    if args.json:
        explanation = Explanation(
            policy=name, scenario=args.scenario, description=scenario.description,
            terms=terms, ranking=rows, dispatch=sequence,
        )
        sys.stdout.buffer.write(msgspec.json.format(msgspec.json.encode(explanation)) + b"\n")
        sys.stdout.flush()
        return 0
    table = Table(
        # Names and descriptions are data, never rich markup ("[/]" would not even render).
        title=escape(f"{name} on {Path(args.scenario).name}: {scenario.description}"),
        caption="lower total = served sooner; ties go to the earlier arrival",
    )
    columns = ("rank", "ticket", "model", "client", "class", "waited s", *terms, "total")
    cells = [
        [
            str(row["rank"]),
            row["ticket"],
            row["model"],
            row["client"],
            row["class"],
            f"{row['waited']:g}",
            *(f"{row['terms'][t]:g}" for t in terms),
            f"{row['total']:g}" + (" (overdue)" if row.get("overdue") else ""),
        ]
        for row in rows
    ]
    for i, column in enumerate(columns):
        numeric = column in ("rank", "waited s", "total", *terms)
        # Nothing is ever cut with an ellipsis: "fold" breaks a value too long for its column
        # over several lines (a model or client name is only useful whole), and a number keeps
        # at least its own width so a narrow terminal folds the names, not the scores.
        header = column.replace("_", "_\n")  # rate_penalty: two short header lines, not folded
        widest = max(len(r[i]) for r in cells) if numeric and cells else None
        table.add_column(escape(header), justify="right" if numeric else "left",
                         overflow="fold", no_wrap=False, min_width=widest)
    for r in cells:
        table.add_row(*(escape(c) for c in r))
    console = Console(width=_width())
    console.print(table)
    console.print(
        "dispatch order, one slot freeing at a time: "
        + " → ".join(escape(f"{s['ticket']} ({s['action']})") for s in sequence),
        overflow="fold",
    )
    return 0


class Explanation(msgspec.Struct):
    """`policy explain --json`: the rows of the table and the dispatch order, unabridged."""

    policy: str
    scenario: str
    description: str
    terms: list[str]
    ranking: list[dict[str, Any]]
    dispatch: list[dict[str, Any]]


def _width() -> int | None:
    """The terminal's width (rich reads it, and COLUMNS); off a terminal, COLUMNS if set, else a
    width that fits every column (CI logs and files have no width of their own)."""
    if sys.stdout.isatty():
        return None
    columns = os.environ.get("COLUMNS", "")
    return int(columns) if columns.isdigit() and int(columns) > 0 else 220


def orderings(compiled: CompiledFile, directory: str) -> dict[str, Any]:
    """Every policy × scenario dispatch sequence, one readable line per dispatch."""
    scenarios = [(p.stem, load_scenario(p)) for p in scenario_files(directory)]
    out: dict[str, Any] = {"format": SNAPSHOT_FORMAT, "orderings": {}}
    for name in sorted(compiled.policies):
        out["orderings"][name] = {
            stem: [_line(step) for step in dispatch_sequence(compiled, scenario, name)]
            for stem, scenario in scenarios
        }
    return out


def _line(step: dict[str, Any]) -> str:
    terms = " ".join(f"{k}={v:g}" for k, v in step["terms"].items())
    flag = " overdue" if step.get("overdue") else ""
    return (
        f"{step['ticket']} {step['model']} {step['client']}/{step['class']} {step['action']}"
        f" total={step['total']:g}{flag}" + (f" [{terms}]" if terms else "")
    )


def _snapshot(args: argparse.Namespace) -> int:
    compiled = _load(args.file)
    if compiled is None:
        return 1
    if not scenario_files(args.scenarios):
        print(f"{args.scenarios}: no scenario files (*.toml) found", file=sys.stderr)
        return 2
    try:
        current = orderings(compiled, args.scenarios)
    except PolicyError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    text = json.dumps(current, indent=2, sort_keys=True) + "\n"
    if args.check is None:
        if args.output:
            try:
                Path(args.output).write_text(text, encoding="utf-8")
            except OSError as exc:
                reason = exc.strerror or str(exc)
                print(f"{args.output}: cannot write the orderings file (-o/--output): {reason}",
                      file=sys.stderr)
                return 2
        else:
            sys.stdout.write(text)
        return 0
    try:
        golden = json.loads(Path(args.check).read_text(encoding="utf-8"))
        previous = golden["orderings"]
        if not _is_orderings(previous):
            raise ValueError("orderings must map policy -> scenario -> list of dispatch lines")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"{args.check}: not a readable orderings file (--check): {one_line(str(exc))}",
              file=sys.stderr)
        return 2
    moved = describe_changes(previous, current["orderings"])
    if not moved:
        print(f"ok: orderings match {args.check}")
        return 0
    print("\n".join(moved))
    return 1


def _is_orderings(value: Any) -> bool:
    """The shape `describe_changes` reads: {policy: {scenario: ["ticket ...", ...]}}."""
    return isinstance(value, dict) and all(
        isinstance(scenarios, dict)
        and all(
            isinstance(lines, list)
            and all(isinstance(line, str) and line.split() for line in lines)
            for lines in scenarios.values()
        )
        for scenarios in value.values()
    )


def describe_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """What moved, per policy and scenario: the order before and after, then a line diff."""
    report: list[str] = []
    for policy in sorted(before.keys() | after.keys()):
        old, new = before.get(policy), after.get(policy)
        if old is None or new is None:
            report.append(f"policy {policy!r}: {'added' if old is None else 'removed'}")
            continue
        for scenario in sorted(old.keys() | new.keys()):
            a, b = old.get(scenario), new.get(scenario)
            if a == b:
                continue
            if a is None or b is None:
                report.append(
                    f"{policy} / {scenario}: scenario {'added' if a is None else 'removed'}"
                )
                continue
            order_a = " ".join(line.split()[0] for line in a)
            order_b = " ".join(line.split()[0] for line in b)
            what = "order changed" if order_a != order_b else "scores changed, order kept"
            report.append(f"{policy} / {scenario}: {what}")
            report.append(f"  before: {order_a}")
            report.append(f"  after:  {order_b}")
            report.extend(
                "  " + d for d in difflib.unified_diff(a, b, "before", "after", lineterm="", n=0)
            )
    return report
