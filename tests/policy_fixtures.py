"""Helpers for tests that build schedulers from a compiled policy file."""

from __future__ import annotations

import dataclasses

from policy.load import CompiledFile


def without_swap_hold(settings: CompiledFile) -> CompiledFile:
    """The same file with no policy holding swaps back: for tests of other holds and of the
    order a swap takes, which a swap_hold would only delay (tests/test_swap_hold.py tests it)."""
    policies = {name: dataclasses.replace(p, swap_hold=None) for name, p in settings.policies.items()}
    return dataclasses.replace(settings, policies=policies, active=policies[settings.active.name])
