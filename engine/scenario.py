"""Replay a scenario under a policy: release the queue, free one slot at a time, record what was
dispatched and why. Deterministic: a manual clock, sorted inputs, rounded numbers."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from engine.clock import ManualClock
from engine.residency import GIB
from engine.scheduler import Scheduler
from policy.decode import convert, is_fail, parse_toml
from policy.errors import MISSING, PolicyError, Problem
from policy.load import CompiledFile
from schemas.scenario import Scenario
from schemas.ticket import Score


def load_scenario(path: str | Path) -> Scenario:
    """Decode a scenario file, with every problem reported like a policy file's."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(
            str(path), [Problem("", MISSING, f"cannot read the scenario: {exc}")]
        ) from None
    raw, syntax = parse_toml(text)
    if syntax is not None or raw is None:
        raise PolicyError(str(path), [syntax] if syntax else [])
    problems: list[Problem] = []
    scenario = convert(raw, Scenario, "", problems)
    if problems or is_fail(scenario):
        raise PolicyError(str(path), problems)
    problems = _replay_problems(scenario)
    if problems:
        raise PolicyError(str(path), problems)
    return scenario


def _replay_problems(scenario: Scenario) -> list[Problem]:
    """What replaying would trip over: the clock runs forwards to `now`, ids are unique."""
    problems: list[Problem] = []
    after = f"is after now ({scenario.now!r});"
    for i, h in enumerate(scenario.history):
        problems.extend(
            Problem(f"history[{i}].at[{j}]", t, f"{after} history lies in the past")
            for j, t in enumerate(h.at)
            if t > scenario.now
        )
    first: dict[str, int] = {}
    for i, t in enumerate(scenario.tickets):
        if t.arrival > scenario.now:
            problems.append(
                Problem(f"tickets[{i}].arrival", t.arrival, f"{after} tickets arrive by now")
            )
        if t.id in first:
            problems.append(
                Problem(
                    f"tickets[{i}].id",
                    t.id,
                    f"is already the id of tickets[{first[t.id]}]; ids must be unique",
                )
            )
        first.setdefault(t.id, i)
    return problems


def _num(x: float) -> float | int:
    x = round(x, 6) + 0.0  # + 0.0 turns -0.0 into 0.0
    return int(x) if x.is_integer() else x


def score_json(score: Score) -> dict[str, Any]:
    out: dict[str, Any] = {"total": _num(score.total)}
    out["terms"] = {p.term: _num(p.points) for p in score.parts}
    if score.overdue:
        out["overdue"] = True
    return out


def build(
    settings: CompiledFile, scenario: Scenario, policy: str | None = None
) -> tuple[Scheduler, ManualClock]:
    """A scheduler holding the scenario's state, its clock at the first event."""
    b = scenario.backend
    backend = dataclasses.replace(
        settings.backend,
        max_parallel=1,  # slots free one at a time, so the sequence is the policy's order
        vram_gb=b.vram_gb or settings.backend.vram_gb,
        max_loaded_models=b.max_loaded_models or settings.backend.max_loaded_models,
        num_parallel=b.num_parallel or settings.backend.num_parallel,
    )
    # A scenario is one card's state: a file's several [backends] become this one.
    settings = dataclasses.replace(settings, backend=backend, backends=())
    if policy is not None:
        settings = settings.with_active(policy)
    events: list[tuple[float, int, str, Any]] = []
    for h in scenario.history:
        events.extend((t, 0, "history", h.client) for t in h.at)
    for i, t in enumerate(scenario.tickets):
        events.append((t.arrival, 1, f"{i:06d}", t))
    events.sort(key=lambda e: (e[0], e[1], e[2]))
    clock = ManualClock(min([e[0] for e in events] + [scenario.now]))
    scheduler = Scheduler(settings, clock=clock)
    scheduler.pause()  # the queue is released at `now`
    r = scheduler.residency_model
    r.learn_sizes(scenario.sizes)
    scheduler.reconcile(
        {"models": [{"name": m.model, "size": int(m.size_gb * GIB)} for m in scenario.loaded]}
    )
    default = settings.clients.default_class
    for at, _, kind, item in events:
        clock.set(at)
        if kind == "history":
            scheduler.record_history(item, at)
        else:
            scheduler.enqueue(
                request_id=item.id, model=item.model, client=item.client, cls=item.cls or default
            )
    clock.set(scenario.now)
    return scheduler, clock


def ranking(
    settings: CompiledFile, scenario: Scenario, policy: str | None = None
) -> list[dict[str, Any]]:
    """The waiting tickets in the policy's order at `now`, before anything is dispatched."""
    scheduler, clock = build(settings, scenario, policy)
    return [
        {
            "rank": r.position,
            "ticket": r.ticket.id,
            "model": r.ticket.model,
            "client": r.ticket.client,
            "class": r.ticket.cls,
            "waited": _num(clock.now - r.ticket.arrival),
            **score_json(r.score),
        }
        for r in scheduler.waiting()
    ]


def dispatch_sequence(
    settings: CompiledFile, scenario: Scenario, policy: str | None = None
) -> list[dict[str, Any]]:
    """Release the queue and record each dispatch, one slot freeing at a time."""
    scheduler, clock = build(settings, scenario, policy)
    scheduler.resume()
    steps: list[dict[str, Any]] = []
    # A policy's swap_hold keeps a swap back beside a free slot until time passes: move the clock
    # as the sidecar's polls do (each one a dispatch), for at most the hold and two more polls.
    poll = scheduler.settings.backend.poll_interval or 1.0
    hold = scheduler.settings.active.swap_hold or 0.0
    while scheduler.depth:
        grants = scheduler.dispatch()
        waited = 0.0
        while not grants and waited <= hold + poll:
            clock.advance(poll)
            waited += poll
            grants = scheduler.dispatch()
        if not grants:
            raise RuntimeError("the scheduler stalled with tickets waiting and a free slot")
        for g in grants:
            steps.append(
                {
                    "step": len(steps) + 1,
                    "at": _num(clock.now),
                    "ticket": g.ticket.id,
                    "model": g.ticket.model,
                    "client": g.ticket.client,
                    "class": g.ticket.cls,
                    "action": g.action,
                    **({"evicts": list(g.evicts)} if g.evicts else {}),
                    **score_json(g.score),
                }
            )
            scheduler.first_byte(g.ticket.id)
            clock.advance(scenario.step)
            scheduler.finish(g.ticket.id)
    return steps


def scenario_files(directory: str | Path) -> list[Path]:
    return sorted(Path(directory).glob("*.toml"))
