"""`smart-proxy simulate` and `smart-proxy trace synth`: replay a trace under policies, and make
synthetic traces to replay (docs/simulator.md).

Every bad input — a trace line, the policy file, the GPU file, a baseline — is one line on stderr
and exit 2; `--check` exits 1 when a figure got worse than the baseline beyond the tolerance.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

import msgspec
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from policy.errors import PolicyError
from policy.load import CompiledFile, load_policy_file
from sim.cli_args import (
    CliError,
    choice,
    env_default,
    existing_file,
    existing_file_path,
    output_file,
    positive_count,
    write_output,
)
from sim.config import SimConfigError
from sim.presets import PRESETS
from sim.replay.gpu import Gpu, choose
from sim.replay.report import (
    BaselineError,
    check_baseline,
    compare,
    render,
    render_regressions,
    report_json,
    run_all,
)
from sim.replay.synth import TRACE_PRESETS, synthesize
from sim.replay.workload import TraceError, Workload, classify, prepare, read_trace

DEFAULT_TOLERANCE = 0.05


def _tolerance(text: str) -> float:
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a tolerance like 5% or 0.05") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 0% and below 100%")
    return value


def _gb(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of GB") from None
    if not 0 < value <= 10_000:
        raise argparse.ArgumentTypeError(f"{text!r} must be above 0 and at most 10000 GB")
    return value


def add_setup_arguments(parser: argparse.ArgumentParser) -> None:
    """The options `simulate` and `policy tune` share: trace, policy file, GPU and overrides."""
    parser.add_argument("--trace", type=existing_file_path, required=True, metavar="FILE",
                        help="a trace (JSON lines, from `trace export` or `trace synth`)")
    parser.add_argument("--policy", type=existing_file, metavar="FILE",
                        default=env_default(os.environ, "SMART_PROXY_POLICY", "policies.example.toml"),
                        help="the policy file (default $SMART_PROXY_POLICY or policies.example.toml)")
    gpu = parser.add_mutually_exclusive_group()
    gpu.add_argument("--sim", type=choice("a GPU preset", sorted(PRESETS)), metavar="PRESET",
                     help=f"the GPU: {', '.join(sorted(PRESETS))} (default: the smallest preset "
                     "that has every model of the trace)")
    gpu.add_argument("--sim-config", type=existing_file_path, metavar="FILE",
                     help="the GPU and its models as an emulator TOML file (docs/emulator.md)")
    parser.add_argument("--vram-gb", type=_gb, metavar="X", help="override the GPU's memory (GB)")
    parser.add_argument("--num-parallel", type=positive_count, metavar="N",
                        help="override OLLAMA_NUM_PARALLEL")
    parser.add_argument("--max-loaded", type=positive_count, metavar="N",
                        help="override OLLAMA_MAX_LOADED_MODELS")
    parser.add_argument("--context-length", type=positive_count, metavar="N",
                        help="override OLLAMA_CONTEXT_LENGTH (unset, Ollama picks it by VRAM: 4k "
                        "under 23 GiB, 32k from 23 GiB, 256k from 47 GiB)")
    parser.add_argument("--max-parallel", type=positive_count, metavar="N",
                        help="override the policy file's [backend] max_parallel (the sidecar's "
                        "requests in flight)")


@dataclasses.dataclass(frozen=True, slots=True)
class Setup:
    workload: Workload
    gpu: Gpu
    compiled: CompiledFile


def load_setup(args: argparse.Namespace) -> Setup:
    """Trace, policy file and GPU, checked; CliError with one line on any problem."""
    try:
        compiled = load_policy_file(args.policy)
    except PolicyError as exc:  # every line already names the file
        raise CliError("; ".join(exc.lines)) from None
    if args.max_parallel is not None:
        compiled = compiled.with_backend(max_parallel=args.max_parallel)  # every backend's
    try:
        workload = classify(prepare(read_trace(args.trace)), compiled)
    except TraceError as exc:
        raise CliError(str(exc)) from None
    if not workload.requests:
        raise CliError(f"{args.trace}: no request of the trace names a model")
    try:
        gpu = choose(workload.models(), preset=args.sim, config=args.sim_config,
                     vram_gb=args.vram_gb, num_parallel=args.num_parallel, max_loaded=args.max_loaded,
                     context_length=args.context_length)
    except SimConfigError as exc:
        raise CliError("; ".join(exc.problems)) from None
    return Setup(workload, gpu, compiled)


@contextlib.contextmanager
def progress_bar(per_row: int, rows: int) -> Iterator[Any]:
    """A progress bar on stderr when it is a terminal (None otherwise): a factory giving each
    row, in order, the callback the replay reports its arrivals to."""
    if not sys.stderr.isatty():
        yield None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("replaying", total=per_row * rows)
        started = [0]

        def factory(name: str) -> Any:
            base = started[0] * per_row
            started[0] += 1

            def advance(count: int) -> None:
                bar.update(task, completed=base + count, description=f"replaying {name}")

            return advance

        yield factory


def _policies(args: argparse.Namespace, compiled: CompiledFile) -> list[str]:
    if args.all:
        return list(compiled.policies)
    if args.policies:
        names = [n.strip() for n in args.policies.split(",") if n.strip()]
        unknown = [n for n in names if n not in compiled.policies]
        if unknown or not names:
            raise CliError(f"--policies: {', '.join(unknown) or repr(args.policies)}: not a policy of "
                           f"{args.policy} (it has: {', '.join(compiled.policies)})")
        return list(dict.fromkeys(names))
    return [compiled.active.name]


def cmd_simulate(args: argparse.Namespace) -> int:
    setup = load_setup(args)
    names = _policies(args, setup.compiled)
    baseline = None
    if args.check is not None:
        try:
            baseline = json.loads(args.check.read_bytes())
            check_baseline(baseline)
        except RecursionError:
            raise CliError(f"{args.check}: nested too deeply to be a simulation report") from None
        except (OSError, ValueError) as exc:  # BaselineError is a ValueError
            raise CliError(f"{args.check}: {exc}") from None
    with progress_bar(len(setup.workload.requests), 1 + len(names)) as factory:
        rows = run_all(setup.workload, setup.gpu, setup.compiled, names, factory)
    report = report_json(rows, setup.workload, setup.gpu, str(args.trace), str(args.policy),
                         setup.compiled.backend.max_parallel,
                         [n.name for n in setup.compiled.nodes] if len(setup.compiled.nodes) > 1 else [])
    # With the JSON on stdout, the table goes to stderr: stdout stays one JSON document.
    to_stderr = args.json == "-"
    stream = sys.stderr if to_stderr else sys.stdout
    console = Console(file=stream, width=None if stream.isatty() else 120)
    render(report, console)
    if args.json is not None:
        data = json.dumps(report, indent=2, sort_keys=False) + "\n"
        write_output(args.json, data, "--json")
    if baseline is not None:
        try:
            found = compare(report, baseline, args.tolerance)
        except BaselineError as exc:
            raise CliError(f"{args.check}: {exc}") from None
        if found:
            render_regressions(found, args.tolerance, console)
            return 1
        console.print(f"no gated figure (loads, wait p95, wait max, refused or timed out, Jain) "
                      f"worse than {args.check} beyond {args.tolerance:.0%}")
    return 0


MAX_SYNTH = 1_000_000  # ~850 MB while generating: the trace is built and sorted in memory


def _synth_count(text: str) -> int:
    value = positive_count(text)
    if value > MAX_SYNTH:
        raise argparse.ArgumentTypeError(f"{text!r} is more than {MAX_SYNTH:,} requests")
    return value


def cmd_synth(args: argparse.Namespace) -> int:
    records = synthesize(args.preset, args.requests, args.seed)
    gpu = TRACE_PRESETS[args.preset].gpu
    print(f"{len(records):,} requests; designed for the {gpu} GPU: replay with "
          f"`smart-proxy simulate --trace FILE --sim {gpu}`", file=sys.stderr)
    encoder = msgspec.json.Encoder()
    write_output(args.output, b"".join(encoder.encode(r) + b"\n" for r in records))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    simulate = sub.add_parser(
        "simulate", help="replay a trace under policies and plain Ollama, side by side",
        description="Replay a trace through the real scheduler under each policy, in front of the "
        "emulator's model of Ollama, on a virtual clock (no HTTP, no sleeping). Plain Ollama (no "
        "sidecar) is always the first row. See docs/simulator.md.",
    )
    add_setup_arguments(simulate)
    which = simulate.add_mutually_exclusive_group()
    which.add_argument("--policies", metavar="A,B,C", help="policies of the file to compare")
    which.add_argument("--all", action="store_true", help="every policy of the file")
    simulate.add_argument("--json", type=output_file, metavar="OUT",
                          help="also write the report as JSON (the stable format; - for stdout)")
    simulate.add_argument("--check", type=existing_file_path, metavar="BASELINE",
                          help="exit 1 if loads, wait p95, wait max, refused or timed-out requests "
                          "or Jain are worse than this earlier --json report beyond the tolerance")
    simulate.add_argument("--tolerance", type=_tolerance, default=DEFAULT_TOLERANCE, metavar="PCT",
                          help="how much worse a figure may get under --check (default 5%%)")
    simulate.set_defaults(run=cmd_simulate, cli_prog=simulate.prog)


def register_synth(trace_verbs: argparse._SubParsersAction) -> None:
    lines = "\n".join(f"  {name:13s} {p.summary}" for name, p in TRACE_PRESETS.items())
    synth = trace_verbs.add_parser(
        "synth", help="write a synthetic trace from a preset",
        description="Write a synthetic trace (the format of `trace export`), deterministic for a "
        "seed. Presets (docs/simulator.md says where each shape comes from):\n" + lines,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    synth.add_argument("--preset", type=choice("a trace preset", list(TRACE_PRESETS)), required=True,
                       metavar="NAME", help=", ".join(TRACE_PRESETS))
    synth.add_argument("--requests", type=_synth_count, default=2000, metavar="N",
                       help=f"how many requests (default 2000, at most {MAX_SYNTH:,})")
    synth.add_argument("--seed", type=int, default=1, metavar="S", help="random seed (default 1)")
    synth.add_argument("-o", "--output", type=output_file, metavar="FILE",
                       help="write here instead of stdout")
    synth.set_defaults(run=cmd_synth, cli_prog=synth.prog)
