"""How fast is the emulator itself? At time scale 0 it must not be what limits a proxy benchmark.

Starts `smart-proxy sim --time-scale 0` as a separate process, drives it with an httpx client from
this process, and records small non-streamed chats (requests/s, latency) and streamed chats
(requests/s and chunks/s) in bench/results/emulator.json.

    .venv/bin/python bench/emulator_throughput.py [--seconds 5] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time

import httpx
from harness import ROOT, free_port, report_header, running, start

RESULTS = ROOT / "bench" / "results" / "emulator.json"
MESSAGES = [{"role": "user", "content": "Say hello in a few words."}]


def start_emulator(port: int) -> subprocess.Popen[bytes]:
    args = ["sim", "--preset", "tiny-8gb", "--time-scale", "0", "--port", str(port)]
    return start(args, f"http://127.0.0.1:{port}/api/version", "the emulator")


async def phase(url: str, seconds: float, concurrency: int, stream: bool) -> dict[str, float]:
    """Closed loop: `concurrency` clients send back-to-back chats for `seconds`."""
    latencies: list[float] = []
    chunks = 0
    body = {
        "model": "llama3.2:1b",
        "messages": MESSAGES,
        "stream": stream,
        "options": {"num_predict": 8 if not stream else 64},
    }
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        await client.post("/api/chat", json=body | {"stream": False})  # load the model first
        stop = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal chunks
            while time.perf_counter() < stop:
                began = time.perf_counter()
                async with client.stream("POST", "/api/chat", json=body) as response:
                    async for _line in response.aiter_lines():
                        chunks += 1
                latencies.append(time.perf_counter() - began)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    latencies.sort()
    result = {
        "requests": len(latencies),
        "seconds": round(elapsed, 3),
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 3),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 3),
    }
    if stream:
        result["chunks"] = chunks
        result["chunks_per_s"] = round(chunks / elapsed, 1)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with running(start_emulator(port)):
        small = asyncio.run(phase(url, args.seconds, args.concurrency, stream=False))
        streamed = asyncio.run(phase(url, args.seconds, args.concurrency, stream=True))
        counters = httpx.get(url + "/sim/stats").json()
    report = {
        **report_header("emulator_throughput"),
        "settings": {
            "preset": "tiny-8gb",
            "time_scale": 0,
            "concurrency": args.concurrency,
            "seconds_per_phase": args.seconds,
            "model": "llama3.2:1b",
            "client": "httpx.AsyncClient in a separate process",
        },
        "small_non_streamed_chat": small | {"num_predict": 8},
        "streamed_chat": streamed | {"num_predict": 64, "chunks_per_request": 65},
        "emulator_requests_served": counters["requests_served"],
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"small non-streamed chats: {small['requests_per_s']} req/s "
        f"(p50 {small['p50_ms']} ms, p99 {small['p99_ms']} ms)"
    )
    print(
        f"streamed chats (64 tokens): {streamed['requests_per_s']} req/s, "
        f"{streamed['chunks_per_s']} chunks/s (p50 {streamed['p50_ms']} ms)"
    )
    print(f"written to {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
