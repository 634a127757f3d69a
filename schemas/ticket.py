"""A waiting request as the scheduler and the policy see it: nothing about its bytes."""

from __future__ import annotations

from typing import Literal

import msgspec

# Where a model is, as far as the residency model knows. "loading" counts as present for scoring:
# Ollama attaches new requests to a load in progress.
Residency = Literal["absent", "loading", "loaded", "evicting"]


class Ticket(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    seq: int  # arrival order; the last tie-break, so the order is total
    model: str
    client: str
    cls: str
    arrival: float  # seconds on the engine's clock
    endpoint: str = ""
    # The request's options that make Ollama reload a model when they differ from the loaded
    # runner's (e.g. "num_ctx=8192"); "" means the model's defaults.
    variant: str = ""


class TermScore(msgspec.Struct, frozen=True):
    term: str
    points: float


class Score(msgspec.Struct, frozen=True):
    total: float
    parts: tuple[TermScore, ...]
    overdue: bool = False  # waited past its wait limit: goes first (shortest class limit, then oldest)

    def breakdown(self) -> dict[str, float]:
        return {p.term: p.points for p in self.parts}
