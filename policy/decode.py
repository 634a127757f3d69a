"""Decode: TOML text -> typed structs, collecting every problem instead of stopping at the first.

msgspec alone reports one error per decode; operators fixing a file want the whole list. So this
walks the schema itself: structs key by key (unknown keys get a "did you mean" hint), lists and
tables element by element, and hands each scalar to msgspec for its type and bounds. Semantic
scalars (durations, networks, env-var names) are checked here too, so errors carry exact paths.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
import tomllib
import types
import typing
import urllib.parse
from typing import Annotated, Any, Literal

import msgspec

from policy.durations import parse_duration
from policy.errors import MISSING, Problem, join_path

_FAIL = object()  # a value that could not be decoded; its problem is already recorded
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Keys that would put a secret into the file. The file is meant to be shared and reviewed.
_SECRET_KEYS = frozenset({"key", "api_key", "admin_key", "secret", "password", "token"})


def parse_toml(text: str) -> tuple[dict[str, Any] | None, Problem | None]:
    try:
        return tomllib.loads(text), None
    except RecursionError:
        return None, Problem("", MISSING, "is nested too deeply to read as a policy file")
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        # tomllib says "Invalid value (at line 3, column 9)"; lead with the position.
        m = re.search(r"\(at line (\d+), column (\d+)\)", message)
        reason = message[: m.start()].strip() if m else message
        where = f"line {m.group(1)}, column {m.group(2)}" if m else "(syntax)"
        return None, Problem(where, MISSING, f"is not valid TOML: {reason[:1].lower()}{reason[1:]}")
    except ValueError as exc:
        # tomllib lets int()'s own ValueError out, e.g. past the 4300-digit conversion limit.
        reason = str(exc).split(":")[0]
        return None, Problem(
            "(syntax)", MISSING, f"is not valid TOML: {reason[:1].lower()}{reason[1:]}"
        )


def _kind(meta_args: tuple[Any, ...]) -> str | None:
    for meta in meta_args:
        if isinstance(meta, msgspec.Meta) and meta.extra and "kind" in meta.extra:
            return str(meta.extra["kind"])
    return None


def _check_kind(kind: str, value: Any, path: str, problems: list[Problem]) -> bool:
    if kind == "duration":
        try:
            parse_duration(value)
        except ValueError as exc:
            problems.append(Problem(path, value, str(exc)))
            return False
    elif kind == "cidr":
        try:
            ipaddress.ip_network(value, strict=True)
        except ValueError as exc:
            problems.append(Problem(path, value, f"is not an IP network in CIDR notation ({exc})"))
            return False
    elif kind == "http_url" and (reason := _url_problem(value)):
        problems.append(Problem(path, value, f"is not a usable URL: {reason}"))
        return False
    elif kind == "env_name" and not _ENV_NAME.match(value):
        problems.append(
            Problem(
                path,
                MISSING,  # it may be the secret itself: never echo it into logs
                "does not name an environment variable; never write a secret in the "
                "policy file — put it in an environment variable and give that variable's "
                "name here (e.g. PROXY_ADMIN_KEY)",
            )
        )
        return False
    return True


def _url_problem(value: str) -> str | None:
    """Why `value` cannot name an HTTP server, or None if it can."""
    try:
        parts = urllib.parse.urlsplit(value)
        port = parts.port  # raises ValueError when out of range or not a number
    except ValueError as exc:
        return str(exc)
    if parts.scheme not in ("http", "https"):
        return "it must start with http:// or https://"
    if not parts.hostname:
        return "it names no host"
    if port == 0:
        return "port 0 is not a port a server listens on"
    return None


def _msgspec_rule(exc: msgspec.ValidationError, tp: Any) -> str:
    text = str(exc).split(" - at `")[0]
    m = re.match(r"Expected `(.+?)`, got `(.+?)`", text)
    if m:
        return (
            f"has the wrong type: expected {_type_name(m.group(1))}, got {_type_name(m.group(2))}"
        )
    m = re.match(r"Expected `(.+?)` (>=|>|<=|<) (\S+)", text)
    if m:
        return f"is out of range: must be {m.group(2)} {m.group(3)}"
    return f"is not valid: {text[:1].lower()}{text[1:]}"


def _type_name(name: str) -> str:
    return {
        "int": "an integer",
        "float": "a number",
        "str": "a string",
        "bool": "true or false",
        "array": "an array",
        "object": "a table",
        "float | str": "a number or a string",
    }.get(name, name)


def convert(raw: Any, tp: Any, path: str, problems: list[Problem]) -> Any:
    """Convert `raw` to `tp`, appending a Problem for each fault; returns _FAIL on any fault."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        inner, *metas = typing.get_args(tp)
        kind = _kind(tuple(metas))
        value = _scalar(raw, tp, path, problems)
        if value is _FAIL or (kind and not _check_kind(kind, value, path, problems)):
            return _FAIL
        del inner
        return value
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(options) == 1:
            return convert(raw, options[0], path, problems)
        return _scalar(raw, tp, path, problems)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if raw in allowed and type(raw) is type(allowed[0]):
            return raw
        listed = ", ".join(f'"{a}"' for a in allowed)
        problems.append(Problem(path, raw, f"is not one of {listed}"))
        return _FAIL
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return _struct(raw, tp, path, problems)
    if origin is dict:
        _, value_tp = typing.get_args(tp)
        if not isinstance(raw, dict):
            problems.append(Problem(path, raw, "has the wrong type: expected a table"))
            return _FAIL
        out = {k: convert(v, value_tp, join_path(path, k), problems) for k, v in raw.items()}
        return _FAIL if any(v is _FAIL for v in out.values()) else out
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(raw, list):
            problems.append(Problem(path, raw, "has the wrong type: expected an array"))
            return _FAIL
        items = [convert(v, item_tp, join_path(path, i), problems) for i, v in enumerate(raw)]
        return _FAIL if any(v is _FAIL for v in items) else items
    if tp is Any:
        return raw
    return _scalar(raw, tp, path, problems)


