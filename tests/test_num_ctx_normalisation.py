"""num_ctx normalisation ([policies.NAME.num_ctx]): a request asking another context than the
loaded runner's runs on that runner, its num_ctx rewritten, instead of making Ollama reload."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from sidecar_fixtures import SidecarFactory, make_policy

from engine.clock import ManualClock
from engine.residency import GIB, ResidencyModel
from engine.scheduler import Scheduler
from engine.variants import parse_variant, reusable, variant_of
from policy.errors import PolicyError
from policy.load import load_policy_text

# ---- which runner a request may reuse -------------------------------------------------------


@pytest.mark.parametrize(
    ("asked", "runner", "tolerance", "expected"),
    [
        ("num_ctx=4096", "num_ctx=8192", 0.0, True),  # a larger runner: more context, no reload
        ("num_ctx=8192", "num_ctx=8192", 0.0, True),
        ("num_ctx=8192", "num_ctx=4096", 0.0, False),  # never smaller without a tolerance
        ("num_ctx=8192", "num_ctx=6144", 0.25, True),  # 6144 = 8192 × (1 − 0.25)
        ("num_ctx=8192", "num_ctx=6143", 0.25, False),
        ("", "num_ctx=8192", 0.5, False),  # asked for the server's default: unknown size
        ("num_ctx=4096", "", 0.5, False),  # a default runner: its context is the server's
        ("num_ctx=4096,num_gpu=10", "num_ctx=8192", 0.0, False),  # other options must agree
        ("num_ctx=4096,num_gpu=10", "num_ctx=8192,num_gpu=10", 0.0, True),
    ],
)
def test_reusable(asked: str, runner: str, tolerance: float, expected: bool) -> None:
    assert reusable(asked, runner, tolerance) is expected


def test_parse_variant_reads_back_what_variant_of_writes() -> None:
    options = {"num_ctx": 8192, "num_gpu": -1, "temperature": 0.2}
    assert parse_variant(variant_of(options)) == {"num_ctx": 8192, "num_gpu": -1}
    assert parse_variant("") == {}


def loaded_8k(tolerance: float | None) -> ResidencyModel:
    r = ResidencyModel(vram_gb=24, max_loaded=3, num_parallel=4)
    r.ctx_tolerance = tolerance
    r.reconcile({"models": [{"name": "llama3.1:8b", "size": int(6 * GIB)}]})
    r.dispatched("llama3.1:8b", r.plan("llama3.1:8b", "num_ctx=8192"), 1.0, "num_ctx=8192")
    r.first_byte("llama3.1:8b")
    return r


def test_off_every_context_is_its_own_runner() -> None:
    r = loaded_8k(None)
    assert r.residency("llama3.1:8b", "num_ctx=4096") == "absent"
    assert r.plan("llama3.1:8b", "num_ctx=4096").action == "reload"
    assert r.runner_for("llama3.1:8b", "num_ctx=4096") == "num_ctx=4096"


def test_on_a_smaller_context_joins_the_loaded_runner() -> None:
    r = loaded_8k(0.0)
    assert r.residency("llama3.1:8b", "num_ctx=4096") == "loaded"
    assert r.plan("llama3.1:8b", "num_ctx=4096").action == "attach"
    assert r.runner_for("llama3.1:8b", "num_ctx=4096") == "num_ctx=8192"
    # A larger one still reloads; the default context is not guessed at.
    assert r.plan("llama3.1:8b", "num_ctx=16384").action == "reload"
    assert r.plan("llama3.1:8b", "").action == "reload"


def test_turning_it_on_changes_what_model_terms_see() -> None:
    """The picker keeps model parts per residency version: switching must bump it."""
    r = loaded_8k(None)
    before = r.version
    r.set_ctx_tolerance(0.0)
    assert r.version > before
    same = r.version
    r.set_ctx_tolerance(0.0)
    assert r.version == same


# ---- the policy file and the scheduler ------------------------------------------------------

POLICY = """
active = "p"
[backend]
max_parallel = 1
[policies.p.terms.vram]
loaded = 0
fits = 100
unknown_size = 600
swap = [{ up_to_gb = 16, points = 300 }]
swap_above = 800
"""


def scheduler(extra: str) -> Scheduler:
    s = Scheduler(load_policy_text((POLICY + extra).encode(), "p.toml"), clock=ManualClock(10.0))
    s.reconcile({"models": [{"name": "llama3.1:8b", "size": int(6 * GIB)}]})
    return s


def run(s: Scheduler, rid: str, num_ctx: int) -> Any:
    s.enqueue(request_id=rid, model="llama3.1:8b", client="c", cls="interactive",
              variant=f"num_ctx={num_ctx}")
    (grant,) = s.dispatch()
    s.first_byte(rid)
    s.finish(rid)
    return grant


def test_a_normalising_policy_grants_the_runner_and_says_which_num_ctx_to_send() -> None:
    s = scheduler("[policies.p.num_ctx]\nnormalise = true\n")
    first = run(s, "a", 8192)
    assert (first.action, first.num_ctx) == ("reload", None)  # the model was loaded by default
    second = run(s, "b", 4096)
    assert (second.action, second.num_ctx, second.resident) == ("attach", 8192, True)
    third = run(s, "c", 8192)
    assert (third.action, third.num_ctx) == ("attach", None)  # asked what the runner has


def test_without_it_the_same_requests_reload() -> None:
    s = scheduler("")
    run(s, "a", 8192)
    second = run(s, "b", 4096)
    assert (second.action, second.num_ctx) == ("reload", None)


def test_a_bad_tolerance_is_a_policy_error_naming_the_key() -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy_text((POLICY + "[policies.p.num_ctx]\nnormalise = true\ntolerance = 0.9\n").encode(), "p.toml")
    assert "policies.p.num_ctx.tolerance" in str(caught.value)


def test_the_example_throughput_policy_normalises() -> None:
    from policy.load import load_policy_file

    example = load_policy_file(Path(__file__).resolve().parent.parent / "policies.example.toml")
    assert example.policies["throughput"].num_ctx_tolerance == 0.0
    assert example.policies["balanced"].num_ctx_tolerance is None


# ---- end to end: the sidecar in front of the emulator ---------------------------------------

@pytest.mark.parametrize("normalise", [True, False])
def test_the_sidecar_rewrites_num_ctx_and_ollama_does_not_reload(
    sidecar_factory: SidecarFactory, one_model_emulator: Any, normalise: bool
) -> None:
    """8192, then 2048, 4096, 2048 one after another: with normalisation the three later requests
    run on the 8192 runner (one load); without it each change of context is a reload (four)."""
    extra = "[policies.test.num_ctx]\nnormalise = true\n" if normalise else ""
    emulator = one_model_emulator
    proxy = sidecar_factory(upstream=emulator.url, policy=make_policy(max_parallel=1, extra=extra))
    sent = []
    for i, num_ctx in enumerate([8192, 2048, 4096, 2048]):
        body = {"model": "llama3.2:1b", "prompt": "hi", "stream": False, "options": {"num_ctx": num_ctx}}
        response = httpx.post(proxy.url + "/api/generate", json=body,
                              headers={"x-request-id": f"r{i}"}, timeout=30)
        assert response.status_code == 200, response.text
        sent.append(response.headers.get("x-num-ctx-forwarded"))
    stats = emulator.stats()
    records = {r.client_request_id or r.request_id: r for r in proxy.journal.records}
    metrics = httpx.get(proxy.url + "/metrics", timeout=10).text
    if normalise:
        assert sent == [None, "8192", "8192", "8192"]
        assert stats["loads"] == 1 and stats["reloads"] == 0
        assert [(records[f"r{i}"].num_ctx, records[f"r{i}"].num_ctx_forwarded) for i in range(4)] == [
            (8192, None), (2048, 8192), (4096, 8192), (2048, 8192)]
        assert 'smart_proxy_num_ctx_rewrites_total{model="llama3.2:1b"} 3.0' in metrics
    else:
        assert sent == [None] * 4
        assert stats["loads"] == 4 and stats["reloads"] == 3
        assert [records[f"r{i}"].num_ctx_forwarded for i in range(4)] == [None] * 4
        assert "smart_proxy_num_ctx_rewrites_total{" not in metrics
