"""The residency model predicts what Ollama does with a dispatch and is never still wrong after
an /api/ps poll (the seed believed the last dispatched model stayed loaded forever)."""

import pytest

from engine.residency import GIB, Plan, ResidencyModel, canonical
from engine.variants import variant_of


def model(vram=24.0, max_loaded=3, num_parallel=1, **sizes: float) -> ResidencyModel:
    r = ResidencyModel(vram_gb=vram, max_loaded=max_loaded, num_parallel=num_parallel)
    r.learn_sizes({k.replace("_", ":"): v for k, v in sizes.items()})
    return r


def ps(*loaded: tuple[str, float]) -> dict:
    return {"models": [{"name": n, "model": n, "size": int(gb * GIB)} for n, gb in loaded]}


def test_names_without_a_tag_mean_latest():
    """Ollama's naming: `llama3` is `llama3:latest`."""
    assert canonical("llama3") == "llama3:latest"
    assert canonical("llama3:8b") == "llama3:8b"


# ---- prediction -----------------------------------------------------------------------------


def test_a_model_that_fits_loads_beside():
    """Free VRAM and a free model slot: a plain load, nothing evicted."""
    r = model(a_8b=6.0)
    r.reconcile(ps(("b:3b", 2.0)))
    assert r.plan("a:8b") == Plan("load")


def test_a_loaded_model_attaches():
    """A loaded (or loading) model needs no load."""
    r = model()
    r.reconcile(ps(("b:3b", 2.0)))
    assert r.plan("b:3b") == Plan("attach")


def test_eviction_prefers_idle_models():
    """Not enough VRAM: Ollama evicts an idle model before one that is serving."""
    r = model(big_14b=14.0)
    r.reconcile(ps(("busy:8b", 6.0), ("idle:8b", 6.0)))
    r.dispatched("busy:8b", r.plan("busy:8b"), now=1.0)
    assert r.plan("big:14b") == Plan("swap", ("idle:8b",))  # 6 + 14 fits once idle is gone


def test_model_count_cap_forces_an_eviction_even_with_free_vram():
    """max_loaded_models reached: a small model still needs one eviction."""
    r = model(max_loaded=2, tiny_1b=1.0)
    r.reconcile(ps(("a:1b", 1.0), ("b:1b", 1.0)))
    plan = r.plan("tiny:1b")
    assert plan.action == "swap" and len(plan.evicts) == 1


def test_a_huge_model_evicts_as_many_as_it_needs():
    """A model needing most of the GPU pushes out every model in its way."""
    r = model(huge_70b=23.0)
    r.reconcile(ps(("a:8b", 6.0), ("b:8b", 6.0), ("c:3b", 2.0)))
    assert set(r.plan("huge:70b").evicts) == {"a:8b", "b:8b", "c:3b"}
    r.learn_sizes({"huge:70b": 22.0})  # 2 + 22 fits: the 3B model may stay
    assert set(r.plan("huge:70b").evicts) == {"a:8b", "b:8b"}


# ---- the life of a swap --------------------------------------------------------------------


def test_swap_marks_victims_evicting_until_the_first_byte():
    """Dispatching a swap: model loading, victims evicting; the first byte settles both."""
    r = model(big_20b=20.0)
    r.reconcile(ps(("small:8b", 6.0)))
    r.dispatched("big:20b", r.plan("big:20b"), now=1.0)
    assert (r.residency("big:20b"), r.residency("small:8b")) == ("loading", "evicting")
    assert not r.eligible("small:8b")  # new work for a victim would stall the swap
    r.first_byte("big:20b")
    assert (r.residency("big:20b"), r.residency("small:8b")) == ("loaded", "absent")


def test_a_failed_load_leaves_nothing_loaded_and_restores_victims():
    """A load that ends without a byte (unknown model, cancelled) holds no VRAM."""
    r = model(big_20b=20.0)
    r.reconcile(ps(("small:8b", 6.0)))
    r.dispatched("big:20b", r.plan("big:20b"), now=1.0)
    r.finished("big:20b", now=2.0)
    assert (r.residency("big:20b"), r.residency("small:8b")) == ("absent", "loaded")


