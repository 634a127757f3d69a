"""Which class a request belongs to, from the [clients] rules. Pure; compiled once per file."""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

from schemas.model_name import canonical_pattern
from schemas.policy_file import Clients


@dataclass(frozen=True, slots=True)
class _Rule:
    name: str
    clients: tuple[str, ...]
    models: tuple[str, ...]
    endpoints: tuple[str, ...]

    def matches(self, client: str, model: str, endpoint: str) -> bool:
        checks = ((self.clients, client), (self.models, model), (self.endpoints, endpoint))
        if not any(patterns for patterns, _ in checks):
            return False  # a class with no rules is only reached by name or as the default
        return all(
            not patterns or any(fnmatchcase(value, p) for p in patterns)
            for patterns, value in checks
        )


@dataclass(frozen=True, slots=True)
class Classifier:
    rules: tuple[_Rule, ...]
    selectable: frozenset[str]
    default: str

    @classmethod
    def from_settings(cls, clients: Clients) -> Classifier:
        rules = tuple(
            # Requests are classified by canonical model name, so the globs are made to match it.
            _Rule(
                name, tuple(r.clients), tuple(canonical_pattern(m) for m in r.models),
                tuple(r.endpoints),
            )
            for name, r in clients.classes.items()
        )
        selectable = frozenset(n for n, r in clients.classes.items() if r.selectable)
        return cls(rules, selectable, clients.default_class)

    def classify(self, client: str, model: str, endpoint: str, requested: str | None) -> str:
        """The requested class if it may be chosen, else the first matching rule, else default."""
        if requested and requested in self.selectable:
            return requested
        for rule in self.rules:
            if rule.matches(client, model, endpoint):
                return rule.name
        return self.default
