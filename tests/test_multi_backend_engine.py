"""One queue, several Ollama servers (engine/nodes.py): a dispatch picks a (ticket, backend) pair,
the policy's `vram` term read per backend, so a request goes where its model is loaded; a
backend's allow-list is kept; between equals the less loaded backend; a reload adds, changes
and removes backends, a removed one finishing what it runs."""

from __future__ import annotations

from engine.clock import ManualClock
from engine.scheduler import Grant, Scheduler
from policy.load import load_policy_text

GB = 1024**3

BACKENDS = """
[backends.gpu0]
url = "http://127.0.0.1:11434"
max_parallel = 1
vram_gb = 24.0
max_loaded_models = 2

[backends.gpu1]
url = "http://127.0.0.1:11435"
max_parallel = 1
vram_gb = 24.0
max_loaded_models = 2
"""

REST = """
active = "main"

[models]
"big:70b" = { vram_gb = 20.0 }
"a:8b" = { vram_gb = 6.0 }
"b:8b" = { vram_gb = 6.0 }

[policies.main.terms.vram]
loaded = 0
fits = 30
swap = [{ up_to_gb = 40, points = 180 }]
swap_above = 240

[policies.main.terms.aging]
per_second = 1.0
max_wait = "5m"
"""


def _scheduler(backends: str = BACKENDS) -> tuple[Scheduler, ManualClock]:
    clock = ManualClock(1000.0)
    s = Scheduler(load_policy_text((REST + backends).encode(), "p.toml"), clock=clock)
    s.pause()
    return s, clock


def _ps(*models: str) -> dict[str, object]:
    return {"models": [{"name": m, "model": m, "size": 6 * GB, "size_vram": 6 * GB} for m in models]}


def _where(grants: list[Grant]) -> dict[str, str]:
    return {g.ticket.id: g.backend for g in grants}


def test_each_request_goes_where_its_model_is_loaded() -> None:
    s, _ = _scheduler()
    s.reconcile(_ps("a:8b"), "gpu0")
    s.reconcile(_ps("b:8b"), "gpu1")
    s.enqueue(request_id="b1", model="b:8b", client="x", cls="interactive")
    s.enqueue(request_id="a1", model="a:8b", client="y", cls="interactive")
    s.resume()
    grants = s.dispatch()
    assert _where(grants) == {"a1": "gpu0", "b1": "gpu1"}
    assert all(g.resident for g in grants)  # no load anywhere
    assert s.max_parallel == 2 and s.in_flight_count == 2


def test_a_busy_backend_keeps_a_short_backlog_and_spills_a_longer_one_to_an_idle_slot() -> None:
    s, clock = _scheduler()
    s.reconcile(_ps("a:8b"), "gpu1")
    for i in range(3):
        s.enqueue(request_id=f"a{i}", model="a:8b", client=f"c{i}", cls="interactive")
    s.resume()
    # Two waiting are within gpu1's two slots' worth (AFFINITY_BACKLOG): no second copy on gpu0.
    assert _where(s.dispatch()) == {"a0": "gpu1"}
    reasons = {r.ticket.id: r.reason for r in s.waiting()}  # as gpu0, the first, sees them
    assert "waits for backend gpu1, which has a:8b loaded" in (reasons["a1"] or ""), reasons
    s.enqueue(request_id="a3", model="a:8b", client="c3", cls="interactive")
    grants = s.dispatch()  # three waiting: more than gpu1 takes soon, so gpu0 loads it too
    assert _where(grants) == {"a1": "gpu0"} and [g.action for g in grants] == ["load"]
    s.finish("a0")
    assert _where(s.dispatch()) == {"a2": "gpu1"}
    clock.advance(301)  # a3 is overdue: overdue work goes anywhere, the holds never keep it
    s.finish("a1")
    s.reconcile(_ps(), "gpu0")
    assert _where(s.dispatch()) == {"a3": "gpu0"}


def test_the_allow_list_keeps_a_model_off_a_backend() -> None:
    s, _ = _scheduler(BACKENDS.replace("[backends.gpu1]\n", '[backends.gpu1]\nmodels = ["big:*"]\n'))
    s.enqueue(request_id="a0", model="a:8b", client="x", cls="interactive")
    s.enqueue(request_id="a1", model="a:8b", client="y", cls="interactive")
    s.resume()
    # gpu1 serves only big:*: the second a:8b waits for gpu0 rather than going there.
    assert _where(s.dispatch()) == {"a0": "gpu0"}
    s.enqueue(request_id="big", model="big:70b", client="z", cls="interactive")
    assert _where(s.dispatch()) == {"big": "gpu1"}
    s.finish("a0")
    assert _where(s.dispatch()) == {"a1": "gpu0"}


