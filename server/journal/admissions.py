"""Admission records: what survives a kill -9 of the sidecar.

The journal writes a request's record when the request ends; a process killed outright (kill -9,
the OOM killer, a node lost) takes with it every request still waiting or running, and their
records with them. So each accepted request is also written, as it is accepted, to this process's
admission log in the fallback directory: one JSON line, status `interrupted`, revision 0. Nothing
reads it while the process lives. At the next start-up (of this sidecar or another sharing the
directory), `recover()` moves the lines of every log whose writer is dead into the fallback spool;
replay upserts them, and since a request's real record has a higher revision (wall-clock
nanoseconds), only the requests that never got one stay `interrupted`.

Group commit: `admit()` only queues the line; a thread writes whatever has queued and fsyncs once,
so under load one fsync covers many requests, and the loss window is one write + fsync (a few ms
on local disk). Each log is flock'ed by its writer — the kernel drops the lock however the process
dies — which is how recovery tells a dead writer's log from a live one's.

A log is rotated past `max_bytes`; a rotated log is deleted once every request admitted to it has
ended and the journal holds nothing in memory (so each one's real record is in the database or
the spool). A clean stop deletes the current one the same way.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import msgspec

from schemas.journal import JournalRecord

log = logging.getLogger(__name__)

PREFIX = "admitted-"
SUFFIX = ".log"
MAX_BYTES = 8 * 1024 * 1024
_serial = itertools.count()
_STOP = object()


class _File:
    """One admission log. Made on the event loop; opened (created, flock'ed) by the thread when
    its first line is written, so the loop never touches the disk."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self.handle: BinaryIO | None = None
        self.open = 0  # requests admitted here and not ended yet (event loop only)
        self.bytes = 0


class AdmissionLog:
    def __init__(self, directory: Path, *, max_bytes: int = MAX_BYTES) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._current = _File()
        self._rotated: list[_File] = []
        self._where: dict[str, _File] = {}  # request id -> its log
        self.commits = 0  # fsyncs: admissions / commits is the group size
        self.written = 0
        self.failed = 0  # lines the disk refused (logged); those requests are not crash-safe

    # -- the event loop's side ------------------------------------------------------------------

    def admit(self, record: JournalRecord) -> None:
        """Queue the crash record of a request just accepted. Never blocks."""
        if self._thread is None:
            return
        line = msgspec.json.encode(record) + b"\n"
        target = self._current
        self._where[record.request_id] = target
        target.open += 1
        target.bytes += len(line)
        self._queue.put((target, line))
        if target.bytes >= self.max_bytes:
            self._rotated.append(target)
            self._current = _File()

    def ended(self, request_id: str) -> None:
        """The request's real record has been handed to the journal."""
        held = self._where.pop(request_id, None)
        if held is not None:
            held.open -= 1

    def settled(self) -> None:
        """Called when the journal holds nothing in memory: rotated logs whose requests have all
        ended are no longer needed."""
        done = [f for f in self._rotated if f.open == 0]
        if done and self._thread is not None:
            self._rotated = [f for f in self._rotated if f.open > 0]
            self._queue.put(lambda: _delete(done))

    @property
    def open_requests(self) -> int:
        return len(self._where)

    # -- life cycle (blocking: call through asyncio.to_thread) ----------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="journal-admissions", daemon=True)
        self._thread.start()

    def flush(self, within: float = 5.0) -> bool:
        """Blocking: wait until everything admitted so far is on disk; whether it was in time."""
        if self._thread is None:
            return True
        done = threading.Event()
        self._queue.put(done.set)
        return done.wait(within)

    def stop(self, *, clean: bool) -> None:
        """Write what is queued and end the thread. With `clean` (the journal wrote out every
        record it was handed) and no request left open, delete this process's logs; otherwise
        leave them for the next start-up's recovery."""
        if self._thread is None:
            return
        self._queue.put(_STOP)
        self._thread.join()
        self._thread = None
        files = [*self._rotated, self._current]
        if clean and not self._where:
            _delete(files)
        else:
            for f in files:
                if f.handle is not None:
                    f.handle.close()

    # -- the thread -----------------------------------------------------------------------------

    def _open(self, f: _File) -> BinaryIO:
        if f.handle is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
            while True:
                path = self.directory / f"{PREFIX}{stamp}-{os.getpid()}-{next(_serial):04d}{SUFFIX}"
                with contextlib.suppress(FileExistsError):
                    handle = path.open("xb")
                    break
            # Locked before the first line is written: recovery never takes a live writer's log.
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            f.path, f.handle = path, handle
        return f.handle

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            batches: dict[int, tuple[_File, list[bytes]]] = {}
            actions: list[Callable[[], None]] = []
            stop = False
            while True:
                if item is _STOP:
                    stop = True
                elif isinstance(item, tuple):
                    target, line = item
                    batches.setdefault(id(target), (target, []))[1].append(line)
                else:
                    actions.append(item)  # type: ignore[arg-type]
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            for target, lines in batches.values():
                self._commit(target, lines)
            for action in actions:
                action()
            if stop:
                return

    def _commit(self, target: _File, lines: list[bytes]) -> None:
        try:
            handle = self._open(target)
            handle.write(b"".join(lines))
            handle.flush()
            os.fsync(handle.fileno())
        except OSError as exc:
            self.failed += len(lines)
            log.error("journal: admission log unwritable, %d request(s) not crash-safe: %s", len(lines), exc)
            return
        self.commits += 1
        self.written += len(lines)


def _delete(files: list[_File]) -> None:
    for f in files:
        if f.path is not None:
            with contextlib.suppress(OSError):
                f.path.unlink()
        if f.handle is not None:
            f.handle.close()


def recover(directory: Path, append: Callable[[list[JournalRecord]], None]) -> tuple[int, int]:
    """Blocking. Hand the records of every dead writer's admission log to `append` (the spool's
    fsynced append), then delete the log. Returns (logs, records). A line cut short (the writer
    died inside its write) is skipped with a warning."""
    logs = records = 0
    for path in sorted(directory.glob(f"{PREFIX}*{SUFFIX}")) if directory.is_dir() else []:
        try:
            handle = path.open("rb")
        except FileNotFoundError:
            continue
        with handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live sidecar's
            if not path.exists():
                continue  # recovered by another process between our open and our lock
            found: list[JournalRecord] = []
            for raw in handle.read().split(b"\n"):
                if not raw.strip():
                    continue
                try:
                    found.append(msgspec.json.decode(raw, type=JournalRecord))
                except (msgspec.DecodeError, msgspec.ValidationError):
                    log.warning("journal: %s: skipped a line that does not parse", path.name)
            if found:
                append(found)
            path.unlink()
        logs += 1
        records += len(found)
    return logs, records


__all__ = ["AdmissionLog", "recover"]
