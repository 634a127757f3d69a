"""How long a waiting request will wait, roughly: for the queue-status lines a waiting client
hears (server/proxy/exchange.py) and the simulator's measurement of their error.

Slots free at a rate of `max_parallel / S`, where S is how long a request holds its slot (grant
to end), so the request in position p gets one after about `p × S / max_parallel`. S is a moving
average of the slot times observed: overall for the local queue (the requests ahead may be for any
model), per model where every request ahead is for that model's own slots (a cloud model); until
any is observed, a prior.

The admission's drain estimate (engine/admission.py) reads three more measures from here: the
time between answers while requests waited (loads and swaps stall every slot, which slot times
miss), the slot time of the local answers averaged as slowly (the mix that gap was measured on),
and each class's arrival rate (a more urgent class arriving meanwhile goes first).
"""

from __future__ import annotations

import math

PRIOR_S = 10.0  # a slot time guessed before anything was observed
ALPHA = 0.2  # weight of the newest observation in the moving averages
GAP_ALPHA = 0.05  # the gaps between completions vary more (a load stalls every slot): a longer memory
RATE_TAU = 300.0  # seconds: the memory of the per-class arrival rates
RATE_MIN_SPAN = 30.0  # seconds: the shortest span a rate is taken over (one arrival is no rate)
GAP_CAP = 4.0  # slot times: the longest gap between two answers counted (a load can stall them)


class ServiceTimes:
    def __init__(self, prior: float = PRIOR_S, alpha: float = ALPHA) -> None:
        self._alpha = alpha
        self._overall = prior
        self._seen = 0
        self._per_model: dict[str, float] = {}
        self._last_done: float | None = None
        self._last_backlogged = False
        self._gap: float | None = None
        self._gap_slot: float | None = None  # local slot times, as slowly averaged as the gap
        self._rates: dict[str, tuple[float, float]] = {}  # class -> (rate per second, as of when)
        self._first_arrival: float | None = None

    def arrived(self, cls: str, now: float) -> None:
        """A request of `cls` joined the queue at `now` (a monotonic clock)."""
        if self._first_arrival is None:
            self._first_arrival = now
        rate, when = self._rates.get(cls, (0.0, now))
        if cls not in self._rates and len(self._rates) >= 64:
            return  # classes come from the policy file; the table stays bounded anyway
        self._rates[cls] = (rate * math.exp(-(now - when) / RATE_TAU) + 1.0 / RATE_TAU, now)

    def arrival_rates(self, now: float) -> dict[str, float]:
        """Each class's arrivals per second, an exponentially weighted average over ~RATE_TAU."""
        if self._first_arrival is None:
            return {}
        # The average starts at zero: until it has watched for a few RATE_TAU it has counted only
        # part of its window, so it is scaled up by the part it saw (as Adam corrects its moments).
        seen = max(RATE_MIN_SPAN, now - self._first_arrival)
        scale = 1.0 / (1.0 - math.exp(-seen / RATE_TAU))
        return {c: scale * rate * math.exp(-(now - when) / RATE_TAU)
                for c, (rate, when) in self._rates.items()}

    def completed(self, now: float, backlogged: bool, held: float | None = None) -> None:
        """A request holding a local slot ended at `now` (a monotonic clock). `backlogged`:
        requests were waiting. Only a gap between two completions that both found requests
        waiting says how fast the queue drains, loads, swaps and idle slots included (what slot
        times alone miss); one that began on an empty queue holds idle time. A gap is counted at
        most GAP_CAP slot times: with every slot busy the next answer comes within about one.
        `held`: the slot time of the answer, when it completed: averaged as slowly as the gap, over
        every local answer that completed (the gap itself counts only those that found a queue),
        it is the mix the gap is set against (`gap_slot`)."""
        if held is not None:
            start = held if self._gap_slot is None else self._gap_slot
            self._gap_slot = (1 - GAP_ALPHA) * start + GAP_ALPHA * max(0.0, held)
        last, self._last_done = self._last_done, now
        was_backlogged, self._last_backlogged = self._last_backlogged, backlogged
        if backlogged and was_backlogged and last is not None:
            gap = min(max(0.0, now - last), GAP_CAP * self._overall)
            # Started from the slot time (as if one slot served the queue alone): a cautious
            # prior that the measured gaps pull down, rather than the first gap between two
            # answers that ended together.
            start = self._overall if self._gap is None else self._gap
            self._gap = (1 - GAP_ALPHA) * start + GAP_ALPHA * gap

    def gap(self) -> float | None:
        """Seconds between completions while requests waited (a moving average); None until seen."""
        return self._gap

    def gap_slot(self) -> float | None:
        """The slot time of local answers, averaged as slowly as `gap`: the mix the gap was
        measured on. None until a local answer completed."""
        return self._gap_slot

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
