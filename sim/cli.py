"""`smart-proxy sim`: run the Ollama emulator as a process (Hypercorn on host:port)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import sys
import time

from sim.cli_args import (
    choice,
    count_in,
    existing_file_path,
    fail,
    host,
    listen_problem,
    port,
    scale,
)
from sim.config import Settings, SimConfigError, load_text
from sim.presets import DEFAULT_PRESET, PRESETS
from sim.serve import NodeBindError, bind_nodes, serve_nodes

MAX_NODES = 16


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sim",
        help="run the Ollama emulator",
        description="Serve an emulated Ollama (same endpoints, shapes and scheduling rules) for "
        "tests, demos and benchmarks. See docs/emulator.md.",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--config", type=existing_file_path, metavar="FILE",
                        help="a sim TOML file (format in docs/emulator.md)")
    source.add_argument(
        "--preset", type=choice("a preset", sorted(PRESETS)), metavar="NAME",
        help=f"a built-in set-up: {', '.join(sorted(PRESETS))} (default {DEFAULT_PRESET})",
    )
    parser.add_argument("--host", type=host, default="127.0.0.1")
    parser.add_argument("--port", type=port, default=11434, help="1 to 65535, or 0 for any free port")
    parser.add_argument(
        "--time-scale", type=scale, default=None, metavar="X",
        help="multiply every emulated duration by X (0.001: a 25 s load takes 25 ms; 0: instant)",
    )
    parser.add_argument("--nodes", type=count_in(1, MAX_NODES), default=1, metavar="N",
                        help=f"emulated Ollama servers, each with its own state, on --port, "
                        f"--port + 1, … (0: any free ports); 1 to {MAX_NODES}")
    parser.add_argument("--access-log", action="store_true", help="log every request")
    parser.set_defaults(run=run, cli_prog=parser.prog)


def load_settings(args: argparse.Namespace) -> Settings:
    """Settings from --config or --preset; SimConfigError (readable, no traceback) on problems."""
    if args.config is not None:
        try:
            text = args.config.read_text(encoding="utf-8")
        except OSError as exc:
            raise SimConfigError([f"{args.config}: cannot read: {exc.strerror}"]) from None
        settings = load_text(text, str(args.config), time.time())
    else:
        name = args.preset or DEFAULT_PRESET
        settings = load_text(PRESETS[name], f"preset {name}", time.time())
    if args.time_scale is not None:
        if args.time_scale < 0:
            raise SimConfigError([f"--time-scale: {args.time_scale}: must be zero or more"])
        settings = settings.with_time_scale(args.time_scale)
    return settings


def run(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args)
    except SimConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.port and args.port + args.nodes - 1 > 65535:
        return fail(args.cli_prog, f"--nodes {args.nodes} from --port {args.port} needs ports up to "
                    f"{args.port + args.nodes - 1}; a port is at most 65535")
    try:
        sockets = bind_nodes(args.host, args.port, args.nodes)
    except NodeBindError as exc:
        return fail(args.cli_prog, listen_problem(args.host, exc.port, exc.cause))
    asyncio.run(_main(settings, sockets, not args.access_log))
    return 0


async def _main(settings: Settings, sockets: list[socket.socket], quiet: bool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # platforms without signal support in loops
            loop.add_signal_handler(sig, stop.set)

    def ready(urls: list[str]) -> None:
        names = ", ".join(spec.name for spec in settings.models)
        where = urls[0] if len(urls) == 1 else f"{len(urls)} nodes: {' '.join(urls)}"
        print(
            f"Ollama emulator on {where} · {settings.vram / 1e9:g} GB VRAM"
            f"{' each' if len(urls) > 1 else ''} · time scale {settings.time_scale:g} · models: {names}",
            file=sys.stderr, flush=True,
        )

    await serve_nodes(settings, sockets, shutdown_trigger=stop.wait, on_ready=ready, quiet=quiet)