def _tags(*models: str) -> dict[str, object]:
    return {"models": [{"name": m, "model": m, "size": 5 * GB} for m in models]}


def test_a_model_goes_only_to_backends_that_have_pulled_it_while_any_has() -> None:
    s, clock = _scheduler()
    s.learn_tags(_tags("a:8b", "b:8b"), "gpu0")
    s.learn_tags(_tags("b:8b"), "gpu1")  # gpu1 has no a:8b: Ollama there would answer 404
    for i in range(2):
        s.enqueue(request_id=f"a{i}", model="a:8b", client=f"c{i}", cls="interactive")
    s.enqueue(request_id="new", model="c:1b", client="z", cls="interactive")  # pulled nowhere
    s.resume()
    # a1 waits for gpu0 although gpu1 is free; a model no backend lists goes anywhere (each
    # answers for itself, as one backend would).
    assert _where(s.dispatch()) == {"a0": "gpu0", "new": "gpu1"}
    s.finish("new")
    clock.advance(301)  # overdue work still goes only where its model is
    assert _where(s.dispatch()) == {}
    s.learn_tags(_tags("a:8b", "b:8b"), "gpu1")  # pulled there since: the next poll says so
    assert _where(s.dispatch()) == {"a1": "gpu1"}


def test_a_backend_that_may_not_serve_a_model_does_not_keep_it_from_one_that_may() -> None:
    s, _ = _scheduler(BACKENDS.replace("[backends.gpu0]\n", '[backends.gpu0]\nmodels = ["b:*"]\n'))
    s.learn_tags(_tags("a:8b"), "gpu0")  # pulled on gpu0, whose allow-list leaves it out
    s.learn_tags(_tags("b:8b"), "gpu1")
    s.enqueue(request_id="a0", model="a:8b", client="x", cls="interactive")
    s.resume()
    # No backend that may serve a:8b has it: gpu1 gets it, as one backend would, and answers.
    assert _where(s.dispatch()) == {"a0": "gpu1"}


def test_the_queue_view_asks_every_backend_that_may_take_a_request() -> None:
    s, _ = _scheduler(BACKENDS.replace("[backends.gpu1]\n", '[backends.gpu1]\nmodels = ["a:*", "big:*"]\n'))
    s.reconcile(_ps("a:8b"), "gpu0")
    s.enqueue(request_id="a0", model="a:8b", client="c0", cls="interactive")
    s.resume()
    assert _where(s.dispatch()) == {"a0": "gpu0"}
    s.pause()  # the view alone: nothing dispatches
    s.enqueue(request_id="a1", model="a:8b", client="c1", cls="interactive")
    view = {r.ticket.id: r for r in s.waiting()}
    # Blocked on gpu0 (a0 runs there at the model's parallel limit) and held on gpu1 (gpu0 has
    # it loaded and keeps up): both backends named, not only the first's view.
    assert not view["a1"].eligible
    assert "on gpu0: " in (view["a1"].reason or "") and "on gpu1: waits for backend gpu0" in (view["a1"].reason or "")
    assert s.position("a1") is not None and not s.position("a1").eligible
    for i in (2, 3):  # three waiting: more than gpu0 takes soon, so gpu1 may load it too
        s.enqueue(request_id=f"a{i}", model="a:8b", client=f"c{i}", cls="interactive")
    view = {r.ticket.id: r for r in s.waiting()}
    assert view["a1"].eligible and view["a1"].reason == "dispatching is paused"
    assert s.position("a1").eligible
    # A model only a down backend may serve waits for it, and says so.
    s.set_down("gpu1", True)
    s.enqueue(request_id="big", model="big:70b", client="z", cls="interactive")
    s.learn_tags(_tags("big:70b"), "gpu1")
    view = {r.ticket.id: r for r in s.waiting()}
    assert not view["a1"].eligible and "backend gpu1 is down" in (view["a1"].reason or "")
    assert not view["big"].eligible and view["big"].reason == "dispatching is paused; backend gpu1 is down"
    assert not s.position("big").eligible


