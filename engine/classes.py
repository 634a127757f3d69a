"""The scheduler's books per request class: the waiting tickets of each class in arrival order
(admission counts and sheds by class, per-class max_wait walks only its own), and the local slots
each class holds (what a policy's `reserve` is measured against)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping

from schemas.ticket import Ticket

Barred = Callable[[str, str], bool]  # (class, model) -> may not take the free slot


class ClassBooks:
    def __init__(self) -> None:
        self._waiting: dict[str, dict[str, Ticket]] = {}  # insertion order = arrival order
        self._running: Counter[str] = Counter()
        self._models: dict[str, Counter[str]] = {}  # class -> waiting tickets per model
        self._per_model: Counter[str] = Counter()  # waiting tickets per model, every class

    def waiting(self, ticket: Ticket) -> None:
        insert_in_order(self._waiting.setdefault(ticket.cls, {}), ticket)
        self._models.setdefault(ticket.cls, Counter())[ticket.model] += 1
        self._per_model[ticket.model] += 1

    def left(self, ticket: Ticket) -> None:
        """A waiting ticket left the queue (granted or cancelled)."""
        of_class = self._waiting.get(ticket.cls)
        if of_class is not None and of_class.pop(ticket.id, None) is not None:
            self._per_model[ticket.model] -= 1
            if not self._per_model[ticket.model]:
                del self._per_model[ticket.model]
            models = self._models[ticket.cls]
            models[ticket.model] -= 1
            if not models[ticket.model]:
                del models[ticket.model]
            if not of_class:
                del self._waiting[ticket.cls]
                del self._models[ticket.cls]

    def started(self, cls: str) -> None:
        self._running[cls] += 1

    def ended(self, cls: str) -> None:
        self._running[cls] -= 1

    def count(self, cls: str) -> int:
        return len(self._waiting.get(cls, ()))

    def of_model(self, model: str) -> int:
        """Waiting tickets for the model, every class's."""
        return self._per_model.get(model, 0)

    def models(self, cls: str) -> Mapping[str, int]:
        """Waiting tickets of the class per model (what the drain estimate prices per model)."""
        return self._models.get(cls, {})

    def classes(self) -> list[str]:
        return list(self._waiting)

    def newest(self, cls: str) -> str | None:
        of_class = self._waiting.get(cls)
        return next(reversed(of_class)) if of_class else None

    def oldest(self, cls: str) -> Iterator[Ticket]:
        return iter(self._waiting.get(cls, {}).values())

    def barred(
        self, reserve: dict[str, int], free: int, slots: int, is_cloud: Callable[[str], bool]
    ) -> Barred | None:
        """The policy's `reserve`: a class may take a local slot only if the `free` ones exceed
        what is still kept for the other classes (a class's running requests use its reserve).
        None when nothing is barred."""
        if not reserve or sum(reserve.values()) >= slots:
            return None  # none, or more than there are slots (max_parallel lowered since): void
        outstanding = {c: max(0, n - self._running[c]) for c, n in reserve.items()}
        kept = sum(outstanding.values())
        if free <= 0 or free > kept:
            return None  # no slot to keep, or every class may take this one
        return lambda cls, model: free - (kept - outstanding.get(cls, 0)) < 1 and not is_cloud(model)


def insert_in_order(tickets: dict[str, Ticket], ticket: Ticket) -> None:
    """Add to tickets kept in arrival order. A new arrival goes last at no cost; a ticket put
    back after its grant failed to connect (rare) rebuilds the order."""
    last = next(reversed(tickets.values()), None)
    tickets[ticket.id] = ticket
    if last is not None and last.seq > ticket.seq:
        ordered = sorted(tickets.values(), key=lambda t: t.seq)
        tickets.clear()
        tickets.update((t.id, t) for t in ordered)
