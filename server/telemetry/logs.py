"""Logging: one JSON object per line, or human-readable lines; every line written while a request
is being handled carries its request id (a context variable set by the route).

The event loop only puts records on a queue; a listener thread formats and writes them, so a slow
or blocked stderr (a full pipe, a stalled terminal) never stalls a request. The thread takes what
has queued every few milliseconds rather than waking for each record: with a line per request,
a wake-up per line cost the event loop more than the line itself (it contends for the GIL).
"""

from __future__ import annotations

import atexit
import copy
import logging
import queue
import sys
import threading
import time
from logging.handlers import QueueHandler
from typing import Literal, TextIO

import msgspec

from server.http.request_ids import request_id_var

LogFormat = Literal["json", "human"]

# LogRecord attributes that are not "extra" fields a caller added.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "request_id",
    "taskName",
}


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        return True


def _extras(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)  # set by _RequestIdFilter
        if request_id:
            out["request_id"] = request_id
        out.update(_extras(record))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        return msgspec.json.encode(out, enc_hook=str).decode()


class HumanFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        rid = getattr(record, "request_id", None)
        extras = " ".join(f"{k}={v}" for k, v in _extras(record).items() if v is not None)
        line = f"{stamp} {record.levelname:<7} {record.name}: " + (f"[{rid}] " if rid else "")
        line += record.getMessage() + (f"  {extras}" if extras else "")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        elif record.exc_text:
            line += "\n" + record.exc_text
        return line


class _OffLoopHandler(QueueHandler):
    """Hands records to the listener thread with their message and traceback already rendered
    (arguments and tracebacks may refer to objects that change after this call)."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record = copy.copy(record)
        record.msg, record.args = record.getMessage(), None
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        return record


class _BatchingListener:
    """The writer thread: it sleeps until a record arrives, then waits `interval` seconds for
    more and formats and writes all of them in one write. Stopping writes what is left first."""

    def __init__(self, records: queue.SimpleQueue[logging.LogRecord], writer: logging.StreamHandler[TextIO],
                 interval: float = 0.02) -> None:
        self.records, self.writer, self.interval = records, writer, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.records.put(_STOP)  # wakes the thread if it sleeps on an empty queue
        self._thread.join(timeout=STOP_WAIT_S)  # a stderr nobody reads must not hang the exit

    def _run(self) -> None:
        while not self._stop.is_set():
            first = self.records.get()  # idle: no wake-ups until there is something to write
            self._stop.wait(self.interval)  # then gather what comes in the next few ms
            self._drain([first])
        while self._drain([]):  # what is left, however much
            pass

    def _drain(self, taken: list[logging.LogRecord]) -> bool:
        """Write what is queued, up to BATCH_LINES; True if that stopped it (more may wait)."""
        lines: list[str] = []
        while len(lines) < BATCH_LINES:  # a flood is written as it comes, not held in memory
            if taken:
                record = taken.pop()
            else:
                try:
                    record = self.records.get_nowait()
                except queue.Empty:
                    break
            if record is _STOP:
                continue
            try:
                lines.append(self.writer.format(record))
            except Exception:  # a record that cannot be formatted must not end the thread
                self.writer.handleError(record)
        if lines:
            try:
                self.writer.stream.write("\n".join(lines) + "\n")
                self.writer.flush()
            except Exception:  # a closed or broken stderr: logging's own rule is to go on
                pass
        return len(lines) >= BATCH_LINES


STOP_WAIT_S = 5.0
BATCH_LINES = 1000
_STOP = logging.LogRecord("smart_proxy", logging.INFO, "", 0, "stop", None, None)
_listener: _BatchingListener | None = None


def _stop_listener() -> None:
    """Write out what is queued and stop the writer thread (at exit, or before reconfiguring)."""
    global _listener
    if _listener is not None:
        _listener.stop()
        _listener = None


def configure(fmt: LogFormat, level: str = "INFO") -> None:
    """Install the chosen format on the `smart_proxy` loggers (the CLI calls this once)."""
    global _listener
    _stop_listener()
    writer = logging.StreamHandler(sys.stderr)
    writer.setFormatter(JsonFormatter() if fmt == "json" else HumanFormatter())
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    handler = _OffLoopHandler(records)
    handler.addFilter(_RequestIdFilter())  # runs on the caller's thread, where the id is set
    _listener = _BatchingListener(records, writer)
    _listener.start()
    root = logging.getLogger("smart_proxy")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


atexit.register(_stop_listener)
