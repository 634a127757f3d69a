"""A runner's options: the request options that make Ollama start another runner of a loaded
model (a full reload) when they differ from its own, as a stable string per request (its
"variant"), and which variants a loaded runner can serve when a policy normalises num_ctx."""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

# Request options that make Ollama reload a loaded model when they differ from its runner's.
RELOAD_OPTIONS = ("num_ctx", "num_gpu")


# What a client may ask for (inclusive). A runner key must be a plain, sane integer: a string, a
# bool or a nested object is no runner Ollama could start, and must not reach the scheduler (whose
# variant string would otherwise hold, and repr, whatever the client sent). num_gpu -1 is
# Ollama's "as many layers as fit"; 2**24 tokens is beyond any model's context today.
RELOAD_BOUNDS = {"num_ctx": (1, 1 << 24), "num_gpu": (-1, 1 << 20)}


def reload_options(options: Mapping[str, Any] | None) -> dict[str, int]:
    """The reload-forcing options a request sets, checked. ValueError naming the first bad one
    (`options.num_ctx must be an integer`); a whole float (4096.0) counts as its integer."""
    checked: dict[str, int] = {}
    for key in RELOAD_OPTIONS:
        value = None if not options else options.get(key)
        if value is None:  # absent or null: the model's default
            continue
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"options.{key} must be an integer")
        low, high = RELOAD_BOUNDS[key]
        if not low <= value <= high:
            raise ValueError(f"options.{key} must be an integer from {low} to {high}")
        checked[key] = value
    return checked


@lru_cache(maxsize=1024)
def parse_variant(variant: str) -> dict[str, int]:
    """`variant_of`'s string back as its options ({} for the model's defaults)."""
    if not variant:
        return {}
    return {key: int(value) for key, _, value in (part.partition("=") for part in variant.split(","))}


def reusable(asked: str, runner: str, tolerance: float) -> bool:
    """May a request whose runner options are `asked` run on a runner loaded with `runner`, its
    num_ctx rewritten? Only when both set num_ctx (a default context is the server's to choose,
    and the sidecar does not know it), every other option agrees, and the runner's context is at
    least the asked one, or below it by at most `tolerance` of it."""
    want, have = parse_variant(asked), parse_variant(runner)
    if "num_ctx" not in want or "num_ctx" not in have:
        return False
    if {k: v for k, v in want.items() if k != "num_ctx"} != {k: v for k, v in have.items() if k != "num_ctx"}:
        return False
    return have["num_ctx"] >= want["num_ctx"] * (1.0 - tolerance) - 1e-9


def variant_of(options: Mapping[str, Any] | None) -> str:
    """The reload-forcing part of a request's `options`, as a stable string ("" = defaults).
    ValueError as `reload_options` when one of them is not a sane integer."""
    return ",".join(f"{k}={v}" for k, v in reload_options(options).items())
