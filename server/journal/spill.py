"""The overflow path of `Journal.submit`: a thread that appends records to the fallback spool.

submit() runs on the event loop and must neither block nor grow memory without bound when the
writer falls behind; it hands overflow records to this thread, whose only job is the disk. The
thread belongs to the Journal: started in `start()`, drained and joined in `stop()`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from schemas.journal import JournalRecord
from server.journal.fallback import FallbackSpool

log = logging.getLogger(__name__)

_STOP = object()
_MAX_BATCH = 1000
_DISK_RETRY_SECONDS = 1.0


class SpillWriter:
    def __init__(self, spool: FallbackSpool, notify: Callable[[], None]) -> None:
        self._spool = spool
        # Called (from this thread) after each write, so the journal's retry loop can wake up.
        self._notify = notify
        self._queue: queue.SimpleQueue[JournalRecord | object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._put = 0  # records queued (event loop) ...
        self._done = 0  # ... and written or given up on (this thread)
        self.lost = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="journal-spill", daemon=True)
        self._thread.start()

    def put(self, record: JournalRecord) -> None:
        self._put += 1
        self._queue.put(record)

    def qsize(self) -> int:
        return self._queue.qsize()

    def idle(self) -> bool:
        """Nothing queued and nothing in hand: every record put so far is on disk (or lost)."""
        return self._done == self._put

    def stop(self) -> None:
        """Blocking (call via to_thread): write what is queued, then end the thread."""
        if self._thread is None:
            return
        self._queue.put(_STOP)
        self._thread.join()
        self._thread = None

    def _run(self) -> None:
        done = False
        while not done:
            batch: list[JournalRecord] = []
            item = self._queue.get()
            while True:
                if item is _STOP:
                    done = True
                    break
                assert isinstance(item, JournalRecord)
                batch.append(item)
                if len(batch) >= _MAX_BATCH:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            self._write(batch, final=done)
            self._done += len(batch)

    def _write(self, batch: list[JournalRecord], *, final: bool) -> None:
        while batch:
            try:
                self._spool.append(batch)
                self._notify()
                return
            except OSError as exc:
                if final:
                    # Shutting down with the disk refusing writes: nowhere left to put them.
                    self.lost += len(batch)
                    log.error("journal: lost %d record(s), fallback file unwritable: %s", len(batch), exc)
                    return
                log.error("journal: fallback file unwritable (%s); retrying in %.0fs", exc, _DISK_RETRY_SECONDS)
                time.sleep(_DISK_RETRY_SECONDS)


__all__ = ["SpillWriter"]
