"""How long a waiting request will wait, roughly: for the queue-status lines a waiting client
hears (server/proxy/exchange.py) and the simulator's measurement of their error.

Slots free at a rate of `max_parallel / S`, where S is how long a request holds its slot (grant
to end), so the request in position p gets one after about `p × S / max_parallel`. S is a moving
average of the slot times observed: overall for the local queue (the requests ahead may be for any
model), per model where every request ahead is for that model's own slots (a cloud model); until
any is observed, a prior.
"""

from __future__ import annotations

PRIOR_S = 10.0  # a slot time guessed before anything was observed
ALPHA = 0.2  # weight of the newest observation in the moving averages


class ServiceTimes:
    def __init__(self, prior: float = PRIOR_S, alpha: float = ALPHA) -> None:
        self._alpha = alpha
        self._overall = prior
        self._seen = 0
        self._per_model: dict[str, float] = {}

    def observe(self, model: str, seconds: float) -> None:
        """A request for `model` held its slot `seconds` (grant to end)."""
        seconds = max(0.0, seconds)
        a = self._alpha
        self._overall = seconds if self._seen == 0 else (1 - a) * self._overall + a * seconds
        self._seen += 1
        old = self._per_model.get(model)
        if old is None and len(self._per_model) >= 1000:
            return  # names come from clients: the table stays bounded
        self._per_model[model] = seconds if old is None else (1 - a) * old + a * seconds

    @property
    def measured(self) -> bool:
        """Whether any request has ended yet (before that, `mean` is only the prior)."""
        return self._seen > 0

    def mean(self, model: str | None = None) -> float:
        if model is not None and model in self._per_model:
            return self._per_model[model]
        return self._overall


def wait_estimate(position: int, max_parallel: int, slot_seconds: float) -> float:
    """Seconds until the request in `position` (1 = next) gets a slot, all slots being busy."""
    return max(0, position) * slot_seconds / max(1, max_parallel)
