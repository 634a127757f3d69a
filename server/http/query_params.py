"""Query parameters of the sidecar's own routes, checked before a handler sees them.

Each /proxy/* route declares the parameters it takes; anything else — an unknown name, a repeated
one, a value out of its domain — is a 400 that names the parameter and says what it must be,
never a value handed on to code that was not written for it (a 400-digit `limit` reached the
database and came back a 500).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from server.http.dialects import ProxyError, error_response

_DECIMAL = re.compile(r"^[0-9]{1,9}(\.[0-9]{1,9})?$")  # no sign, exponent, inf, nan or `_`
_WHOLE = re.compile(r"^[0-9]{1,9}$")


class BadValue(ValueError):
    """What the value must be, in words: "must be a whole number from 1 to 1000"."""


@dataclass(frozen=True, slots=True)
class Param:
    parse: Callable[[str], Any]  # BadValue when the text is not acceptable
    default: Any


def _shown(text: str) -> str:
    # Echo enough of what was sent to recognise it, not a 400-digit number back at the caller.
    return repr(text if len(text) <= 40 else text[:40] + "...")


def number(*, above: float, at_most: float, unit: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = float(text) if _DECIMAL.match(text) else None
        if value is None or not above < value <= at_most:
            raise BadValue(f"must be a number of {unit} above {above:g} and at most {at_most:g}")
        return value

    return parse


def whole(*, low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text) if _WHOLE.match(text) else None
        if value is None or not low <= value <= high:
            raise BadValue(f"must be a whole number from {low} to {high}")
        return value

    return parse


def one_of(allowed: Sequence[str]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in allowed:
            raise BadValue(f"must be one of {', '.join(allowed)}")
        return text

    return parse


def matching(pattern: str, what: str) -> Callable[[str], str]:
    compiled = re.compile(pattern)

    def parse(text: str) -> str:
        if not compiled.match(text):
            raise BadValue(f"must be {what}")
        return text

    return parse


def read_query(request: Request, params: Mapping[str, Param]) -> dict[str, Any]:
    """Every declared parameter, parsed (or its default); ProxyError 400 listing every problem."""
    query = request.query_params
    problems: list[str] = []
    takes = f"it takes {', '.join(params)}" if params else "it takes none"
    for name in query:
        if name not in params:
            problems.append(f"query parameter {_shown(name)} is not accepted by {request.url.path}; {takes}")
    values: dict[str, Any] = {}
    for name, param in params.items():
        given = query.getlist(name)
        if len(given) > 1:
            problems.append(f"query parameter {name!r} is given more than once")
        elif not given:
            values[name] = param.default
        else:
            try:
                values[name] = param.parse(given[0].strip())
            except BadValue as exc:
                problems.append(f"query parameter {name!r} {exc}, not {_shown(given[0])}")
    if problems:
        raise ProxyError(400, "; ".join(problems))
    return values


Endpoint = Callable[[Request], Awaitable[Response]]


def takes(params: Mapping[str, Param] | None = None) -> Callable[[Endpoint], Endpoint]:
    """Declare a route's query parameters: the parsed values are in `request.state.query`; a bad
    query is answered 400 before the handler runs. Put it under `admin_only`, so that a caller
    without admin learns nothing but the 403."""
    declared = dict(params or {})

    def decorate(endpoint: Endpoint) -> Endpoint:
        async def checked(request: Request) -> Response:
            try:
                request.state.query = read_query(request, declared)
            except ProxyError as exc:
                return error_response(request.url.path, exc.status, exc.message)
            return await endpoint(request)

        checked.__name__ = endpoint.__name__
        return checked

    return decorate
