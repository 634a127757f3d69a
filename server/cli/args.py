"""Command-line argument types for every `smart-proxy` verb: the generic ones (ports, hosts,
durations, files; in `sim/cli_args.py`, which the emulator's verb shares) and the journal's.

Verb modules under `server/` import them all from here.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path

from schemas.journal import INSTANCE_PATTERN
from server.journal.dsn import DEFAULT_DB, JournalConfigError, Target, resolve
from sim.cli_args import (
    USAGE_ERROR,
    CliError,
    EnvValue,
    OneLineParser,
    choice,
    duration,
    env_default,
    existing_dir,
    existing_file,
    existing_file_path,
    fail,
    host,
    http_url,
    listen_problem,
    names_env,
    one_line,
    output_file,
    port,
    positive_count,
    positive_seconds,
    scale,
    write_output,
)

FALLBACK_ENV = "SMART_PROXY_JOURNAL_FALLBACK"


def database_problem(target: Target, *, must_exist: bool) -> str | None:
    """Why a SQLite journal path will not do, or None. A read-only verb needs the file to exist
    (opening a typo would create an empty database); a writing one needs its directory, since
    only the default ./db/ is ever created (a typo must not plant directories anywhere)."""
    if target.kind != "sqlite":
        return None
    path = Path(target.location)
    if path.is_dir():
        return f"journal database {path}: is a directory, not a database file"
    if must_exist:
        return None if path.exists() else f"journal database {path} does not exist"
    parent = path.parent
    if not parent.is_dir() and parent != Path(DEFAULT_DB).parent:
        return (f"journal database {path}: directory {parent} does not exist; create it first "
                "(only the default ./db/ is created)")
    return None


@names_env
def journal_dsn(text: str) -> str:
    """A journal DSN the sidecar can open and write (see database_problem)."""
    try:
        target = resolve(text)
    except JournalConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    problem = database_problem(target, must_exist=False)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return text


@names_env
def instance_name(text: str) -> str:
    """A sidecar's name on its journal records: a host or pod name fits."""
    if not re.match(INSTANCE_PATTERN, text):
        raise argparse.ArgumentTypeError(
            f"{text[:40]!r} is not an instance name: letters, digits and . _ : -, starting with a "
            "letter or digit, at most 128")
    return str(text)  # not the EnvValue it may arrive as: it is encoded into every record


def default_instance() -> str:
    """The host name (a pod's name in Kubernetes), made to fit an instance name."""
    name = re.sub(r"[^A-Za-z0-9._:-]", "-", socket.gethostname()).lstrip("._:-")[:128]
    return name or "sidecar"


def journal_fallback_dir(
    default: Path, explicit: str | None = None, env: Mapping[str, str] | None = None
) -> Path:
    """The journal's fallback directory: an explicit option, else $SMART_PROXY_JOURNAL_FALLBACK,
    else `default` (beside the database). `serve` and `db status|backfill` both use this, so they
    look at the same files. CliError when the path exists but is not a directory."""
    source, value = "--fallback-dir", explicit
    if value is None:
        from_env = (os.environ if env is None else env).get(FALLBACK_ENV, "")
        source, value = FALLBACK_ENV, (from_env if from_env.strip() else None)
    if value is None:
        return default
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise CliError(f"{source}: {value}: not a directory")
    return path


__all__ = [
    "FALLBACK_ENV",
    "USAGE_ERROR",
    "CliError",
    "EnvValue",
    "OneLineParser",
    "choice",
    "database_problem",
    "duration",
    "env_default",
    "existing_dir",
    "existing_file",
    "existing_file_path",
    "fail",
    "host",
    "http_url",
    "journal_dsn",
    "journal_fallback_dir",
    "listen_problem",
    "names_env",
    "one_line",
    "output_file",
    "port",
    "positive_count",
    "positive_seconds",
    "scale",
    "write_output",
]
