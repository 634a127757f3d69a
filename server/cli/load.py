"""`smart-proxy load`: a small load generator, to watch the dashboards (or a policy) at work.

Several clients (each its own `X-Client-Id`) send `/api/generate` requests for a mix of models, at
random (Poisson) arrival times, for a while; then it prints what came back: counts by status and
the queue waits the sidecar reported (`X-Queue-Wait-Ms`). Against `smart-proxy demo` it needs no
arguments: the models are the ones the sidecar's Ollama lists.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time
from collections import Counter

import httpx

from schemas.figures import percentile
from server.cli.args import CliError, env_default, http_url, positive_count, positive_seconds
from server.cli.dashboard import DEFAULT_URL

MAX_OPEN = 256  # requests in flight from this process at once
PROMPTS = ("Why is the sky blue?", "Write a haiku about GPUs.", "Explain queues to a child.",
           "Summarise the plot of Hamlet.", "List three uses of a hash table.")


def register(subparsers: argparse._SubParsersAction) -> None:  # not subscriptable at run time
    verb = subparsers.add_parser(
        "load", help="send a stream of requests from several clients, to watch the sidecar work",
        description="Send /api/generate requests from several clients for a mix of models at "
        "random arrival times, then print counts by status and the queue waits.",
    )
    verb.add_argument("--url", type=http_url, metavar="URL",
                      default=env_default(os.environ, "SMART_PROXY_URL", DEFAULT_URL),
                      help=f"the sidecar (default $SMART_PROXY_URL or {DEFAULT_URL})")
    verb.add_argument("--clients", type=positive_count, default=4, metavar="N",
                      help="distinct clients (X-Client-Id load-1 … load-N; default 4)")
    verb.add_argument("--models", type=model_list, metavar="A,B,…", default=None,
                      help="models to ask for (default: up to 3 that the sidecar's /api/tags lists)")
    verb.add_argument("--rate", type=positive_seconds, default=2.0, metavar="R",
                      help="requests per second on average, all clients together (default 2)")
    verb.add_argument("--duration", type=positive_seconds, default=60.0, metavar="S",
                      help="seconds to keep sending (default 60)")
    verb.add_argument("--max-tokens", type=positive_count, default=64, metavar="N",
                      help="num_predict per request (default 64)")
    verb.add_argument("--seed", type=int, default=None, help="random seed, for a repeatable run")
    verb.set_defaults(run=run_load, cli_prog=verb.prog)


def model_list(text: str) -> list[str]:
    models = [m.strip() for m in text.split(",") if m.strip()]
    if not models:
        raise argparse.ArgumentTypeError(f"{text!r}: give at least one model name")
    return models


async def _models(client: httpx.AsyncClient, asked: list[str] | None) -> list[str]:
    if asked:
        return asked
    try:
        response = await client.get("/api/tags")
    except httpx.HTTPError as exc:
        raise CliError(f"cannot reach the sidecar at {client.base_url}: {exc}") from None
    if response.status_code != 200:
        raise CliError(f"{client.base_url}/api/tags answered {response.status_code}; give --models")
    names = [m.get("name") for m in response.json().get("models") or () if isinstance(m, dict)]
    usable = [n for n in names if isinstance(n, str) and "embed" not in n][:3]
    if not usable:
        raise CliError("the sidecar's Ollama lists no models; give --models")
    return usable


async def _run(args: argparse.Namespace) -> str:
    rng = random.Random(args.seed)
    statuses: Counter[str] = Counter()
    waits: list[float] = []
    limits = httpx.Limits(max_connections=MAX_OPEN)
    async with httpx.AsyncClient(base_url=args.url, timeout=httpx.Timeout(600.0), limits=limits,
                                 trust_env=False) as client:
        models = await _models(client, args.models)
        open_slots = asyncio.Semaphore(MAX_OPEN)

        async def one(n: int) -> None:
            body = {"model": rng.choice(models), "prompt": rng.choice(PROMPTS), "stream": False,
                    "options": {"num_predict": args.max_tokens, "seed": n}}
            headers = {"x-client-id": f"load-{rng.randint(1, args.clients)}"}
            try:
                response = await client.post("/api/generate", json=body, headers=headers)
            except httpx.HTTPError as exc:
                statuses[type(exc).__name__] += 1
            else:
                statuses[str(response.status_code)] += 1
                if (wait := response.headers.get("x-queue-wait-ms")) is not None:
                    waits.append(float(wait) / 1000)
            finally:
                open_slots.release()

        tasks: set[asyncio.Task[None]] = set()
        started, n = time.monotonic(), 0
        try:
            while time.monotonic() - started < args.duration:
                await asyncio.sleep(rng.expovariate(args.rate))
                await open_slots.acquire()
                n += 1
                task = asyncio.create_task(one(n))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.wait(tasks)
        finally:
            for task in tasks:
                task.cancel()
    waits.sort()
    counts = ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items()))
    return (f"sent {n} requests for {', '.join(models)} from {args.clients} clients "
            f"in {time.monotonic() - started:.0f}s — {counts or 'no answers'}; queue wait "
            f"p50 {percentile(waits, 0.5) or 0:.2f}s p95 {percentile(waits, 0.95) or 0:.2f}s")


def run_load(args: argparse.Namespace) -> int:
    try:
        print(asyncio.run(_run(args)))
    except KeyboardInterrupt:
        return 130
    return 0
