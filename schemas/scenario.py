"""A scheduling scenario: backend state, client history and waiting tickets, in TOML.

Scenarios pin how a policy orders requests: `smart-proxy policy snapshot` and the snapshot tests
replay each one, freeing one slot at a time, and record the dispatch sequence.
"""

from __future__ import annotations

import msgspec

from schemas.common import NonNegativeFloat, PositiveFloat, PositiveInt, Strict


class ScenarioBackend(Strict):
    # Overrides of the policy file's [backend]; omitted keys keep the file's values.
    vram_gb: PositiveFloat | None = None
    max_loaded_models: PositiveInt | None = None
    num_parallel: PositiveInt | None = None


class LoadedModel(Strict):
    model: str
    size_gb: PositiveFloat  # resident size as /api/ps would report it


class History(Strict):
    client: str
    at: list[float]  # past arrival times (seconds on the scenario clock) that count as recent


class ScenarioTicket(Strict):
    id: str
    model: str
    client: str
    arrival: float
    cls: str | None = msgspec.field(default=None, name="class")  # default: the file's default


class Scenario(Strict):
    description: str
    now: float  # the clock when the queue is released
    step: NonNegativeFloat = 5.0  # seconds each dispatched request runs before its slot frees
    backend: ScenarioBackend = msgspec.field(default_factory=ScenarioBackend)
    sizes: dict[str, PositiveFloat] = msgspec.field(default_factory=dict)  # known, not loaded
    loaded: list[LoadedModel] = msgspec.field(default_factory=list)
    history: list[History] = msgspec.field(default_factory=list)
    tickets: list[ScenarioTicket] = msgspec.field(default_factory=list)
