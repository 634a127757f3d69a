"""Synthetic traces: how people really load a shared Ollama box, as replayable arrivals.

Each preset is a small generator of open-loop arrivals (a client's next request does not wait for
the previous answer — what a trace exported from the journal records too). The shapes and where
they come from are in docs/simulator.md. Deterministic: one `random.Random(seed)` drives it all,
and records come out sorted by arrival with ties broken by generation order.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from schemas.trace import TraceRecord

T0 = 1_767_254_400.0  # 2026-01-01T08:00:00Z: `at` of the first arrival (a Thursday morning)

CHAT, GENERATE, EMBED = "/api/chat", "/api/generate", "/api/embed"

# One arrival before it becomes a TraceRecord: (arrival, client, class, model, endpoint,
# prompt_tokens, output_tokens), and the options.num_ctx it asks for where a preset sets one.
Arrival = tuple[float, str, str, str, str, int, int] | tuple[float, str, str, str, str, int, int, int]
Generator = Callable[[random.Random], Iterator[Arrival]]


@dataclass(frozen=True, slots=True)
class TracePreset:
    summary: str  # one line, for `trace synth --help`
    gpu: str  # the emulator preset (sim/presets.py) the shape was designed for
    generate: Generator


def _tokens(rng: random.Random, median: float, spread: float = 0.6, low: int = 1) -> int:
    """Log-normal token counts: most requests near the median, a long tail of big ones."""
    return max(low, int(rng.lognormvariate(math.log(median), spread)))


def _zipf_weights(n: int, s: float) -> list[float]:
    return [1.0 / (rank**s) for rank in range(1, n + 1)]


def _agents(rng: random.Random) -> Iterator[Arrival]:
    """Four agent workers loop plan → retrieve → code: a 32B planner, an embedder and a 14B coder
    that do not fit the card together, so every worker's step alternates models."""
    workers = [f"agent-{i}" for i in range(1, 5)]
    clocks = {w: rng.uniform(0, 30) for w in workers}
    while True:
        worker = min(workers, key=lambda w: (clocks[w], w))
        t = clocks[worker]
        yield (t, worker, "batch", "qwq:32b", CHAT, _tokens(rng, 1800), _tokens(rng, 220))
        t += rng.uniform(0.5, 2.0)
        for _ in range(rng.randint(1, 3)):
            yield (t, worker, "batch", "nomic-embed-text:latest", EMBED, _tokens(rng, 300), 0)
            t += rng.uniform(0.1, 0.5)
        yield (t, worker, "batch", "phi4:14b", CHAT, _tokens(rng, 2500), _tokens(rng, 400))
        # Tool calls, test runs, a person reading the diff: minutes between a worker's steps.
        clocks[worker] = t + 60.0 + rng.expovariate(1 / 90.0)


def _flood(rng: random.Random) -> Iterator[Arrival]:
    """Four people chat at a human pace; every ten minutes a CI job dumps 300 requests at once."""
    people = ["alice", "bob", "carol", "dave"]
    models = {"alice": "llama3.2:3b", "bob": "mistral:7b", "carol": "llama3.2:3b", "dave": "mistral:7b"}
    events: list[Arrival] = []
    horizon, t = 0.0, 0.0
    while True:
        horizon += 600.0
        burst = horizon - 540.0  # a minute into each ten-minute period
        for k in range(300):
            events.append((burst + k * 0.01, "ci-batch", "batch", "llama3.1:8b", GENERATE,
                           _tokens(rng, 400), _tokens(rng, 150)))
        while t < horizon:
            t += rng.expovariate(1 / 12.0)  # the four together: one request every 12 s
            who = rng.choice(people)
            events.append((t, who, "interactive", models[who], CHAT, _tokens(rng, 600),
                           _tokens(rng, 250)))
        events.sort(key=lambda e: e[0])
        yield from (e for e in events if e[0] < horizon)
        events = [e for e in events if e[0] >= horizon]


