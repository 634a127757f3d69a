"""Why a ticket waits: /proxy/queue gives each waiting ticket `eligible` and a `reason` (a model at
its parallel limit, one load at a time, an eviction under way, a swap held back, pause, no slot),
so an idle slot beside a waiting queue is explained."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sidecar_fixtures import SidecarFactory, make_policy, wait_until

from engine.clock import ManualClock
from engine.residency import GIB, ResidencyModel
from engine.scheduler import Scheduler
from policy.load import load_policy_file

EXAMPLE = load_policy_file(Path(__file__).resolve().parent.parent / "policies.example.toml")

LOADING = "b:latest is loading, and Ollama loads one model at a time"


def _loaded(model: ResidencyModel, **sizes: float) -> None:
    model.reconcile({"models": [{"name": n, "size": int(gb * GIB)} for n, gb in sizes.items()]})


def idle(r: ResidencyModel) -> None:
    _loaded(r, a=2)


def at_limit(r: ResidencyModel) -> None:
    _loaded(r, a=2)
    for _ in range(2):
        r.dispatched("a:latest", r.plan("a:latest"), 1.0)


def b_loading(r: ResidencyModel) -> None:
    _loaded(r, a=2)
    r.learn_sizes({"b": 2})
    r.dispatched("b:latest", r.plan("b:latest"), 1.0)


def b_evicting_busy_a(r: ResidencyModel) -> None:
    _loaded(r, a=6)
    r.dispatched("a:latest", r.plan("a:latest"), 1.0)  # a runs one request
    r.learn_sizes({"b": 4})
    plan = r.plan("b:latest")
    assert plan.evicts == ("a:latest",)
    r.dispatched("b:latest", plan, 2.0)


def b_evicting_idle_a(r: ResidencyModel) -> None:
    _loaded(r, a=6)
    r.learn_sizes({"b": 4})
    r.dispatched("b:latest", r.plan("b:latest"), 2.0)


@pytest.mark.parametrize(
    ("setup", "model", "variant", "reason"),
    [
        (idle, "a:latest", "", None),
        (idle, "c:latest", "", None),  # a load, and none under way
        (at_limit, "a:latest", "", "model a:latest at its num_parallel limit (2 of 2 running)"),
        (at_limit, "a:latest", "num_ctx=8192", None),  # a reload of a busy model may start
        (b_loading, "c:latest", "", LOADING),
        (b_loading, "a:latest", "num_ctx=8192", LOADING),  # a reload is a load too
        (b_loading, "a:latest", "", None),  # loaded beside b: attaches
        (b_loading, "b:latest", "", None),  # attaches to the load under way
        (
            b_evicting_busy_a, "c:latest", "",
            LOADING + "; the load waits for 1 running request on a:latest to finish before"
            " a:latest can be evicted",
        ),
        (b_evicting_busy_a, "a:latest", "", "model a:latest is being evicted to make room for b:latest"),
        (b_evicting_idle_a, "c:latest", "", LOADING),
        (b_evicting_idle_a, "a:latest", "", "model a:latest is being evicted to make room for b:latest"),
    ],
)
def test_residency_reason_says_why_a_model_is_not_eligible(
    setup: Callable[[ResidencyModel], None], model: str, variant: str, reason: str | None
) -> None:
    r = ResidencyModel(vram_gb=8, max_loaded=2, num_parallel=2)
    setup(r)
    assert r.blocked_reason(model, variant) == reason
    assert r.eligible(model, variant) is (reason is None)  # the reason never contradicts the picker


def _scheduler() -> tuple[Scheduler, ManualClock]:
    clock = ManualClock(100.0)
    s = Scheduler(EXAMPLE.with_active("balanced"), clock=clock)
    s.reconcile({"models": [{"name": "llama3.1:8b", "size": 6 * GIB}]})
    s.residency_model.learn_sizes({"qwq:32b": 23.0})
    return s, clock


def _set_backend(s: Scheduler, **changes: Any) -> None:
    """A reload that changes only [backend] keys, the way the sidecar applies one."""
    settings = s.settings
    s.apply_settings(dataclasses.replace(settings, backend=dataclasses.replace(settings.backend, **changes)))


def _view(s: Scheduler) -> dict[str, tuple[bool, str | None]]:
    return {r.ticket.id: (r.eligible, r.reason) for r in s.waiting()}


def test_scheduler_reasons() -> None:
    """Each stage of one story, and what the queue view says about every waiting ticket."""
    s, _ = _scheduler()
    s.pause()
    s.enqueue(request_id="q", model="qwq:32b", client="bob", cls="interactive")
    s.enqueue(request_id="l1", model="llama3.1:8b", client="alice", cls="interactive")
    s.enqueue(request_id="l2", model="llama3.1:8b", client="carol", cls="interactive")
    held = (
        "held back: loading qwq:32b would evict llama3.1:8b, whose own waiting requests rank ahead"
    )
    assert _view(s) == {
        "l1": (True, "dispatching is paused"),
        "l2": (True, "dispatching is paused"),
        "q": (False, "dispatching is paused; " + held),
    }
    s.resume()
    assert [g.ticket.id for g in s.dispatch()] == ["l1"]  # the second slot stays free: why?
    assert _view(s) == {
        "l2": (False, "model llama3.1:8b at its num_parallel limit (1 of 1 running)"),
        "q": (False, held),
    }
    s.finish("l1")
    _set_backend(s, num_parallel=2, max_parallel=1)
    assert [g.ticket.id for g in s.dispatch()] == ["l2"]
    s.pause()
    assert _view(s) == {
        "q": (True, "dispatching is paused; max_parallel reached (1 of 1 slots busy)"),
    }
    s.resume()
    _set_backend(s, num_parallel=2, max_parallel=2)
    assert [(g.ticket.id, g.action) for g in s.dispatch()] == [("q", "swap")]
    s.enqueue(request_id="l3", model="llama3.1:8b", client="alice", cls="interactive")
    s.enqueue(request_id="q2", model="qwq:32b", client="bob", cls="interactive")
    assert _view(s) == {
        "l3": (
            False,
            "model llama3.1:8b is being evicted to make room for qwq:32b;"
            " max_parallel reached (2 of 2 slots busy)",
        ),
        "q2": (True, "max_parallel reached (2 of 2 slots busy)"),
    }


SLOW = """
[node]
vram_gb = 8
time_scale = 0.3
[[models]]
name = "slow:70b"
size_gb = 0.5
parameter_size = "70B"
quantization = "Q4_K_M"
family = "llama"
"""


def _wait_queue(proxy: Any, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    seen: list[dict[str, Any]] = []
    wait_until(lambda: predicate(seen.append(proxy.queue()) or seen[-1]), within=10,
               what="the queue view reaching the expected state")
    return seen[-1]


def test_queue_view_explains_an_idle_slot(sidecar_factory: SidecarFactory) -> None:
    """Through the real sidecar: one request streams from slow:70b (num_parallel 1), a second for
    the same model waits although a slot is free, and /proxy/queue says why."""
    from sim.config import load_text
    from sim.testing import running_emulator

    with running_emulator(load_text(SLOW, "slow", time.time())) as emulator:
        proxy = sidecar_factory(upstream=emulator.url, policy=make_policy(max_parallel=2))
        body = {"model": "Slow:70B", "prompt": "tell me everything"}
        with httpx.stream("POST", proxy.url + "/api/generate", json=body, timeout=30,
                          headers={"x-request-id": "first"}) as response:
            lines = response.iter_lines()  # kept: dropping the iterator closes the connection
            next(lines)
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                second = pool.submit(
                    httpx.post, proxy.url + "/api/generate", json=body, timeout=30,
                    headers={"x-request-id": "second"},
                )
                view = _wait_queue(proxy, lambda v: v["depth"] == 1)
                assert view["max_parallel"] == 2 and len(view["in_flight"]) == 1
                (entry,) = view["waiting"]
                assert (entry["request_id"], entry["eligible"], entry["reason"]) == (
                    "second", False, "model slow:70b at its num_parallel limit (1 of 1 running)"
                )
                removed = proxy.admin("DELETE", "/proxy/queue/second")
                assert removed.json()["cancelled"] is True
                assert second.result().status_code == 503
        proxy.wait_idle()
