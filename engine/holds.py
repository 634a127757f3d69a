"""The holds that keep an overdue request from its swap: overdue work goes first whatever it
costs, except a swap that would evict a model whose own overdue work goes before it (under
overload a batch backlog past its long limit would otherwise swap people's model out between
every two of their answers). Asked by the scheduler's pick and, for the reasons a ticket waits,
by the queue views. `choose` is the scheduler's pick for one backend, with those holds, the
policy's swap_hold, and with several backends the affinity hold (`loaded_elsewhere`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.classes import Barred
from engine.nodes import has_pulled
from policy.compile import OrderKey, Policy
from schemas.ticket import Score, Ticket

if TYPE_CHECKING:
    from engine.nodes import Node
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


def choose(s: Scheduler, policy: Policy, now: float) -> tuple[Ticket, Score] | None:
    """The policy's best eligible ticket, except a swap that would evict a model whose own
    waiting work ranks ahead of it: that work is only briefly blocked (its model is at its
    parallel limit), and evicting now would cost a second swap to bring it back."""
    held: set[tuple[str, str]] = set()
    node, residency = s.node, s.residency_model
    local_free, cloud_free = node.free(), s._cloud_free()
    several_backends = len(s.backends) > 1  # with one, what it has pulled is its own answer

    def eligible(model: str, variant: str) -> bool:
        if s.is_cloud(model):
            return cloud_free
        return (local_free and (model, variant) not in held and node.serves(model)
                and residency.eligible(model, variant)
                and (not several_backends or has_pulled(s.backends, node, model, s.is_cloud)))

    barred = s._barred(policy)
    # The policy's swap_hold: a runner whose swap must wait for company is passed over unless
    # overdue (the next poll's dispatch looks again; a slot may idle until then). Asked per
    # runner once per choice: nothing moves meanwhile.
    holds: dict[tuple[str, str], bool] = {}

    def swap_held(model: str, variant: str) -> bool:
        found = holds.get((model, variant))
        if found is None:
            found = holds[(model, variant)] = (  # the cheap questions first
                s.swap_held(policy, model, variant, now) and not s.is_cloud(model)
                and bool(residency.plan(model, variant).evicts))
        return found

    # With several backends: no second copy of a model another backend has loaded while that
    # one can take its backlog (`loaded_elsewhere`). Asked per runner once per choice.
    several = affinity_holds(s, policy)
    others = holding_backends(s, node) if several else []
    spill = AFFINITY_BACKLOG * max((o.slots for o in others), default=0)
    away: dict[tuple[str, str], bool] = {}

    def kept_back(model: str, variant: str) -> bool:
        if policy.swap_hold is not None and swap_held(model, variant):
            return True
        found = away.get((model, variant))
        if found is None:  # a backlog no other backend takes soon spills over: the cheap question first
            found = away[(model, variant)] = s.waiting_for(model) <= spill and loaded_elsewhere(
                s, policy, node, model, variant, now, others) is not None
        return found

    while True:
        choice = s.picker.best(policy, s.state, now, eligible, s.oldest,
                               residency.version, barred, s.waiting_classes,
                               kept_back if several else None if policy.swap_hold is None else swap_held,
                               node.name)
        if choice is None:
            return choice
        ticket, score = choice
        if s.is_cloud(ticket.model):
            return choice  # evicts nothing
        victims = residency.plan(ticket.model, ticket.variant).evicts
        if score.overdue:  # overdue work goes whatever it costs, unless it would evict a
            # model whose own overdue work goes before it: under overload a batch backlog
            # past its limit would otherwise swap people's model out between every two
            # answers while people wait past theirs.
            if not overdue_ahead(s, victims, ticket, policy, now, barred):
                return choice
            held.add((ticket.model, ticket.variant))
            continue
        mine = policy.order_key(ticket, score)  # (a swap_hold's held swaps never get here)
        if not any(ranks_ahead(s, v, mine, policy, now, barred) for v in victims):
            return choice
        held.add((ticket.model, ticket.variant))


AFFINITY_BACKLOG = 2  # slots' worth of waiting work a backend with the model loaded keeps to itself
# For how many load times of the model a free backend leaves its work to the one that has it: a
# second copy costs its load now and, later, a swap (evicting it, or bringing back what it
# evicted). Measured once on the simulator's traces against 1 and unbounded: 1 loads 2 to 3.3 times
# as often (agents, and the long tail on four GPUs); unbounded holds work with no max_wait for good.
AFFINITY_HOLD_LOADS = 3


def affinity_holds(s: Scheduler, policy: Policy) -> bool:
    """Whether the affinity hold applies: with several backends, unless the policy weighs
    spreading itself (a backend_load term)."""
    return len(s.backends) > 1 and "backend" not in policy.by_dependency


def loaded_elsewhere(
    s: Scheduler, policy: Policy, node: Node, model: str, variant: str, now: float,
    others: list[Node] | None = None,
) -> Node | None:
    """The backend (up, not retiring, allowed the model) that has this runner loaded or loading
    while `node` has not, and can take the model's waiting work soon (at most AFFINITY_BACKLOG
    times the requests it runs of the model at once): `node` does not load a second copy
    meanwhile, for no longer than AFFINITY_HOLD_LOADS times that load would take. Measured on
    the simulator's traces, a second copy is what a free card loads most, and it costs a swap
    there now and another when the card is needed for something else (a plain
    balancer loads every model everywhere). More work than that spills over; overdue work goes
    anywhere; a policy with a backend_load term decides itself. `others`: the candidates
    (`holding_backends`), when the caller asks for many runners."""
    if (not affinity_holds(s, policy) or s.is_cloud(model)
            or node.residency.residency(model, variant) in ("loaded", "loading")):
        return None
    oldest = s.picker.oldest_arrival((model, variant))
    limit = AFFINITY_HOLD_LOADS * node.residency.load_seconds(model)
    if oldest is not None and now - oldest >= limit:
        return None
    backlog = s.waiting_for(model)
    for other in holding_backends(s, node) if others is None else others:
        if (other.serves(model) and other.residency.residency(model, variant) in ("loaded", "loading")
                and backlog <= AFFINITY_BACKLOG * min(other.slots, other.residency.slots(model))):
            return other
    return None


def holding_backends(s: Scheduler, node: Node) -> list[Node]:
    """The backends whose loaded models `node` leaves to them: up, not retiring, not itself."""
    return [n for n in s.backends.values() if n is not node and not n.retiring and not n.down]
