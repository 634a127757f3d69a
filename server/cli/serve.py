"""`smart-proxy serve` and `smart-proxy demo`.

`serve` proxies a real Ollama and never falls back to anything else; `demo` is the same sidecar in
front of the built-in emulator, started in-process — only ever when asked for by name.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from policy.errors import PolicyError
from policy.load import CompiledFile
from server.app import create_app
from server.cli.args import (
    CliError,
    choice,
    default_instance,
    duration,
    env_default,
    existing_file_path,
    fail,
    host,
    http_url,
    instance_name,
    journal_dsn,
    journal_fallback_dir,
    listen_problem,
    port,
    positive_count,
    positive_seconds,
    scale,
)
from server.http.identity import ApiKeysError, parse_api_keys
from server.journal import JournalConfigError, open_journal, resolve
from server.journal.protocol import Journal
from server.runtime.connlimits import ServingLimits
from server.runtime.serving import Server, listen, url_of
from server.settings import DEFAULT_BODY_TIMEOUT, DEFAULT_HEADER_TIMEOUT, ENV_VARS, Settings
from server.telemetry.logs import LogFormat, configure
from server.telemetry.tracing import TracingUnavailable
from sim.presets import PRESETS


def register(subparsers: argparse._SubParsersAction) -> None:  # not subscriptable at run time
    env = os.environ
    serve = subparsers.add_parser(
        "serve", help="run the sidecar in front of Ollama",
        description="Run the scheduling sidecar in front of Ollama: one server, or the policy's [backends]. "
        "Environment: "
        + "; ".join(f"{k}: {v}" for k, v in ENV_VARS.items()),
    )
    serve.add_argument("--policy", type=existing_file_path, metavar="FILE",
                       default=env_default(env, "SMART_PROXY_POLICY", "policies.example.toml"))
    serve.add_argument("--upstream", type=http_url, metavar="URL",
                       default=env_default(env, "SMART_PROXY_UPSTREAM", None),
                       help="Ollama URL, http:// or https:// (overrides the policy's backend.url; "
                       "not with several [backends])")
    _common(serve, env, default_host="0.0.0.0")
    serve.set_defaults(run=run_serve, cli_prog=serve.prog)

    demo = subparsers.add_parser(
        "demo", help="the sidecar in front of a built-in Ollama emulator (no GPU needed)",
        description="Start the emulator in-process on a realistic preset and the sidecar in front "
        "of it, then print the URLs and a curl line to try.",
    )
    demo.add_argument("--policy", type=existing_file_path, default=None, metavar="FILE",
                      help="policy file (default: policies.example.toml)")
    demo.add_argument("--preset", type=choice("a preset", sorted(PRESETS)), default="workstation-24gb",
                      metavar="NAME", help=f"emulator preset: {', '.join(sorted(PRESETS))}")
    demo.add_argument("--time-scale", type=scale, default=0.2, metavar="X",
                      help="emulated durations × this, zero or more (1: real-world load and "
                      "token times)")
    _common(demo, env, default_host="127.0.0.1")
    demo.set_defaults(run=run_demo, cli_prog=demo.prog)


def _common(parser: argparse.ArgumentParser, env: Mapping[str, str], default_host: str) -> None:
    # Defaults from the environment are strings that go through `type` too, so a bad variable is
    # a one-line usage error naming the option and the variable, not a traceback.
    parser.add_argument("--host", type=host, default=env_default(env, "SMART_PROXY_HOST", default_host))
    parser.add_argument("--port", type=port, default=env_default(env, "SMART_PROXY_PORT", "8003"),
                        help="1 to 65535, or 0 for any free port")
    parser.add_argument("--db", type=journal_dsn, default=env_default(env, "SMART_PROXY_DB", None),
                        help="journal database DSN")
    parser.add_argument("--instance", type=instance_name, metavar="NAME",
                        default=env_default(env, "SMART_PROXY_INSTANCE", None),
                        help="this sidecar's name on its journal records, for a journal several "
                        "share (default: the host name)")
    parser.add_argument("--log-format", type=choice("a log format", ("json", "human")), choices=("json", "human"),
                        default=env_default(env, "SMART_PROXY_LOG_FORMAT",
                                            "human" if sys.stderr.isatty() else "json"))
    levels = ("debug", "info", "warning", "error")
    parser.add_argument("--log-level", type=choice("a log level", levels, fold_case=True), choices=levels,
                        default=env_default(env, "SMART_PROXY_LOG_LEVEL", "info"))
    parser.add_argument("--shutdown-grace", type=duration, metavar="SECONDS",
                        default=env_default(env, "SMART_PROXY_SHUTDOWN_GRACE", "30"),
                        help="time in-flight requests get on SIGTERM (zero or more)")
    parser.add_argument("--header-timeout", type=positive_seconds, metavar="SECONDS",
                        default=env_default(env, "SMART_PROXY_HEADER_TIMEOUT", str(DEFAULT_HEADER_TIMEOUT)),
                        help="time to send a request head; also the keep-alive idle limit")
    parser.add_argument("--body-timeout", type=positive_seconds, metavar="SECONDS",
                        default=env_default(env, "SMART_PROXY_BODY_TIMEOUT", str(DEFAULT_BODY_TIMEOUT)),
                        help="longest gap between request body bytes before a 408 (not a cap on "
                        "the whole upload)")
    parser.add_argument("--max-connections", type=positive_count, metavar="N",
                        default=env_default(env, "SMART_PROXY_MAX_CONNECTIONS", None),
                        help="open client connections before new ones are answered 503 "
                        "(default: half of what the descriptor limit leaves)")


def journal_factory(
    dsn: str | None, fallback: str | Path | None, instance: str | None = None
) -> Callable[[CompiledFile], Journal]:
    def make(compiled: CompiledFile) -> Journal:
        return open_journal(
            dsn,
            store_prompts=compiled.journal.store_prompts,
            retention_seconds=compiled.journal.retention,
            fallback_dir=fallback,
            instance=instance or default_instance(),
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
    fallback = journal_fallback_dir(resolve(args.db).default_fallback_dir())
    try:
        app = create_app(settings, journal=journal_factory(args.db, fallback, args.instance))
    except TracingUnavailable as exc:  # OTEL_* asks for tracing the installation cannot do
        raise CliError(str(exc)) from None
    keys_env = app.state.sidecar.compiled.clients.api_keys_env
    try:  # a typo must not quietly make a named client anonymous
        parse_api_keys(settings.env.get(keys_env, ""))
    except ApiKeysError as exc:
        raise CliError(f"{keys_env}: {exc}") from None
    try:
        sock = listen(args.host, args.port)
    except OSError as exc:  # busy port, an address this machine does not have, a bad name
        raise CliError(listen_problem(args.host, args.port, exc)) from None
    url = url_of(sock)
    print(f"smart-proxy listening on {url} -> {app.state.sidecar.describe_upstream()}", file=sys.stderr)
    if on_ready is not None:
        on_ready(url)
    limits = ServingLimits(header_timeout=args.header_timeout, body_timeout=args.body_timeout,
                           max_connections=args.max_connections)
    await Server(app, [sock], grace=args.shutdown_grace, limits=limits).run()


def run_serve(args: argparse.Namespace) -> int:
    configure(_log_format(args.log_format), args.log_level)
    try:
        asyncio.run(serve_sidecar(args, args.policy, args.upstream))
    except PolicyError as exc:  # every problem of the file, one per line, by design
        print(f"smart-proxy: the policy file has problems:\n{exc}", file=sys.stderr)
        return 2
    except (CliError, JournalConfigError, OSError) as exc:
        return fail(args.cli_prog, str(exc))
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from server.cli.demo import run_demo as demo  # imports the emulator only when asked for

    configure(_log_format(args.log_format), args.log_level)
    try:
        asyncio.run(demo(args))
    except PolicyError as exc:
        print(f"smart-proxy: the policy file has problems:\n{exc}", file=sys.stderr)
        return 2
    except KeyError as exc:  # str() of a KeyError is the repr of its argument: print the text
        return fail(args.cli_prog, str(exc.args[0]) if exc.args else "unknown key")
    except (CliError, JournalConfigError, OSError) as exc:
        return fail(args.cli_prog, str(exc))
    return 0
