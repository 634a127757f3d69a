"""Pick the next ticket without rescoring the whole queue.

Tickets that share (model, variant, client, class) differ only in arrival, and every wait term is
non-increasing in time waited, so only the oldest ticket of each group can win. Each group's head
sits in a sorted list per model under the key  P = client part + class part + slope × arrival.
For a model whose terms sum to M at this moment, every head's exact score is at least the bound
L = M + P − slope × now (wait terms are >= −slope × waited; clamping only raises scores). Heads are
visited in increasing L across the eligible models and totalled (below), stopping once L passes the
best total found: usually after a handful, whatever the queue's length.

Client parts change when a client's counts change; the scheduler marks such clients dirty. A key
only has to stay a LOWER bound, so a client whose part rose keeps its older, smaller keys (the
common case: a new arrival); only a part that fell below the one its keys were built on (a
dispatch, a window expiring) re-keys all of that client's groups. A part that falls tends to go on
falling, one dispatch at a time (a queued-count term loses a step per dispatch of the client), so
the re-keying builds on the part minus SLACK_STEPS such steps: the next few dispatches of that
client re-key nothing, for bounds a few points looser. New groups and groups whose head changed
are keyed on their own.

A head the search visits is not scored through every term: its total is the sum of the parts the
picker keeps exact anyway (its runner's model part, its client's part as of this refresh, its
class's part, the backend's) and its own wait terms. Only the winner gets a full `Score` with
every term by name; two heads whose totals are within float slack of each other are told apart by
their full scores, so the choice is the one a full rescoring makes (tests/test_engine_picker.py).
Those parts are exact only as `refresh` left them: `best` must follow a `refresh` at the same
`now`, with no event in between (the scheduler calls them in that order on every pick).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator

from sortedcontainers import SortedList

from policy.compile import OrderKey, Policy
from policy.state import SchedulingState
from schemas.ticket import Score, Ticket

GroupKey = tuple[str, str, str, str]  # (model, variant, client, class)
Runner = tuple[str, str]  # (model, variant): what a "model" term sees
Entry = tuple[float, float, int, GroupKey]  # (P, head arrival, head seq, group)
_EPS = 1e-7  # float slack between the bound's arithmetic and the exact score's
# ... plus this much per unit of slope × now: bounds and totals add and subtract values that large
# (seconds since the clock's epoch), whose rounding steps outgrow _EPS on an epoch-like clock.
_EPS_PER_UNIT = 1e-14
SLACK_STEPS = 3  # a falling client part is keyed this many of its last drops lower
CLAMP_PROBE = 16  # oldest tickets looked at for a clamped one before the bounded search
# Overdue tickets looked at (per class) for an eligible one: under overload thousands may be
# overdue and blocked (their model being evicted, at its parallel limit, behind a load), and a
# pick must stay bounded; an overdue ticket past this many goes by its score meanwhile.
OVERDUE_WALK = 1024


class Picker:
    def __init__(self) -> None:
        self._groups: dict[GroupKey, deque[Ticket]] = {}
        self._by_model: dict[Runner, SortedList] = {}
        self._entry: dict[GroupKey, Entry] = {}
        self._client_groups: dict[str, set[GroupKey]] = {}
        self._client_part: dict[str, float] = {}  # each client's part at the last refresh
        self._keyed_part: dict[str, float] = {}  # what its keys are built on (<= the part)
        self._class_part: dict[str, float] = {}
        self._dirty: set[str] = set()  # clients whose part may have changed
        self._dirty_groups: set[GroupKey] = set()  # new groups and groups with a new head
        self._policy: Policy | None = None
        # Each runner's model part, per backend (`cache`), valid while (policy, that backend's
        # residency version) is its key: a "model" term reads only the runner and where models
        # are (policy/terms/registry.py), and each backend has models of its own.
        self._model_parts: dict[str, tuple[tuple[Policy, int] | None, dict[Runner, float]]] = {}
        # Each runner's tickets in arrival order, for its oldest (what swap_hold counts from): a
        # ticket leaving from the middle is only noted (`_left`, by seq) and dropped when it
        # reaches the head, so both ends stay O(1).
        self._arrivals: dict[Runner, deque[Ticket]] = {}
        self._left: set[int] = set()

    # -- membership -------------------------------------------------------------------------

    def add(self, ticket: Ticket) -> None:
        key = (ticket.model, ticket.variant, ticket.client, ticket.cls)
        queue = self._groups.get(key)
        if queue is None:
            queue = self._groups[key] = deque()
            self._client_groups.setdefault(ticket.client, set()).add(key)
        if not queue:
            self._dirty_groups.add(key)
        queue.append(ticket)
        self._arrivals.setdefault(key[:2], deque()).append(ticket)
        self._dirty.add(ticket.client)

    def restore(self, ticket: Ticket) -> None:
        """A granted ticket back in the queue (its backend refused the connection), in its
        arrival place in its group and its runner's arrivals. Usually that is the front (groups
        go in arrival order); several of a group refused by one backend come back in any order,
        so the place is looked for (rare: a walk over the group)."""
        key = (ticket.model, ticket.variant, ticket.client, ticket.cls)
        queue = self._groups.get(key)
        if queue is None:
            queue = self._groups[key] = deque()
            self._client_groups.setdefault(ticket.client, set()).add(key)
        _insert_by_seq(queue, ticket)
        self._dirty_groups.add(key)
        if ticket.seq in self._left:  # never dropped from its runner's arrivals: still in place
            self._left.discard(ticket.seq)
        else:
            _insert_by_seq(self._arrivals.setdefault(key[:2], deque()), ticket)
        self._dirty.add(ticket.client)

    def remove(self, ticket: Ticket) -> None:
        key = (ticket.model, ticket.variant, ticket.client, ticket.cls)
        arrivals = self._arrivals[key[:2]]
        if arrivals[0] is ticket:
            arrivals.popleft()
            while arrivals and arrivals[0].seq in self._left:
                self._left.discard(arrivals.popleft().seq)
            if not arrivals:
                del self._arrivals[key[:2]]
        else:
            self._left.add(ticket.seq)
        queue = self._groups[key]
        if queue[0].id == ticket.id:
            queue.popleft()
            self._dirty_groups.add(key)
        else:
            queue.remove(ticket)  # a cancellation from the middle of its group
        if not queue:
            del self._groups[key]
            groups = self._client_groups[ticket.client]
            groups.discard(key)
            if not groups:
                del self._client_groups[ticket.client]
                self._client_part.pop(ticket.client, None)
                self._keyed_part.pop(ticket.client, None)
            self._unkey(key)
            self._dirty_groups.discard(key)
        self._dirty.add(ticket.client)

    def mark_dirty(self, clients: set[str]) -> None:
        self._dirty |= clients

    def mark_all_dirty(self) -> None:
        """Every waiting client's part may have moved (the service account's epoch)."""
        self._dirty |= set(self._client_groups)

    def oldest_arrival(self, runner: Runner) -> float | None:
        """When the runner's longest-waiting ticket arrived; None if none waits."""
        arrivals = self._arrivals.get(runner)
        return arrivals[0].arrival if arrivals else None

    @property
    def waiting_clients(self) -> set[str]:
        return set(self._client_groups)

    # -- keys ------------------------------------------------------------------------------

    def _unkey(self, key: GroupKey) -> None:
        entry = self._entry.pop(key, None)
        if entry is not None:
            models = self._by_model[key[:2]]
            models.remove(entry)
            if not models:
                del self._by_model[key[:2]]

    def _rekey(self, key: GroupKey, policy: Policy, state: SchedulingState) -> None:
        self._unkey(key)
        head = self._groups[key][0]
        p = self._keyed_part[key[2]] + self._class_part_of(head, policy, state)
        entry = (p + policy.wait_slope * head.arrival, head.arrival, head.seq, key)
        self._entry[key] = entry
        models = self._by_model.get(key[:2])
        if models is None:
            models = self._by_model[key[:2]] = SortedList()
        models.add(entry)

    def _class_part_of(self, ticket: Ticket, policy: Policy, state: SchedulingState) -> float:
        part = self._class_part.get(ticket.cls)
        if part is None:  # class terms read only the class, so one value per policy and class
            part = self._class_part[ticket.cls] = policy.partial("class", ticket, state, 0.0)
        return part

    def refresh(self, policy: Policy, state: SchedulingState, now: float) -> None:
        """Bring every key up to date for `policy` at `now` (after events were recorded)."""
        if policy is not self._policy:
            self._policy = policy
            self._class_part.clear()
            self._client_part.clear()
            self._keyed_part.clear()
            self._dirty |= set(self._client_groups)
        for client in self._dirty:
            groups = self._client_groups.get(client)
            if not groups:
                continue
            sample = self._groups[next(iter(groups))][0]
            part = policy.partial("client", sample, state, now)
            old = self._client_part.get(client)
            self._client_part[client] = part
            keyed = self._keyed_part.get(client)
            if keyed is None:
                self._keyed_part[client] = part
                self._dirty_groups |= groups
            elif part < keyed:  # keys built on the old part would overestimate
                drop = old - part if old is not None and old > part else 0.0
                self._keyed_part[client] = part - SLACK_STEPS * drop
                self._dirty_groups |= groups
        for key in self._dirty_groups:
            if key in self._groups:
                self._rekey(key, policy, state)
        self._dirty.clear()
        self._dirty_groups.clear()

    # -- the decision ------------------------------------------------------------------------

    def best(
        self,
        policy: Policy,
        state: SchedulingState,
        now: float,
        eligible: Callable[[str, str], bool],
        oldest: Callable[..., Iterator[Ticket]],
        version: int | None = None,
        barred: Callable[[str, str], bool] | None = None,
        classes: Callable[[], Iterable[str]] | None = None,
        held: Callable[[str, str], bool] | None = None,
        cache: str = "",
    ) -> tuple[Ticket, Score] | None:
        """The eligible ticket with the lowest order key; `refresh` must have run first.
        `oldest()` iterates the waiting tickets in arrival order, `oldest(cls)` one class's, and
        `classes()` names the classes waiting (both only needed when the policy has per-class
        wait limits). `version`: the residency's change count, when the caller has one (model
        parts are then reused until it moves). `barred(cls, model)`: a ticket that may not take
        this slot (it is kept for another class). `held(model, variant)`: a runner whose work may
        not go yet unless overdue (the policy's swap_hold). `cache`: which backend `state` and
        `version` describe (model parts are kept per backend)."""
        if barred is None:
            barred = _never
        ready = eligible if held is None else (lambda m, v: eligible(m, v) and not held(m, v))
        bound = policy.first_overdue
        if bound is not None and policy.class_max_wait and classes is not None:
            # Per-class limits: walk each class's own oldest while they are overdue (a single
            # walk would step over every ticket between the shortest limit and its own), and
            # take the one of the class with the shortest limit, the oldest within it: under
            # overload a backlog of batch work past its long limit must not hold people, past
            # their short one, until they time out.
            found: tuple[float, float, int, Ticket] | None = None
            for cls in classes():
                limit = policy.wait_limit(cls)
                if limit is None:
                    continue
                for looked, ticket in enumerate(oldest(cls)):
                    if looked == OVERDUE_WALK or now - ticket.arrival < limit:
                        break
                    if not barred(ticket.cls, ticket.model) and eligible(ticket.model, ticket.variant):
                        candidate = (limit, ticket.arrival, ticket.seq, ticket)
                        if found is None or candidate[:3] < found[:3]:
                            found = candidate
                        break
            if found is not None:
                return found[3], policy.score(found[3], state, now)
        elif bound is not None:
            # Overdue tickets go first, oldest first: walk arrival order while any could be.
            for looked, ticket in enumerate(oldest()):
                if looked == OVERDUE_WALK or now - ticket.arrival < bound:
                    break
                if (policy.overdue(ticket, now) and not barred(ticket.cls, ticket.model)
                        and eligible(ticket.model, ticket.variant)):
                    return ticket, policy.score(ticket, state, now)
        if policy.clamp_min is not None:
            # Nothing scores below the clamp, and among equal totals the older ticket wins: the
            # first clamped ticket in arrival order is the answer. Long waiters are the ones
            # that clamp, so a short walk from the oldest usually finds it.
            for looked, ticket in enumerate(oldest()):
                if looked == CLAMP_PROBE:
                    break
                if not barred(ticket.cls, ticket.model) and ready(ticket.model, ticket.variant):
                    score = policy.score(ticket, state, now)
                    if score.total <= policy.clamp_min and not score.overdue:
                        return ticket, score
        return self._search(policy, state, now, ready, oldest, barred, version, cache)

    def _streams(
        self, policy: Policy, state: SchedulingState, now: float, ready: Callable[[str, str], bool],
        version: int | None, cache: str,
    ) -> list[list]:
        """A heap of one stream per eligible runner, each at its next group head in key order:
        [bound, the runner's place, its model part + the backend part, the base of its bounds,
        the head's group, the head's arrival, the rest of its entries]."""
        shift = policy.wait_slope * now
        backend = 0.0
        if "backend" in policy.by_dependency and self._by_model:
            # The same for every ticket of this choice (the backend's load), so it moves every
            # bound alike; it matters only when choices for two backends are compared.
            any_head = self._groups[next(iter(self._by_model.values()))[0][3]][0]
            backend = policy.partial("backend", any_head, state, now)
        valid = None if version is None else (policy, version)
        cached = self._model_parts.get(cache)
        if cached is None or valid is None or cached[0] != valid:
            cached = self._model_parts[cache] = (valid, {})
        parts = cached[1]
        heap: list[list] = []
        for runner, entries in self._by_model.items():
            if not ready(*runner):
                continue
            part = parts.get(runner)
            if part is None:
                head = self._groups[entries[0][3]][0]
                part = parts[runner] = policy.partial("model", head, state, now)
            rest = iter(entries)
            first = next(rest)
            base = part + backend - shift
            heap.append([base + first[0], len(heap), part + backend, base, first[3], first[1], rest])
        heapq.heapify(heap)
        return heap

    def _search(
        self, policy: Policy, state: SchedulingState, now: float, ready: Callable[[str, str], bool],
        oldest: Callable[..., Iterator[Ticket]], barred: Callable[[str, str], bool],
        version: int | None, cache: str,
    ) -> tuple[Ticket, Score] | None:
        """The bounded search: heads in increasing bound across the eligible runners, until the
        bound passes the best total. A head's total is summed from the parts at hand (its
        runner's and the backend's, its client's and class's) and its wait part, which for a
        policy whose wait terms are all linear (`Policy.linear_wait`) is -slope × waited with no
        call; only the winner gets a full `Score`. Sums in another order may differ in the last
        bits, so heads whose totals are that close are told apart by their exact scores. This
        loop is what a pick costs (bench/engine_pick.py): keep it free of calls per head."""
        heap = self._streams(policy, state, now, ready, version, cache)
        clamp = policy.clamp_min
        young = math.inf if policy.first_overdue is None else policy.first_overdue
        linear, slope = policy.linear_wait, policy.wait_slope
        wait_fns = policy.by_dependency.get("wait", ())
        groups, client_part, class_part = self._groups, self._client_part, self._class_part
        check_barred = barred is not _never
        eps = _EPS + _EPS_PER_UNIT * abs(slope * now)
        best: tuple[OrderKey, Ticket, Score | None] | None = None
        cut = math.inf  # the best's total, in points (an overdue best's order key is in seconds)
        while heap:
            top = heap[0]
            bound, key, arrival = top[0], top[4], top[5]
            if bound > cut + eps:
                break
            following = next(top[6], None)
            if following is None:
                heapq.heappop(heap)
            else:  # the stream moves on to its next head, in place
                top[0], top[4], top[5] = top[3] + following[0], following[3], following[1]
                heapq.heapreplace(heap, top)
            if check_barred and barred(key[3], key[0]):
                continue
            waited = now - arrival
            if waited >= young and policy.overdue(groups[key][0], now):
                # Rare here (overdue ones went first): scored exactly, ordered by its key.
                ticket = groups[key][0]
                exact = policy.score(ticket, state, now)
                order = policy.order_key(ticket, exact)
                if best is None or order < best[0]:
                    best, cut = (order, ticket, exact), exact.total
                continue
            cls_part = class_part.get(key[3])
            if cls_part is None:
                cls_part = self._class_part_of(groups[key][0], policy, state)
            if linear:
                wait = -(slope * waited) if waited > 0.0 else 0.0
            else:
                wait = sum(fn(groups[key][0], state, now) for fn in wait_fns)
            total = top[2] + client_part[key[2]] + cls_part + wait
            if clamp is not None and total < clamp:
                total = clamp
            if best is not None and (best[0][0] == 0 or total > cut + eps):
                continue  # an overdue best, or a total clearly above the best's: the common case
            ticket = groups[key][0]
            if best is not None and total >= cut - eps:
                # So close that the sums' rounding could decide: by their exact scores.
                exact = policy.score(ticket, state, now)
                held = best[2] or policy.score(best[1], state, now)
                best = (best[0], best[1], held)
                if policy.order_key(ticket, exact) >= policy.order_key(best[1], held):
                    continue
                best = ((1, total, ticket.arrival, ticket.seq), ticket, exact)
            else:
                best = ((1, total, ticket.arrival, ticket.seq), ticket, None)
            cut = total
            if clamp is not None and total <= clamp:
                # Nothing scores below the clamp: only an older tie can still win, and in
                # arrival order the first clamped ticket is that tie. (Long waiters all tie at
                # the clamp, so this beats walking every one of their bounds.)
                score = best[2] or policy.score(ticket, state, now)
                if score.total <= clamp:
                    return self._oldest_at_clamp(policy, state, now, ready, oldest, ticket, score, barred)
        if best is None:
            return None
        return best[1], best[2] or policy.score(best[1], state, now)

    @staticmethod
    def _oldest_at_clamp(
        policy: Policy,
        state: SchedulingState,
        now: float,
        eligible: Callable[[str, str], bool],
        oldest: Callable[[], Iterator[Ticket]],
        found: Ticket,
        score: Score,
        barred: Callable[[str, str], bool],
    ) -> tuple[Ticket, Score]:
        assert policy.clamp_min is not None
        for ticket in oldest():
            if (ticket.arrival, ticket.seq) >= (found.arrival, found.seq):
                break
            if not barred(ticket.cls, ticket.model) and eligible(ticket.model, ticket.variant):
                other = policy.score(ticket, state, now)
                if other.total <= policy.clamp_min and not other.overdue:
                    return ticket, other
        return found, score


def _never(cls: str, model: str) -> bool:
    return False


def _insert_by_seq(tickets: deque[Ticket], ticket: Ticket) -> None:
    at = next((i for i, t in enumerate(tickets) if t.seq > ticket.seq), len(tickets))
    tickets.insert(at, ticket)
