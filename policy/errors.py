"""Policy problems a person can act on: file, path, value and rule — all of them at once."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()


def show_value(value: Any) -> str:
    """Render a value the way the operator wrote it in TOML, shortened to one readable line."""
    if value is MISSING:
        return "(missing)"
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, int | float):
        text = repr(value)
    else:
        text = json.dumps(value, ensure_ascii=False, default=str, separators=(", ", " = "))
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True, slots=True)
class Problem:
    path: str  # dotted TOML path, e.g. policies.fast.terms.vram.swap[1].up_to_gb
    value: Any  # the offending value, or MISSING
    rule: str  # phrased to follow the value: "is below swap[0].up_to_gb (40); tiers must ascend"

    def render(self, file: str) -> str:
        where = f"{file}: {self.path}: " if self.path else f"{file}: "
        if self.value is MISSING:
            return f"{where}{self.rule}"
        return f"{where}{show_value(self.value)} {self.rule}"


class PolicyError(Exception):
    """Every problem found in one policy file. `str()` gives one line per problem."""

    def __init__(self, file: str, problems: list[Problem]) -> None:
        self.file = file
        self.problems = tuple(problems)
        super().__init__("\n".join(p.render(file) for p in self.problems))

    @property
    def lines(self) -> list[str]:
        return [p.render(self.file) for p in self.problems]


def join_path(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    bare = key.replace("_", "").replace("-", "").isalnum() and key.isascii()
    part = key if bare else json.dumps(key)
    return f"{path}.{part}" if path else part
