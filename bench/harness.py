"""What every benchmark here shares: starting the emulator and the sidecar as separate processes,
stopping them, and the header of a results file."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
LOAD_AT_START = os.getloadavg()
# The sidecar's policy where small requests are measured: slots enough for every request sent,
# a queue that never refuses, the usual terms (so scheduling costs what it costs).
SMALL_REQUESTS_POLICY = """\
active = "bench"

[backend]
max_parallel = 32
num_parallel = 32
vram_gb = 8
max_loaded_models = 2
poll_interval = "5s"

[limits]
max_queue = 10000
max_queued_per_client = 10000

[policies.bench.terms.vram]
[policies.bench.terms.fairness]
[policies.bench.terms.aging]
"""  # imported first thing by every benchmark: the load before it ran


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(
    args: list[str], ready_url: str, what: str, env: Mapping[str, str] | None = None,
    cwd: Path = ROOT,
) -> subprocess.Popen[bytes]:
    """`smart-proxy ARGS` in its own process, returned once `ready_url` answers 2xx. `cwd`: the
    checkout whose code runs (its packages come first on the path), e.g. a `baseline` worktree."""
    # BENCH_LOGS=DIR keeps each process's stderr there (one file per process) for a post-mortem.
    logs = os.environ.get("BENCH_LOGS")
    stderr: Any = subprocess.DEVNULL
    if logs:
        Path(logs).mkdir(parents=True, exist_ok=True)
        stderr = (Path(logs) / f"{args[0]}-{time.time_ns()}.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "server.cli", *args], cwd=cwd, env=env, stderr=stderr)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{what} exited with {process.returncode}")
        try:
            httpx.get(ready_url, timeout=1).raise_for_status()
            return process
        except httpx.HTTPError:
            time.sleep(0.1)  # a benchmark script, not async code: plain polling is fine
    process.kill()
    raise SystemExit(f"{what} did not start within 30 s")


@contextlib.contextmanager
def running(*processes: subprocess.Popen[bytes]) -> Iterator[None]:
    """Terminate the processes (newest first) however the block ends."""
    try:
        yield
    finally:
        for process in reversed(processes):
            process.terminate()
            process.wait(timeout=30)


@contextlib.contextmanager
def baseline(ref: str | None, where: Path) -> Iterator[Path | None]:
    """The project as of git `ref`, checked out (a detached worktree) at `where` for the length of
    the block, so a benchmark can run it beside the current code: before and after in one run."""
    if ref is None:
        yield None
        return
    subprocess.run(["git", "worktree", "add", "--detach", "--quiet", str(where), ref], cwd=ROOT, check=True)
    try:
        yield where
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(where)], cwd=ROOT, check=False)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def write_report(path: Path, report: dict[str, Any]) -> None:
    """The results file (and the same JSON on stdout), with the load average now beside the one
    `report_header` took: a run on a busy machine says so."""
    report.setdefault("machine", {})["load_after"] = list(os.getloadavg())
    text = json.dumps(report, indent=2) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print(text, end="")


def report_header(benchmark: str) -> dict[str, Any]:
    """Name, time and machine: what a results file needs to be read next to another."""
    return {
        "benchmark": benchmark,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_before": list(LOAD_AT_START),  # 1, 5 and 15 minutes
        },
    }
