"""What a scoring term may ask about the scheduler's state. The engine implements it; the policy
package only depends on this protocol, so terms stay pure functions of (ticket, state, now)."""

from __future__ import annotations

from typing import Protocol

from schemas.ticket import Residency


class SchedulingState(Protocol):
    def residency(self, model: str) -> Residency: ...

    def size_gb(self, model: str) -> float | None:
        """Resident size in GiB, or None when no source (ps, tags, [models]) knows it."""
        ...

    def fits_beside(self, model: str, vram_only: bool) -> bool:
        """Whether loading `model` now needs no eviction (size must be known)."""
        ...

    def loaded_count(self) -> int: ...

    def queued(self, client: str) -> int:
        """Waiting tickets of this client, including the one being scored."""
        ...

    def recent(self, client: str, window: float, now: float) -> int:
        """Arrivals of this client within the last `window` seconds, including the scored one."""
        ...
