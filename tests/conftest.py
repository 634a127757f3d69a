"""Shared test configuration. Fixture modules of each area are loaded as plugins below."""

import tempfile
from pathlib import Path

import pytest
from hypothesis.configuration import set_hypothesis_home_dir
from typeguard import install_import_hook

# Hypothesis caches constants it collects from the code (whatever the example database setting)
# under ./.hypothesis: keep that out of the repository's root.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "smart-proxy-hypothesis")

# Instrument our packages before any fixture module below imports them. (typeguard's own pytest
# option installs its hook too late for modules that conftest plugins import.)
install_import_hook(["schemas", "policy", "engine", "server", "sim"])

pytest_plugins: list[str] = ["pg_fixtures", "emulator_fixtures", "sidecar_fixtures"]


@pytest.fixture
def anyio_backend() -> str:
    # The sidecar runs on asyncio under Hypercorn; test on the same loop.
    return "asyncio"
