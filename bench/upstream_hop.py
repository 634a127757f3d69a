"""Which HTTP client should carry the sidecar's upstream hop? One run, side by side (issue 14).

In front of the same emulator (`smart-proxy sim --time-scale 0`, its own process): the emulator
directly, a minimal pass-through (Hypercorn + Starlette, bench/passthrough.py) on each candidate
client — httpx as the sidecar configures it, httpcore (httpx's transport) directly, aiohttp — and
the sidecar itself (`smart-proxy serve`, SQLite journal, a JSON log line per request to
/dev/null, as deployed; `--log-level warning` drops them). `--baseline GITREF` runs the sidecar
as of an earlier commit beside it: a change's before and after in one run. Small non-streamed
/api/generate requests:

- concurrency 1, targets interleaved request by request: p50 latency and what each adds to the
  direct p50, and each process's CPU per request (from /proc);
- concurrency 16, targets interleaved block by block over three rounds: requests per second,
  and that as a share of direct.

The load generator is aiohttp in this process (lighter than httpx, so it limits less). The
machine is shared: absolute figures move between runs, the ratios within one run are the result.

    .venv/bin/pip install 'ollama-smart-proxy[bench]'
    .venv/bin/python bench/upstream_hop.py [--requests 400]

Results go to bench/results/upstream_hop.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from harness import (
    ROOT,
    baseline,
    cpu_seconds,
    free_port,
    report_header,
    running,
    start,
    write_report,
)
from harness import (
    SMALL_REQUESTS_POLICY as POLICY,
)

from schemas.figures import percentile

RESULTS = ROOT / "bench" / "results" / "upstream_hop.json"
MODEL = "llama3.2:1b"
BODY = {"model": MODEL, "prompt": "hi", "stream": False, "options": {"num_predict": 1}}
CANDIDATES = ("httpx", "httpcore", "aiohttp")
SIDECAR = "sidecar"


def start_passthrough(client: str, port: int, upstream: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "passthrough.py"), "--client", client,
         "--port", str(port), "--upstream", upstream],
        cwd=ROOT, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the {client} pass-through exited with {process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return process
        time.sleep(0.1)  # a benchmark script polling for a port, not async code
    process.kill()
    raise SystemExit(f"the {client} pass-through did not start")


async def one(session: aiohttp.ClientSession, url: str) -> float:
    began = time.perf_counter()
    async with session.post(url + "/api/generate", json=BODY) as response:
        await response.read()
        if response.status != 200:
            raise SystemExit(f"{url} answered {response.status}")
    return time.perf_counter() - began


async def serial(targets: dict[str, str], count: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in targets}
    async with aiohttp.ClientSession() as session:
        for _ in range(count):
            for name, url in targets.items():
                times[name].append(await one(session, url))
    return times


async def concurrent(url: str, count: int, concurrency: int) -> tuple[float, list[float], int]:
    """Requests per second with `concurrency` requests always open, each request's latency, and
    how many were refused (503: the sidecar shedding load)."""
    left, refused = count, 0
    latencies: list[float] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        async def worker() -> None:
            nonlocal left, refused
            while left > 0:
                left -= 1
                began = time.perf_counter()
                async with session.post(url + "/api/generate", json=BODY) as response:
                    await response.read()
                    if response.status == 503:
                        refused += 1
                    elif response.status != 200:
                        raise SystemExit(f"{url} answered {response.status}")
                latencies.append(time.perf_counter() - began)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return count / (time.perf_counter() - began), latencies, refused


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400, help="per target, per phase")
    parser.add_argument("--log-level", default="info", help="the sidecars' (info: a line per request, as deployed)")
    parser.add_argument("--baseline", metavar="GITREF",
                        help="also run the sidecar as of GITREF beside today's (before/after in one run)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hop-bench-") as work, \
            baseline(args.baseline, Path(work) / "baseline") as old:
        policy = Path(work) / "policies.toml"
        policy.write_text(POLICY, encoding="utf-8")
        sim_port = free_port()
        direct = f"http://127.0.0.1:{sim_port}"
        sim = start(["sim", "--preset", "tiny-8gb", "--time-scale", "0", "--port", str(sim_port)],
                    direct + "/api/version", "the emulator")
        processes = [sim]
        targets = {"direct": direct}
        pids: dict[str, int] = {}
        for client in CANDIDATES:
            port = free_port()
            process = start_passthrough(client, port, direct)
            processes.append(process)
            targets[f"pass-through, {client}"] = f"http://127.0.0.1:{port}"
            pids[f"pass-through, {client}"] = process.pid
        proxy_port = free_port()
        env = {**os.environ, "SMART_PROXY_DB": str(Path(work) / "journal.db"),
               "SMART_PROXY_LOG_FORMAT": "json", "SMART_PROXY_LOG_LEVEL": args.log_level}
        sidecar = start(["serve", "--policy", str(policy), "--host", "127.0.0.1", "--port",
                         str(proxy_port), "--upstream", direct], f"http://127.0.0.1:{proxy_port}/proxy/health",
                        "the sidecar", env)
        processes.append(sidecar)
        targets[SIDECAR] = f"http://127.0.0.1:{proxy_port}"
        pids[SIDECAR] = sidecar.pid
        if old is not None:
            old_port = free_port()
            before_env = {**env, "SMART_PROXY_DB": str(Path(work) / "baseline.db")}
            earlier = start(["serve", "--policy", str(policy), "--host", "127.0.0.1", "--port", str(old_port),
                             "--upstream", direct], f"http://127.0.0.1:{old_port}/proxy/health",
                            "the baseline sidecar", before_env, cwd=old)
            processes.append(earlier)
            name = f"sidecar as of {args.baseline}"
            targets[name] = f"http://127.0.0.1:{old_port}"
            pids[name] = earlier.pid
        with running(*processes):
            asyncio.run(serial(targets, 30))  # load the model, warm every connection
            before = {name: cpu_seconds(pid) for name, pid in pids.items()}
            times = asyncio.run(serial(targets, args.requests))
            cpu = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
            rates: dict[str, list[float]] = {name: [] for name in targets}
            latencies16: dict[str, list[float]] = {name: [] for name in targets}
            for _ in range(3):
                for name, url in targets.items():
                    rate, latencies, _ = asyncio.run(concurrent(url, args.requests, 16))
                    rates[name].append(rate)
                    latencies16[name] += latencies
            # Past saturation: 64 open at once.
            crowded = {name: asyncio.run(concurrent(url, args.requests * 2, 64)) for name, url in targets.items()}
    direct_p50 = statistics.median(times["direct"])
    direct_rate = statistics.median(rates["direct"])
    rows = {}
    for name in targets:
        p50 = statistics.median(times[name])
        rate = statistics.median(rates[name])
        rows[name] = {
            "p50_ms_c1": round(p50 * 1000, 3),
            "p50_ms_c16": round(statistics.median(latencies16[name]) * 1000, 3),
            "p50_ms_c64": round(statistics.median(crowded[name][1]) * 1000, 3),
            "added_p50_ms_c1": None if name == "direct" else round((p50 - direct_p50) * 1000, 3),
            "cpu_ms_per_request_c1": round(cpu[name] / args.requests * 1000, 3) if name in cpu else None,
            "requests_per_s_c16": round(rate, 1),
            "share_of_direct_c16": round(rate / direct_rate, 3),
            "share_of_direct_c16_spread": [round(min(rates[name]) / direct_rate, 3),
                                           round(max(rates[name]) / direct_rate, 3)],
        }
        if name == "direct" or name.startswith(SIDECAR):
            rate64, latencies, refused = crowded[name]
            rows[name]["c64"] = {
                "requests_per_s": round(rate64, 1),
                "p50_ms": round((percentile(sorted(latencies), 0.50) or 0.0) * 1000, 2),
                "p99_ms": round((percentile(sorted(latencies), 0.99) or 0.0) * 1000, 2),
                "refused_503": refused,
            }
    report = report_header("upstream_hop")
    report["requests_per_target_per_phase"] = args.requests
    report["baseline"] = args.baseline
    report["sidecar_log_level"] = args.log_level
    report["targets"] = rows
    write_report(RESULTS, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
