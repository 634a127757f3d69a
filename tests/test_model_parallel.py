"""Per-model parallelism: Ollama serves some architectures (vision, hybrid) one request at a time
whatever OLLAMA_NUM_PARALLEL says, so `[models."NAME or glob"] num_parallel` tells the sidecar,
and the emulator does as Ollama does."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sidecar_fixtures import SidecarFactory, make_policy, wait_until

from engine.residency import ResidencyModel
from policy.errors import PolicyError
from policy.load import load_policy_text

VISION = "llama3.2-vision:11b"


def _policy(extra: str) -> bytes:
    return make_policy(extra=extra).encode()


def test_the_first_matching_entry_wins_else_the_backend_s() -> None:
    compiled = load_policy_text(_policy(
        '[models."llama3.2-vision*"]\nnum_parallel = 1\n'
        '[models."Qwen3-Next"]\nnum_parallel = 2\nvram_gb = 50\n'
        '[models."*"]\nnum_parallel = 3\n'
    ), "p.toml")
    assert compiled.model_parallel == (("llama3.2-vision*", 1), ("qwen3-next:latest", 2), ("*", 3))
    assert compiled.model_sizes == {"Qwen3-Next": 50}
    residency = ResidencyModel(vram_gb=24, max_loaded=3, num_parallel=4, parallel=compiled.model_parallel)
    assert residency.slots(VISION) == 1
    assert residency.slots("qwen3-next:latest") == 2
    assert residency.slots("llama3.2:1b") == 3
    residency.set_parallel((), 4)
    assert residency.slots(VISION) == 4


@pytest.mark.parametrize(("extra", "expected"), [
    ('[models."llava*"]\nvram_gb = 5\n', 'models."llava*".vram_gb: 5.0 is a size for a glob'),
    ('[models."llava:7b"]\n', 'models."llava:7b": {} sets nothing'),
    ('[models."llava:7b"]\nnum_parallel = 0\n', 'models."llava:7b".num_parallel'),
])
def test_bad_entries_are_refused_with_their_path(extra: str, expected: str) -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy_text(_policy(extra), "p.toml")
    assert expected in str(caught.value)


EMULATOR = f"""
[node]
vram_gb = 24
max_loaded_models = 2
num_parallel = 2
time_scale = 0.3
[[models]]
name = "{VISION}"
[[models]]
name = "llama3.2:1b"
"""


@pytest.fixture
def vision_emulator() -> Iterator[Any]:
    from sim.config import load_text
    from sim.testing import running_emulator

    with running_emulator(load_text(EMULATOR, "vision", time.time())) as emulator:
        yield emulator


def _ask(proxy: Any, rid: str) -> httpx.Response:
    return httpx.post(proxy.url + "/api/generate", timeout=120, headers={"x-request-id": rid},
                      json={"model": VISION, "prompt": "describe the picture", "stream": False,
                            "options": {"num_predict": 40}})


def test_a_single_slot_model_gets_one_request_at_a_time(
    sidecar_factory: SidecarFactory, vision_emulator: Any
) -> None:
    proxy = sidecar_factory(upstream=vision_emulator.url, policy=make_policy(
        max_parallel=4, vram_gb=24, max_loaded_models=2,
        extra='[models."llama3.2-vision*"]\nnum_parallel = 1\n',
    ))
    proxy.admin("POST", "/proxy/pause")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        first, second = pool.submit(_ask, proxy, "v1"), pool.submit(_ask, proxy, "v2")
        proxy.wait_depth(2)
        proxy.admin("POST", "/proxy/resume")
        view = proxy.wait_for(lambda h: h["in_flight"] == 1 and h["queue_depth"] == 1)
        waiting = proxy.queue()["waiting"]
        assert len(waiting) == 1 and view["max_parallel"] == 4
        assert "at its num_parallel limit (1 of 1 running)" in (waiting[0]["reason"] or "")
        assert first.result().status_code == 200 and second.result().status_code == 200


def test_the_emulator_forces_one_slot_on_vision_models(vision_emulator: Any) -> None:
    """Without the sidecar, OLLAMA_NUM_PARALLEL = 2: two requests at once to a vision model run
    one after the other, two to a plain model side by side."""
    def ask(model: str) -> int:
        return httpx.post(vision_emulator.url + "/api/generate", timeout=120,
                          json={"model": model, "prompt": "p", "stream": False,
                                "options": {"num_predict": 40}}).status_code

    for model, peak in ((VISION, 1), ("llama3.2:1b", 2)):
        assert ask(model) == 200  # loaded
        httpx.post(vision_emulator.url + "/sim/stats/reset", timeout=10)
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            assert list(pool.map(ask, [model, model])) == [200, 200]
        assert vision_emulator.stats()["peak_concurrency"] == peak, model


SHRINK = """
[node]
vram_gb = 8
max_loaded_models = 1
num_parallel = 1
time_scale = 0
[[models]]
name = "llama3.1:8b"
"""


def test_a_context_shrunk_to_fit_is_not_a_reload(sidecar_factory: SidecarFactory) -> None:
    """Ollama shrinks the context of a load whose KV cache would not fit, and /api/ps then shows
    less than was asked for. The emulator does so; the sidecar keeps treating the runner as the
    one asked for, so the next request with the same num_ctx attaches, in both."""
    from sim.config import load_text
    from sim.testing import running_emulator

    with running_emulator(load_text(SHRINK, "shrink", time.time())) as emulator:
        proxy = sidecar_factory(upstream=emulator.url, policy=make_policy(max_parallel=1, vram_gb=8))
        body = {"model": "llama3.1:8b", "prompt": "hi", "stream": False,
                "options": {"num_ctx": 131072, "num_predict": 5}}
        assert httpx.post(proxy.url + "/api/generate", json=body, timeout=30).status_code == 200
        ps = httpx.get(emulator.url + "/api/ps", timeout=10).json()["models"]
        assert 2048 <= ps[0]["context_length"] < 131072  # shrunk to fit 8 GB
        # A poll has reconciled the shrunk runner before the second request.
        wait_until(lambda: bool((proxy.admin("GET", "/proxy/vram").json()["last_ps"] or {}).get("models")),
                   within=10, what="a poll that saw the load")
        assert httpx.post(proxy.url + "/api/generate", json=body, timeout=30).status_code == 200
        stats = emulator.stats()
        assert stats["loads"] == 1 and stats["reloads"] == 0
        dispatches = proxy.admin("GET", "/metrics").text
        assert 'smart_proxy_dispatches_total{action="attach"} 1.0' in dispatches
        assert 'smart_proxy_dispatches_total{action="reload"}' not in dispatches
