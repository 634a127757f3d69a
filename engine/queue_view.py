"""The queue as people read it: every waiting ticket in the policy's order, whether the picker may
choose it now, and why it still waits, in words. Built from the scheduler's public state on
demand (the queue route, the dashboards), never on the dispatch path, so picking pays nothing
for the reasons. The holds explained here mirror `engine.holds.choose` rule for rule."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, NamedTuple

from engine.classes import Barred
from engine.grants import RankedTicket
from engine.holds import AFFINITY_HOLD_LOADS, loaded_elsewhere, overdue_ahead
from engine.nodes import Node, has_pulled
from engine.ranking import Ranking
from policy.compile import OrderKey, Policy
from schemas.ticket import Ticket

if TYPE_CHECKING:
    from engine.scheduler import Scheduler


class Busy(NamedTuple):
    local: int  # requests holding a local slot
    cloud: int  # requests out to Ollama's hosted models


def explain(
    s: Scheduler, policy: Policy, now: float, barred: Barred | None, busy: Busy,
) -> list[RankedTicket]:
    ranked = []
    for t in s.tickets():
        score = policy.score(t, s.state, now)
        ranked.append((policy.order_key(t, score), t, score))
    ranked.sort(key=lambda kts: kts[0])
    viewer = s.node  # the backend whose view scored `ranked` (the first)
    resident: dict[str, dict[str, OrderKey]] = {}

    def resident_best(node: Node) -> dict[str, OrderKey]:
        """Per model, the best key among its tickets that need no load on `node`, scored as
        `node` sees them (its `vram` term): what `ranks_ahead` asks."""
        found = resident.get(node.name)
        if found is None:
            found = resident[node.name] = {}
            for key, t, _ in ranked:
                if barred is not None and barred(t.cls, t.model):
                    continue  # kept out of the free slot: it holds no swap back
                if node.residency.residency(t.model, t.variant) != "absent":
                    if node is not viewer:  # scored as that backend sees it
                        key = policy.order_key(t, policy.score(t, node.state, now))
                    if t.model not in found or key < found[t.model]:
                        found[t.model] = key
        return found

    common = ["dispatching is paused"] if s.paused else []
    full = (
        f"max_parallel reached ({busy.local} of {s.max_parallel} slots busy)"
        if busy.local >= s.max_parallel else None
    )
    cloud_full = (
        f"cloud max_parallel reached ({busy.cloud} of {s.cloud_max_parallel} busy)"
        if busy.cloud >= s.cloud_max_parallel else None
    )
    # Per runner, decided at its best ticket: why it is held, and (several backends) which busy
    # backends it waits for a slot on.
    blocked: dict[tuple[str, str], tuple[str | None, str | None]] = {}
    kept_for = ", ".join(sorted(policy.reserve))
    out = []
    for i, (key, t, score) in enumerate(ranked, start=1):
        if s.is_cloud(t.model):
            reasons = [*common, *([cloud_full] if cloud_full else [])]
            out.append(RankedTicket(i, t, score, True, "; ".join(reasons) or None))
            continue
        runner = (t.model, t.variant)
        if runner not in blocked:  # decided at the runner's best ticket
            blocked[runner] = _why(s, policy, t, key, score.overdue, now, barred, resident_best)
        why, slot = blocked[runner]
        kept = barred is not None and barred(t.cls, t.model)
        reasons = [*common, *([why] if why else []), *([slot] if slot else []), *([full] if full else []),
                   *([f"the free slot is kept for {kept_for} (reserve)"] if kept else [])]
        out.append(RankedTicket(i, t, score, why is None and not kept, "; ".join(reasons) or None))
    return out


def _why(
    s: Scheduler, policy: Policy, t: Ticket, key: OrderKey, overdue: bool, now: float,
    barred: Barred | None, resident_best: Callable[[Node], dict[str, OrderKey]],
) -> tuple[str | None, str | None]:
    """Why `choose` passes over this runner's best ticket (None: it may go), and with several
    backends which busy ones it waits for a slot on. Asked of each backend that may be sent its
    model (allow-list, pulled there): it may go if one of them would take it, and waits for a
    slot if those are all busy; otherwise each one's reason, named."""
    if len(s.backends) == 1:
        return _why_here(s, policy, t, key, overdue, now, barred, resident_best(s.node)), None
    first, reasons, busy = s.node, [], []
    for node in _candidates(s, t.model):
        if node.down:
            reasons.append(f"backend {node.name} is down")
            continue
        mine = resident_best(node)
        # Its key as this backend scores it: `choose` compares keys of one backend's view.
        here = key if node is first else policy.order_key(t, policy.score(t, node.state, now))
        with _seen_from(s, node):
            why = _why_here(s, policy, t, here, overdue, now, barred, mine)
        if why is not None:
            reasons.append(f"on {node.name}: {why}")
        elif node.free():
            return None, None
        else:
            busy.append(f"{node.name} ({node.local} of {node.slots} busy)")
    if busy:
        return None, f"waits for a slot on {', '.join(busy)}"
    return "; ".join(reasons) or f"no backend may be sent {t.model} (their models allow-lists)", None


