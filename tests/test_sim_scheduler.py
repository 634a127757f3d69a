"""Ollama's scheduler rules, played on the pure backend with a virtual clock (no I/O, no sleeping)."""

from __future__ import annotations

import pytest

from sim import physics
from sim.backend import Backend, Job, QueueFull
from sim.catalog import ModelSpec
from sim.config import Settings, load_text
from sim.gotime import FOREVER
from sim.library import LIBRARY

MINUTE = 60.0


def node(vram_gb: float = 24, *, parallel: int = 1, max_loaded: int = 3, max_queue: int = 512,
         scale: float = 1.0, context: int | None = None,
         models: tuple[str, ...] = ("llama3.2:1b", "llama3.2:3b", "llama3.1:8b", "gemma3:12b",
                                    "mistral:7b")) -> Backend:
    """A backend over a small TOML set-up, the same format operators write. `context`:
    OLLAMA_CONTEXT_LENGTH (unset, the card's memory decides it, as in Ollama)."""
    entries = "".join(f'[[models]]\nname = "{name}"\n' for name in models)
    text = (f"[node]\nvram_gb = {vram_gb}\nnum_parallel = {parallel}\n"
            f"max_loaded_models = {max_loaded}\nmax_queue = {max_queue}\ntime_scale = {scale}\n"
            + (f"context_length = {context}\n" if context else "") + entries)
    return Backend(load_text(text, "test.toml", 0.0))


def spec(backend: Backend, name: str) -> ModelSpec:
    return next(s for s in backend.settings.models if s.name == name)


def ask(backend: Backend, at: float, name: str, tokens: int = 100, **kw: object) -> Job:
    return backend.submit(at, spec(backend, name), prompt_tokens=20, output_tokens=tokens, **kw)  # type: ignore[arg-type]


def run_until_idle(backend: Backend, limit: float = 10_000.0) -> None:
    """Play events up to `limit` (keep_alive expiries included)."""
    while (due := backend.next_event_time()) is not None and due <= limit:
        backend.advance(due)


def two_busy_models() -> Backend:
    """8 GB, two models loaded and generating for minutes: 1b (keep_alive 1m) and 3b (5m)."""
    b = node(8, max_loaded=2, parallel=2)
    ask(b, 0.0, "llama3.2:1b", tokens=50_000, keep_alive=MINUTE)
    ask(b, 0.0, "llama3.2:3b", tokens=50_000, keep_alive=5 * MINUTE)
    b.advance(3.0)
    return b


def resident(backend: Backend) -> set[str]:
    return {r.spec.name for r in backend.resident()}


# --- the pending queue --------------------------------------------------------------------------


def test_pending_requests_start_in_arrival_order() -> None:
    """One FIFO queue: with room for one model, B, C and D are served in the order they came."""
    b = node(6, max_loaded=1)
    jobs = [ask(b, 0.0, "llama3.2:1b"), ask(b, 0.1, "llama3.2:3b"), ask(b, 0.2, "mistral:7b"),
            ask(b, 0.3, "llama3.1:8b", tokens=5)]
    run_until_idle(b, 1_000)
    starts = [j.started_at for j in jobs]
    assert all(s is not None for s in starts)
    assert starts == sorted(starts)  # type: ignore[type-var]


def test_a_blocked_eviction_blocks_everything_behind_it() -> None:
    """C waits for a busy victim; D would fit right away but is behind C, so it waits too."""
    b = node(11.5, max_loaded=3, models=("mistral:7b", "llama3.1:8b", "gemma3:12b", "llama3.2:1b"))
    a = ask(b, 0.0, "mistral:7b", tokens=2000)  # long: its slot stays busy
    first = ask(b, 0.0, "llama3.1:8b", tokens=2000)
    b.advance(5.0)
    assert a.state == first.state == "running"
    c = ask(b, 5.0, "llama3.2:1b")  # 1.56 GB: does not fit beside 4.92 + 5.88 in 11.5 GB
    d = ask(b, 5.1, "gemma3:12b")  # behind c in the queue
    assert b.stats.evictions == 1 and c.state == d.state == "pending"
    run_until_idle(b, 1_000)
    victim_done = min(x.done_at for x in (a, first))  # type: ignore[type-var]
    assert c.ready_at is not None and c.ready_at > victim_done
    assert d.started_at is not None and d.started_at >= c.ready_at


