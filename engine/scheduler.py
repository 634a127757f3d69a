"""The scheduler: pending queue, client ledger, residency model and slots, behind one small API.

Synchronous and free of I/O: the server calls it on every event (arrival, finish, cancel, poll,
reload) and then calls `dispatch()`, which fills free slots with the policy's choices. The policy
is read once per `dispatch()` call, so a reload takes effect at the next decision.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from engine import nodes
from engine.classes import Barred, ClassBooks, insert_in_order
from engine.clock import Clock
from engine.cloud import CloudModels
from engine.grants import Grant, InFlight, RankedTicket
from engine.holds import choose
from engine.ledger import ClientLedger
from engine.nodes import Node, reads_evictions
from engine.picker import Picker
from engine.queue_view import Busy, explain, position
from engine.ranking import Ranking
from engine.residency import Plan
from engine.service import ServiceAccount, Usage, service_settings_of
from engine.variants import parse_variant
from policy.compile import OrderKey, Policy
from policy.load import CompiledFile
from schemas.model_name import canonical_model
from schemas.ticket import Score, Ticket


class Scheduler:
    def __init__(
        self,
        settings: CompiledFile,
        policy: Callable[[], Policy] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._clock: Clock = clock or time.monotonic
        self._settings: CompiledFile = settings
        self._policy_source = policy or (lambda: self._settings.active)
        self._seq = itertools.count(1)
        self._waiting: dict[str, Ticket] = {}  # insertion order = arrival order
        self._in_flight: dict[str, InFlight] = {}
        self._again: set[str] = set()  # requeued after a refused connection, waiting again
        self.picker = Picker()
        self._ranking = Ranking()  # positions for the public queue route, rebuilt when stale
        self._ledger = ClientLedger(settings.windows)
        # What Ollama's /api/tags says of a model, cloud or local, over what its name suggests;
        # and the answer per model, asked per group head on every pick (bounded below).
        self.is_cloud = CloudModels()  # is_cloud(model): runs on Ollama's hosted service
        self._cloud_waiting = 0  # waiting tickets for cloud models
        self._classes = ClassBooks()  # waiting tickets and running requests per class
        self.service = ServiceAccount(service_settings_of(settings))
        # The backends by name (engine/nodes.py; read-only outside). `node`, `residency_model` and
        # `state` are the one a choice is being made for, between choices the first: what views
        # and metrics of one backend show.
        self.backends: dict[str, Node] = nodes.configure(
            {}, settings, self._ledger, self.is_cloud, self.service, reads_evictions(settings))
        self._use(nodes.first(self.backends))
        self.paused = False
        self._cloud_in_flight = 0

    # -- settings ------------------------------------------------------------------------

    @property
    def settings(self) -> CompiledFile:
        return self._settings

    def _use(self, node: Node) -> None:
        self.node, self.residency_model, self.state = node, node.residency, node.state

    @property
    def max_parallel(self) -> int:
        """Local slots, every backend's together."""
        return sum(n.slots for n in self.backends.values() if not n.retiring)

    @property
    def cloud_max_parallel(self) -> int:
        return self._settings.cloud_max_parallel

    def waiting_in(self, cls: str) -> int:
        """Waiting tickets of one request class."""
        return self._classes.count(cls)

    def serves(self, model: str) -> bool:
        """Whether some backend may serve `model` (its `models` allow-list; cloud models: all)."""
        return self.is_cloud(model) or any(n.serves(model) for n in self.backends.values() if not n.retiring)

    def waiting_for(self, model: str) -> int:
        """Waiting tickets for the model."""
        return self._classes.of_model(model)

    def waiting_models(self, cls: str) -> Mapping[str, int]:
        """Waiting tickets of one request class per model."""
        return self._classes.models(cls)

    def waiting_classes(self) -> list[str]:
        """The request classes with a waiting ticket."""
        return self._classes.classes()

    def newest_waiting(self, cls: str) -> str | None:
        """The id of the class's most recent waiting ticket (what shedding gives up first)."""
        return self._classes.newest(cls)

    @property
    def cloud_waiting(self) -> int:
        """Waiting tickets for cloud models (the rest wait for local slots)."""
        return self._cloud_waiting

    def _cloud_free(self) -> bool:
        return self._cloud_in_flight < self.cloud_max_parallel

    def apply_settings(self, settings: CompiledFile, *, new_host: bool = False) -> None:
        """After a reload: the new file (policy, backends, windows, sizes) for every decision from
        now on. `new_host`: requests go to another Ollama, whose card may size a tag otherwise."""
        self._settings = settings
        self.backends = nodes.configure(self.backends, settings, self._ledger, self.is_cloud, self.service,
                                      reads_evictions(settings), new_host)
        self._use(nodes.first(self.backends))
        self.is_cloud.keep(set(self.backends))
        self._ranking.invalidate()
        self._ledger.set_windows(settings.windows)
        self.service.configure(service_settings_of(settings))

    # -- events ----------------------------------------------------------------------------

    def enqueue(
        self,
        *,
        request_id: str,
        model: str,
        client: str,
        cls: str,
        endpoint: str = "",
        variant: str = "",
    ) -> Ticket:
        """A new waiting ticket. `variant`: its reload-forcing options (see `variant_of`)."""
        if request_id in self._waiting or request_id in self._in_flight:
            raise ValueError(f"request id {request_id!r} is already scheduled")
        now = self._clock()
        ticket = Ticket(
            id=request_id,
            seq=next(self._seq),
            model=canonical_model(model),  # callers canonicalise at intake; tests and scenarios may not
            client=client,
            cls=cls,
            arrival=now,
            endpoint=endpoint,
            variant=variant,
        )
        if not self._ledger.queued(client):
            self.service.activated(client)  # back after none waited: no credit for the gap
        self._waiting[request_id] = ticket
        self._classes.waiting(ticket)
        self._cloud_waiting += self.is_cloud(ticket.model)
        self._ledger.arrive(client, now)
        # Advance the windows here too, not only in dispatch(): while paused or with every slot
        # busy, arrivals (even ones cancelled at once) would otherwise pile up in the ledger.
        self.picker.mark_dirty(self._ledger.expire(now))
        self.picker.add(ticket)
        return ticket

    def record_history(self, client: str, at: float) -> None:
        """Past arrivals that count in recent windows (scenarios, restarts)."""
        self._ledger.record_history(client, at)
        self.picker.mark_dirty({client})

    def cancel(self, request_id: str) -> bool:
        """Remove a waiting ticket at once. False if it is not waiting (granted or unknown)."""
        ticket = self._waiting.pop(request_id, None)
        if ticket is None:
            return False
        self._again.discard(request_id)
        self._cloud_waiting -= self.is_cloud(ticket.model)
        self._classes.left(ticket)
        self.picker.remove(ticket)
        self._ranking.left(request_id)
        self._ledger.leave(ticket.client)
        return True

    def dispatch(self) -> list[Grant]:
        """Fill free slots with the policy's choices; call after every event."""
        grants: list[Grant] = []
        if self.paused:
            return grants
        policy = self._policy_source()
        for node in self.backends.values():
            node.residency.set_ctx_tolerance(policy.num_ctx_tolerance)
        # A free cloud slot is worth a pick only when a cloud ticket waits: otherwise every local
        # group head would be looked at, and turned down, for nothing.
        while self._waiting and (
            (any(n.free() for n in self.backends.values()) and len(self._waiting) > self._cloud_waiting)
            or (self._cloud_free() and self._cloud_waiting)
        ):
            now = self._clock()
            self.picker.mark_dirty(self._ledger.expire(now))
            self._tick(now)
            self.picker.refresh(policy, self.state, now)
            try:
                choice = self._choose_backend(policy, now)
                if choice is None:
                    break  # everything waiting is blocked behind a load or an eviction
                node, ticket, score = choice
                self._use(node)
                grants.append(self._grant(ticket, score, policy, now))
            finally:  # between choices, views and metrics see the first backend
                self._use(nodes.first(self.backends))
        return grants

    def _choose_backend(self, policy: Policy, now: float) -> tuple[Node, Ticket, Score] | None:
        """The (backend, ticket) pair to dispatch: each free backend's best ticket as the policy
        sees that backend, then the best of those; between equals the least loaded backend. One
        pick per free backend (after a request ends, usually one), never every ticket against
        every backend."""
        free = [n for n in self.backends.values() if n.free()]
        if not free:  # only a cloud slot is free: any backend's view will do for cloud work
            free = [nodes.first(self.backends)]
        best: tuple[tuple[OrderKey, int, float, float, int], Node, Ticket, Score] | None = None
        for node in free:
            self._use(node)
            choice = self._choose(policy, now)
            if choice is None:
                continue
            # Overdue and clamped tickets tie across backends on their order key: then where
            # their model is (loaded, fits, must evict) decides, before the load.
            cost = nodes.cost_rank(self.residency_model, choice[0], self.is_cloud)
            key = (policy.order_key(*choice), cost, node.load(), -node.weight, node.index)
            if best is None or key < best[0]:
                best = (key, node, *choice)
        return None if best is None else best[1:]

    def _choose(self, policy: Policy, now: float) -> tuple[Ticket, Score] | None:
        return choose(self, policy, now)  # engine/holds.py

    def swap_held(self, policy: Policy, model: str, variant: str, now: float) -> bool:
        """Does the policy's swap_hold keep this runner's swap back? Until the runner's oldest
        waiting ticket has waited it out (a younger one may be the best-ranked)."""
        if policy.swap_hold is None:
            return False
        oldest = self.picker.oldest_arrival((model, variant))
        return oldest is not None and now - oldest < policy.swap_hold

    def _tick(self, now: float) -> None:
        if self.service.tick(now, self.picker.waiting_clients):
            self.picker.mark_all_dirty()  # fair_share's decay and floor moved for everyone

    def _barred(self, policy: Policy) -> Barred | None:
        # The reserve counts the sidecar's slots, every backend's together (a down one's are not free).
        free = sum(n.slots - n.local for n in self.backends.values() if not n.retiring and not n.down)
        return self._classes.barred(policy.reserve, free, self.max_parallel, self.is_cloud)

    def _grant(self, ticket: Ticket, score: Score, policy: Policy, now: float) -> Grant:
        depth = len(self._waiting)
        del self._waiting[ticket.id]
        self._cloud_waiting -= self.is_cloud(ticket.model)
        self._classes.left(ticket)
        self.picker.remove(ticket)
        self._ranking.left(ticket.id)
        self._ledger.leave(ticket.client)
        self.service.charge(ticket.id, ticket.client)  # the estimate now, the truth at finish
        num_ctx: int | None = None
        if self.is_cloud(ticket.model):
            plan = Plan("attach")
            self._cloud_in_flight += 1
            self._in_flight[ticket.id] = InFlight(ticket, now, plan, cloud=True)
        else:
            runner = self.residency_model.runner_for(ticket.model, ticket.variant)
            if runner != ticket.variant:  # num_ctx normalisation: it joins the loaded runner
                num_ctx = parse_variant(runner)["num_ctx"]
            plan = self.residency_model.plan(ticket.model, runner)
            self.residency_model.dispatched(ticket.model, plan, now, runner)
            self._in_flight[ticket.id] = InFlight(ticket, now, plan, node=self.node)
            self.node.local += 1
            self._classes.started(ticket.cls)
        again = ticket.id in self._again
        self._again.discard(ticket.id)
        return Grant(
            ticket=ticket,
            score=score,
            queue_depth=depth,
            resident=plan.action == "attach",
            action=plan.action,
            evicts=plan.evicts,
            policy_name=policy.name,
            policy_version=policy.version,
            granted_at=now,
            num_ctx=num_ctx,
            backend="" if self.is_cloud(ticket.model) else self.node.name,
            again=again,
        )

    def first_byte(self, request_id: str) -> None:
        """Ollama began a successful answer: the model is loaded (and its victims unloaded)."""
        flight = self._in_flight.get(request_id)
        if flight is not None and not flight.started:
            flight.started = True
            if flight.node is not None:
                flight.node.residency.first_byte(flight.ticket.model)

    def finish(self, request_id: str, usage: Usage | None = None) -> bool:
        """The request is over, whatever the outcome: free its slot. False if it held none.
        `usage`: what it used by Ollama's counters, for the fair_share term (None: unknown, the
        estimate charged at grant stands)."""
        flight = self._in_flight.pop(request_id, None)
        if flight is None:
            return False
        if (client := self.service.settle(request_id, usage)) is not None:
            self.picker.mark_dirty({client})
        if usage is not None and usage.load_seconds >= 0.1 and flight.plan.action in ("load", "swap"):
            # A tiny one means Ollama had the model after all. A swap's load_duration includes
            # waiting for busy victims to finish: at most three times what its size suggests is
            # taken (on a card that holds one model at a time, every load is a swap).
            model = flight.ticket.model
            residency = (flight.node or self.node).residency
            seconds = usage.load_seconds
            if flight.plan.action == "swap":
                seconds = min(seconds, 3 * residency.size_prior(model))
            residency.learn_load(model, seconds)
        if flight.cloud:
            self._cloud_in_flight -= 1
        else:
            self._classes.ended(flight.ticket.cls)
            node = flight.node
            assert node is not None  # every local request runs on a backend
            node.local -= 1
            node.residency.finished(flight.ticket.model, self._clock())
            if node.retiring and node.local == 0 and self.backends.get(node.name) is node:
                del self.backends[node.name]  # removed by a reload: its last request ended
        return True

    def requeue(self, request_id: str) -> Ticket | None:
        """A granted request whose backend refused the connection before any byte was sent:
        back in the queue where it was (its arrival, its place), its slot and charge returned,
        for another backend (a cloud request: to go through another backend's Ollama). None if it
        is not in flight or has begun."""
        flight = self._in_flight.get(request_id)
        if flight is None or flight.started:
            return None
        self.service.refund(request_id)
        self.finish(request_id)
        ticket = flight.ticket
        self._again.add(request_id)
        insert_in_order(self._waiting, ticket)
        self._classes.waiting(ticket)
        self._cloud_waiting += self.is_cloud(ticket.model)  # as cancel() will take it off
        self._ledger.returned(ticket.client)
        self.picker.restore(ticket)
        self._ranking.invalidate()
        return ticket

    def set_down(self, backend: str, down: bool) -> bool:
        """A backend stopped answering (no dispatches to it) or answers again. Whether it moved."""
        node = self.backends.get(backend)
        if node is None or node.down == down:
            return False
        node.down = down
        return True

    def reconcile(self, ps_payload: dict[str, Any], backend: str | None = None) -> None:
        """A backend's /api/ps (None: the first backend's)."""
        node = self.backends.get(backend) if backend is not None else nodes.first(self.backends)
        if node is not None:
            node.residency.reconcile(ps_payload)

    def learn_tags(self, tags_payload: dict[str, Any], backend: str | None = None) -> None:
        """A backend's /api/tags (None: every backend's, as with one)."""
        for node in self.backends.values():
            if backend is None or node.name == backend:
                node.residency.learn_tags(tags_payload)
        if self.is_cloud.learn(tags_payload, backend or ""):
            for node in self.backends.values():  # every backend's cached model parts read it
                node.residency._changed()
            # Waiting tickets keep the kind they were counted as until they leave the queue.
            self._cloud_waiting = sum(self.is_cloud(t.model) for t in self._waiting.values())

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False

    # -- views -------------------------------------------------------------------------------

    def oldest(self, cls: str | None = None) -> Iterator[Ticket]:
        """The waiting tickets in arrival order: all, or one class's."""
        if cls is None:
            return iter(self._waiting.values())
        return self._classes.oldest(cls)

    @property
    def depth(self) -> int:
        return len(self._waiting)

    @property
    def in_flight_count(self) -> int:
        return len(self._in_flight)

    def holds_slot(self, request_id: str) -> bool:
        """Whether this request was granted a slot and has not finished."""
        return request_id in self._in_flight

    def queued(self, client: str) -> int:
        return self._ledger.queued(client)

    def recent(self, client: str, window_seconds: float) -> int:
        now = self._clock()
        return self._ledger.recent(client, window_seconds, now)

    def tickets(self) -> list[Ticket]:
        """The waiting tickets in arrival order, unscored (cheap: for counts and gauges)."""
        return list(self._waiting.values())

    def waiting(self) -> list[RankedTicket]:
        """Every waiting ticket in the order the policy ranks them now, with whether the picker
        may choose it and why it still waits. A view (engine/queue_view.py), never called on the
        dispatch path, so `dispatch()` pays nothing for the reasons."""
        policy, now = self._policy_source(), self._clock()
        self._tick(now)
        return explain(self, policy, now, self._barred(policy),
                       Busy(sum(n.local for n in self.backends.values() if not n.retiring), self._cloud_in_flight))

    def position(self, request_id: str) -> RankedTicket | None:
        """One waiting ticket's place, score and eligibility (engine/queue_view.py)."""
        ticket = self._waiting.get(request_id)
        if ticket is None:
            return None
        policy, now = self._policy_source(), self._clock()
        self._tick(now)
        return position(self, ticket, policy, now, self._ranking, self._barred(policy))

    def in_flight(self) -> list[InFlight]:
        return list(self._in_flight.values())

    def residency(self) -> dict[str, Any]:
        return self.residency_model.view()
