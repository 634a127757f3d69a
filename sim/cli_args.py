"""Argument types and error reporting shared by every `smart-proxy` verb.

They live here, below `server/` in the layer table, because the emulator's own verb (`sim`) needs
them as well and `sim/` may not import `server/`; `server/cli/args.py` adds the journal's.

Every value from outside — an option, or an environment variable standing in for one — is checked
here while the command line is parsed, so a bad one is a single line on stderr and exit status 2:

    smart-proxy serve: error: argument --port: SMART_PROXY_PORT: '99999' is not a port; …

An environment variable set to an empty string counts as unset (`VAR= smart-proxy serve`).
"""

from __future__ import annotations

import argparse
import functools
import ipaddress
import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import NoReturn, TypeVar

from policy.decode import _url_problem  # the rule backend.url follows, so both agree
from policy.durations import DURATION_RULE, parse_duration

T = TypeVar("T")

USAGE_ERROR = 2


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (`PROG: error: MESSAGE`) rather than the usage
    block followed by the error: the line is what scripts and log readers need, and `--help` is
    one call away. Sub-parsers inherit the class."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"{self.prog}: error: {one_line(message)}\n")


class CliError(Exception):
    """A bad input found after parsing (a file that is not there, a busy port): one line, exit 2."""


def one_line(message: str) -> str:
    return " ".join(str(message).split())


def fail(prog: str, message: str) -> int:
    """Print `PROG: error: MESSAGE` on one line and return the usage-error status."""
    print(f"{prog}: error: {one_line(message)}", file=sys.stderr)
    return USAGE_ERROR


class EnvValue(str):
    """An option's default taken from an environment variable: argparse runs string defaults
    through the option's type, and this lets the error name the variable as well as the option."""

    var: str

    def __new__(cls, value: str, var: str) -> EnvValue:
        obj = super().__new__(cls, value)
        obj.var = var
        return obj


def env_default(env: Mapping[str, str], var: str, fallback: str | None) -> str | None:
    value = env.get(var)
    if value is None or not value.strip():
        return fallback
    return EnvValue(value, var)


def names_env(check: Callable[[str], T]) -> Callable[[str], T]:
    @functools.wraps(check)
    def convert(text: str) -> T:
        try:
            return check(text)
        except argparse.ArgumentTypeError as exc:
            if isinstance(text, EnvValue):
                raise argparse.ArgumentTypeError(f"{text.var}: {exc}") from None
            raise

    return convert


# ---- numbers -------------------------------------------------------------------------------


class _NotSeconds(ValueError):
    """Text that is neither a number nor a duration string."""


def _seconds_value(text: str) -> float:
    """Seconds as the policy file writes them: a number, or "500ms", "30s", "5m", "1h30m", "7d".
    _NotSeconds for other text, ValueError for a negative or non-finite amount."""
    try:
        number = float(text)
    except ValueError:
        try:
            return parse_duration(text)
        except ValueError:
            # "3600" reaches here only as a string, and the parser wants a unit on strings;
            # numbers were handled above, so this text really is neither.
            raise _NotSeconds(text) from None
    if not math.isfinite(number) or number < 0:
        raise ValueError("not a duration")
    return number


@names_env
def duration(text: str) -> float:
    """Zero or more seconds: a number, or a duration string as in the policy file."""
    try:
        return _seconds_value(text)
    except _NotSeconds:
        raise argparse.ArgumentTypeError(f"{text!r} {DURATION_RULE}") from None
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} must be zero or more seconds, and finite"
        ) from None


@names_env
def positive_seconds(text: str) -> float:
    try:
        value = _seconds_value(text)
    except _NotSeconds:
        raise argparse.ArgumentTypeError(
            f'{text!r} is not a number of seconds or a duration like "30s", "5m", "1h30m"'
        ) from None
    except ValueError:
        value = 0.0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive, finite number of seconds")
    return value


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


