"""Durations as operators write them: seconds as a number, or a string of number-unit parts."""

from __future__ import annotations

import math

import pytest

from policy.durations import DURATION_RULE, parse_duration

NEGATIVE_RULE = "is not a duration; it must be zero or more seconds"


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        # ---- plain numbers are seconds ----
        (90, 90.0),
        (1.5, 1.5),
        (0, 0.0),
        # ---- one unit ----
        ("500ms", 0.5),
        ("30s", 30.0),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("7d", 604800.0),
        ("0s", 0.0),
        ("1.5h", 5400.0),
        # ---- several parts, largest first as people write them ----
        ("1h30m", 5400.0),
        ("1m30s", 90.0),
        ("1d2h3m4s5ms", 93784.005),
        # ---- surrounding blanks are forgiven ----
        (" 5m ", 300.0),
    ],
)
def test_valid_duration_gives_seconds(value: float | str, seconds: float) -> None:
    """A well-formed duration parses to its number of seconds."""
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        # ---- strings that are not number-unit parts ----
        ("", DURATION_RULE),
        ("   ", DURATION_RULE),
        ("5", DURATION_RULE),  # a bare number must be written as a TOML number, not a string
        ("5 minutes", DURATION_RULE),
        ("5 m", DURATION_RULE),
        ("1h 30m", DURATION_RULE),
        ("5M", DURATION_RULE),  # units are lower case; "M" is not minutes or months
        ("1m30", DURATION_RULE),  # a trailing number without its unit
        ("ms", DURATION_RULE),
        (".5s", DURATION_RULE),
        ("1e3s", DURATION_RULE),
        ("-5s", DURATION_RULE),
        # ---- booleans are not numbers here, although Python says they are ----
        (True, DURATION_RULE),
        (False, DURATION_RULE),
        # ---- numbers below zero ----
        (-5, NEGATIVE_RULE),
        (-0.5, NEGATIVE_RULE),
    ],
)
def test_invalid_duration_names_the_rule(value: float | str, message: str) -> None:
    """A malformed or negative duration raises ValueError with the rule an operator can follow."""
    with pytest.raises(ValueError) as caught:
        parse_duration(value)
    assert str(caught.value) == message


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_number_is_not_a_duration(value: float) -> None:
    """NaN and infinity are rejected rather than becoming a timeout that never fires."""
    with pytest.raises(ValueError, match=r"^is not a duration;"):
        parse_duration(value)