def test_a_loaded_model_skips_a_blocked_queue() -> None:
    """The fast path: a request for a loaded model does not wait behind a blocked eviction."""
    b = two_busy_models()
    blocked = ask(b, 3.0, "mistral:7b")  # must evict the busy 1b (shorter keep_alive)
    fast = ask(b, 3.1, "llama3.2:3b", tokens=5)
    assert blocked.state == "pending" and fast.state == "running"  # a free slot on 3b
    run_until_idle(b, 1_000)
    assert fast.started_at is not None and blocked.started_at is not None
    assert fast.started_at < blocked.started_at


def test_a_model_chosen_for_eviction_takes_no_new_requests() -> None:
    """Requests for the victim queue behind the eviction instead of keeping it alive."""
    b = two_busy_models()
    ask(b, 3.0, "mistral:7b")
    late = ask(b, 3.1, "llama3.2:1b", tokens=5)
    assert late.state == "pending"


def test_requests_for_a_loading_model_share_its_load() -> None:
    """Requests arriving while a model loads attach to that load: one load, both served."""
    b = node()
    first, second = ask(b, 0.0, "llama3.2:3b"), ask(b, 0.5, "llama3.2:3b")
    run_until_idle(b, 100)
    assert b.stats.loads == 1 and first.ready_at == second.ready_at


@pytest.mark.parametrize(("parallel", "expected_running"), [(1, 1), (2, 2), (4, 3)])
def test_num_parallel_bounds_requests_per_model(parallel: int, expected_running: int) -> None:
    """num_parallel slots per loaded model; the rest wait for a slot in order."""
    b = node(parallel=parallel)
    jobs = [ask(b, 0.0, "llama3.2:1b", tokens=1000) for _ in range(3)]
    b.advance(b.next_event_time() or 0.0)  # the load completes
    assert sum(j.state == "running" for j in jobs) == expected_running
    assert b.stats.peak_concurrency == expected_running


def test_full_queue_is_rejected() -> None:
    """max_queue pending requests: the next one raises QueueFull and is counted; fast path is not."""
    small = node(8, max_loaded=2, parallel=2, max_queue=2)
    ask(small, 0.0, "llama3.2:1b", tokens=50_000, keep_alive=MINUTE)
    ask(small, 0.0, "llama3.2:3b", tokens=50_000, keep_alive=5 * MINUTE)
    small.advance(3.0)
    ask(small, 3.0, "mistral:7b")
    ask(small, 3.0, "llama3.1:8b")
    with pytest.raises(QueueFull):
        ask(small, 3.0, "gemma3:12b")
    assert ask(small, 3.0, "llama3.2:3b").state == "running"  # loaded: skips the queue
    assert small.stats.queue_full_rejections == 1


# --- eviction -----------------------------------------------------------------------------------


def test_victim_is_shortest_keep_alive_not_least_recently_used() -> None:
    """B has the shorter keep_alive, so it goes even though A was used longer ago."""
    b = node(8, max_loaded=2)
    ask(b, 0.0, "llama3.2:1b", keep_alive=30 * MINUTE)  # A: used first
    ask(b, 0.0, "llama3.2:3b", keep_alive=5 * MINUTE)  # B: used last
    run_until_idle(b, 20.0)
    ask(b, 20.0, "mistral:7b")
    run_until_idle(b, 40.0)
    assert resident(b) == {"llama3.2:1b", "mistral:7b"}


def test_an_idle_victim_is_preferred_to_a_busy_one() -> None:
    """The shortest-keep_alive model is busy, so the first idle one in that order goes instead."""
    b = node(8, max_loaded=2)
    ask(b, 0.0, "llama3.2:1b", tokens=50_000, keep_alive=1 * MINUTE)  # busy for minutes
    ask(b, 0.0, "llama3.2:3b", keep_alive=10 * MINUTE)
    run_until_idle(b, 20.0)
    ask(b, 20.0, "mistral:7b")
    run_until_idle(b, 40.0)
    assert resident(b) == {"llama3.2:1b", "mistral:7b"}


@pytest.mark.parametrize("max_loaded", [1, 2, 3])
def test_max_loaded_models_caps_residency(max_loaded: int) -> None:
    """Even with VRAM to spare, no more than max_loaded_models are ever resident. (A 4k context:
    at the 128k an 80 GB card gets by default, VRAM itself would cap them at three.)"""
    b = node(80, max_loaded=max_loaded, context=4096)
    names = ["llama3.2:1b", "llama3.2:3b", "mistral:7b", "llama3.1:8b", "gemma3:12b"]
    for index, name in enumerate(names):
        ask(b, index * 0.1, name)
    peak = 0
    while (due := b.next_event_time()) is not None and due < 1_000:
        b.advance(due)
        peak = max(peak, len(b.resident()))
    assert peak == max_loaded and b.stats.requests_served == len(names)


