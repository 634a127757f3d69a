"""Shared test configuration. Fixture modules of each area are loaded as plugins below."""

import pytest

pytest_plugins: list[str] = ["pg_fixtures", "emulator_fixtures"]


@pytest.fixture
def anyio_backend() -> str:
    # The sidecar runs on asyncio under Hypercorn; test on the same loop.
    return "asyncio"
