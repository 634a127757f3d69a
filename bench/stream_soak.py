"""Streams at real token rates through the sidecar, against the same streams direct (issue 14).

The emulator paces tokens as a GPU would (time scale 1), in its own process; the sidecar
(`smart-proxy serve`, SQLite journal, warning-level logs) in another; this process is the
client, reading every stream line by line with aiohttp. Two phases, each run direct then through
the sidecar, the pair repeated (`--rounds`):

- **16 streams** of a 1B model (~150 tokens/s each, what one busy GPU feeds a proxy), eight
  requests in turn on each: tokens a second received, proxy / direct (target ≥ 98 %), and the
  sidecar's CPU per token;
- **the soak**: `--streams` (1,000) streams open at once of a large model (~5 tokens/s each), so
  that the emulator itself keeps up on a small machine: errors (target none), tokens a second
  proxy / direct (target ≥ 95 %), the sidecar's peak RSS (target ≤ 300 MB) and its RSS a few
  seconds after the last stream ended against before the first (memory back to baseline).

A token is one NDJSON line of /api/chat: the sidecar may join lines that arrive together into
one write, so lines, not reads, are what is counted.

    .venv/bin/python bench/stream_soak.py [--streams 1000] [--rounds 2]

Results go to bench/results/stream_soak.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import aiohttp
from harness import ROOT, cpu_seconds, free_port, report_header, running, start, write_report

RESULTS = ROOT / "bench" / "results" / "stream_soak.json"
FAST, SLOW = "llama3.2:1b", "soak:405b"
SIM = """\
[node]
vram_gb = 400
num_parallel = {parallel}
max_loaded_models = 2
max_queue = 4096
keep_alive = -1
context_length = 4096   # OLLAMA_CONTEXT_LENGTH: 230 GB of weights leave no room for a 128k cache

[[models]]
name = "llama3.2:1b"

[[models]]
name = "soak:405b"      # ~5 tokens/s a stream, so 1,000 streams are ~5,000 tokens/s in all
size_gb = 230
parameter_size = "405B"
"""
POLICY = """\
active = "bench"

[backend]
max_parallel = {parallel}
num_parallel = {parallel}
vram_gb = 400
max_loaded_models = 2
poll_interval = "5s"
queue_timeout = "10m"
request_timeout = "30m"

[limits]
max_queue = 10000
max_queued_per_client = 10000

[policies.bench.terms.vram]
[policies.bench.terms.aging]
"""


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class PeakRss:
    """Samples a process's RSS every 0.2 s on a thread, keeping the highest."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, rss_mb(self.pid))

    def __enter__(self) -> PeakRss:
        self.peak = rss_mb(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


async def streams(url: str, model: str, count: int, tokens: int, each: int = 1) -> dict[str, float]:
    """`count` streams open at once, each worker asking `each` in turn; tokens received a
    second over the whole phase, and failures (not a 200, cut short, no final line). Prompts
    differ by worker and turn (the emulator picks a reply's length from its prompt) and are the
    same on both paths."""
    received, failed = 0, 0
    paces: list[float] = []
    timeout = aiohttp.ClientTimeout(total=1800)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
        async def one(worker: int, turn: int) -> None:
            nonlocal received, failed
            body = {"model": model, "stream": True, "options": {"num_predict": tokens},
                    "messages": [{"role": "user", "content": f"go on {worker}-{turn}"}]}
            try:
                headers = {"x-client-id": f"soak-{worker % 50}"}
                async with session.post(url + "/api/chat", json=body, headers=headers) as response:
                    if response.status != 200:
                        failed += 1
                        return
                    lines, last, first_at = 0, b"", 0.0
                    async for chunk in response.content.iter_any():
                        if not lines:
                            first_at = time.perf_counter()
                        lines += chunk.count(b"\n")
                        last = (last + chunk)[-200:]
                    received += lines
                    if lines > 2:  # the stream's own pace, from its first byte to its last
                        paces.append((lines - 1) / max(time.perf_counter() - first_at, 1e-6))
                    if b'"done":true' not in last:
                        failed += 1
            except (aiohttp.ClientError, TimeoutError):
                failed += 1

        async def worker(index: int) -> None:
            for turn in range(each):
                await one(index, turn)

        began = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(count)))
        took = time.perf_counter() - began
    return {"tokens_per_s": received / took, "failed": failed, "seconds": took, "tokens": received,
            "pace_p50": statistics.median(paces) if paces else 0.0}


