"""The live event stream's hub: numbered events, a bounded ring for reconnects, bounded
per-subscriber queues, and the heartbeat.

`publish` is called on the request and dispatch paths, so it never waits and never grows without
bound: an event is numbered, encoded once as an SSE frame, kept in the ring and offered to each
subscriber. A subscriber that has `SUBSCRIBER_LIMIT` frames unread is dropped (told so, then its
stream ends): a dashboard on a slow link can never hold back dispatch or pile up memory.

Ids start from the boot time in milliseconds, so a client reconnecting to a restarted sidecar
names an id this run never issued (below the ring, or ahead of it) and gets a `reset` rather than
a replay of another run's numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import msgspec

from schemas.events import (
    AnyEvent,
    Cancelled,
    Completed,
    Dropped,
    Event,
    Heartbeat,
    Rejected,
    Reset,
)
from schemas.journal import JournalRecord

log = logging.getLogger("smart_proxy.events")

RING_SIZE = 4096  # events kept for reconnecting clients (and the overview's recent dispatches)
SUBSCRIBER_LIMIT = 1000  # frames a subscriber may leave unread before it is dropped
MAX_SUBSCRIBERS = 64  # open streams; one more is refused with 503

_encoder = msgspec.json.Encoder()


def frame(event: Event) -> bytes:
    """One Server-Sent Event: `id:` (when numbered), `event:` (the type), `data:` (the JSON)."""
    kind = type(event).__struct_config__.tag
    head = b"id: %d\n" % event.id if event.id else b""
    return head + b"event: %s\ndata: %s\n\n" % (str(kind).encode(), _encoder.encode(event))


def ended(record: JournalRecord) -> Completed | Cancelled | Rejected:
    """The event for a request's journal record: how it ended, under the id its client knows."""
    common: dict[str, Any] = {
        "at": record.completed_at or time.time(),
        "request_id": record.client_request_id or record.request_id,
        "journal_id": record.request_id,
        "client": record.client, "model": record.model, "endpoint": record.endpoint,
        "http_status": record.http_status, "error": record.error,
        "wait_ms": record.queue_wait_ms, "duration_ms": record.duration_ms,
    }
    if record.status == "cancelled":
        return Cancelled(**common)
    if record.status == "rejected":
        return Rejected(**common)
    return Completed(
        **common, status="completed" if record.status == "completed" else "failed",
        prompt_eval_count=record.prompt_eval_count, eval_count=record.eval_count,
        load_duration=record.load_duration, eval_duration=record.eval_duration,
    )


class Subscriber:
    """One open stream's queue of frames."""

    def __init__(self, limit: int) -> None:
        self._frames: deque[bytes] = deque()
        self._limit = limit
        self.wake = asyncio.Event()
        self.dropped = False

    def offer(self, data: bytes) -> None:
        if self.dropped:
            return
        if len(self._frames) >= self._limit:
            self.dropped = True
            self._frames.clear()
        else:
            self._frames.append(data)
        self.wake.set()

    async def next(self) -> list[bytes]:
        """The frames waiting (at least one), or [] once dropped."""
        while not self._frames and not self.dropped:
            self.wake.clear()
            await self.wake.wait()
        if self.dropped:
            return []
        out = list(self._frames)
        self._frames.clear()
        return out


class StreamRefused(Exception):
    pass


