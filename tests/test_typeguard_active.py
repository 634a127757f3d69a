"""The test run really type-checks our packages: a wrong argument type is an error here."""

import pytest
from typeguard import TypeCheckError

from policy.durations import parse_duration


def test_wrong_argument_type_is_caught_at_runtime():
    """typeguard instruments the project's packages during tests (see tests/conftest.py)."""
    with pytest.raises(TypeCheckError):
        parse_duration(["5m"])  # type: ignore[arg-type]
