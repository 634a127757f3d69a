"""Scoring terms: a registry of named term types and the built-in ones."""

from policy.terms import builtin as _builtin  # noqa: F401  (registers the built-in types)
from policy.terms.registry import REGISTRY, TermType, UnknownTermType

__all__ = ["REGISTRY", "TermType", "UnknownTermType"]
