"""A Server-Sent Events reader for the tests: a thread reads `GET /proxy/events` and hands each
event over as (id, type, data); the test takes them in order with a deadline."""

from __future__ import annotations

import contextlib
import http.client
import json
import queue
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Sse:
    id: int | None
    type: str
    data: dict[str, Any]


def parse(text: str) -> list[Sse]:
    """Complete events in `text` (blank-line separated); comments and `retry:` lines skipped."""
    out = []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            name, _, value = line.partition(": ")
            if name in ("id", "event", "data"):
                fields[name] = value
        if "data" in fields:
            out.append(Sse(int(fields["id"]) if "id" in fields else None, fields["event"],
                           json.loads(fields["data"])))
    return out


class EventReader:
    def __init__(self, url: str, *, headers: dict[str, str] | None = None) -> None:
        self.events: queue.Queue[Sse | None] = queue.Queue()
        self.status: int | None = None
        self.content_type = ""
        parts = urlsplit(url)
        # http.client, not httpx: close() must interrupt the reader thread's blocking read, and
        # shutting the socket down is what does that.
        self._conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
        self._conn.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""),
                           headers=headers or {})
        response = self._conn.getresponse()
        self.status = response.status
        self.content_type = response.getheader("content-type", "")
        self._thread = threading.Thread(target=self._run, args=(response,), daemon=True)
        self._thread.start()

    def _run(self, response: http.client.HTTPResponse) -> None:
        buffer = ""
        try:
            while piece := response.read1(65536):
                buffer += piece.decode()
                *complete, buffer = buffer.split("\n\n")
                for event in parse("\n\n".join(complete)):
                    self.events.put(event)
        except (OSError, ValueError, http.client.HTTPException):  # closed by close()
            pass
        finally:
            self.events.put(None)  # the stream ended

    def next(self, within: float = 10.0, *, skip_heartbeats: bool = True) -> Sse | None:
        """The next event (None: the stream ended)."""
        deadline = time.monotonic() + within
        while True:
            left = deadline - time.monotonic()
            assert left > 0, "no event in time"
            event = self.events.get(timeout=left)
            if event is None or not (skip_heartbeats and event.type == "heartbeat"):
                return event

    def until(self, kind: str, within: float = 10.0, **match: Any) -> tuple[list[Sse], Sse]:
        """Events up to and including the first of type `kind` whose data has `match`."""
        seen: list[Sse] = []
        deadline = time.monotonic() + within
        while True:
            event = self.next(max(0.01, deadline - time.monotonic()))
            assert event is not None, f"the stream ended before a {kind} event; saw {seen}"
            seen.append(event)
            if event.type == kind and all(event.data.get(k) == v for k, v in match.items()):
                return seen, event

    def close(self) -> None:
        sock = self._conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(10)
        self._conn.close()