def test_the_queue_view_says_which_busy_backend_a_request_waits_for() -> None:
    s, _ = _scheduler()
    s.learn_tags(_tags("a:8b", "b:8b"), "gpu0")
    s.learn_tags(_tags("b:8b"), "gpu1")  # a:8b is on gpu0 only
    s.enqueue(request_id="b0", model="b:8b", client="x", cls="interactive")
    s.resume()
    s.backends["gpu1"].down = True  # so that b0 takes gpu0's one slot
    assert _where(s.dispatch()) == {"b0": "gpu0"}
    s.first_byte("b0")  # loaded: nothing but the busy slot keeps a:8b off gpu0
    s.backends["gpu1"].down = False
    s.enqueue(request_id="a1", model="a:8b", client="y", cls="interactive")
    assert _where(s.dispatch()) == {}  # gpu1 is free, but has no a:8b
    [row] = s.waiting()
    assert row.eligible and row.reason == "waits for a slot on gpu0 (1 of 1 busy)"


def test_the_queue_view_weighs_a_swap_hold_with_the_scores_of_the_backend_it_is_on() -> None:
    """gpu1 has x:20b loaded and at its limit; y1 would evict it there, and x2 ranks ahead of y1
    as gpu1 scores them (x2 needs no load there), though not as gpu0 does: `choose` holds y1
    back, and so must the view, which ranks the queue as gpu0 sees it."""
    two = """
[backends.gpu0]
url = "http://127.0.0.1:11434"
max_parallel = 2
vram_gb = 24.0
models = ["x*"]
[backends.gpu1]
url = "http://127.0.0.1:11435"
max_parallel = 2
vram_gb = 24.0
"""
    text = REST.replace('"big:70b" = { vram_gb = 20.0 }', '"x:20b" = { vram_gb = 20.0 }\n"y:20b" = { vram_gb = 20.0 }')
    clock = ManualClock(1000.0)
    s = Scheduler(load_policy_text((text + two).encode(), "p.toml"), clock=clock)
    s.reconcile({"models": [{"name": "x:20b", "model": "x:20b", "size": 20 * GB, "size_vram": 20 * GB}]}, "gpu1")
    s.enqueue(request_id="x0", model="x:20b", client="a", cls="interactive")
    assert _where(s.dispatch()) == {"x0": "gpu1"}
    s.first_byte("x0")
    clock.advance(1)
    s.enqueue(request_id="y1", model="y:20b", client="b", cls="interactive")
    clock.advance(0.5)
    s.enqueue(request_id="x2", model="x:20b", client="c", cls="interactive")
    assert _where(s.dispatch()) == {}  # y1 is held on gpu1: x2 goes before it there
    view = {r.ticket.id: r for r in s.waiting()}
    assert not view["y1"].eligible
    assert view["y1"].reason == "on gpu1: held back: loading y:20b would evict x:20b, whose own waiting requests rank ahead"
    s.cancel("x2")
    assert _where(s.dispatch()) == {"y1": "gpu1"}


def test_between_equal_backends_the_less_loaded_and_heavier_one_goes_first() -> None:
    text = BACKENDS.replace("max_parallel = 1", "max_parallel = 4\nnum_parallel = 4").replace(
        "[backends.gpu1]\n", "[backends.gpu1]\nweight = 3.0\n")
    s, _ = _scheduler(text)
    s.reconcile(_ps("a:8b"), "gpu0")
    s.reconcile(_ps("a:8b"), "gpu1")
    for i in range(4):
        s.enqueue(request_id=f"a{i}", model="a:8b", client=f"c{i}", cls="interactive")
    s.resume()
    placed = [g.backend for g in s.dispatch()]
    # load = in flight / slots / weight (0, then 1/4 on gpu0, 1/12 per request on gpu1), the
    # heavier first on a tie: gpu1 (weight 3) takes three of the four.
    assert placed == ["gpu1", "gpu0", "gpu1", "gpu1"]


