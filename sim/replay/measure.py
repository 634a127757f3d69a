"""What a replay measures, request by request, and the figures of one report row.

Wait: from arrival to the moment the request starts running on a loaded model — the sidecar's
queue, Ollama's queue and any load it waited for, everything a person at the prompt waits through
before the first token is computed. A request the sidecar drops at `queue_timeout` counts with
the time it waited; one refused at arrival (429/503) has no wait and is counted apart.

Fairness (Jain's index over clients of service received / fair share): time is cut at every
event; in each slice the generating slots are shared max-min fairly among the clients that have
work in the system (waiting or running), no client getting more slots than it has requests. A
client's fair share is the sum of those slices; its service is the slot-seconds it really got.
1.0 means every client got what processor sharing would have given it — so a client that floods
is not owed more because it asked more, and a quiet client that waits behind the flood is owed its
share of every second it waited.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from schemas.figures import percentile
from sim.replay.workload import Request


def wait_figures(waits: list[float]) -> dict[str, float | int]:
    ordered = sorted(waits)
    return {
        "count": len(ordered),
        "mean": _r(sum(ordered) / len(ordered)) if ordered else 0.0,
        "p50": _r(percentile(ordered, 0.50) or 0.0),
        "p95": _r(percentile(ordered, 0.95) or 0.0),
        "p99": _r(percentile(ordered, 0.99) or 0.0),
        "max": _r(ordered[-1]) if ordered else 0.0,
    }


def _r(x: float) -> float:
    return round(x, 3) + 0.0


@dataclass(slots=True)
class Collector:
    max_wait: float | None  # the policy's; waits beyond it are counted
    class_max_wait: dict[str, float] = field(default_factory=dict)  # the policy's, per class
    waits: list[float] = field(default_factory=list)
    waits_by_class: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    refused: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    refused_by_class: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    # Refused at arrival while requests of a less urgent class (a longer queue_timeout) waited:
    # what admission should never do (it sheds those instead, engine/admission.py).
    refused_over_less_urgent: int = 0
    timed_out: int = 0
    timed_out_last_arrival: float | None = None  # the latest arrival among them (a warm-up's?)
    timed_out_by_class: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    completed: int = 0
    first_arrival: float | None = None
    last_done: float = 0.0
    # fairness
    _last: float = 0.0
    _backlog: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    _running: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    _running_total: int = 0
    _fair: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    _served: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    # -- events (each brings the fairness integrals up to `now` first) -------------------------

    def advance(self, now: float) -> None:
        dt = now - self._last
        self._last = now
        if dt <= 0 or self._running_total == 0:
            return
        for client, share in self._shares().items():
            self._fair[client] += share * dt
        for client, n in self._running.items():
            if n:
                self._served[client] += n * dt

    def admitted(self, request: Request, now: float) -> None:
        self.advance(now)
        if self.first_arrival is None:
            self.first_arrival = now
        self._backlog[request.client] += 1

    def refused_at_arrival(
        self, request: Request, reason: str, now: float, cls: str = "", *, over_less_urgent: bool = False
    ) -> None:
        if self.first_arrival is None:
            self.first_arrival = now
        self.refused[reason] += 1
        self.refused_by_class[cls] += 1
        self.refused_over_less_urgent += over_less_urgent

    def shed(self, request: Request, cls: str, now: float) -> None:
        """Admitted, then given up for a more urgent arrival when the queue was full (a 503)."""
        self.advance(now)
        self._backlog[request.client] -= 1
        self.refused["shed"] += 1
        self.refused_by_class[cls] += 1
        self.last_done = max(self.last_done, now)

    def started(self, request: Request, cls: str, now: float) -> None:
        self.advance(now)
        wait = now - request.arrival
        self.waits.append(wait)
        self.waits_by_class[cls].append(wait)
        self._running[request.client] += 1
        self._running_total += 1

    def finished(self, request: Request, now: float) -> None:
        self.advance(now)
        self._running[request.client] -= 1
        self._running_total -= 1
        self._backlog[request.client] -= 1
        self.completed += 1
        self.last_done = max(self.last_done, now)

    def dropped(self, request: Request, cls: str, now: float) -> None:
        """The sidecar's queue_timeout: the client got a 504 after waiting this long."""
        self.advance(now)
        wait = now - request.arrival
        self.waits.append(wait)
        self.waits_by_class[cls].append(wait)
        self._backlog[request.client] -= 1
        self.timed_out += 1
        self.timed_out_by_class[cls] += 1
        self.timed_out_last_arrival = max(self.timed_out_last_arrival or 0.0, request.arrival)
        self.last_done = max(self.last_done, now)

    def failed(self, request: Request, reason: str, now: float) -> None:
        """Admitted, then refused by Ollama itself (its queue was full): counted as refused."""
        self.advance(now)
        self._backlog[request.client] -= 1
        self.refused[reason] += 1
        self.last_done = max(self.last_done, now)

    def _shares(self) -> dict[str, float]:
        """Max-min fair split of the running slots among backlogged clients (water filling)."""
        caps = sorted((n, c) for c, n in self._backlog.items() if n > 0)
        shares: dict[str, float] = {}
        left, remaining = float(self._running_total), len(caps)
        for n, client in caps:
            level = left / remaining
            give = n if n < level else level
            shares[client] = give
            left -= give
            remaining -= 1
        return shares

    # -- the row ---------------------------------------------------------------------------------

    def fairness(self) -> tuple[float, str | None, float | None]:
        """(Jain's index, the worst-served client, its service / fair share)."""
        ratios = {c: self._served[c] / f for c, f in self._fair.items() if f > 1e-9}
        if not ratios:
            return 1.0, None, None
        values = list(ratios.values())
        jain = sum(values) ** 2 / (len(values) * sum(v * v for v in values))
        worst = min(ratios, key=lambda c: (ratios[c], c))
        return round(jain, 4), worst, round(ratios[worst], 4)

    def figures(self) -> dict[str, Any]:
        jain, worst, worst_ratio = self.fairness()
        start = self.first_arrival or 0.0
        return {
            "completed": self.completed,
            "timed_out": self.timed_out,
            "refused": dict(sorted(self.refused.items())),
            "refused_by_class": dict(sorted(self.refused_by_class.items())),
            "refused_over_less_urgent": self.refused_over_less_urgent,
            "timed_out_by_class": dict(sorted(self.timed_out_by_class.items())),
            "timed_out_last_arrival_s": (
                None if self.timed_out_last_arrival is None
                else _r(self.timed_out_last_arrival - (self.first_arrival or 0.0))
            ),
            "makespan_s": _r(max(0.0, self.last_done - start)),
            "wait_s": wait_figures(self.waits),
            "wait_s_by_class": {c: wait_figures(w) for c, w in sorted(self.waits_by_class.items())},
            "over_max_wait": sum(
                1 for c, waits in self.waits_by_class.items()
                if (limit := self.class_max_wait.get(c, self.max_wait)) is not None
                for w in waits if w > limit
            ),
            "jain": jain,
            "worst_client": worst,
            "worst_client_share": worst_ratio,
        }