@names_env
def positive_count(text: str) -> int:
    value = _whole(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def count_in(low: int, high: int) -> Callable[[str], int]:
    """A whole number from `low` to `high`."""

    @names_env
    def convert(text: str) -> int:
        value = _whole(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text!r} must be from {low} to {high}")
        return value

    return convert


@names_env
def scale(text: str) -> float:
    """A multiplier such as a time scale: zero or more, finite."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be zero or more, and finite")
    return value


# ---- network -------------------------------------------------------------------------------


@names_env
def port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a port; use 1 to 65535, or 0 for any free port"
        )
    return value


_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)\Z")


@names_env
def host(text: str) -> str:
    """An IP address (IPv6 with or without brackets) or a host name, as bind() takes it."""
    value = text.strip()
    if value.startswith("[") and value.endswith("]"):
        value = value[1:-1]
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    labels = value.removesuffix(".").split(".")
    # All-digit labels are a mistyped IPv4 address (999.1.1.1), not a name.
    if (0 < len(value) <= 253 and all(_LABEL.match(label) for label in labels)
            and not all(label.isdigit() for label in labels)):
        return value
    raise argparse.ArgumentTypeError(f"{text!r} is not an IP address or host name")


@names_env
def http_url(text: str) -> str:
    value = text.strip()
    reason = _url_problem(value)
    if reason is not None or any(c.isspace() for c in value):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a usable URL: {reason or 'it contains white space'}"
        )
    return value


def listen_problem(host_name: str, port_number: int, exc: OSError) -> str:
    """`cannot listen on 127.0.0.1:8080: address already in use` for a failed bind."""
    where = f"[{host_name}]:{port_number}" if ":" in host_name else f"{host_name}:{port_number}"
    reason = exc.strerror or str(exc) or type(exc).__name__
    return f"cannot listen on {where}: {reason[:1].lower()}{reason[1:]}"


# ---- files ---------------------------------------------------------------------------------


@names_env
def existing_file(text: str) -> str:
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text}: no such file")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text}: not a file")
    if not os.access(path, os.R_OK):
        raise argparse.ArgumentTypeError(f"{text}: not readable (permission denied)")
    return text


def existing_file_path(text: str) -> Path:
    return Path(existing_file(text))


@names_env
def existing_dir(text: str) -> str:
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text}: no such directory")
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: not a directory")
    return text


@names_env
def output_file(text: str) -> str:
    """A file to write: its directory must exist (nothing is created on the way)."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: is a directory")
    parent = path.parent
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: directory {parent} does not exist")
    return text


def write_output(target: str | None, data: str | bytes, option: str = "-o/--output") -> None:
    """`data` (text, or bytes already encoded) to the file an output option named, or to stdout
    for none or "-"; CliError (one line naming the option) when the file cannot be written."""
    raw = data.encode() if isinstance(data, str) else data
    if target in (None, "", "-"):
        sys.stdout.flush()
        sys.stdout.buffer.write(raw)
        sys.stdout.buffer.flush()
        return
    try:
        Path(target).write_bytes(raw)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise CliError(f"argument {option}: {target}: cannot write: {reason}") from None


def choice(what: str, options: Iterable[str], *, fold_case: bool = False) -> Callable[[str], str]:
    """One of `options`; `what` ("a preset") names the kind in the message. argparse's own
    `choices` is not applied to defaults, so a value from an environment variable needs this."""
    allowed = tuple(options)
    words = ", ".join(allowed[:-1]) + f" or {allowed[-1]}" if len(allowed) > 1 else allowed[0]

    @names_env
    def check(text: str) -> str:
        value = text.strip().lower() if fold_case else text.strip()
        if value not in allowed:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}; choose {words}")
        return value

    return check


__all__ = [
    "USAGE_ERROR",
    "CliError",
    "EnvValue",
    "OneLineParser",
    "choice",
    "duration",
    "env_default",
    "existing_dir",
    "existing_file",
    "existing_file_path",
    "fail",
    "host",
    "http_url",
    "listen_problem",
    "names_env",
    "one_line",
    "output_file",
    "port",
    "positive_count",
    "positive_seconds",
    "scale",
]
