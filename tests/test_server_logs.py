"""Log lines: JSON or human, the request id on every line about a request, written off the loop."""

import json
import logging

import pytest

from server.http import request_ids
from server.telemetry import logs


@pytest.fixture
def restore_logging():
    logger = logging.getLogger("smart_proxy")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield logger
    logs._stop_listener()
    logger.handlers[:], logger.level, logger.propagate = saved


def test_json_lines_carry_the_request_id_and_extras(capsys, restore_logging):
    """A line logged while a request is handled names it; extras become fields."""
    logs.configure("json", "INFO")
    token = request_ids.request_id_var.set("req-123")
    try:
        restore_logging.info("granted %s", "llama3", extra={"queue_wait_ms": 12})
    finally:
        request_ids.request_id_var.reset(token)
    restore_logging.info("poll ok")
    logs._stop_listener()  # the writer thread flushes what is queued
    first, second = (json.loads(line) for line in capsys.readouterr().err.splitlines())
    assert first["msg"] == "granted llama3" and first["request_id"] == "req-123"
    assert first["queue_wait_ms"] == 12 and first["level"] == "info"
    assert "request_id" not in second


def test_tracebacks_survive_the_hand_off(capsys, restore_logging):
    """An exception logged on the loop arrives whole, in the `exc` field or after the line."""
    logs.configure("json", "INFO")
    try:
        raise ValueError("boom")
    except ValueError:
        restore_logging.exception("failed")
    logs.configure("human", "INFO")  # reconfiguring flushes the previous writer first
    try:
        raise KeyError("gone")
    except KeyError:
        restore_logging.exception("failed again")
    logs._stop_listener()
    err = capsys.readouterr().err
    line = json.loads(err.splitlines()[0])
    assert "ValueError: boom" in line["exc"]
    assert "failed again" in err and "KeyError: 'gone'" in err


def test_level_filters_below_the_configured_one(capsys, restore_logging):
    """DEBUG lines are dropped at INFO."""
    logs.configure("human", "INFO")
    restore_logging.debug("noise")
    restore_logging.warning("signal")
    logs._stop_listener()
    err = capsys.readouterr().err
    assert "signal" in err and "noise" not in err