def _why_here(
    s: Scheduler, policy: Policy, t: Ticket, key: OrderKey, overdue: bool, now: float,
    barred: Barred | None, resident_best: dict[str, OrderKey],
) -> str | None:
    """`_why` for the backend the scheduler is looking at (`s.node`)."""
    residency = s.residency_model
    why = residency.blocked_reason(t.model, t.variant)
    if why is None and not overdue:
        why = _held_reason(s, policy, (t.model, t.variant), key, resident_best, now)
    elif why is None and (evicts := residency.plan(t.model, t.variant).evicts):
        who = overdue_ahead(s, evicts, t, policy, now, barred)
        if who is not None:
            why = f"held back: loading {t.model} would evict {who}, whose own overdue requests go first"
    return why


def _candidates(s: Scheduler, model: str) -> list[Node]:
    """The backends a request for `model` may be sent to (`choose`'s `eligible`)."""
    return [n for n in s.backends.values()
            if not n.retiring and n.serves(model) and has_pulled(s.backends, n, model, s.is_cloud)]


def position(
    s: Scheduler, ticket: Ticket, policy: Policy, now: float, ranking: Ranking,
    barred: Barred | None,
) -> RankedTicket:
    """One waiting ticket's place, score and eligibility. Its score is exact (scored now); its
    place comes from a ranking at most `engine.ranking.MAX_AGE` old (see there), so a crowd of
    polling clients costs one whole-queue scoring per MAX_AGE, not one per poll."""
    mine = policy.order_key(ticket, score := policy.score(ticket, s.state, now))

    def rank_all() -> Iterator[tuple[OrderKey, str]]:
        for t in s.oldest():
            yield policy.order_key(t, policy.score(t, s.state, now)), t.id

    place = ranking.position(ticket.id, mine, s.depth, now, rank_all)
    several = len(s.backends) > 1  # with one, as ever: its allow-list and state are not asked
    eligible = s.is_cloud(ticket.model) or any(
        not (several and node.down) and _may_go(s, node, ticket, score.overdue, policy, now, barred)
        for node in (_candidates(s, ticket.model) if several else [s.node]))
    return RankedTicket(place, ticket, score, eligible)


def _may_go(
    s: Scheduler, node: Node, ticket: Ticket, overdue: bool, policy: Policy, now: float,
    barred: Barred | None,
) -> bool:
    """Whether `choose` on `node` could take the ticket, as far as one ticket can tell (its
    runner not blocked there, none of the holds)."""
    with _seen_from(s, node):
        residency = s.residency_model
        if not residency.eligible(ticket.model, ticket.variant):
            return False
        evicts = residency.plan(ticket.model, ticket.variant).evicts
        if overdue:
            return not evicts or overdue_ahead(s, evicts, ticket, policy, now, barred) is None
        return not ((evicts and s.swap_held(policy, ticket.model, ticket.variant, now))
                    or loaded_elsewhere(s, policy, node, ticket.model, ticket.variant, now) is not None)


@contextmanager
def _seen_from(s: Scheduler, node: Node) -> Iterator[None]:
    """The scheduler looking at `node` (its residency and state, as `choose` does), then back."""
    before = s.node
    s._use(node)
    try:
        yield
    finally:
        s._use(before)


def _held_reason(
    s: Scheduler, policy: Policy, runner: tuple[str, str], key: OrderKey,
    resident_best: dict[str, OrderKey], now: float,
) -> str | None:
    """`choose`'s holds: the policy's swap_hold, or a swap that would evict a model whose own
    waiting work ranks ahead of this runner's best ticket."""
    model, variant = runner
    if (other := loaded_elsewhere(s, policy, s.node, model, variant, now)) is not None:
        return (f"waits for backend {other.name}, which has {model} loaded: no other backend loads"
                f" a second copy while {other.name} can take its waiting requests (for at most"
                f" {AFFINITY_HOLD_LOADS} load times)")
    evicts = s.residency_model.plan(model, variant).evicts
    if evicts and s.swap_held(policy, model, variant, now):
        return (
            f"held back: loading {model} would evict {', '.join(evicts)}; the policy's swap_hold"
            f" ({policy.swap_hold:g}s) lets more requests for {model} share the load"
        )
    victims = [v for v in evicts if v in resident_best and resident_best[v] < key]
    if not victims:
        return None
    return f"held back: loading {model} would evict {', '.join(victims)}, whose own waiting requests rank ahead"
