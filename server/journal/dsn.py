"""Which database the journal uses: one DSN string, from the caller or SMART_PROXY_DB.

- `postgresql://…` or `postgres://…`: PostgreSQL (any libpq URL).
- `sqlite:///relative/path.db`, `sqlite:////absolute/path.db` (SQLAlchemy's convention), or a plain
  filesystem path: SQLite.
- nothing at all: SQLite at ./db/requests.db.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import msgspec

ENV_VAR = "SMART_PROXY_DB"
DEFAULT_DB = "./db/requests.db"


class JournalConfigError(ValueError):
    """A DSN or journal setting that cannot work; the message says what to write instead."""


class Target(msgspec.Struct, frozen=True):
    kind: Literal["sqlite", "postgresql"]
    location: str  # the SQLite path, or the PostgreSQL DSN

    def default_fallback_dir(self) -> Path:
        # Next to the database file for SQLite; for PostgreSQL, where the SQLite file would be.
        base = Path(self.location).parent if self.kind == "sqlite" else Path(DEFAULT_DB).parent
        return base / "fallback"


def resolve(dsn: str | None = None) -> Target:
    text = dsn if dsn is not None else os.environ.get(ENV_VAR) or DEFAULT_DB
    text = text.strip()
    if not text:
        raise JournalConfigError(
            f"journal database: empty DSN; give a path, sqlite:///path or postgresql://… (or unset {ENV_VAR})"
        )
    if text.startswith(("postgresql://", "postgres://")):
        return Target("postgresql", text)
    if text.startswith("sqlite://"):
        path = text.removeprefix("sqlite://")
        if not path.startswith("/") or path == "/":
            raise JournalConfigError(
                f"journal database: {text!r}: write sqlite:///relative/path.db or sqlite:////absolute/path.db"
            )
        return Target("sqlite", path[1:])
    if "://" in text:
        scheme = text.split("://", 1)[0]
        raise JournalConfigError(
            f"journal database: unknown scheme {scheme!r} in {text!r}; use a path, sqlite:///path or postgresql://…"
        )
    return Target("sqlite", text)


__all__ = ["DEFAULT_DB", "ENV_VAR", "JournalConfigError", "Target", "resolve"]
