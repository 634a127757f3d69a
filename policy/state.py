"""What a scoring term may ask about the scheduler's state. The engine implements it; the policy
package depends only on this interface, so terms stay pure functions of (ticket, state, now).

An abstract base class rather than a Protocol: implementations subclass it explicitly, and a
runtime type check is one isinstance() instead of a signature comparison per call on the hot path.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from schemas.ticket import Residency


class SchedulingState(ABC):
    __slots__ = ()

    @abstractmethod
    def residency(self, model: str, variant: str = "") -> Residency:
        """Where the runner a request needs is: a model loaded with other reload-forcing options
        (another `variant`) counts as absent, since Ollama must reload it."""

    @abstractmethod
    def size_gb(self, model: str) -> float | None:
        """Resident size in GiB, or None when no source (ps, tags, [models]) knows it."""

    @abstractmethod
    def fits_beside(self, model: str, vram_only: bool) -> bool:
        """Whether loading `model` now needs no eviction (False when its size is unknown)."""

    @abstractmethod
    def loaded_count(self) -> int: ...

    @abstractmethod
    def queued(self, client: str) -> int:
        """Waiting tickets of this client, including the one being scored."""

    @abstractmethod
    def recent(self, client: str, window: float, now: float) -> int:
        """Arrivals of this client within the last `window` seconds, including the scored one."""

    @abstractmethod
    def service_lead(self, client: str) -> float:
        """How much more service (tokens or GPU seconds, as the fair_share term counts it) this
        client has had than the least-served waiting client, decayed by the half-life."""

    @abstractmethod
    def load_seconds(self, model: str) -> float:
        """How long loading `model` takes on this host: learned from Ollama's load_duration, else
        estimated from its size."""

    @abstractmethod
    def evicts(self, model: str, variant: str = "") -> tuple[str, ...]:
        """The models loading this one now would evict (none when it is loaded or fits)."""

    @abstractmethod
    def backend_load(self) -> float:
        """The share of slots in use on the backend this choice is for: local requests in
        flight over its max_parallel, 0 to 1 (the same for every ticket of one choice)."""
