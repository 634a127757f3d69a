"""Figures the dashboards show that no single request knows: wait percentiles, error rate, the
busiest clients and models over the last requests, and a series of heartbeats for the charts.

Fed by the event bus (a listener: synchronous, O(1) per event); the figures are computed when a
dashboard asks, over at most `RECENT` requests, so the request path pays for a deque append.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field

from schemas.events import AnyEvent, Completed, Dispatched, Heartbeat, Rejected, _Ended
from schemas.figures import percentile
from schemas.overview import LiveFigures, NameCount

RECENT = 2000  # requests the figures are computed over
SERIES = 720  # heartbeats kept for the charts (an hour at the default 5 s)
TOP = 5


@dataclass(slots=True)
class _Interval:
    dispatches: int = 0
    loads: int = 0
    ended: int = 0
    errors: int = 0
    waits: list[float] = field(default_factory=list)


def _is_error(event: _Ended) -> bool:
    """Failed, or Ollama (or the hop to it) answered 5xx. A refusal or a cancellation is counted
    apart: a 503 for a request an administrator removed is not the service failing."""
    if not isinstance(event, Completed):
        return False
    return event.status == "failed" or (event.http_status is not None and event.http_status >= 500)


class LiveStats:
    def __init__(self) -> None:
        self._ended: deque[_Ended] = deque(maxlen=RECENT)
        self._waits: deque[float] = deque(maxlen=RECENT)  # seconds, per dispatch
        self.series: deque[Heartbeat] = deque(maxlen=SERIES)
        self._interval = _Interval()

    def __call__(self, event: AnyEvent) -> None:
        interval = self._interval
        if isinstance(event, Dispatched):
            interval.dispatches += 1
            interval.loads += event.action != "attach"
            if not event.again:  # one request, one wait (as in smart_proxy_queue_wait_seconds)
                self._waits.append(event.waited_s)
                interval.waits.append(event.waited_s)
        elif isinstance(event, _Ended):
            self._ended.append(event)
            interval.ended += 1
            interval.errors += _is_error(event)
        elif isinstance(event, Heartbeat):
            self.series.append(event)

    def heartbeat(
        self, *, at: float, depth: int, in_flight: int, max_parallel: int, paused: bool
    ) -> Heartbeat:
        """The state now and what happened since the last heartbeat; starts a new interval."""
        done, self._interval = self._interval, _Interval()
        waits = sorted(done.waits)
        return Heartbeat(
            at=at, depth=depth, in_flight=in_flight, max_parallel=max_parallel, paused=paused,
            dispatches=done.dispatches, loads=done.loads, ended=done.ended, errors=done.errors,
            wait_p50_s=percentile(waits, 0.5), wait_max_s=waits[-1] if waits else None,
        )

    def figures(self) -> LiveFigures:
        ended = list(self._ended)
        waits = sorted(self._waits)
        errors = sum(_is_error(e) for e in ended)
        clients = Counter(e.client for e in ended if not isinstance(e, Rejected))
        models = Counter(e.model for e in ended if e.model and not isinstance(e, Rejected))
        statuses = Counter(type(e).__struct_config__.tag for e in ended)
        return LiveFigures(
            requests=len(ended),
            since=ended[0].at if ended else None,
            errors=errors,
            error_rate=round(errors / len(ended), 4) if ended else None,
            rejected=statuses.get("reject", 0),
            cancelled=statuses.get("cancel", 0),
            wait_p50_s=percentile(waits, 0.5),
            wait_p95_s=percentile(waits, 0.95),
            wait_p99_s=percentile(waits, 0.99),
            wait_max_s=waits[-1] if waits else None,
            top_clients=[NameCount(name=n, requests=c) for n, c in clients.most_common(TOP)],
            top_models=[NameCount(name=n, requests=c) for n, c in models.most_common(TOP)],
        )
