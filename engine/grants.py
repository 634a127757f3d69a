"""What the scheduler hands out and keeps: a grant, a ranked waiting ticket, a request in flight,
and the read-only view of its state that a policy scores against (engine/scheduler.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.ledger import ClientLedger
from engine.residency import Action, Plan, ResidencyModel
from engine.service import ServiceAccount
from policy.state import SchedulingState
from schemas.ticket import Residency, Score, Ticket

if TYPE_CHECKING:
    from engine.nodes import Node


@dataclass(frozen=True, slots=True)
class Grant:
    ticket: Ticket
    score: Score
    queue_depth: int  # tickets waiting when this one was chosen, itself included
    resident: bool  # its model was loaded or loading: no swap needed
    action: Action
    evicts: tuple[str, ...]
    policy_name: str
    policy_version: str
    granted_at: float
    # Set when num_ctx normalisation sends it to a loaded runner: the num_ctx to forward in place
    # of the client's (engine/residency.py, `runner_for`).
    num_ctx: int | None = None
    backend: str = ""  # the backend it goes to (engine/nodes.py); "" for a cloud model
    again: bool = False  # its second grant: the first backend refused the connection (`requeue`)


@dataclass(frozen=True, slots=True)
class RankedTicket:
    position: int  # 1 = next to go
    ticket: Ticket
    score: Score
    eligible: (
        bool  # False while its model is being evicted, at its parallel limit, or behind a load
    )
    # Why it still waits ("; "-joined), None if nothing holds it back; only `waiting()` fills it.
    reason: str | None = None


@dataclass(slots=True)
class InFlight:
    ticket: Ticket
    granted_at: float
    plan: Plan
    started: bool = False
    cloud: bool = False  # holds a cloud slot ([cloud] max_parallel), not a local one
    node: Node | None = None  # the backend it runs on (engine/nodes.py); None for a cloud request


class StateView(SchedulingState):
    """The read-only state a policy sees."""

    __slots__ = ("_cloud", "_ledger", "_load", "_residency", "_service")

    def __init__(
        self, ledger: ClientLedger, residency: ResidencyModel, cloud: Callable[[str], bool],
        service: ServiceAccount, load: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self._ledger, self._residency, self._cloud = ledger, residency, cloud
        self._service, self._load = service, load

    def backend_load(self) -> float:
        return self._load()

    # A cloud model is always "loaded" to a policy: it never costs a load, a swap or VRAM.
    def residency(self, model: str, variant: str = "") -> Residency:
        return "loaded" if self._cloud(model) else self._residency.residency(model, variant)

    def size_gb(self, model: str) -> float | None:
        return 0.0 if self._cloud(model) else self._residency.size_gb(model)

    def fits_beside(self, model: str, vram_only: bool) -> bool:
        return self._cloud(model) or self._residency.fits_beside(model, vram_only)

    def loaded_count(self) -> int:
        return self._residency.loaded_count()

    def queued(self, client: str) -> int:
        return self._ledger.queued(client)

    def recent(self, client: str, window: float, now: float) -> int:
        return self._ledger.recent(client, window, now)

    def service_lead(self, client: str) -> float:
        return self._service.lead(client)

    def load_seconds(self, model: str) -> float:
        return 0.0 if self._cloud(model) else self._residency.load_seconds(model)

    def evicts(self, model: str, variant: str = "") -> tuple[str, ...]:
        return () if self._cloud(model) else self._residency.plan(model, variant).evicts
