"""The search space of `policy tune`: a policy's numeric parameters, read from its compiled terms
(defaults included), each with a range around the base value inside its schema bounds, and how a
candidate is written back into the policy file.

Every non-zero number a term uses is a dimension: points, caps, thresholds, rates and durations
(`window`, `max_wait`), plus each swap tier's points and each class offset. A candidate draws each
one log-uniformly between a quarter and four times the base value — weights matter by ratio, not
by difference — clamped to the schema's bounds. A parameter the base sets to zero stays zero, and
so does `vram.loaded`, the reference the other tiers are measured from: tuning explores the
weights a policy uses, it does not invent new terms.
"""

from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass
from typing import Any

import msgspec

from policy.durations import parse_duration
from policy.load import CompiledFile
from schemas.terms import VramParams

SPREAD = 4.0  # a candidate's value lies within base / SPREAD … base × SPREAD
FIXED = {("vram", "loaded")}


@dataclass(frozen=True, slots=True)
class Dimension:
    term: str  # the key under [policies.NAME.terms]
    path: tuple[str | int, ...]  # inside the term's table: ("fits",), ("swap", 0, "points")
    base: float
    low: float
    high: float
    integer: bool

    @property
    def label(self) -> str:
        return ".".join([self.term, *(str(p) for p in self.path)])

    def draw(self, rng: random.Random) -> float:
        """Log-uniform within base/SPREAD … base×SPREAD (by magnitude: a negative base stays
        negative), clamped to the schema's bounds."""
        sign, size = (1.0, self.base) if self.base > 0 else (-1.0, -self.base)
        value = sign * math.exp(rng.uniform(math.log(size / SPREAD), math.log(size * SPREAD)))
        value = min(self.high, max(self.low, value))
        return float(round(value)) if self.integer else float(f"{value:.4g}")


def _bounds(kind: Any) -> tuple[float, float, bool] | None:
    """(low, high, integer) of a numeric msgspec type, None if it is not a plain number."""
    if isinstance(kind, msgspec.inspect.Metadata):
        if kind.extra and kind.extra.get("kind") == "duration":
            return (1e-3, 1e9, False)
        kind = kind.type
    if isinstance(kind, msgspec.inspect.UnionType):
        numeric = [_bounds(t) for t in kind.types if not isinstance(t, msgspec.inspect.NoneType)]
        return numeric[0] if len(numeric) == 1 else None
    if isinstance(kind, msgspec.inspect.FloatType | msgspec.inspect.IntType):
        low = kind.ge if kind.ge is not None else (kind.gt if kind.gt is not None else -1e9)
        high = kind.le if kind.le is not None else (kind.lt if kind.lt is not None else 1e9)
        return (float(low), float(high), isinstance(kind, msgspec.inspect.IntType))
    return None


def _seconds(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        return parse_duration(value)
    return None


def dimensions(compiled: CompiledFile, policy: str) -> list[Dimension]:
    found: list[Dimension] = []
    for term in compiled.terms[policy]:
        kind = term.type.name
        params = term.params
        for field in msgspec.inspect.type_info(type(params)).fields:  # type: ignore[attr-defined]
            value = getattr(params, field.name)
            if (kind, field.name) in FIXED:
                continue
            if field.name == "swap" and isinstance(value, list):
                for i, tier in enumerate(value):
                    if tier.points:
                        found.append(Dimension(term.name, ("swap", i, "points"), float(tier.points),
                                               -1e9, 1e9, False))
                continue
            if field.name == "offsets" and isinstance(value, dict):
                for cls, points in sorted(value.items()):
                    if points:
                        found.append(Dimension(term.name, ("offsets", cls), float(points), -1e9, 1e9, False))
                continue
            bounds = _bounds(field.type)
            if bounds is None:
                continue
            number = _seconds(value)
            if number is None or number == 0:
                continue
            found.append(Dimension(term.name, (field.name,), number, *bounds))
    return found


def keep_tier_order(dims: list[Dimension], values: list[float]) -> list[float]:
    """Where the base charges more for swapping in bigger models (its tier points and
    `swap_above` do not decrease), a candidate does too: the drawn points are sorted into the
    tiers. Otherwise a candidate could prefer loading a 70B model over a 14B one."""
    out = list(values)
    by_term: dict[str, list[int]] = {}
    for i, dim in enumerate(dims):
        if dim.path[0] == "swap" or dim.path == ("swap_above",):
            by_term.setdefault(dim.term, []).append(i)  # tiers in order, swap_above last
    for indices in by_term.values():
        bases = [dims[i].base for i in indices]
        if bases == sorted(bases):
            for i, v in zip(indices, sorted(out[i] for i in indices), strict=True):
                out[i] = v
    return out


def apply(raw: dict[str, Any], policy: str, name: str, dims: list[Dimension],
          values: list[float], description: str) -> dict[str, Any]:
    """A copy of the raw file with policy `name` = `policy` with these values (added or replaced)."""
    out = copy.deepcopy(raw)
    table = copy.deepcopy(out["policies"][policy])
    table["description"] = description
    terms = table.setdefault("terms", {})
    for dim, value in zip(dims, values, strict=True):
        node = terms.setdefault(dim.term, {})
        *head, last = dim.path
        for key in head:
            if isinstance(key, int):
                node = node[key]
            else:
                if key == "swap" and "swap" not in node:
                    node["swap"] = _default_swap()
                node = node.setdefault(key, {})
        node[last] = int(value) if dim.integer else value
    out["policies"][name] = table
    return out


def _default_swap() -> list[dict[str, Any]]:
    """The schema's default tiers, written out when the base relies on them."""
    return [{"up_to_gb": t.up_to_gb, "points": t.points} for t in VramParams().swap]