def test_vram_is_released_only_after_unload_and_release_delay() -> None:
    """After an eviction the next load waits for the unload plus the VRAM release delay."""
    b = node(6, max_loaded=1)
    ask(b, 0.0, "llama3.2:1b", tokens=1)
    run_until_idle(b, 10.0)
    loaded_3b = ask(b, 10.0, "llama3.2:3b")
    run_until_idle(b, 100.0)
    gap = physics.unload_seconds(spec(b, "llama3.2:1b")) + physics.vram_release_seconds(spec(b, "llama3.2:1b"))
    load = physics.load_seconds(spec(b, "llama3.2:3b"), warm=False)
    assert loaded_3b.ready_at == pytest.approx(10.0 + gap + load)


# --- keep_alive and options ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keep_alive", "resident_after"),
    [
        (0.0, {10.0: False}),  # 0: unloads right after the request
        (60.0, {50.0: True, 80.0: False}),  # idle timer from the end of the request
        (FOREVER, {1e9: True}),  # negative keep_alive (FOREVER): never expires
    ],
)
def test_keep_alive_expiry(keep_alive: float, resident_after: dict[float, bool]) -> None:
    """The keep_alive timer runs only while idle and unloads the model when it ends."""
    b = node()
    job = ask(b, 0.0, "llama3.2:1b", tokens=200, keep_alive=keep_alive)
    b.advance(job.done_at or 5.0)
    run_until_idle(b, 5.0)
    for at, expected in resident_after.items():
        b.advance(at)
        assert ("llama3.2:1b" in resident(b)) is expected, at


def test_keep_alive_timer_does_not_run_while_busy() -> None:
    """A model busy longer than its keep_alive stays loaded until keep_alive after it goes idle."""
    b = node()
    job = ask(b, 0.0, "llama3.2:1b", tokens=20_000, keep_alive=10.0)
    b.advance(50.0)
    assert job.state == "running" and "llama3.2:1b" in resident(b)
    assert job.done_at is not None
    b.advance(job.done_at + 9.0)
    assert "llama3.2:1b" in resident(b)
    b.advance(job.done_at + 11.0)
    assert "llama3.2:1b" not in resident(b)


def test_unload_request_unloads_once_idle() -> None:
    """An empty prompt with keep_alive 0 unloads a loaded model."""
    b = node()
    ask(b, 0.0, "llama3.2:1b", tokens=1)
    run_until_idle(b, 10.0)
    b.unload(10.0, spec(b, "llama3.2:1b"))
    assert resident(b) == set() and b.stats.unloads == 1


def test_a_different_num_ctx_forces_a_reload() -> None:
    """Same model, other num_ctx: unload and load again, with a bigger KV cache."""
    b = node()
    ask(b, 0.0, "llama3.2:3b", tokens=1)
    run_until_idle(b, 10.0)
    small = b.resident()[0].vram
    bigger = ask(b, 10.0, "llama3.2:3b", num_ctx=16384)
    run_until_idle(b, 60.0)
    assert b.stats.reloads == 1 and b.stats.loads == 2 and bigger.state == "done"
    assert b.resident()[0].vram > small and b.resident()[0].num_ctx == 16384


@pytest.mark.parametrize(("vram_gb", "context"), [
    (8, 4096), (24, 4096),  # 24 GB is 22.4 GiB
    (24.7, 32_768),  # 23 GiB: an RTX 4090's 24,564 MiB is a little under 24 GiB and counts as 24
    (50.4, 32_768),  # 46.9 GiB
    (50.5, 131_072),  # from 47 GiB 256k, but never more than the model was trained for (128k)
])
def test_the_default_context_follows_the_cards_memory(vram_gb: float, context: int) -> None:
    """Ollama picks the context of a request without num_ctx by VRAM, so one tag is bigger on a
    bigger card: /api/ps reports the context and the size that follow from it."""
    b = node(vram_gb, models=("llama3.2:1b",))
    ask(b, 0.0, "llama3.2:1b", tokens=1)
    run_until_idle(b, 10.0)
    runner = b.resident()[0]
    assert runner.num_ctx == context
    assert runner.vram == spec(b, "llama3.2:1b").resident_size(context)


