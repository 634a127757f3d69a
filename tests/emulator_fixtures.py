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


# One model at a time on an 8 GB card: every change of model, or of a runner's options, is a
# (re)load the test can count.
ONE_AT_A_TIME = """
[node]
vram_gb = 8
num_parallel = 1
max_loaded_models = 1
time_scale = 0
[[models]]
name = "llama3.2:1b"
[[models]]
name = "llama3.2:3b"
"""


@pytest.fixture
def one_model_emulator() -> Iterator[RunningEmulator]:
    """A fresh emulator per test that holds one model at a time (ONE_AT_A_TIME), time scale 0."""
    import time

    from sim.config import load_text
    from sim.testing import running_emulator

    with running_emulator(load_text(ONE_AT_A_TIME, "one-at-a-time", time.time())) as emulator:
        yield emulator