def _scalar(raw: Any, tp: Any, path: str, problems: list[Problem]) -> Any:
    # TOML allows nan and inf; one NaN in a score makes the queue's order undefined.
    if isinstance(raw, float) and not math.isfinite(raw):
        problems.append(Problem(path, raw, "is not a finite number"))
        return _FAIL
    try:
        return msgspec.convert(raw, tp)
    except msgspec.ValidationError as exc:
        problems.append(Problem(path, raw, _msgspec_rule(exc, tp)))
        return _FAIL


def _struct(raw: Any, tp: type[msgspec.Struct], path: str, problems: list[Problem]) -> Any:
    if not isinstance(raw, dict):
        problems.append(Problem(path, raw, "has the wrong type: expected a table"))
        return _FAIL
    fields = {f.encode_name: f for f in msgspec.structs.fields(tp)}
    section = f"[{path}]" if path else "the top level"
    failed = False
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        sub = join_path(path, key)
        if key in fields:
            converted = convert(value, fields[key].type, sub, problems)
            failed |= converted is _FAIL
            kwargs[fields[key].name] = converted
        elif key in _SECRET_KEYS and any(k.endswith("_env") for k in fields):
            env_key = next(k for k in fields if k.endswith("_env"))
            problems.append(
                Problem(
                    sub,
                    MISSING,  # never echo the secret
                    f"holds a secret written inline; never put a secret in the policy file — "
                    f"set it in an environment variable and name that variable in "
                    f"{join_path(path, env_key)}",
                )
            )
            failed = True
        else:
            problems.append(Problem(sub, MISSING, unknown_key_rule(key, list(fields), section)))
            failed = True
    for name, info in fields.items():
        if info.required and name not in raw:
            problems.append(
                Problem(join_path(path, name), MISSING, f"is missing; {section} requires it")
            )
            failed = True
    if failed:
        return _FAIL
    try:
        return tp(**kwargs)
    except (TypeError, ValueError) as exc:  # a struct's own __post_init__ rule
        problems.append(Problem(path, MISSING, str(exc)))
        return _FAIL


def unknown_key_rule(key: str, known: list[str], section: str) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        return f"unknown key in {section}; did you mean '{close[0]}'?"
    return f"unknown key in {section}; known keys: {', '.join(known)}"


def is_fail(value: Any) -> bool:
    return value is _FAIL
