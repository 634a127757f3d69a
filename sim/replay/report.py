"""A simulation report: every row side by side, as a rich table for people and as JSON (the
stable format, docs/simulator.md), and the comparison behind `simulate --check`."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from policy.load import CompiledFile
from sim.replay.gpu import Gpu
from sim.replay.run import PLAIN, Progress, Row, replay_plain, replay_policy
from sim.replay.workload import Workload

FORMAT = 1


def run_all(
    workload: Workload, gpu: Gpu, compiled: CompiledFile, policies: list[str],
    progress: Callable[[str], Progress] | None = None,
) -> list[Row]:
    """Plain Ollama first (with several [backends], that many behind a least-outstanding
    balancer), then each policy, in the order asked."""
    rows = [replay_plain(workload, gpu.settings, compiled.active.max_wait,
                         progress(PLAIN) if progress else None, compiled.active.class_max_wait,
                         nodes=len(compiled.nodes), route="least-outstanding")]
    for name in policies:
        rows.append(replay_policy(workload, gpu.settings, compiled, name,
                                  progress(name) if progress else None))
    return rows


def report_json(rows: list[Row], workload: Workload, gpu: Gpu, trace: str, policy_file: str,
                max_parallel: int, backends: list[str] | None = None) -> dict[str, Any]:
    """`backends`: the file's [backends], each replayed as this GPU (empty: one server)."""
    requests = workload.requests
    return {
        "format": FORMAT,
        "trace": {
            "file": trace, "requests": len(requests), "skipped_without_model": workload.skipped,
            "estimated_tokens": workload.estimated,
            "span_s": round(requests[-1].arrival - requests[0].arrival, 3) if requests else 0.0,
            "clients": len({r.client for r in requests}), "models": sorted(workload.models()),
        },
        "gpu": gpu.as_json(),
        "policy_file": policy_file,
        "max_parallel": max_parallel,
        "backends": list(backends or []),
        "rows": [r.as_json() for r in rows],
    }


def _s(x: float) -> str:
    return f"{x:,.1f}" if x < 1000 else f"{x:,.0f}"


def render(report: dict[str, Any], console: Console) -> None:
    t, g = report["trace"], report["gpu"]
    console.print(
        f"[bold]{t['requests']:,} requests[/] from {t['clients']} clients over {_s(t['span_s'])} s · "
        f"GPU {g['source']}: {g['vram_gb']:g} GB, num_parallel {g['num_parallel']}, "
        f"max_loaded_models {g['max_loaded_models']}"
        + (f", context {g['context_length']:,}" if "context_length" in g else "")
        + (f" · sidecar max_parallel {report['max_parallel']}" if not report.get("backends") else
           f" · {len(report['backends'])} backends, each this GPU ({', '.join(report['backends'])});"
           " plain Ollama behind a least-outstanding balancer")
    )
    slots = g["num_parallel"] * g["max_loaded_models"]
    if report["max_parallel"] < slots and not report.get("backends"):
        console.print(
            f"[yellow]note:[/] the policy's max_parallel ({report['max_parallel']}) is below the GPU's "
            f"{slots} slots (num_parallel × max_loaded_models): the sidecar holds back requests the "
            "GPU could run beside each other; try --max-parallel"
        )
    # Figures down, policies across: side by side, and narrow enough for a terminal.
    rows = report["rows"]
    table = Table(header_style="bold")
    table.add_column("")
    for row in rows:
        table.add_column("plain Ollama" if row["policy"] == PLAIN else row["policy"], justify="right")

    def line(label: str, cell: Callable[[dict[str, Any]], str]) -> None:
        table.add_row(label, *(cell(r) for r in rows))

    line("model loads", lambda r: f"{r['loads']:,}")
    line("evictions", lambda r: f"{r['evictions']:,}")
    line("GPU s loading", lambda r: _s(r["gpu_load_s"]))
    line("GPU s generating", lambda r: _s(r["gpu_generate_s"]))
    line("makespan s", lambda r: _s(r["makespan_s"]))
    for key in ("mean", "p50", "p95", "p99", "max"):
        line(f"wait {key} s", lambda r, k=key: _s(r["wait_s"][k]))  # type: ignore[misc]
    line("over max_wait", lambda r: f"{r['over_max_wait']:,}")
    line("completed", lambda r: f"{r['completed']:,}")
    line("504 queue timeout", lambda r: f"{r['timed_out']:,}")
    line("refused 429/503", lambda r: f"{sum(r['refused'].values()):,}")
    line("Jain fairness", lambda r: f"{r['jain']:.3f}")
    line("worst client", lambda r: str(r["worst_client"] or "-"))
    line("  its share", lambda r: "-" if r["worst_client_share"] is None else f"{r['worst_client_share']:.2f}")
    console.print(table)
    classes = sorted({c for row in report["rows"] for c in row["wait_s_by_class"]})
    if len(classes) > 1:
        per = Table(title="wait p95 / max by class (s)", header_style="bold")
        per.add_column("policy")
        for c in classes:
            per.add_column(c, justify="right")
        for row in report["rows"]:
            cells = []
            for c in classes:
                f = row["wait_s_by_class"].get(c)
                cells.append(f"{_s(f['p95'])} / {_s(f['max'])}" if f else "-")
            per.add_row("plain Ollama" if row["policy"] == PLAIN else row["policy"], *cells)
        console.print(per)