def test_a_reload_adds_and_removes_backends_and_a_removed_one_finishes_its_work() -> None:
    s, _ = _scheduler()
    s.reconcile(_ps("a:8b"), "gpu1")
    s.enqueue(request_id="a0", model="a:8b", client="x", cls="interactive")
    s.resume()
    assert _where(s.dispatch()) == {"a0": "gpu1"}
    only_gpu0_and_gpu2 = BACKENDS.replace("[backends.gpu1]", "[backends.gpu2]").replace("11435", "11436")
    s.apply_settings(load_policy_text((REST + only_gpu0_and_gpu2).encode(), "p.toml"))
    assert set(s.backends) == {"gpu0", "gpu1", "gpu2"} and s.backends["gpu1"].retiring
    assert s.max_parallel == 2  # the retiring backend's slot is no longer offered
    for i in (1, 2, 3, 4):  # enough that the second copy is not held back (AFFINITY_BACKLOG)
        s.enqueue(request_id=f"a{i}", model="a:8b", client=f"c{i}", cls="interactive")
    assert sorted(_where(s.dispatch()).values()) == ["gpu0", "gpu2"]  # none to gpu1
    assert s.finish("a0")
    assert "gpu1" not in s.backends  # its last request ended: gone
    s.reconcile(_ps("a:8b"), "gpu1")  # a late poll of the removed backend changes nothing
    assert set(s.backends) == {"gpu0", "gpu2"} and s.max_parallel == 2


def test_one_backend_shorthand_is_one_backend_named_default() -> None:
    s = Scheduler(load_policy_text((REST + "[backend]\nmax_parallel = 3\n").encode(), "p.toml"),
                  clock=ManualClock(0.0))
    assert list(s.backends) == ["default"] and s.max_parallel == 3
    s.enqueue(request_id="a", model="a:8b", client="x", cls="interactive")
    assert _where(s.dispatch()) == {"a": "default"}


def test_a_request_goes_to_the_one_backend_that_has_its_model_and_the_views_return_to_the_first() -> None:
    """b:8b is loaded only on gpu1 (both backends' residency versions alike): it attaches there.
    And between choices the views see the first backend again, whichever took the last grant."""
    s, _ = _scheduler()
    s.reconcile(_ps("a:8b"), "gpu0")
    s.reconcile(_ps("b:8b"), "gpu1")
    s.enqueue(request_id="b1", model="b:8b", client="x", cls="interactive")
    s.resume()
    (grant,) = s.dispatch()
    assert (grant.backend, grant.action) == ("gpu1", "attach")
    assert s.residency_model is s.backends["gpu0"].residency and s.node.name == "gpu0"


def test_an_overdue_request_goes_where_its_model_is_loaded() -> None:
    """An overdue ticket's order key is the same on every backend: where its model is decides."""
    s, clock = _scheduler(BACKENDS.replace("max_parallel = 1", "max_parallel = 2"))
    s.reconcile(_ps("a:8b"), "gpu1")
    s.enqueue(request_id="old", model="a:8b", client="x", cls="interactive")
    clock.advance(400.0)  # past max_wait (5 min)
    s.resume()
    (grant,) = s.dispatch()
    assert grant.score.overdue and (grant.backend, grant.action) == ("gpu1", "attach")


def test_renaming_the_only_backend_keeps_what_it_learned_and_its_requests() -> None:
    clock = ManualClock(0.0)
    s = Scheduler(load_policy_text((REST + "[backend]\nmax_parallel = 1\n").encode(), "p.toml"), clock=clock)
    s.reconcile(_ps("a:8b"))
    s.enqueue(request_id="a0", model="a:8b", client="x", cls="interactive")
    assert _where(s.dispatch()) == {"a0": "default"}
    renamed = '[backends.gpu0]\nurl = "http://127.0.0.1:11434"\nmax_parallel = 1\n'
    s.apply_settings(load_policy_text((REST + renamed).encode(), "p.toml"))
    assert list(s.backends) == ["gpu0"] and s.max_parallel == 1
    s.enqueue(request_id="a1", model="a:8b", client="y", cls="interactive")
    assert s.dispatch() == []  # its one slot is still taken by a0: no second request at once
    assert s.finish("a0")
    (grant,) = s.dispatch()
    assert (grant.backend, grant.action) == ("gpu0", "attach")  # it still knows a:8b is loaded


def test_a_model_no_backend_serves_is_refused_at_once() -> None:
    from engine.admission import Refusal, admit

    text = REST + BACKENDS.replace("[backends.gpu0]\n", '[backends.gpu0]\nmodels = ["a:*"]\n').replace(
        "[backends.gpu1]\n", '[backends.gpu1]\nmodels = ["big:*"]\n')
    compiled = load_policy_text(text.encode(), "p.toml")
    s = Scheduler(compiled, clock=ManualClock(0.0))
    refused = admit(compiled, s, "x", "interactive", model="b:8b")
    assert isinstance(refused, Refusal) and (refused.status, refused.reason) == (404, "not_served")
    assert not isinstance(admit(compiled, s, "x", "interactive", model="a:8b"), Refusal)


