"""The fully resolved policy file (every default filled in), as TOML for review."""

from __future__ import annotations

from typing import Any

import msgspec
import tomli_w

from policy.load import CompiledFile


def _drop_none(value: Any) -> Any:
    # TOML has no null: an unset optional key is simply absent.
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


def resolved(compiled: CompiledFile) -> dict[str, Any]:
    data = msgspec.to_builtins(compiled.raw)
    for name, policy in data["policies"].items():
        terms = {}
        for term in compiled.terms[name]:
            table = msgspec.to_builtins(term.params)
            if term.type.name != term.name:
                table = {"type": term.type.name, **table}
            terms[term.name] = table
        policy["terms"] = terms
    return _drop_none(data)


def resolved_toml(compiled: CompiledFile) -> str:
    header = (
        f"# Resolved from {compiled.path} (version {compiled.version}); every default filled in.\n"
    )
    return header + tomli_w.dumps(resolved(compiled))
