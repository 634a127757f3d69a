"""Service received per client, for the `fair_share` term: the Virtual Token Counter (Sheng et
al., "Fairness in Serving Large Language Models", OSDI 2024) with a half-life.

Each client has a counter of the service it got — tokens (input × w_in + output × w_out, from
Ollama's counters) or GPU seconds (prompt evaluation + generation + load) — that decays with a
half-life, so what a client had an hour ago stops counting. Two rules from VTC keep it fair:

- **Charged when it starts, corrected when it ends.** A granted request is charged an estimate at
  once (the client's recent average, or a prior), so a client cannot send ten long requests that
  all look free until the first finishes; the estimate is replaced by the actual use at the end.
- **A newly active client is lifted** to the least-served active client's counter: a client that
  stayed away does not come back with a credit that lets it shut everybody else out.

The policy sees `lead(client)`: how far the client is ahead of the least-served waiting client.
Decay and that floor move only at *epochs* (a 64th of the half-life): between two epochs a
client's lead changes only through its own events, which is what lets the engine keep client
scores cached (engine/picker.py) — at each epoch every waiting client is re-scored once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from policy.durations import parse_duration
from policy.load import CompiledFile

EPOCHS_PER_HALF_LIFE = 64
HISTORY_ALPHA = 0.2  # weight of the newest request in a client's running average


@dataclass(frozen=True, slots=True)
class Usage:
    """What one request used, from Ollama's final counters (zeros when it has none)."""

    input_tokens: int = 0
    output_tokens: int = 0
    gpu_seconds: float = 0.0
    load_seconds: float = 0.0  # the part of it spent loading the model (learned by swap_cost)

    @classmethod
    def from_counters(cls, counters: Mapping[str, int]) -> Usage:
        ns = sum(counters.get(k, 0) for k in ("prompt_eval_duration", "eval_duration", "load_duration"))
        return cls(counters.get("prompt_eval_count", 0), counters.get("eval_count", 0), ns / 1e9,
                   counters.get("load_duration", 0) / 1e9)


@dataclass(frozen=True, slots=True)
class ServiceSettings:
    unit: str = "tokens"  # or "gpu_seconds"
    input_weight: float = 1.0
    output_weight: float = 2.0
    half_life: float = 600.0
    prior: float = 500.0  # a first request's estimated service, in the unit (GPU seconds: 10)

    def amount(self, usage: Usage) -> float:
        if self.unit == "gpu_seconds":
            return usage.gpu_seconds
        return self.input_weight * usage.input_tokens + self.output_weight * usage.output_tokens


class ServiceAccount:
    def __init__(self, settings: ServiceSettings | None = None) -> None:
        self.settings = settings or ServiceSettings()
        self._value: dict[str, float] = {}  # decayed to `_decayed_at`
        self._average: dict[str, float] = {}  # a client's recent service per request
        self._charged: dict[str, tuple[str, float]] = {}  # request id -> (client, estimate)
        self._epoch = 0
        self._decayed_at = 0.0  # the time the counters are decayed to
        self.floor = 0.0  # the least-served waiting client's counter, as of the last epoch

    def configure(self, settings: ServiceSettings) -> None:
        """A reload. Another unit or other weights make the counters mean something else: they
        start again; another half-life only changes how they fade from now on."""
        old = self.settings
        self.settings = settings
        if (old.unit, old.input_weight, old.output_weight) != (
            settings.unit, settings.input_weight, settings.output_weight
        ):
            self._value.clear()
            self._average.clear()
            self._charged = {rid: (client, 0.0) for rid, (client, _) in self._charged.items()}
            self.floor = 0.0

    @property
    def epoch_length(self) -> float:
        return self.settings.half_life / EPOCHS_PER_HALF_LIFE

    def lead(self, client: str) -> float:
        """How far the client's counter is above the floor (never below 0)."""
        return max(0.0, self._value.get(client, 0.0) - self.floor)

    def tick(self, now: float, waiting: Iterable[str]) -> bool:
        """Bring decay and the floor to `now`'s epoch; True when they moved (every waiting
        client's lead may have changed)."""
        epoch = math.floor(now / self.epoch_length) if self.epoch_length > 0 else 0
        if epoch == self._epoch:
            return False
        # By the time elapsed, not by epochs counted: a reload may change the epochs' length.
        start = epoch * self.epoch_length
        factor = 0.5 ** (max(0.0, start - self._decayed_at) / self.settings.half_life)
        self._epoch, self._decayed_at = epoch, max(self._decayed_at, start)
        self._value = {c: v * factor for c, v in self._value.items() if v * factor > 1e-6}
        self._set_floor(waiting)
        return True

    def _set_floor(self, waiting: Iterable[str]) -> None:
        values = [self._value.get(c, 0.0) for c in waiting]
        self.floor = min(values) if values else 0.0

    def activated(self, client: str) -> None:
        """The client has a waiting request again after none: lift it to the floor (VTC)."""
        if self._value.get(client, 0.0) < self.floor:
            self._value[client] = self.floor

    def charge(self, request_id: str, client: str) -> None:
        """A request of `client` was granted: charge the estimate now."""
        estimate = self._average.get(client, self.settings.prior)
        self._charged[request_id] = (client, estimate)
        self._value[client] = self._value.get(client, 0.0) + estimate

    def refund(self, request_id: str) -> None:
        """The grant came to nothing (its backend refused the connection): take back its charge."""
        charged = self._charged.pop(request_id, None)
        if charged is not None:
            client, estimate = charged
            self._value[client] = max(0.0, self._value.get(client, 0.0) - estimate)

    def settle(self, request_id: str, usage: Usage | None) -> str | None:
        """The request ended: its actual service replaces the estimate (none known: the
        estimate stands). The client whose counter moved, or None."""
        charged = self._charged.pop(request_id, None)
        if charged is None:
            return None
        client, estimate = charged
        if usage is None or (self.settings.unit == "gpu_seconds" and usage.gpu_seconds <= 0):
            return None  # nothing measured in this unit (an answer without durations)
        actual = self.settings.amount(usage)
        self._value[client] = max(0.0, self._value.get(client, 0.0) + actual - estimate)
        old = self._average.get(client)
        self._average[client] = actual if old is None else (1 - HISTORY_ALPHA) * old + HISTORY_ALPHA * actual
        if len(self._average) > 10_000:  # client names come from outside: stay bounded
            self._average.pop(next(iter(self._average)))
        return client

    def value(self, client: str) -> float:
        return self._value.get(client, 0.0)


def service_settings_of(settings: CompiledFile) -> ServiceSettings:
    """How the active policy's fair_share term counts service (the defaults without one)."""
    for term in settings.terms.get(settings.active.name, ()):
        if term.type.name == "fair_share":
            p = term.params
            return ServiceSettings(unit=p.unit, input_weight=p.input_weight,
                                   output_weight=p.output_weight, half_life=parse_duration(p.half_life),
                                   prior=500.0 if p.unit == "tokens" else 10.0)
    return ServiceSettings()
