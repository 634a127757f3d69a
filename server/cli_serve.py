"""`smart-proxy serve` and `smart-proxy demo`.

`serve` proxies a real Ollama and never falls back to anything else; `demo` is the same sidecar in
front of the built-in emulator, started in-process — only ever when asked for by name.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from policy.errors import PolicyError
from policy.load import CompiledFile
from server.app import create_app
from server.connlimits import DEFAULT_BODY_TIMEOUT, DEFAULT_HEADER_TIMEOUT, ServingLimits
from server.journal import JournalConfigError, open_journal
from server.logs import LogFormat, configure
from server.runner import Server, listen, url_of
from server.sidecar import DEFAULT_UPSTREAM, Journal, Settings

# Every environment variable the sidecar reads (the policy can rename the two secret ones).
ENV_VARS: dict[str, str] = {
    "SMART_PROXY_POLICY": "policy file (default ./policies.example.toml)",
    "SMART_PROXY_UPSTREAM": f"Ollama URL; overrides the policy's backend.url (default {DEFAULT_UPSTREAM})",
    "SMART_PROXY_DB": "journal database: a path, sqlite:///path or postgresql://… (default ./db/requests.db)",
    "SMART_PROXY_JOURNAL_FALLBACK": "directory for the journal's outage file (default beside the database)",
    "PROXY_ADMIN_KEY": "the admin key (the policy's admin.key_env names this variable); unset: admin networks only",
    "SMART_PROXY_API_KEYS": "client API keys, \"key=name,key=name\" (the policy's clients.api_keys_env)",
    "SMART_PROXY_HOST": "address to listen on (default 0.0.0.0)",
    "SMART_PROXY_PORT": "port to listen on (default 8003)",
    "SMART_PROXY_LOG_FORMAT": "json or human (default human on a terminal, json otherwise)",
    "SMART_PROXY_LOG_LEVEL": "debug, info, warning or error (default info)",
    "SMART_PROXY_SHUTDOWN_GRACE": "seconds in-flight requests get to finish on SIGTERM (default 30)",
    "SMART_PROXY_HEADER_TIMEOUT": f"seconds a connection may take to send a request head, and stay idle between requests (default {DEFAULT_HEADER_TIMEOUT:g})",
    "SMART_PROXY_BODY_TIMEOUT": f"seconds a request body may go without a byte before a 408 (default {DEFAULT_BODY_TIMEOUT:g})",
    "SMART_PROXY_MAX_CONNECTIONS": "open client connections before new ones get 503 (default: from the descriptor limit)",
}


def register(subparsers: argparse._SubParsersAction) -> None:  # not subscriptable at run time
    env = os.environ
    serve = subparsers.add_parser(
        "serve", help="run the sidecar in front of Ollama",
        description="Run the scheduling sidecar in front of one Ollama server. Environment: "
        + "; ".join(f"{k}: {v}" for k, v in ENV_VARS.items()),
    )
    serve.add_argument("--policy", type=Path, default=env.get("SMART_PROXY_POLICY", "policies.example.toml"))
    serve.add_argument("--upstream", default=env.get("SMART_PROXY_UPSTREAM"),
                       help="Ollama URL (overrides the policy's backend.url)")
    _common(serve, env, default_host="0.0.0.0")
    serve.set_defaults(run=run_serve)

    demo = subparsers.add_parser(
        "demo", help="the sidecar in front of a built-in Ollama emulator (no GPU needed)",
        description="Start the emulator in-process on a realistic preset and the sidecar in front "
        "of it, then print the URLs and a curl line to try.",
    )
    demo.add_argument("--policy", type=Path, default=None,
                      help="policy file (default: policies.example.toml)")
    demo.add_argument("--preset", default="workstation-24gb", help="emulator preset")
    demo.add_argument("--time-scale", type=float, default=0.2,
                      help="emulated durations × this (1: real-world load and token times)")
    _common(demo, env, default_host="127.0.0.1")
    demo.set_defaults(run=run_demo)


def _common(parser: argparse.ArgumentParser, env: Mapping[str, str], default_host: str) -> None:
    parser.add_argument("--host", default=env.get("SMART_PROXY_HOST", default_host))
    # String defaults go through `type` too, so a bad variable is a usage error, not a traceback.
    parser.add_argument("--port", type=int, default=env.get("SMART_PROXY_PORT", "8003"))
    parser.add_argument("--db", default=env.get("SMART_PROXY_DB"), help="journal database DSN")
    parser.add_argument("--log-format", choices=("json", "human"),
                        default=env.get("SMART_PROXY_LOG_FORMAT") or ("human" if sys.stderr.isatty() else "json"))
    parser.add_argument("--log-level", type=str.lower, choices=("debug", "info", "warning", "error"),
                        default=env.get("SMART_PROXY_LOG_LEVEL", "info"))
    parser.add_argument("--shutdown-grace", type=float,
                        default=env.get("SMART_PROXY_SHUTDOWN_GRACE", "30"))
    parser.add_argument("--header-timeout", type=_positive_seconds, metavar="SECONDS",
                        default=env.get("SMART_PROXY_HEADER_TIMEOUT", str(DEFAULT_HEADER_TIMEOUT)),
                        help="time to send a request head; also the keep-alive idle limit")
    parser.add_argument("--body-timeout", type=_positive_seconds, metavar="SECONDS",
                        default=env.get("SMART_PROXY_BODY_TIMEOUT", str(DEFAULT_BODY_TIMEOUT)),
                        help="longest gap between request body bytes before a 408 (not a cap on "
                        "the whole upload)")
    parser.add_argument("--max-connections", type=_positive_count, metavar="N",
                        default=env.get("SMART_PROXY_MAX_CONNECTIONS"),
                        help="open client connections before new ones are answered 503 "
                        "(default: half of what the descriptor limit leaves)")


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive, finite number of seconds")
    return value


def _positive_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def journal_factory(dsn: str | None, fallback: str | None) -> Callable[[CompiledFile], Journal]:
    def make(compiled: CompiledFile) -> Journal:
        return open_journal(
            dsn,
            store_prompts=compiled.raw.journal.store_prompts,
            retention_seconds=compiled.retention,
            fallback_dir=fallback,
        )

    return make


def _log_format(value: str) -> LogFormat:
    return "json" if value == "json" else "human"


async def serve_sidecar(
    args: argparse.Namespace,
    policy: Path,
    upstream: str | None,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Run until SIGTERM/SIGINT; `on_ready(url)` once the socket listens."""
    settings = Settings(policy=policy, upstream=upstream, env=dict(os.environ),
                        shutdown_grace=args.shutdown_grace)
    fallback = os.environ.get("SMART_PROXY_JOURNAL_FALLBACK")
    app = create_app(settings, journal=journal_factory(args.db, fallback))
    sock = listen(args.host, args.port)
    url = url_of(sock)
    print(f"smart-proxy listening on {url} -> {app.state.sidecar.upstream_url()}", file=sys.stderr)
    if on_ready is not None:
        on_ready(url)
    limits = ServingLimits(header_timeout=args.header_timeout, body_timeout=args.body_timeout,
                           max_connections=args.max_connections)
    await Server(app, [sock], grace=args.shutdown_grace, limits=limits).run()


def run_serve(args: argparse.Namespace) -> int:
    configure(_log_format(args.log_format), args.log_level)
    try:
        asyncio.run(serve_sidecar(args, args.policy, args.upstream))
    except PolicyError as exc:
        print(f"smart-proxy: the policy file has problems:\n{exc}", file=sys.stderr)
        return 2
    except (JournalConfigError, OSError) as exc:
        print(f"smart-proxy: {exc}", file=sys.stderr)
        return 2
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from server.demo import run_demo as demo  # imports the emulator only when asked for

    configure(_log_format(args.log_format), args.log_level)
    try:
        asyncio.run(demo(args))
    except PolicyError as exc:
        print(f"smart-proxy: the policy file has problems:\n{exc}", file=sys.stderr)
        return 2
    except (JournalConfigError, OSError, KeyError) as exc:
        print(f"smart-proxy: {exc}", file=sys.stderr)
        return 2
    return 0
