"""Does a dashboard slow dispatch down? Request latency and queue wait with no event subscriber,
with one that keeps up, and with one that stops reading — in ONE run, phases interleaved.

Starts `smart-proxy sim --time-scale 0` and `smart-proxy serve` (journal on, as deployed) as
separate processes. Phases take turns in blocks, so drift hits all three alike:

- none: nobody subscribed to /proxy/events;
- reading: one client reads the stream as fast as it comes;
- stalled: one client opened the stream with a tiny receive buffer and never reads — its frames
  back up in the sidecar until it is dropped (the bus's per-subscriber bound), so the cost of a
  stalled dashboard is bounded, and dispatch never waits for it.

    .venv/bin/python bench/event_subscribers.py [--requests 600]

Results go to bench/results/event_subscribers.json.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from harness import ROOT, free_port, report_header, running, start, write_report

from schemas.figures import percentile

RESULTS = ROOT / "bench" / "results" / "event_subscribers.json"
MODEL = "llama3.2:1b"
BLOCK = 50
CONCURRENCY = 4

POLICY = """\
active = "bench"

[backend]
max_parallel = 2
num_parallel = 2
vram_gb = 8
max_loaded_models = 2
poll_interval = "5s"

[policies.bench.terms.vram]
[policies.bench.terms.fairness]
[policies.bench.terms.aging]
"""


def _request(client: httpx.Client, proxy: str, n: int) -> tuple[float, float]:
    body = {"model": MODEL, "prompt": f"p{n}", "stream": False, "options": {"num_predict": 1}}
    started = time.perf_counter()
    response = client.post(proxy + "/api/generate", json=body)
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return elapsed * 1000, float(response.headers.get("x-queue-wait-ms", "0"))


def _block(client: httpx.Client, proxy: str, base: int) -> list[tuple[float, float]]:
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        return list(pool.map(lambda n: _request(client, proxy, n), range(base, base + BLOCK)))


def _reader(proxy: str, stop: threading.Event) -> None:
    with httpx.Client(timeout=httpx.Timeout(10, read=None)) as client, \
            client.stream("GET", proxy + "/proxy/events") as response:
        for _ in response.iter_bytes():
            if stop.is_set():
                return


def _stalled(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"GET /proxy/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    return sock  # never read


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=600, help="requests per phase")
    args = parser.parse_args()
    blocks = max(1, args.requests // BLOCK)
    with tempfile.TemporaryDirectory(prefix="events-bench-") as work:
        policy = Path(work) / "policies.toml"
        policy.write_text(POLICY, encoding="utf-8")
        sim_port, proxy_port = free_port(), free_port()
        direct, proxy = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{proxy_port}"
        env = {**os.environ, "SMART_PROXY_DB": str(Path(work) / "journal.db"),
               "SMART_PROXY_LOG_FORMAT": "json", "SMART_PROXY_LOG_LEVEL": "warning"}
        sim = start(["sim", "--preset", "tiny-8gb", "--time-scale", "0", "--port", str(sim_port)],
                    direct + "/api/version", "the emulator")
        sidecar = start(["serve", "--policy", str(policy), "--host", "127.0.0.1", "--port",
                         str(proxy_port), "--upstream", direct], proxy + "/proxy/health",
                        "the sidecar", env)
        results: dict[str, list[tuple[float, float]]] = {"none": [], "reading": [], "stalled": []}
        with running(sim, sidecar), httpx.Client(timeout=30) as client:
            _block(client, proxy, 0)  # load the model, warm the connections
            n = BLOCK
            stop = threading.Event()
            stalled: socket.socket | None = None
            for _ in range(blocks):
                for phase in results:
                    reader = None
                    if phase == "reading":
                        stop.clear()
                        reader = threading.Thread(target=_reader, args=(proxy, stop), daemon=True)
                        reader.start()
                    elif phase == "stalled" and stalled is None:
                        stalled = _stalled(proxy_port)  # stays stalled for every stalled block
                    time.sleep(0.05)
                    results[phase] += _block(client, proxy, n)
                    n += BLOCK
                    if reader is not None:
                        stop.set()
            overview = client.get(proxy + "/proxy/overview").json()
            if stalled is not None:
                stalled.close()
    report = report_header("event_subscribers")
    report["requests_per_phase"] = blocks * BLOCK
    report["concurrency"] = CONCURRENCY
    for phase, rows in results.items():
        latency = [r[0] for r in rows]
        wait = [r[1] for r in rows]
        report[phase] = {
            "latency_ms_p50": round(statistics.median(latency), 2),
            "latency_ms_p95": round(percentile(sorted(latency), 0.95) or 0.0, 2),
            "queue_wait_ms_p50": round(statistics.median(wait), 2),
            "queue_wait_ms_p95": round(percentile(sorted(wait), 0.95) or 0.0, 2),
        }
    base = report["none"]["latency_ms_p50"]
    report["latency_p50_ratio_reading"] = round(report["reading"]["latency_ms_p50"] / base, 3)
    report["latency_p50_ratio_stalled"] = round(report["stalled"]["latency_ms_p50"] / base, 3)
    report["stalled_subscriber_dropped"] = overview["event_subscribers_dropped"] >= 1
    write_report(RESULTS, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