def test_one_load_at_a_time():
    """Ollama's pending queue loads one model at a time: a second load waits in our queue."""
    r = model(a_3b=2.0, b_3b=2.0)
    r.dispatched("a:3b", r.plan("a:3b"), now=0.0)
    assert r.load_pending()
    assert not r.eligible("b:3b")
    assert r.eligible("a:3b") is False  # at its parallel limit (num_parallel = 1)
    r.first_byte("a:3b")
    assert r.eligible("b:3b")


def test_parallel_limit_per_model():
    """A model serves num_parallel requests at once; more would wait inside Ollama."""
    r = model(num_parallel=2)
    r.reconcile(ps(("a:3b", 2.0)))
    r.dispatched("a:3b", Plan("attach"), now=0.0)
    assert r.eligible("a:3b")
    r.dispatched("a:3b", Plan("attach"), now=0.0)
    assert not r.eligible("a:3b")


# ---- reconcile: never still wrong after a poll ---------------------------------------------


def test_reconcile_drops_a_model_ollama_unloaded():
    """The seed's bug: the last dispatched model stayed "loaded" forever. A poll corrects it."""
    r = model(a_8b=6.0)
    r.dispatched("a:8b", r.plan("a:8b"), now=0.0)
    r.first_byte("a:8b")
    r.finished("a:8b", now=1.0)
    assert r.residency("a:8b") == "loaded"
    r.reconcile(ps())  # keep_alive expired: Ollama unloaded it
    assert r.residency("a:8b") == "absent"


def test_reconcile_learns_models_loaded_behind_our_back():
    """A model someone loaded directly shows up, with its real size."""
    r = model()
    r.reconcile(ps(("other:14b", 11.5)))
    assert r.residency("other:14b") == "loaded"
    assert r.size_gb("other:14b") == pytest.approx(11.5)


def test_reconcile_keeps_a_load_that_has_requests_out():
    """A request in flight for a model Ollama does not list yet is a load in progress."""
    r = model(a_8b=6.0)
    r.dispatched("a:8b", r.plan("a:8b"), now=0.0)
    r.reconcile(ps())
    assert r.residency("a:8b") == "loading"


def test_reconcile_after_a_wrong_victim_guess():
    """We guessed Ollama would evict one model; it evicted another: the poll makes it right."""
    r = model(big_20b=14.0)
    r.reconcile(ps(("x:8b", 6.0), ("y:8b", 6.0)))
    plan = r.plan("big:20b")
    r.dispatched("big:20b", plan, now=0.0)
    r.first_byte("big:20b")
    kept = ({"x:8b", "y:8b"} - set(plan.evicts)).pop()
    r.reconcile(ps(("big:20b", 14.0), (plan.evicts[0], 6.0)))  # Ollama evicted the other one
    assert r.residency(plan.evicts[0]) == "loaded"
    assert r.residency(kept) == "absent"
    assert r.residency("big:20b") == "loaded"


def test_size_sources_in_order_ps_then_override_then_tags():
    """Ollama's reported size wins; then the policy's [models]; then tags × resident_factor."""
    r = model()
    r.overrides["m:1"] = 9.0
    r.learn_tags({"models": [{"name": "m:1", "size": 5 * GIB}, {"name": "t:1", "size": 5 * GIB}]})
    assert r.size_gb("t:1") == pytest.approx(6.0)
    assert r.size_gb("m:1") == 9.0
    r.reconcile(ps(("m:1", 7.0)))
    assert r.size_gb("m:1") == pytest.approx(7.0)
    assert r.size_gb("never:seen") is None


@pytest.mark.parametrize(
    "payload", [{"models": ["junk", 3]}, {"models": [{"name": 5, "size": "x"}]}]
)
def test_reconcile_skips_entries_it_cannot_read(payload):
    """Odd entries in a models list are skipped; the list still says what Ollama holds."""
    r = model()
    r.reconcile(ps(("a:8b", 6.0)))
    r.reconcile(payload)
    assert r.loaded_count() == 0


@pytest.mark.parametrize("payload", [{}, {"models": None}, {"models": {"a:8b": {}}}])
def test_an_unreadable_answer_changes_nothing(payload):
    """No models list at all: a ValueError, and the picture we had stays (the poller logs it)."""
    r = model()
    r.reconcile(ps(("a:8b", 6.0)))
    with pytest.raises(ValueError, match="no 'models' list"):
        r.reconcile(payload)
    assert r.residency("a:8b") == "loaded"


