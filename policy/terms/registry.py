"""The registry of term types. A term type is a factory `params -> (ticket, state, now) -> points`
registered once by name; a duplicate name or an unknown type is an error listing the known ones.

Each type declares the one thing its points depend on besides `now`: the ticket's model, client,
class, how long it has waited, or nothing of the ticket but the backend it is being placed on. The engine relies on that to avoid rescoring the whole queue.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from policy.errors import Problem
from policy.state import SchedulingState
from schemas.ticket import Ticket

TermFn = Callable[[Ticket, SchedulingState, float], float]
DependsOn = Literal["model", "client", "class", "wait", "backend"]


def _none(_params: Any) -> None:
    return None


def _no_problems(_params: Any, _path: str) -> list[Problem]:
    return []


def _nothing(_params: Any) -> tuple[Any, ...]:
    return ()


@dataclass(frozen=True)
class TermType:
    name: str
    params: type[msgspec.Struct]
    depends_on: DependsOn
    build: Callable[[Any], TermFn]
    summary: str
    # Cross-field rules on the decoded parameters; path is the term's table path.
    validate: Callable[[Any, str], list[Problem]] = field(default=_no_problems)
    # "wait" terms: points are never below -slope × seconds waited (the engine's lower bound).
    wait_slope: Callable[[Any], float] = field(default=lambda _p: 0.0)
    # "wait" terms: points are exactly -slope × seconds waited (0 before any wait), so the
    # picker may total a ticket without calling the term.
    linear_wait: Callable[[Any], bool] = field(default=lambda _p: False)
    max_wait: Callable[[Any], float | None] = field(default=_none)
    # Per class, in place of max_wait (seconds).
    class_max_wait: Callable[[Any], dict[str, float]] = field(default=lambda _p: {})
    # "client" terms: sliding windows (seconds) the client ledger must count.
    windows: Callable[[Any], tuple[float, ...]] = field(default=_nothing)
    # Class names the parameters refer to; each must be defined under [clients.classes].
    classes: Callable[[Any], Iterable[str]] = field(default=_nothing)
    classes_key: str = "offsets"  # the parameter that names them, for error paths


class UnknownTermType(KeyError):
    pass


class Registry:
    def __init__(self) -> None:
        self._types: dict[str, TermType] = {}

    def register(self, term_type: TermType) -> TermType:
        if term_type.name in self._types:
            raise ValueError(
                f"term type {term_type.name!r} is already registered; "
                f"known types: {', '.join(self.names())}"
            )
        self._types[term_type.name] = term_type
        return term_type

    def get(self, name: str) -> TermType:
        try:
            return self._types[name]
        except KeyError:
            raise UnknownTermType(
                f"is not a known term type; known types: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._types)

    def __iter__(self) -> Iterator[TermType]:
        return iter(self._types.values())


REGISTRY = Registry()
