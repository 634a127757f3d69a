"""Queue positions without scoring the whole queue per question.

`GET /proxy/queue/{id}` is public and polled. Ranking every waiting ticket costs O(n) scores
(about 4 ms of event-loop time at 1,000 waiting, 40 ms at 10,000), so answering each poll that
way lets a crowd of polling clients stall every stream. Instead one ranking is kept and rebuilt
at most once per `max_age` seconds, and only when someone asks:

- a ticket in the ranking: its place then, less the tickets ahead of it that have left since
  (granted or cancelled; a sorted list of their places answers that in O(log n));
- a ticket that arrived after the build: the place its own key, scored now, takes among the
  ranked keys (a bisection), less those that have left ahead of that place.

Scores drift with time waited between rebuilds, so a position may be up to `max_age` old; it is
never below 1 nor above the queue's depth.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable

from sortedcontainers import SortedList

from policy.compile import OrderKey

MAX_AGE = 0.5  # seconds a ranking serves before the next question rebuilds it


class Ranking:
    def __init__(self, max_age: float = MAX_AGE) -> None:
        self.max_age = max_age
        self._built_at: float | None = None
        self._keys: list[OrderKey] = []  # sorted, as of the build
        self._place: dict[str, int] = {}  # ticket id -> index in _keys
        self._left = SortedList()  # indices of ranked tickets that no longer wait
        self.builds = 0

    def invalidate(self) -> None:
        """The order itself changed (another policy): the next question rebuilds."""
        self._built_at = None

    def left(self, ticket_id: str) -> None:
        """A ticket stopped waiting (granted or cancelled)."""
        index = self._place.pop(ticket_id, None)
        if index is not None:
            self._left.add(index)

    def position(
        self,
        ticket_id: str,
        key: OrderKey,
        depth: int,
        now: float,
        rank_all: Callable[[], Iterable[tuple[OrderKey, str]]],
    ) -> int:
        """1-based place of a waiting ticket whose key, scored now, is `key`."""
        if self._built_at is None or now - self._built_at >= self.max_age:
            self._build(rank_all(), now)
        index = self._place.get(ticket_id)
        if index is None:  # arrived after the build
            index = bisect.bisect_left(self._keys, key)
        gone_ahead = self._left.bisect_left(index)
        return max(1, min(depth, index - gone_ahead + 1))

    def _build(self, ranked: Iterable[tuple[OrderKey, str]], now: float) -> None:
        ordered = sorted(ranked)
        self._keys = [key for key, _ in ordered]
        self._place = {tid: i for i, (_, tid) in enumerate(ordered)}
        self._left = SortedList()
        self._built_at = now
        self.builds += 1
