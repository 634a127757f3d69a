"""`smart-proxy demo`: the emulator on a realistic preset, in-process, and the sidecar in front.

It runs on a copy of policies.example.toml (or --policy FILE) whose [backend] describes the
emulator it started, and keeps its own journal unless --db or SMART_PROXY_DB names one; both live in
a temporary directory removed on exit (server/cli/demo_setup.py).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from server.cli.demo_setup import DemoSetup, demo_directory, describe
from sim.presets import PRESETS
from sim.serve import preset_settings, serve_emulator

# The example policy ships beside the packages (the repository root); a copy in the working
# directory wins, so `make demo` from a checkout uses the file the README talks about.
EXAMPLE = "policies.example.toml"


def example_policy() -> Path:
    for candidate in (Path(EXAMPLE), Path(__file__).resolve().parents[2] / EXAMPLE):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{EXAMPLE} not found here or beside the installed packages; pass --policy FILE")


def banner(proxy: str, ollama: str, setup: DemoSetup, preset: str) -> str:
    return f"""
  Ollama Smart Proxy — demo (emulated Ollama, no GPU needed)

  proxy      {proxy}          (point your Ollama or OpenAI client here)
  emulator   {ollama}
  health     {proxy}/proxy/health
  queue      {proxy}/proxy/queue      (admin: from this machine)
  metrics    {proxy}/metrics
{describe(setup, preset)}

  try:
    curl {proxy}/api/generate -d '{{"model": "llama3.2:3b", "prompt": "Why is the sky blue?", "stream": false}}'

  Ctrl-C stops both.
"""


async def run_demo(args: argparse.Namespace) -> None:
    from server.cli.serve import serve_sidecar

    if args.preset not in PRESETS:
        raise KeyError(f"unknown preset {args.preset!r}; choose one of {', '.join(sorted(PRESETS))}")
    policy = args.policy or example_policy()
    loop = asyncio.get_running_loop()
    ollama: asyncio.Future[str] = loop.create_future()
    stop = asyncio.Event()
    settings = preset_settings(args.preset, args.time_scale)
    emulator = asyncio.create_task(
        serve_emulator(
            settings, "127.0.0.1", 0,
            shutdown_trigger=stop.wait, on_ready=ollama.set_result,
        ),
        name="demo-emulator",
    )
    try:
        url = await ollama
        async with demo_directory(policy, settings, url, args.db) as setup:
            await serve_sidecar(
                argparse.Namespace(**{**vars(args), "db": setup.db}), setup.policy, url,
                on_ready=lambda proxy: print(
                    banner(proxy, url, setup, args.preset), file=sys.stderr, flush=True
                ),
            )
    finally:
        stop.set()
        await emulator
