"""Where the sidecar's CPU goes per small request: a sampling profile (py-spy) by component.

Starts the emulator (time scale 0) and the sidecar (`smart-proxy serve`, SQLite journal, a JSON
log line per request to /dev/null) in their own processes, attaches py-spy to the sidecar, and sends small
non-streamed /api/generate requests at concurrency 1 and then 16. Samples are taken of the thread
holding the GIL (`--gil`): Python's serial work, whatever thread does it, without the time a
thread spends blocked in a system call (fsync, a socket) that a plain sampler would count as
busy. Each sample is charged to
the component of the innermost frame that belongs to one (the upstream client, the HTTP server,
Starlette, the journal, ...); a sample whose frames are all the standard library's is the event
loop's. The shares and the CPU per request go to bench/results/profile.json — run it before and
after a change to see what the change moved.

    .venv/bin/pip install py-spy
    .venv/bin/python bench/profile_sidecar.py [--requests 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp
from harness import ROOT, cpu_seconds, free_port, report_header, running, start, write_report
from harness import SMALL_REQUESTS_POLICY as POLICY

RESULTS = ROOT / "bench" / "results" / "profile.json"
BODY = {"model": "llama3.2:1b", "prompt": "hi", "stream": False, "options": {"num_predict": 1}}
# Innermost matching frame wins; the order only matters for paths that match two (none do).
COMPONENTS = (
    ("upstream client (aiohttp)", ("/aiohttp/", "/yarl/", "/multidict/")),
    ("upstream client (httpx)", ("/httpx/", "/httpcore/", "/anyio/")),
    ("HTTP server (Hypercorn, h11)", ("/hypercorn/", "/h11/", "/h2/", "/wsproto/")),
    ("Starlette", ("/starlette/",)),
    ("journal", ("/server/journal/", "/sqlite_utils/", "sqlite3")),
    ("logging", ("/logging/", "/server/telemetry/logs.py")),
    ("metrics and tracing", ("/prometheus_client/", "/server/telemetry/")),
    ("JSON and msgspec", ("/json/", "/msgspec/")),
    ("scheduling (engine, policy, dispatcher)", ("/engine/", "/policy/", "/server/runtime/dispatcher.py")),
    ("admission and intake", ("/server/proxy/intake", "/server/proxy/facts", "/server/proxy/routes",
                              "/server/http/identity", "/server/http/auth", "/schemas/")),
    ("exchange and relay", ("/server/proxy/", "/server/http/")),
    ("sidecar, other", ("/server/",)),
)
EVENT_LOOP = "event loop, sockets, other stdlib"
LOOP_MACHINERY = ("/asyncio/", "/selectors.py", "/threading.py", "/concurrent/futures/")


def component(stack: str) -> str:
    """The innermost frame that names a component; reaching the loop's own machinery first (a
    callback run by the loop, a select) makes it the event loop's."""
    for frame in reversed(stack.split(";")):
        for name, needles in COMPONENTS:
            if any(needle in frame for needle in needles):
                return name
        if any(part in frame for part in LOOP_MACHINERY):
            return EVENT_LOOP
    return EVENT_LOOP


def shares(raw: Path) -> dict[str, float]:
    counts: Counter[str] = Counter()
    for line in raw.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            counts[component(stack)] += int(count)
    total = sum(counts.values()) or 1
    return {name: round(n / total, 3) for name, n in counts.most_common()}


async def load(url: str, count: int, concurrency: int) -> None:
    left = count
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                async with session.post(url + "/api/generate", json=BODY) as response:
                    await response.read()

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def profile(pyspy: str, pid: int, url: str, count: int, concurrency: int, out: Path) -> dict[str, object]:
    spy = subprocess.Popen([pyspy, "record", "--pid", str(pid), "--rate", "250", "--format", "raw",
                            "--output", str(out), "--nonblocking", "--full-filenames", "--gil"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)  # py-spy attaches (a benchmark script, not async code)
    before = cpu_seconds(pid)
    asyncio.run(load(url, count, concurrency))
    cpu = cpu_seconds(pid) - before
    spy.send_signal(2)  # SIGINT: py-spy writes what it sampled and exits
    _, err = spy.communicate(timeout=60)
    if not out.exists():  # e.g. attaching refused: ptrace_scope 1 wants root or CAP_SYS_PTRACE
        raise SystemExit(f"profile_sidecar: py-spy wrote no profile: {err.decode(errors='replace').strip()}")
    return {"concurrency": concurrency, "requests": count,
            "cpu_ms_per_request": round(cpu / count * 1000, 3), "shares": shares(out)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--log-level", default="info", help="the sidecar's (info: a line per request, as deployed)")
    parser.add_argument("--keep", metavar="DIR", help="also keep py-spy's raw stacks there (c1.txt, c16.txt)")
    args = parser.parse_args()
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(pyspy).exists():
        print("profile_sidecar: py-spy is not installed (pip install py-spy)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="profile-bench-") as work:
        policy = Path(work) / "policies.toml"
        policy.write_text(POLICY, encoding="utf-8")
        sim_port, proxy_port = free_port(), free_port()
        direct, proxy = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{proxy_port}"
        sim = start(["sim", "--preset", "tiny-8gb", "--time-scale", "0", "--port", str(sim_port)],
                    direct + "/api/version", "the emulator")
        env = {**os.environ, "SMART_PROXY_DB": str(Path(work) / "journal.db"),
               "SMART_PROXY_LOG_FORMAT": "json", "SMART_PROXY_LOG_LEVEL": args.log_level}
        sidecar = start(["serve", "--policy", str(policy), "--host", "127.0.0.1", "--port", str(proxy_port),
                         "--upstream", direct], proxy + "/proxy/health", "the sidecar", env)
        with running(sim, sidecar):
            asyncio.run(load(proxy, 200, 4))  # load the model, warm the pools
            phases = [profile(pyspy, sidecar.pid, proxy, args.requests, c, Path(work) / f"c{c}.txt")
                      for c in (1, 16)]
            if args.keep:
                Path(args.keep).mkdir(parents=True, exist_ok=True)
                for c in (1, 16):
                    shutil.copy(Path(work) / f"c{c}.txt", Path(args.keep) / f"c{c}.txt")
    report = report_header("profile")
    report["settings"] = {"sampler": "py-spy record --gil --rate 250: samples of the thread holding the "
                          "GIL (Python work; a thread blocked in fsync or a socket call is not counted)",
                          "request": "small non-streamed /api/generate, num_predict 1",
                          "sidecar_log_level": args.log_level}
    report["phases"] = phases
    write_report(RESULTS, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