# ---- reload-forcing options: another runner of the same model -----------------------------


@pytest.mark.parametrize(
    ("options", "variant"),
    [
        (None, ""),
        ({}, ""),
        ({"temperature": 0.2, "seed": 1}, ""),  # sampling options never force a reload
        ({"num_ctx": 8192}, "num_ctx=8192"),
        ({"num_gpu": 20, "num_ctx": 4096, "top_k": 5}, "num_ctx=4096,num_gpu=20"),
    ],
)
def test_variant_is_the_reload_forcing_part_of_options(options, variant):
    """num_ctx and num_gpu make Ollama reload a model; other options do not."""
    assert variant_of(options) == variant


def test_other_options_on_a_loaded_model_mean_a_reload():
    """A loaded model is absent for a request with another num_ctx: its plan is a reload, which
    replaces the model's own runner, so it fits even on a full GPU."""
    r = model(vram=24.0)
    r.reconcile(ps(("big:32b", 20.0)))
    assert r.residency("big:32b") == "loaded"
    assert r.residency("big:32b", "num_ctx=8192") == "absent"
    assert r.plan("big:32b", "num_ctx=8192") == Plan("reload")
    assert r.fits_beside("big:32b")  # 20 GiB replaced by 20 GiB
    r.dispatched("big:32b", Plan("reload"), now=1.0, variant="num_ctx=8192")
    assert r.residency("big:32b", "num_ctx=8192") == "loading"
    assert r.residency("big:32b") == "absent"  # now the defaults would need a reload
    assert not r.eligible("big:32b")  # one load at a time
    r.first_byte("big:32b")
    assert r.residency("big:32b", "num_ctx=8192") == "loaded"


def test_a_model_loaded_behind_our_back_is_assumed_to_run_defaults():
    """A model that /api/ps reports and we never loaded counts as loaded with default options."""
    r = model()
    r.dispatched("a:8b", Plan("load"), now=0.0, variant="num_ctx=8192")
    r.finished("a:8b", now=1.0)  # the load failed: nothing resident
    r.reconcile(ps(("a:8b", 6.0)))  # someone else loaded it
    assert r.residency("a:8b") == "loaded"
    assert r.residency("a:8b", "num_ctx=8192") == "absent"


def test_models_nobody_holds_are_forgotten_at_the_next_poll():
    """Clients choose model names: one ModelState per name ever requested, kept forever, grew
    memory and made every totals/plan computation slower. Absent, idle models carry nothing."""
    r = model(a_8b=6.0)
    for i in range(2000):
        name = f"typo-{i}:latest"
        r.dispatched(name, r.plan(name), float(i))
        r.finished(name, float(i))  # Ollama answered 404: no byte, nothing loaded
    r.dispatched("a:8b", r.plan("a:8b"), 5000.0)
    r.reconcile(ps(("b:3b", 2.0)))
    assert sorted(r.models) == ["a:8b", "b:3b"]  # a:8b still has a request out
    assert r.residency("typo-7:latest") == "absent"


def test_sizes_one_ollama_reported_are_forgotten_when_the_policy_points_at_another() -> None:
    """Residency sizes come from this host's /api/ps: the same tag takes more VRAM on a bigger
    card (a longer default context), so a reload to another Ollama starts afresh."""
    from pathlib import Path

    from engine.clock import ManualClock
    from engine.residency import GIB
    from engine.scheduler import Scheduler
    from policy.load import load_policy_file

    example = load_policy_file(Path(__file__).resolve().parent.parent / "policies.example.toml")
    s = Scheduler(example, clock=ManualClock(0.0))
    s.reconcile({"models": [{"name": "llama3.1:8b", "size": 30 * GIB}]})
    s.learn_tags({"models": [{"name": "qwen3:8b", "size": 5 * 10**9}]})
    assert s.residency_model.size_gb("llama3.1:8b") == 30.0
    s.apply_settings(example)  # the same Ollama: what it said still holds
    assert s.residency_model.size_gb("llama3.1:8b") == 30.0
    s.apply_settings(example, new_host=True)  # the sidecar says requests now go elsewhere
    assert s.residency_model.size_gb("llama3.1:8b") != 30.0
    assert s.residency_model.size_gb("qwen3:8b") is None
