"""The holds that keep an overdue request from its swap: overdue work goes first whatever it
costs, except a swap that would evict a model whose own overdue work goes before it (under
overload a batch backlog past its long limit would otherwise swap people's model out between
every two of their answers). Asked by the scheduler's pick and, for the reasons a ticket waits,
by the queue views."""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.classes import Barred
from policy.compile import OrderKey, Policy
from schemas.ticket import Score, Ticket

if TYPE_CHECKING:
    from engine.scheduler import Scheduler

OVERDUE_PROBE = 256  # overdue tickets per class looked at: a pick stays bounded
OVERDUE = Score(0.0, (), overdue=True)  # what an overdue ticket's order key is built from


def overdue_ahead(
    s: Scheduler, victims: tuple[str, ...], ticket: Ticket, policy: Policy, now: float,
    barred: Barred | None = None,
) -> str | None:
    """The victim of the overdue `ticket`'s swap whose own overdue work goes before it in the
    overdue order (the class with the shortest limit first, then the oldest), if any; work the
    reserve keeps out of the slot does not count."""
    if not victims:
        return None
    mine, residency = policy.order_key(ticket, OVERDUE), s.residency_model
    for cls in s.waiting_classes():
        limit = policy.wait_limit(cls)
        if limit is None:
            continue
        for looked, t in enumerate(s.oldest(cls)):
            if (looked >= OVERDUE_PROBE or now - t.arrival < limit
                    or policy.order_key(t, OVERDUE) >= mine):
                break  # the rest of the class is younger: later in the overdue order
            if (t.model in victims and s.node.serves(t.model)  # after a reload narrowed a list
                    and residency.residency(t.model, t.variant) != "absent"
                    and not (barred is not None and barred(t.cls, t.model))):
                return t.model
    return None


def ranks_ahead(
    s: Scheduler, model: str, key: OrderKey, policy: Policy, now: float, barred: Barred | None = None,
) -> bool:
    """Whether work for the loaded `model` that could take this slot ranks ahead of `key` (work
    the reserve keeps out of this slot could not, so it holds no swap back)."""
    residency = s.residency_model
    best = s.picker.best(
        policy, s.state, now,
        lambda m, v: m == model and s.node.serves(m) and residency.residency(m, v) != "absent",
        s.oldest, residency.version, barred, s.waiting_classes, cache=s.node.name,
    )
    return best is not None and policy.order_key(*best) < key