class EventBus:
    def __init__(
        self,
        *,
        heartbeat: Callable[[], Heartbeat],
        interval: float = 5.0,
        clock: Callable[[], float] = time.time,
        ring_size: int = RING_SIZE,
        subscriber_limit: int = SUBSCRIBER_LIMIT,
    ) -> None:
        self._heartbeat = heartbeat
        self.interval = interval
        self._clock = clock
        self._ids = itertools.count(int(clock() * 1000) + 1)
        self.last_id = 0
        self._ring: deque[tuple[int, bytes, AnyEvent]] = deque(maxlen=ring_size)
        self._subscribers: set[Subscriber] = set()
        self._subscriber_limit = subscriber_limit
        self._listeners: list[Callable[[AnyEvent], None]] = []
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0  # subscribers dropped for falling behind, since start
        self.closed = False  # the sidecar is stopping: streams end, new ones are refused

    # -- publishing ------------------------------------------------------------------------

    def listen(self, listener: Callable[[AnyEvent], None]) -> None:
        """A synchronous observer of every event (the live statistics); must not block."""
        self._listeners.append(listener)

    def publish(self, event: AnyEvent) -> None:
        numbered = msgspec.structs.replace(event, id=next(self._ids))
        self.last_id = numbered.id
        data = frame(numbered)
        self._ring.append((numbered.id, data, numbered))
        self._fan_out(data)
        for listener in self._listeners:
            try:
                listener(numbered)
            except Exception:  # an observer's bug must not break the request that published
                log.exception("event listener failed on %s", type(numbered).__name__)

    def _fan_out(self, data: bytes) -> None:
        for sub in self._subscribers:
            was = sub.dropped
            sub.offer(data)
            if sub.dropped and not was:
                self.dropped += 1

    def now(self) -> float:
        return self._clock()

    # -- subscribing ---------------------------------------------------------------------------

    def subscribe(self, last_event_id: str | None) -> tuple[Subscriber, list[bytes]]:
        """A new subscriber, and what it must be sent first: the events after `last_event_id`
        from the ring, or a `reset` when they are no longer all there."""
        if self.closed:
            raise StreamRefused("the sidecar is shutting down")
        if len(self._subscribers) >= MAX_SUBSCRIBERS:
            raise StreamRefused(f"{MAX_SUBSCRIBERS} event streams are open already")
        backlog: list[bytes] = []
        if last_event_id is not None:
            backlog = self._since(last_event_id)
        sub = Subscriber(self._subscriber_limit)
        self._subscribers.add(sub)
        return sub, backlog

    def _since(self, last_event_id: str) -> list[bytes]:
        try:
            last = int(last_event_id.strip())
        except ValueError:
            return [self._reset("Last-Event-ID is not an event id of this sidecar")]
        if last == self.last_id:
            return []
        oldest = self._ring[0][0] if self._ring else self.last_id + 1
        if last > self.last_id or last < oldest - 1:
            return [self._reset("the events after Last-Event-ID are no longer kept")]
        return [data for eid, data, _ in self._ring if eid > last]

    def _reset(self, reason: str) -> bytes:
        return frame(Reset(at=self._clock(), reason=reason))

    def unsubscribe(self, sub: Subscriber) -> None:
        self._subscribers.discard(sub)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    @staticmethod
    def dropped_frame(at: float) -> bytes:
        return frame(Dropped(at=at, reason=f"more than {SUBSCRIBER_LIMIT} events unread"))

    def recent(self, kinds: tuple[type[Event], ...], limit: int) -> list[AnyEvent]:
        """The newest `limit` kept events of these types, oldest first."""
        out: list[AnyEvent] = []
        for _, _, event in reversed(self._ring):
            if isinstance(event, kinds):
                out.append(event)
                if len(out) == limit:
                    break
        out.reverse()
        return out

    def kept(self) -> Iterator[AnyEvent]:
        return (event for _, _, event in self._ring)

    # -- heartbeat ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._beat(), name="event-heartbeat")

    def close(self) -> None:
        """The sidecar is stopping: end every open stream now (a stream would otherwise hold its
        connection open through the shutdown grace) and refuse new ones."""
        self.closed = True
        for sub in list(self._subscribers):
            sub.dropped = True
            sub.wake.set()

    async def stop(self) -> None:
        self.close()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                beat = self._heartbeat()
            except Exception:
                log.exception("heartbeat failed; the next one will try again")
                continue
            # Not numbered, not kept: nothing to replay; observers still see it (the charts).
            self._fan_out(frame(beat))
            for listener in self._listeners:
                try:
                    listener(beat)
                except Exception:
                    log.exception("event listener failed on the heartbeat")
