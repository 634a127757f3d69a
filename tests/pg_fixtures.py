"""A real PostgreSQL for the tests, started from the machine's binaries, plus a DSN per test.

Session-scoped: one server (initdb ~0.5 s), a fresh database per test. PostgreSQL refuses to run
as root, so under root the server runs as the `postgres` system user via runuser. Without the
binaries the PostgreSQL tests skip on a laptop, but fail when SMART_PROXY_REQUIRE_PG=1 (CI).
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest


def _bindir() -> Path | None:
    pg_config = shutil.which("pg_config")
    candidates: list[Path] = []
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        candidates.append(Path(out.stdout.strip()))
    # Debian keeps the server binaries out of PATH, one directory per major version.
    candidates.extend(sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True))
    for directory in candidates:
        if (directory / "initdb").exists() and (directory / "pg_ctl").exists():
            return directory
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PgServer:
    """A throwaway cluster on loopback with trust auth; can be stopped and started again."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="smart-proxy-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self._as_root = os.geteuid() == 0
        self._names = itertools.count()
        if self._as_root:
            shutil.chown(self.root, user="postgres", group="postgres")

    def _run(self, *args: str) -> None:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self._as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            log = (self.root / "log").read_text() if (self.root / "log").exists() else ""
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}{log}")

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres",
                  "--no-sync", "-E", "UTF8", "--locale=C")

    def start(self) -> None:
        # fsync off: test data need not survive a power cut, and it makes the suite faster.
        options = f"-p {self.port} -h 127.0.0.1 -k {self.root} -c fsync=off -c full_page_writes=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "log"),
                  "-w", "-t", "30", "start")

    def stop(self) -> None:
        # Fast mode: open connections are cut, as in a real outage.
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop")

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def new_database(self) -> str:
        name = f"journal_test_{next(self._names)}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.dsn(name)

    def destroy(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The session's PostgreSQL server (skips without binaries unless SMART_PROXY_REQUIRE_PG=1)."""
    bindir = _bindir()
    if bindir is None:
        message = "PostgreSQL server binaries (initdb, pg_ctl) not found"
        if os.environ.get("SMART_PROXY_REQUIRE_PG") == "1":
            pytest.fail(f"{message}, and SMART_PROXY_REQUIRE_PG=1 forbids skipping")
        pytest.skip(message)
    server = PgServer(bindir)
    server.init()
    server.start()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def pg_server_running(pg_server: PgServer) -> Iterator[PgServer]:
    """The server, guaranteed running again after the test (for tests that stop it)."""
    yield pg_server
    try:
        with psycopg.connect(pg_server.dsn(), connect_timeout=2):
            pass
    except psycopg.OperationalError:
        pg_server.start()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def journal_dsn(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty journal database: a SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'db' / 'requests.db'}"
    server: PgServer = request.getfixturevalue("pg_server")
    return server.new_database()
