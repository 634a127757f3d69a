"""Fixtures that run the Ollama emulator as a real HTTP server on a free loopback port.

Any test can use them (the sidecar's integration tests too):

    def test_something(ollama_emulator):          # fresh per test, preset "tiny-8gb", scale 0
        httpx.get(ollama_emulator.url + "/api/tags")
        ollama_emulator.stats()["loads"]

For another set-up, call `sim.testing.running_emulator(settings | preset=..., time_scale=...)`
directly as a context manager.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from sim.testing import RunningEmulator

# sim is imported inside the fixtures: this plugin loads before typeguard instruments our
# packages, and a module imported that early would escape the type checks.


@pytest.fixture
def ollama_emulator() -> Iterator[RunningEmulator]:
    """A fresh emulator per test: preset tiny-8gb, time scale 0 (every load and token instant)."""
    from sim.testing import running_emulator

    with running_emulator(preset="tiny-8gb", time_scale=0.0) as emulator:
        yield emulator


@pytest.fixture(scope="session")
def shared_ollama_emulator() -> Iterator[RunningEmulator]:
    """One emulator for the session (workstation-24gb, time scale 0.001) — for read-mostly tests;
    call `reset_stats()` before counting."""
    from sim.testing import running_emulator

    with running_emulator(preset="workstation-24gb", time_scale=0.001) as emulator:
        yield emulator