def test_ollama_context_length_pins_the_default() -> None:
    """OLLAMA_CONTEXT_LENGTH (node.context_length) wins over the choice by VRAM; an embedding
    model keeps its own context either way."""
    text = ('[node]\nvram_gb = 80\ncontext_length = 8192\n[[models]]\nname = "llama3.2:1b"\n'
            '[[models]]\nname = "nomic-embed-text"\n')
    b = Backend(load_text(text, "test.toml", 0.0))
    ask(b, 0.0, "llama3.2:1b", tokens=1)
    b.submit(0.0, spec(b, "nomic-embed-text:latest"), kind="embed", prompt_tokens=5)
    run_until_idle(b, 10.0)
    contexts = {r.spec.name: r.num_ctx for r in b.resident()}
    assert contexts == {"llama3.2:1b": 8192, "nomic-embed-text:latest": 4096}


# --- loads ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(LIBRARY, key=lambda n: LIBRARY[n].size_gb))
def test_load_time_follows_size(name: str) -> None:
    """1–2.5 s start-up plus size ÷ 2 GB/s from disk; from the page cache it is faster."""
    model = ModelSpec(name, int(LIBRARY[name].size_gb * 1e9), LIBRARY[name].parameter_size,
                      "Q4_K_M", "llama", "0" * 64, 0.0)
    cold, warm = physics.load_seconds(model, warm=False), physics.load_seconds(model, warm=True)
    base = LIBRARY[name].size_gb / 2.0
    assert 1.0 + base <= cold <= 2.5 + base
    assert warm < cold or LIBRARY[name].size_gb < 0.5


def test_token_rate_falls_with_size() -> None:
    """60–140 tokens/s at 3B, slower for every larger model."""
    ordered = sorted(LIBRARY, key=lambda n: LIBRARY[n].size_gb)
    rates = [physics.tokens_per_second(ModelSpec(n, 1, LIBRARY[n].parameter_size, "", "", "", 0.0))
             for n in ordered if not LIBRARY[n].embedding]
    assert rates == sorted(rates, reverse=True)
    three_b = ModelSpec("x", 1, "3.2B", "", "", "", 0.0)
    assert 60 <= physics.tokens_per_second(three_b) <= 140


def test_second_load_is_warm() -> None:
    """A model read before loads from the page cache: its second load is quicker."""
    b = node(6, max_loaded=1)
    ask(b, 0.0, "llama3.2:3b", tokens=1, keep_alive=0.0)
    run_until_idle(b, 100.0)
    first = b.stats.load_seconds
    ask(b, 100.0, "llama3.2:3b", tokens=1)
    run_until_idle(b, 200.0)
    assert b.stats.load_seconds - first < first


@pytest.mark.parametrize(("scale", "expected"), [(1.0, 1.0), (0.001, 0.001), (0.0, 0.0)])
def test_time_scale_multiplies_every_duration(scale: float, expected: float) -> None:
    """A 70B load takes 25-ish seconds at scale 1, milliseconds at 0.001, nothing at 0."""
    b = node(80, scale=scale, models=("llama3.3:70b",))
    job = ask(b, 0.0, "llama3.3:70b")
    run_until_idle(b, 100.0)
    unscaled = physics.load_seconds(spec(b, "llama3.3:70b"), warm=False)
    assert 22.5 < unscaled < 25.0
    assert job.ready_at == pytest.approx(unscaled * expected)
    assert job.state == "done"


def test_cancelling_the_only_waiter_aborts_the_load() -> None:
    """The client of a loading model leaves: the load is aborted and its VRAM freed."""
    b = node()
    job = ask(b, 0.0, "llama3.1:8b")
    b.cancel(1.0, job)
    assert b.stats.load_aborts == 1 and resident(b) == set()
    run_until_idle(b, 100.0)
    assert b.runners == {} and b.stats.requests_served == 0


def test_a_load_with_another_waiter_continues() -> None:
    """One of two waiting clients leaves: the load goes on for the other."""
    b = node()
    leaving, staying = ask(b, 0.0, "llama3.1:8b"), ask(b, 0.2, "llama3.1:8b")
    b.cancel(1.0, leaving)
    run_until_idle(b, 100.0)
    assert b.stats.load_aborts == 0 and staying.state == "done" and leaving.state == "cancelled"


def test_cancelling_a_running_request_frees_its_slot() -> None:
    """A client that leaves mid-generation frees the slot for the next request at once."""
    b = node()
    running = ask(b, 0.0, "llama3.2:1b", tokens=5000)
    waiting = ask(b, 0.0, "llama3.2:1b", tokens=5)
    b.advance(5.0)
    b.cancel(5.0, running)
    assert waiting.state == "running" and waiting.started_at == 5.0


def test_settings_type_is_what_presets_produce() -> None:
    """The helper above builds the same Settings type the CLI uses."""
    assert isinstance(node().settings, Settings)
