"""A scheduling scenario: backend state, client history and waiting tickets, in TOML.

Scenarios pin how a policy orders requests: `smart-proxy policy snapshot` and the snapshot tests
replay each one, freeing one slot at a time, and record the dispatch sequence.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from schemas.common import PositiveFloat, PositiveInt, Strict

# Seconds on the scenario clock. Bounded so that the replay clock (now + one step per dispatch)
# and the wait terms computed from it stay finite.
Seconds = Annotated[float, msgspec.Meta(ge=-1e12, le=1e12)]


class ScenarioBackend(Strict, frozen=True):
    # Overrides of the policy file's [backend]; omitted keys keep the file's values.
    vram_gb: PositiveFloat | None = None
    max_loaded_models: PositiveInt | None = None
    num_parallel: PositiveInt | None = None


class LoadedModel(Strict, frozen=True):
    model: str
    # Resident size as /api/ps would report it (in bytes, an integer: so bounded).
    size_gb: Annotated[float, msgspec.Meta(gt=0, le=1e6)]


class History(Strict, frozen=True):
    client: str
    at: list[Seconds]  # past arrival times (seconds on the scenario clock) that count as recent


class ScenarioTicket(Strict, frozen=True):
    id: str
    model: str
    client: str
    arrival: Seconds
    cls: str | None = msgspec.field(default=None, name="class")  # default: the file's default


class Scenario(Strict, frozen=True):
    description: str
    now: Seconds  # the clock when the queue is released
    step: Annotated[float, msgspec.Meta(ge=0, le=1e12)] = 5.0  # seconds each dispatched request runs before its slot frees
    backend: ScenarioBackend = msgspec.field(default_factory=ScenarioBackend)
    sizes: dict[str, PositiveFloat] = msgspec.field(default_factory=dict)  # known, not loaded
    loaded: list[LoadedModel] = msgspec.field(default_factory=list)
    history: list[History] = msgspec.field(default_factory=list)
    tickets: list[ScenarioTicket] = msgspec.field(default_factory=list)