# -- the CI gate ---------------------------------------------------------------------------------

# (figure, how to read it from a row, True if lower is better, absolute slack). The slack keeps a
# baseline of 0 (no wait at p95, no refusal) from failing on the smallest change; requests that
# ended without service are gated too, or refusing clients would improve every other figure.
GATED: tuple[tuple[str, Callable[[dict[str, Any]], float], bool, float], ...] = (
    ("loads", lambda r: r["loads"], True, 1.0),
    ("wait p95 s", lambda r: r["wait_s"]["p95"], True, 0.5),
    ("wait max s", lambda r: r["wait_s"]["max"], True, 0.5),
    ("refused or timed out", lambda r: r["timed_out"] + sum(r["refused"].values()), True, 0.0),
    ("Jain", lambda r: r["jain"], False, 0.0),
)


@dataclass(frozen=True, slots=True)
class Regression:
    policy: str
    figure: str
    baseline: float
    now: float
    limit: float


class BaselineError(ValueError):
    """The baseline file cannot be compared with this run (the message says why)."""


def check_baseline(baseline: Any) -> None:
    """BaselineError unless `baseline` is a report whose policy rows carry every gated figure
    (checked before the replay, so a bad file fails at once, not after minutes)."""
    if not isinstance(baseline, dict) or baseline.get("format") != FORMAT or not isinstance(baseline.get("rows"), list):
        raise BaselineError(f"not a simulation report of format {FORMAT} (write one with simulate --json)")
    for i, row in enumerate(baseline["rows"]):
        if not isinstance(row, dict) or not isinstance(row.get("policy"), str):
            raise BaselineError(f"rows[{i}] is not a report row with a policy name")
        for figure, read, _, _ in GATED:
            try:
                value = read(row)
            except (KeyError, TypeError, IndexError, AttributeError):
                value = None
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise BaselineError(f"the baseline's row {row['policy']!r} has no finite number for {figure!r}")


def compare(report: dict[str, Any], baseline: dict[str, Any], tolerance: float) -> list[Regression]:
    """Every gated figure of every policy row that is worse than the baseline's beyond the
    tolerance. A row is matched by policy name, or — when both sides have one policy row — to
    the baseline's only one (so a renamed policy can be gated against the old name)."""
    check_baseline(baseline)
    base_rows = {r["policy"]: r for r in baseline["rows"] if r["policy"] != PLAIN}
    rows = [r for r in report["rows"] if r["policy"] != PLAIN]
    found: list[Regression] = []
    for row in rows:
        base = base_rows.get(row["policy"])
        if base is None and len(rows) == 1 and len(base_rows) == 1:
            base = next(iter(base_rows.values()))
        if base is None:
            raise BaselineError(f"the baseline has no row for policy {row['policy']!r} "
                                f"(it has: {', '.join(map(str, base_rows)) or 'none'})")
        for figure, read, lower_better, slack in GATED:
            old, new = float(read(base)), float(read(row))
            limit = old * (1 + tolerance) + slack if lower_better else old * (1 - tolerance) - slack
            if (new > limit) if lower_better else (new < limit):
                found.append(Regression(row["policy"], figure, old, new, limit))
    return found


def render_regressions(found: list[Regression], tolerance: float, console: Console) -> None:
    table = Table(title=f"worse than the baseline beyond {tolerance:.0%}", header_style="bold")
    for heading in ("policy", "figure", "baseline", "now", "allowed up to"):
        table.add_column(heading, justify="left" if heading in ("policy", "figure") else "right")
    for r in found:
        bound = ("≥ " if r.figure == "Jain" else "≤ ") + f"{r.limit:,.3f}"
        table.add_row(r.policy, r.figure, f"{r.baseline:,.3f}", f"{r.now:,.3f}", bound)
    console.print(table)