def test_the_reserve_is_checked_against_every_backends_slots() -> None:
    text = REST + BACKENDS + "\n[policies.main]\nreserve = { interactive = 1 }\n"
    assert load_policy_text(text.encode(), "p.toml").active.reserve == {"interactive": 1}  # 1 of 2


def test_the_hardware_of_every_backend_can_be_set_at_once() -> None:
    compiled = load_policy_text((REST + BACKENDS).encode(), "p.toml").with_backend(max_parallel=3)
    assert [n.max_parallel for n in compiled.nodes] == [3, 3]


def test_the_picker_keeps_model_parts_per_backend() -> None:
    """Asked for two backends whose residency versions are equal, the picker prices each
    runner by the backend it is asked for. With a cache shared between them, gpu1 would be
    priced with gpu0's parts (a:8b loaded, b:8b a load), and its search would stop at a1."""
    s, clock = _scheduler()
    s.reconcile(_ps("a:8b"), "gpu0")
    s.reconcile(_ps("b:8b"), "gpu1")
    s.enqueue(request_id="a1", model="a:8b", client="x", cls="interactive")
    clock.advance(1.0)
    s.enqueue(request_id="b1", model="b:8b", client="y", cls="interactive")
    policy = s.settings.active
    assert s.backends["gpu0"].residency.version == s.backends["gpu1"].residency.version
    picks = {}
    for name in ("gpu0", "gpu1"):
        node = s.backends[name]
        s.picker.refresh(policy, node.state, clock.now)
        found = s.picker.best(policy, node.state, clock.now, lambda m, v: True, s.oldest,
                              node.residency.version, cache=name)
        assert found is not None
        picks[name] = found[0].id
    assert picks == {"gpu0": "a1", "gpu1": "b1"}


def test_a_down_backend_gets_nothing_and_its_work_waits_until_it_is_back() -> None:
    s, _ = _scheduler(BACKENDS.replace("[backends.gpu1]\n", '[backends.gpu1]\nmodels = ["big:*"]\n')
                      .replace("[backends.gpu0]\n", '[backends.gpu0]\nmodels = ["a:*"]\n'))
    assert s.set_down("gpu1", True) and not s.set_down("gpu1", True)  # says whether it moved
    s.enqueue(request_id="big", model="big:70b", client="z", cls="interactive")
    s.enqueue(request_id="a0", model="a:8b", client="x", cls="interactive")
    s.resume()
    assert s.serves("big:70b")  # a down backend still serves its models: admitted, and waits
    assert _where(s.dispatch()) == {"a0": "gpu0"}
    assert [t.id for t in s.tickets()] == ["big"]
    s.set_down("gpu1", False)
    assert _where(s.dispatch()) == {"big": "gpu1"}


def test_a_requeued_request_keeps_its_place_and_gives_back_its_slot_and_charge() -> None:
    s, clock = _scheduler()
    s.reconcile(_ps("a:8b"), "gpu1")
    s.enqueue(request_id="first", model="a:8b", client="x", cls="interactive")
    s.resume()
    assert _where(s.dispatch()) == {"first": "gpu1"}
    charged = s.service.value("x")
    s.pause()
    clock.advance(1.0)
    for i in range(3):  # later arrivals, the same client and model among them
        s.enqueue(request_id=f"later{i}", model="a:8b", client="x" if i == 0 else f"c{i}", cls="interactive")
    s.set_down("gpu1", True)
    assert s.requeue("first") and not s.requeue("first")
    assert s.service.value("x") < charged and s.queued("x") == 2
    assert [t.id for t in s.tickets()] == ["first", "later0", "later1", "later2"]
    assert next(t.id for t in s.oldest("interactive")) == "first"
    assert s.picker.oldest_arrival(("a:8b", "")) == 1000.0
    assert s.in_flight_count == 0 and s.backends["gpu1"].local == 0
    s.resume()
    grants = s.dispatch()
    assert grants[0].ticket.id == "first" and grants[0].backend == "gpu0"
    assert grants[0].ticket.arrival == 1000.0  # its whole wait counts
    # Its second grant says so (its queue wait is not observed twice); the others' do not.
    assert [g.again for g in grants] == [True] + [False] * (len(grants) - 1)


