"""`smart-proxy db migrate|status|backfill` and `smart-proxy trace export`.

Every verb takes `--db` (default: $SMART_PROXY_DB, else ./db/requests.db). Bad input — an unknown
DSN scheme, an unparseable duration, an unreachable database, a SQLite file that `status` or
`trace export` cannot find — is one line on stderr and exit code 2 (1 when backfill had to move
lines aside), never a traceback. The read-only verbs never create a database.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from server.cli.args import (
    FALLBACK_ENV,
    CliError,
    database_problem,
    duration,
    existing_dir,
    fail,
    journal_fallback_dir,
    positive_seconds,
)
from server.journal import open_store, resolve
from server.journal.admissions import recover
from server.journal.dsn import ENV_VAR, JournalConfigError, Target
from server.journal.fallback import FallbackSpool
from server.journal.migrations import LATEST, MIGRATIONS
from server.journal.replay import replay_all
from server.journal.store import Store, StoreError
from server.journal.trace import trace_lines
from sim.replay.cli import register_synth


def _target(args: argparse.Namespace, *, read_only: bool) -> Target:
    """The database to open, or CliError naming where the bad value came from. A read-only verb
    refuses a SQLite file that is not there (opening it would create an empty database); a
    writing one refuses a directory that is not there (only the default ./db/ is created)."""
    if args.db is not None:
        source = "argument --db: "
    elif os.environ.get(ENV_VAR, "").strip():
        source = f"{ENV_VAR}: "
    else:
        source = ""
    try:
        target = resolve(args.db)
    except JournalConfigError as exc:
        raise CliError(f"{source}{exc}") from None
    problem = database_problem(target, must_exist=read_only)
    if problem is not None:
        hint = "; run smart-proxy db migrate first, or check the path" if read_only else ""
        raise CliError(f"{source}{problem}{hint}")
    return target


def _run(
    args: argparse.Namespace,
    body: Callable[[Store, Target], Awaitable[int]],
    *,
    read_only: bool = False,
) -> int:
    """Open the store, run the verb, close; turn every expected failure into one line."""

    async def main(target: Target) -> int:
        store = open_store(target, timeout=args.timeout)
        try:
            await store.open()
            return await body(store, target)
        finally:
            await store.close()

    # The pool logs every failed reconnection; the CLI reports the outcome once, itself.
    logging.getLogger("psycopg.pool").setLevel(logging.CRITICAL)
    try:
        return asyncio.run(main(_target(args, read_only=read_only)))
    except (CliError, JournalConfigError, ValueError) as exc:
        return fail(args.cli_prog, str(exc))
    except StoreError as exc:
        return fail(args.cli_prog, f"journal database unavailable: {exc}")
    except OSError as exc:  # the fallback directory or a file in it (permissions, disk)
        return fail(args.cli_prog, str(exc))


def cmd_migrate(args: argparse.Namespace) -> int:
    async def body(store: Store, target: Target) -> int:
        applied = await store.migrate()
        if applied:
            print(f"{store.target}: applied migration(s) {', '.join(map(str, applied))}; now at version {LATEST}")
        else:
            print(f"{store.target}: up to date at version {LATEST}")
        return 0

    return _run(args, body)


def cmd_status(args: argparse.Namespace) -> int:
    async def body(store: Store, target: Target) -> int:
        done = {m.version: m for m in await store.applied()}
        print(f"database: {store.dialect} {store.target}")
        for migration in MIGRATIONS:
            seen = done.get(migration.version)
            when = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(seen.applied_at)) if seen else "pending"
            print(f"  {migration.version:>3}  {migration.name:<40} {when}")
        if len(done) == len(MIGRATIONS):
            print(f"records: {await store.count()}")
        spool = FallbackSpool(_fallback_dir(args, target))
        print(f"fallback: {spool.directory} ({await asyncio.to_thread(spool.count_lines)} line(s) waiting)")
        # Exit 1 when migrations are pending, so deploy scripts can check before starting.
        return 0 if len(done) == len(MIGRATIONS) else 1

    return _run(args, body, read_only=True)


def cmd_backfill(args: argparse.Namespace) -> int:
    async def body(store: Store, target: Target) -> int:
        await store.migrate()
        spool = FallbackSpool(_fallback_dir(args, target))
        # A sidecar that was killed and never started again left its admission log: its
        # unfinished requests become `interrupted` records here, as its next start would make them.
        logs, found = await asyncio.to_thread(recover, spool.directory, spool.append)
        if logs:
            print(f"recovered {found} admission(s) from {logs} log(s) of sidecars that did not stop cleanly")
        report = await replay_all(store, spool)
        print(f"replayed {report.records} record(s) from {report.files} file(s) in {spool.directory}")
        if report.skipped:
            print(f"skipped {report.skipped} file(s) still open by a running sidecar")
        for problem in report.problems:
            label = "left in place" if ": cannot be read: " in problem else "moved aside"
            print(f"{label}: {problem}", file=sys.stderr)
        return 1 if report.bad_lines or report.problems else 0

    return _run(args, body)


def cmd_trace_export(args: argparse.Namespace) -> int:
    async def body(store: Store, target: Target) -> int:
        version = max((m.version for m in await store.applied()), default=0)
        if version < LATEST:  # its columns are not all there yet
            raise CliError(f"the journal at {store.target} is at version {version} of {LATEST}; "
                           "run `smart-proxy db migrate` first")
        until = time.time()
        out = sys.stdout.buffer
        for line in await trace_lines(store, until - args.since, until):
            out.write(line)
        out.flush()
        return 0

    return _run(args, body, read_only=True)


def _fallback_dir(args: argparse.Namespace, target: Target) -> Path:
    # The same choice `serve` makes, so status and backfill look where the sidecar writes.
    return journal_fallback_dir(target.default_fallback_dir(), args.fallback_dir)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", default=None, help=f"a path, sqlite:///path or postgresql://… (default: ${ENV_VAR}, else ./db/requests.db)")
    parser.add_argument("--timeout", type=positive_seconds, default=5.0, metavar="SECONDS",
                        help="time to wait for the database (default 5)")
    parser.set_defaults(cli_prog=parser.prog)


def _fallback_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fallback-dir", type=existing_dir, default=None, metavar="DIR",
                        help=f"an existing directory (default: ${FALLBACK_ENV}, else next to the "
                        "database: ./db/fallback)")


def register(subparsers: Any) -> None:
    db = subparsers.add_parser("db", help="the request journal's database: migrate, status, backfill")
    db_verbs = db.add_subparsers(dest="db_verb", metavar="ACTION", required=True)
    migrate = db_verbs.add_parser("migrate", help="apply pending schema migrations")
    _common(migrate)
    migrate.set_defaults(run=cmd_migrate)
    status = db_verbs.add_parser("status", help="applied migrations, record count, fallback backlog")
    _common(status)
    _fallback_option(status)
    status.set_defaults(run=cmd_status)
    backfill = db_verbs.add_parser("backfill", help="replay fallback files into the database now")
    _common(backfill)
    _fallback_option(backfill)
    backfill.set_defaults(run=cmd_backfill)

    trace = subparsers.add_parser("trace", help="export the journal as a replayable trace, or synthesize one")
    trace_verbs = trace.add_subparsers(dest="trace_verb", metavar="ACTION", required=True)
    export = trace_verbs.add_parser("export", help="write JSON lines (schemas/trace.py) to stdout")
    _common(export)
    export.add_argument("--since", type=duration, default=86400.0, metavar="DURATION",
                        help='how far back: seconds, or e.g. "90m", "24h", "7d" (default 24h)')
    export.set_defaults(run=cmd_trace_export)
    register_synth(trace_verbs)


__all__ = ["register"]
