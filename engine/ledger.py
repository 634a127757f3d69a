"""The client ledger: per client, how many tickets wait and how many arrived within each window.

Memory is bounded: arrivals older than the longest window are dropped, clients with nothing
waiting and nothing recent are forgotten, and one client keeps at most `max_per_client` arrival
times (its counts saturate there). The seed's per-IP history grew forever.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from collections.abc import Iterable


class _Times:
    """Ascending arrival times with cheap removal from the front."""

    __slots__ = ("start", "times")

    def __init__(self) -> None:
        self.times: list[float] = []
        self.start = 0

    def __len__(self) -> int:
        return len(self.times) - self.start

    def append(self, t: float, cap: int) -> None:
        self.times.append(t)
        if len(self) > cap:
            self.start += 1
        self._compact()

    def drop_before(self, t: float) -> None:
        self.start = max(self.start, bisect_left(self.times, t, self.start))
        self._compact()

    def count_since(self, t: float) -> int:
        return len(self.times) - bisect_left(self.times, t, self.start)

    def _compact(self) -> None:
        if self.start > 256 and self.start * 2 > len(self.times):
            del self.times[: self.start]
            self.start = 0


class ClientLedger:
    def __init__(self, windows: Iterable[float], max_per_client: int = 100_000) -> None:
        self._queued: dict[str, int] = {}
        self._arrivals: dict[str, _Times] = {}
        self._max_per_client = max_per_client
        # Global arrival log, oldest first, so expiries are found without scanning clients.
        self._log: deque[tuple[float, str]] = deque()
        self._log_start = 0  # absolute index of _log[0]
        self._cursors: dict[float, int] = {}  # window -> absolute index of first unexpired entry
        self._last = float("-inf")
        self.set_windows(windows)

    def set_windows(self, windows: Iterable[float]) -> None:
        """Count a new set of windows (after a policy reload). Arrivals already forgotten stay
        forgotten: a longer new window fills up as time passes."""
        new = sorted(set(windows)) or [0.0]
        times = [t for t, _ in self._log]
        cursors = {}
        for w in new:
            old = self._cursors.get(w)
            cursors[w] = (
                old if old is not None else self._log_start + bisect_left(times, self._last - w)
            )
        self._cursors = cursors
        self._retention = max(new)

    # -- events -------------------------------------------------------------------------

    def arrive(self, client: str, t: float) -> None:
        if t < self._last:
            raise ValueError("arrivals must be recorded in time order")
        self._last = t
        self._queued[client] = self._queued.get(client, 0) + 1
        self.record_history(client, t)

    def record_history(self, client: str, t: float) -> None:
        """An arrival that counts towards recent windows without waiting (e.g. past traffic)."""
        self._last = max(self._last, t)
        self._arrivals.setdefault(client, _Times()).append(t, self._max_per_client)
        self._log.append((t, client))

    def returned(self, client: str) -> None:
        """A ticket of this client waits again after its grant failed: not a new arrival."""
        self._queued[client] = self._queued.get(client, 0) + 1

    def leave(self, client: str) -> None:
        """A ticket of this client stopped waiting (dispatched, cancelled, timed out)."""
        left = self._queued.get(client, 0) - 1
        if left > 0:
            self._queued[client] = left
        else:
            self._queued.pop(client, None)
            self._forget_if_idle(client)

    def expire(self, now: float) -> set[str]:
        """Advance every window to `now`; returns the clients whose recent counts changed."""
        changed: set[str] = set()
        log, start = self._log, self._log_start
        for w, cursor in self._cursors.items():
            limit = now - w
            while cursor - start < len(log) and log[cursor - start][0] < limit:
                changed.add(log[cursor - start][1])
                cursor += 1
            self._cursors[w] = cursor
        # Entries every window has passed are no longer needed.
        oldest_needed = min(self._cursors.values())
        while start < oldest_needed:
            _, client = log.popleft()
            start += 1
            times = self._arrivals.get(client)
            if times is not None:
                times.drop_before(now - self._retention)
                self._forget_if_idle(client)
        self._log_start = start
        return changed

    def _forget_if_idle(self, client: str) -> None:
        times = self._arrivals.get(client)
        if client not in self._queued and (times is None or len(times) == 0):
            self._arrivals.pop(client, None)

    # -- questions ------------------------------------------------------------------------

    def queued(self, client: str) -> int:
        return self._queued.get(client, 0)

    def recent(self, client: str, window: float, now: float) -> int:
        times = self._arrivals.get(client)
        return 0 if times is None else times.count_since(now - window)

    def clients(self) -> int:
        """How many clients the ledger remembers (for memory-bound tests and metrics)."""
        return len(self._arrivals.keys() | self._queued.keys())
