"""The fallback spool: append-only JSON-lines files that hold records the database did not take.

Each process appends to its own file and holds an exclusive flock on it while it does, so a replay
(in this process after a rotation, or `smart-proxy db backfill` in another) never reads a file that
is still growing. A file is read whole under the lock; its whole lines become records, anything
else is reported and later moved aside to `<file>.bad`, and the file is deleted only after every
record in it is committed (see replay.py).
"""

from __future__ import annotations

import fcntl
import itertools
import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import msgspec

from schemas.journal import JournalRecord

log = logging.getLogger(__name__)

SUFFIX = ".jsonl"
BAD_SUFFIX = ".bad"
MAX_FILE_BYTES = 64 * 1024 * 1024
_serial = itertools.count()


class Line(msgspec.Struct, frozen=True):
    """One line of a fallback file: its 1-based number and raw bytes (without the newline)."""

    number: int
    raw: bytes


class BadLine(msgspec.Struct, frozen=True):
    number: int
    reason: str
    text: str


class Claimed:
    """A fallback file read under its lock: the records to commit and the lines that were not."""

    def __init__(self, path: Path, handle: BinaryIO) -> None:
        self.path = path
        self.handle = handle
        self.records: list[tuple[JournalRecord, Line]] = []
        self.bad: list[BadLine] = []
        self.lines = 0

    def release(self) -> None:
        # Closing drops the flock; if the file was deleted meanwhile nobody else can open it.
        self.handle.close()


def _parse(claimed: Claimed, data: bytes) -> None:
    pieces = data.split(b"\n")
    # A file always ends in a newline unless the writer died mid-line (kill -9, power loss).
    tail = pieces.pop()
    latest: dict[str, tuple[JournalRecord, Line]] = {}
    numbered = [(i + 1, raw, False) for i, raw in enumerate(pieces)]
    if tail:
        numbered.append((len(pieces) + 1, tail, True))
    for number, raw, unterminated in numbered:
        if not raw.strip():
            continue
        claimed.lines += 1
        try:
            record = msgspec.json.decode(raw, type=JournalRecord)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            reason = f"truncated line (no newline at end of file): {exc}" if unterminated else str(exc)
            claimed.bad.append(BadLine(number, reason, raw.decode("utf-8", "backslashreplace")))
            continue
        # Duplicate ids are normal (a request journalled twice); the highest revision wins.
        seen = latest.get(record.request_id)
        if seen is None or record.revision >= seen[0].revision:
            latest[record.request_id] = (record, Line(number, raw))
    claimed.records = list(latest.values())


class FallbackSpool:
    """Appends records as JSON lines (flushed and fsynced) and hands whole files to replay."""

    def __init__(self, directory: Path, *, max_bytes: int = MAX_FILE_BYTES) -> None:
        self.directory = directory
        # A file is read whole when replayed: start a new one past this size, so recovery after
        # a long outage needs memory for one file, not for the whole outage.
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._handle: BinaryIO | None = None
        self._path: Path | None = None
        # Lines waiting = lines found by the last rescan() + lines appended since.
        self._scanned = 0
        self._appended = 0

    @property
    def pending_lines(self) -> int:
        return self._scanned + self._appended

    def rescan(self) -> int:
        """Blocking: recount the lines waiting on disk (after a replay, at start-up)."""
        with self._lock:
            self._appended = 0
            self._scanned = self.count_lines()
            return self._scanned

    def append(self, records: Sequence[JournalRecord]) -> None:
        """Blocking: call from a worker thread. Raises OSError if the disk refuses."""
        if not records:
            return
        data = b"".join(msgspec.json.encode(r) + b"\n" for r in records)
        with self._lock:
            handle = self._handle or self._open_locked()
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
            self._appended += len(records)
            if handle.tell() >= self.max_bytes:
                handle.close()
                self._handle, self._path = None, None

    def _open_locked(self) -> BinaryIO:
        self.directory.mkdir(parents=True, exist_ok=True)
        # Names sort by creation time, so replay commits older files first.
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        while True:
            path = self.directory / f"journal-{stamp}-{os.getpid()}-{next(_serial):04d}{SUFFIX}"
            try:
                # Never an existing file: one left by a crashed process with the same pid (pid 1
                # in a container) may end in a cut line that the first new record would extend.
                handle = path.open("xb")
                break
            except FileExistsError:
                continue
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        self._handle, self._path = handle, path
        return handle

    def rotate(self) -> None:
        """Close the current file so the next append starts a new one and this one can replay."""
        with self._lock:
            if self._handle is not None:
                self._handle.close()
                self._handle, self._path = None, None

    def close(self) -> None:
        self.rotate()

    def files(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted(self.directory.glob(f"*{SUFFIX}"))

    def bad_files(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted(self.directory.glob(f"*{BAD_SUFFIX}"))

    def count_lines(self) -> int:
        """Lines waiting in fallback files (a partial last line counts as one)."""
        total = 0
        for path in self.files():
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue
            except OSError as exc:  # unreadable: replay reports it; counting must not fail
                log.warning("journal: fallback file %s cannot be read: %s", path.name, exc)
                continue
            total += data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)
        return total

    def claim(self, path: Path) -> Claimed | None:
        """Lock and read one file; None if another writer holds it or it is already gone."""
        with self._lock:
            if path == self._path:
                return None
        try:
            handle = path.open("rb")
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return None
        if not path.exists():
            # Another replay committed and removed it between our open and our lock.
            handle.close()
            return None
        claimed = Claimed(path, handle)
        _parse(claimed, handle.read())
        return claimed

    def finish(self, claimed: Claimed, bad: Sequence[BadLine]) -> None:
        """Every record of the file is committed: move bad lines aside, then delete the file."""
        if bad:
            target = claimed.path.with_name(claimed.path.name + BAD_SUFFIX)
            with target.open("ab") as out:
                for line in bad:
                    out.write(msgspec.json.encode(line) + b"\n")
                    log.warning(
                        "journal fallback %s line %d moved to %s: %s",
                        claimed.path.name, line.number, target.name, line.reason,
                    )
                out.flush()
                os.fsync(out.fileno())
        claimed.path.unlink()


__all__ = ["BAD_SUFFIX", "SUFFIX", "BadLine", "Claimed", "FallbackSpool", "Line"]
