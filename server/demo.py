"""`smart-proxy demo`: the emulator on a realistic preset, in-process, and the sidecar in front.

The demo policy (matching the preset) lives in a temporary directory unless --policy names one;
the journal goes where it always does (SMART_PROXY_DB, else ./db/requests.db).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

from sim.presets import PRESETS
from sim.serve import preset_settings, serve_emulator

# Matches the workstation-24gb preset: a 24 GB card, two requests per model, three models.
DEMO_POLICY = """\
active = "balanced"

[backend]
max_parallel = 4
num_parallel = 2
vram_gb = 24
max_loaded_models = 3
poll_interval = "2s"

[journal]
store_prompts = "full"

[policies.balanced]
description = "Model affinity first, fair between clients, nobody waits over 2 minutes."

[policies.balanced.terms.vram]
loaded = 0
fits = 30
unknown_size = 240
swap = [{ up_to_gb = 16, points = 120 }, { up_to_gb = 40, points = 180 }]
swap_above = 240

[policies.balanced.terms.fairness]
per_queued = 3
per_recent = 1
window = "10m"
cap = 120

[policies.balanced.terms.aging]
per_second = 1.0
max_wait = "2m"
"""


def banner(proxy: str, ollama: str, policy: Path) -> str:
    return f"""
  Ollama Smart Proxy — demo (emulated Ollama, no GPU needed)

  proxy      {proxy}          (point your Ollama or OpenAI client here)
  emulator   {ollama}
  health     {proxy}/proxy/health
  queue      {proxy}/proxy/queue      (admin: from this machine)
  metrics    {proxy}/metrics
  policy     {policy}

  try:
    curl {proxy}/api/generate -d '{{"model": "llama3.2:3b", "prompt": "Why is the sky blue?", "stream": false}}'

  Ctrl-C stops both.
"""


async def run_demo(args: argparse.Namespace) -> None:
    from server.cli_serve import serve_sidecar

    if args.preset not in PRESETS:
        raise KeyError(f"unknown preset {args.preset!r}; choose one of {', '.join(sorted(PRESETS))}")
    with tempfile.TemporaryDirectory(prefix="smart-proxy-demo-") as workdir:
        policy = args.policy
        if policy is None:
            policy = Path(workdir) / "policies.toml"
            policy.write_text(DEMO_POLICY, encoding="utf-8")
        loop = asyncio.get_running_loop()
        ollama: asyncio.Future[str] = loop.create_future()
        stop = asyncio.Event()
        emulator = asyncio.create_task(
            serve_emulator(
                preset_settings(args.preset, args.time_scale), "127.0.0.1", 0,
                shutdown_trigger=stop.wait, on_ready=ollama.set_result,
            ),
            name="demo-emulator",
        )
        try:
            url = await ollama
            await serve_sidecar(
                args, policy, url,
                on_ready=lambda proxy: print(banner(proxy, url, policy), file=sys.stderr, flush=True),
            )
        finally:
            stop.set()
            await emulator