def _office_hours(rng: random.Random) -> Iterator[Arrival]:
    """A team of 25 on an 80 GB card over a working day: Poisson arrivals whose rate swells to a
    late-morning peak, dips at lunch and swells again; Zipf-popular models (the 8B most of all);
    about one request in fifty for the 70B model, which needs most of the card."""
    models = ["llama3.1:8b", "gemma3:12b", "qwq:32b", "phi4:14b", "gemma3:27b",
              "nomic-embed-text:latest"]
    model_weights = _zipf_weights(len(models), 1.1)
    users = [f"user-{i:02d}" for i in range(1, 26)]
    user_weights = _zipf_weights(len(users), 0.8)  # a few heavy users, a long tail of light ones
    peak = 1 / 4.0  # requests per second at the busiest hour

    def rate(t: float) -> float:
        hour = (t / 3600.0) % 10.0  # 08:00 → 18:00, then the day starts again
        day = math.sin(math.pi * hour / 10.0) ** 2  # quiet at start and end, busy mid-day
        lunch = 0.5 if 4.0 <= hour < 5.0 else 1.0
        return peak * (0.15 + 0.85 * day) * lunch

    t = 0.0
    while True:
        t += rng.expovariate(peak)
        if rng.random() > rate(t) / peak:  # thinning: a non-homogeneous Poisson process
            continue
        user = rng.choices(users, user_weights)[0]
        if rng.random() < 0.02:
            yield (t, user, "interactive", "llama3.3:70b", CHAT, _tokens(rng, 1500), _tokens(rng, 500))
            continue
        model = rng.choices(models, model_weights)[0]
        if model.startswith("nomic"):
            yield (t, user, "interactive", model, EMBED, _tokens(rng, 400), 0)
        else:
            yield (t, user, "interactive", model, CHAT, _tokens(rng, 800), _tokens(rng, 300))


def _many_models(rng: random.Random) -> Iterator[Arrival]:
    """Forty users over nine models on a 24 GB card: each has a favourite model (70 % of their
    requests) and tries others; at most three fit at once, so the working set never fits."""
    models = ["llama3.2:1b", "llama3.2:3b", "mistral:7b", "llama3.1:8b", "gemma3:12b",
              "phi4:14b", "gemma3:27b", "qwq:32b", "nomic-embed-text:latest"]
    users = [f"user-{i:02d}" for i in range(1, 41)]
    favourite = {u: models[rng.randrange(len(models))] for u in users}
    t = 0.0
    while True:
        t += rng.expovariate(1 / 6.0)
        user = rng.choice(users)
        model = favourite[user] if rng.random() < 0.7 else rng.choice(models)
        if model.startswith("nomic"):
            yield (t, user, "interactive", model, EMBED, _tokens(rng, 300), 0)
        else:
            yield (t, user, "interactive", model, CHAT, _tokens(rng, 700), _tokens(rng, 200))


def _classes(rng: random.Random) -> Iterator[Arrival]:
    """People (interactive, short answers) next to batch jobs (long generations on a bigger
    model, in bursts of 15 every five minutes): the case request classes exist for."""
    people = [f"user-{i}" for i in range(1, 9)]
    events: list[Arrival] = []
    horizon, t = 0.0, 0.0
    while True:
        horizon += 300.0
        start = horizon - 300.0 + rng.uniform(0, 60)
        for k in range(15):
            events.append((start + k * 0.5, f"ci-job-{int(horizon // 300) % 3}", "batch",
                           "gemma3:12b", GENERATE, _tokens(rng, 1200), _tokens(rng, 600)))
        while t < horizon:
            t += rng.expovariate(1 / 8.0)
            model = "llama3.1:8b" if rng.random() < 0.8 else "llama3.2:3b"
            events.append((t, rng.choice(people), "interactive", model, CHAT,
                           _tokens(rng, 500), _tokens(rng, 150)))
        events.sort(key=lambda e: e[0])
        yield from (e for e in events if e[0] < horizon)
        events = [e for e in events if e[0] >= horizon]