def test_a_started_or_unknown_request_is_not_requeued() -> None:
    s, _ = _scheduler()
    s.enqueue(request_id="a", model="a:8b", client="x", cls="interactive")
    s.resume()
    s.dispatch()
    s.first_byte("a")
    assert not s.requeue("a") and not s.requeue("nobody")
    assert s.in_flight_count == 1


def test_a_cloud_request_is_requeued_with_its_cloud_slot_given_back() -> None:
    s, _ = _scheduler()
    s.enqueue(request_id="c", model="gpt-oss:120b-cloud", client="x", cls="interactive")
    s.resume()
    assert _where(s.dispatch()) == {"c": ""}  # through no backend of the engine's choosing
    s.pause()
    assert s.requeue("c") is not None  # its URL is chosen again, away from the refusing one
    assert (s.in_flight_count, s.depth, s.cloud_waiting) == (0, 1, 1)
    s.resume()
    [grant] = s.dispatch()
    assert grant.ticket.id == "c" and grant.again and s.cloud_waiting == 0


def _busy_gpu0(points: int | None) -> Scheduler:
    """gpu0 (4 slots) holds a:8b with 3 of its slots busy; gpu1 (4 slots) is idle."""
    term = "" if points is None else f"\n[policies.main.terms.backend_load]\npoints = {points}\n"
    s, _ = _scheduler(BACKENDS.replace("max_parallel = 1", "max_parallel = 4\nnum_parallel = 4") + term)
    s.reconcile(_ps("a:8b"), "gpu0")
    s.resume()
    for i in range(3):
        s.enqueue(request_id=f"busy{i}", model="a:8b", client=f"c{i}", cls="interactive")
    assert set(_where(s.dispatch()).values()) == {"gpu0"}
    return s


def test_backend_load_weighs_spreading_against_affinity() -> None:
    # vram: loaded 0, fits 30. At three quarters busy gpu0 costs 0.75 × points.
    for points, where in ((None, "gpu0"), (20, "gpu0"), (60, "gpu1")):
        s = _busy_gpu0(points)
        s.enqueue(request_id="next", model="a:8b", client="d", cls="interactive")
        grant = s.dispatch()[0]
        assert grant.backend == where, points
        if points is not None:
            terms = grant.score.breakdown()
            assert terms["backend_load"] == (0.75 * points if where == "gpu0" else 0.0)


def test_two_requests_of_one_group_requeued_out_of_order_get_their_places_back() -> None:
    s, clock = _scheduler(BACKENDS.replace("max_parallel = 1", "max_parallel = 2\nnum_parallel = 2"))
    s.reconcile(_ps("a:8b"), "gpu1")
    s.set_down("gpu0", True)
    for i in range(3):
        s.enqueue(request_id=f"t{i}", model="a:8b", client="x", cls="interactive")
        clock.advance(1.0)
    s.resume()
    assert sorted(_where(s.dispatch())) == ["t0", "t1"]
    s.pause()
    s.set_down("gpu1", True)
    assert s.requeue("t0") and s.requeue("t1")  # refused as granted: each was its group's head
    assert [t.id for t in s.tickets()] == ["t0", "t1", "t2"]
    assert s.picker.oldest_arrival(("a:8b", "")) == 1000.0
    s.set_down("gpu0", False)
    s.resume()
    assert [g.ticket.id for g in s.dispatch()] == ["t0", "t1"]  # gpu0 has two slots


def test_the_affinity_hold_lasts_three_load_times_at_most() -> None:
    s, clock = _scheduler()
    s.reconcile(_ps("a:8b"), "gpu1")
    s.enqueue(request_id="a0", model="a:8b", client="x", cls="interactive")
    s.enqueue(request_id="a1", model="a:8b", client="y", cls="interactive")
    s.resume()
    assert _where(s.dispatch()) == {"a0": "gpu1"}  # a1 waits for gpu1 rather than load on gpu0
    load = s.backends["gpu0"].residency.load_seconds("a:8b")
    clock.advance(3 * load - 0.5)
    assert s.dispatch() == []
    clock.advance(0.5)  # waiting longer would cost more than a second copy
    assert _where(s.dispatch()) == {"a1": "gpu0"}