def phase(direct: str, proxy: str, pid: int, model: str, count: int, tokens: int, rounds: int,
          each: int = 1) -> dict[str, object]:
    rates: dict[str, list[float]] = {"direct": [], "proxy": []}
    paces: dict[str, list[float]] = {"direct": [], "proxy": []}
    failed = {"direct": 0, "proxy": 0}
    cpu, received = 0.0, 0
    with PeakRss(pid) as rss:
        for _ in range(rounds):
            for which, url in (("direct", direct), ("proxy", proxy)):
                before = cpu_seconds(pid)
                got = asyncio.run(streams(url, model, count, tokens, each))
                if which == "proxy":
                    cpu += cpu_seconds(pid) - before
                    received += int(got["tokens"])
                rates[which].append(got["tokens_per_s"])
                paces[which].append(got["pace_p50"])
                failed[which] += int(got["failed"])
    ratios = [p / d for p, d in zip(rates["proxy"], rates["direct"], strict=True)]
    pace_ratios = [p / d for p, d in zip(paces["proxy"], paces["direct"], strict=True) if d]
    return {
        "streams": count, "requests_per_stream": each, "num_predict": tokens, "rounds": rounds,
        "direct_tokens_per_s": round(statistics.median(rates["direct"]), 1),
        "proxy_tokens_per_s": round(statistics.median(rates["proxy"]), 1),
        "ratio": round(statistics.median(ratios), 4),
        "ratio_spread": [round(min(ratios), 4), round(max(ratios), 4)],
        # Each stream's tokens a second from its first byte to its last (median over streams):
        # the relaying alone, without the connection set-up the aggregate includes.
        "stream_pace_ratio": round(statistics.median(pace_ratios), 4) if pace_ratios else None,
        "failed": failed,
        "sidecar_cpu_us_per_token": round(cpu / max(received, 1) * 1e6, 1),
        "sidecar_peak_rss_mb": round(rss.peak, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1000, help="streams open at once in the soak")
    parser.add_argument("--rounds", type=int, default=2, help="direct/proxy pairs per phase")
    args = parser.parse_args()
    parallel = max(args.streams, 16)
    with tempfile.TemporaryDirectory(prefix="soak-bench-") as work:
        sim_config, policy = Path(work) / "sim.toml", Path(work) / "policies.toml"
        sim_config.write_text(SIM.format(parallel=parallel), encoding="utf-8")
        policy.write_text(POLICY.format(parallel=parallel), encoding="utf-8")
        sim_port, proxy_port = free_port(), free_port()
        direct, proxy = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{proxy_port}"
        sim = start(["sim", "--config", str(sim_config), "--time-scale", "1", "--port", str(sim_port)],
                    direct + "/api/version", "the emulator")
        env = {**os.environ, "SMART_PROXY_DB": str(Path(work) / "journal.db"),
               "SMART_PROXY_LOG_LEVEL": "warning"}
        sidecar = start(["serve", "--policy", str(policy), "--host", "127.0.0.1", "--port", str(proxy_port),
                         "--upstream", direct], proxy + "/proxy/health", "the sidecar", env)
        with running(sim, sidecar):
            for model in (FAST, SLOW):  # load both (a 230 GB load takes the emulator a while)
                asyncio.run(streams(proxy, model, 2, 2))
            time.sleep(2)  # let the journal write the warm-up records before the baseline
            baseline = rss_mb(sidecar.pid)
            sixteen = phase(direct, proxy, sidecar.pid, FAST, 16, 300, args.rounds, each=8)
            soak = phase(direct, proxy, sidecar.pid, SLOW, args.streams, 60, args.rounds)
            # The journal's last records; the upstream pool's idle connections close after its
            # keep-alive timeout (10 s, checked every 10 s: up to 20 s; upstream_hop.py).
            time.sleep(25)
            after = rss_mb(sidecar.pid)
    report = report_header("stream_soak")
    report["settings"] = {
        "emulator": "smart-proxy sim --time-scale 1 (own process): tokens paced as a GPU would",
        "sidecar": "smart-proxy serve (own process), SQLite journal, warning-level logs",
        "client": "aiohttp in this process, every stream opened at once",
    }
    report["targets"] = {"sixteen_ratio": ">= 0.98", "soak_ratio": ">= 0.95", "soak_failed": "0",
                         "soak_peak_rss_mb": "<= 300", "rss_after": "back to baseline"}
    report["sixteen_streams"] = sixteen
    report["soak"] = soak
    report["sidecar_rss_mb"] = {"before": round(baseline, 1), "after": round(after, 1)}
    write_report(RESULTS, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