def _mixed_ctx(rng: random.Random) -> Iterator[Arrival]:
    """Twelve people on two models that fit together, through three tools that each send their
    own options.num_ctx (4k, 8k, 16k): every change of context at a model is a reload for Ollama,
    though the runner already holding 16k could have served all three."""
    tools = {"webui": 4096, "ide": 8192, "agent": 16384}
    users = [(f"{tool}-{i}", ctx) for tool, ctx in tools.items() for i in range(1, 5)]
    t = 0.0
    while True:
        t += rng.expovariate(1 / 6.0)
        user, num_ctx = rng.choice(users)
        model = "llama3.1:8b" if rng.random() < 0.7 else "gemma3:12b"
        yield (t, user, "interactive", model, CHAT, _tokens(rng, 900), _tokens(rng, 250), num_ctx)


def _overload(rng: random.Random) -> Iterator[Arrival]:
    """More than the card can serve: six agent workers (batch) step between a 32B planner and an 8B
    coder that do not fit together, every few seconds, beside four people chatting on the 8B."""
    workers = [f"agent-{i}" for i in range(1, 7)]
    people = [f"user-{i}" for i in range(1, 5)]
    clocks = {w: rng.uniform(0, 10) for w in workers}
    events: list[Arrival] = []
    horizon, t = 0.0, 0.0
    while True:
        horizon += 120.0
        for worker in workers:
            while clocks[worker] < horizon:
                at = clocks[worker]
                events.append((at, worker, "batch", "qwq:32b", CHAT, _tokens(rng, 1500), _tokens(rng, 200)))
                at += rng.uniform(1.0, 3.0)
                events.append((at, worker, "batch", "llama3.1:8b", CHAT, _tokens(rng, 2000), _tokens(rng, 300)))
                clocks[worker] = at + rng.uniform(5.0, 20.0)
        while t < horizon:
            t += rng.expovariate(1 / 10.0)
            events.append((t, rng.choice(people), "interactive", "llama3.1:8b", CHAT,
                           _tokens(rng, 500), _tokens(rng, 150)))
        events.sort(key=lambda e: e[0])
        yield from (e for e in events if e[0] < horizon)
        events = [e for e in events if e[0] >= horizon]


TRACE_PRESETS: dict[str, TracePreset] = {
    "agents": TracePreset(
        "four agent workers cycling a 32B planner, an embedder and a 14B coder (24 GB card)",
        "workstation-24gb", _agents),
    "flood": TracePreset(
        "a CI client dumps 300 batch requests every 10 min next to four people chatting (24 GB)",
        "workstation-24gb", _flood),
    "office-hours": TracePreset(
        "25 people over a working day: swelling Poisson arrivals, Zipf models, a rare 70B (80 GB)",
        "server-80gb", _office_hours),
    "many-models": TracePreset(
        "40 users over 9 models on a 24 GB card that holds three: the working set never fits",
        "workstation-24gb", _many_models),
    "classes": TracePreset(
        "interactive people next to bursts of long batch generations on a 12B model (24 GB)",
        "workstation-24gb", _classes),
    "overload": TracePreset(
        "six agent workers alternating a 32B and an 8B faster than a 24 GB card serves, beside people",
        "workstation-24gb", _overload),
    "mixed-ctx": TracePreset(
        "12 people on two models through three tools sending num_ctx 4k, 8k or 16k (24 GB)",
        "workstation-24gb", _mixed_ctx),
}


def synthesize(preset: str, requests: int, seed: int) -> list[TraceRecord]:
    """`requests` arrivals of the preset, oldest first, `arrival` from 0."""
    rng = random.Random(f"{preset}:{seed}")
    drawn: list[tuple[float, int, Arrival]] = []
    for i, arrival in enumerate(TRACE_PRESETS[preset].generate(rng)):
        if i >= requests:
            break
        drawn.append((arrival[0], i, arrival))
    drawn.sort(key=lambda d: (d[0], d[1]))
    first = drawn[0][0] if drawn else 0.0
    out = []
    for at, _, arrival in drawn:
        _, client, cls, model, endpoint, prompt, output = arrival[:7]
        offset = round(at - first, 6)
        out.append(TraceRecord(arrival=offset, at=round(T0 + offset, 6), client=client,
                               model=model, endpoint=endpoint, request_class=cls,
                               prompt_tokens=prompt, output_tokens=output,
                               num_ctx=arrival[7] if len(arrival) > 7 else None))
    return out
