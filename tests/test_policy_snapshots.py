"""Snapshots pin how every example policy orders every scenario: the dispatch sequence, slots
freeing one at a time, with each dispatched ticket's per-term breakdown. Changing a weight in
policies.example.toml shows up here as a snapshot diff to review (`pytest --snapshot-update`)."""

from pathlib import Path

import pytest
from syrupy.extensions.json import JSONSnapshotExtension

from engine.scenario import dispatch_sequence, load_scenario, scenario_files
from policy.errors import PolicyError
from policy.load import load_policy_file

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = load_policy_file(ROOT / "policies.example.toml")
SCENARIOS = scenario_files(ROOT / "tests" / "scenarios")


@pytest.fixture
def snapshot_json(snapshot):
    return snapshot.use_extension(JSONSnapshotExtension)


def test_corpus_covers_the_required_situations():
    """The scenario corpus holds at least the ten situations the policies must be pinned on."""
    names = {p.stem for p in SCENARIOS}
    assert len(names) >= 10
    for required in (
        "empty-gpu",
        "loaded-vs-swaps",
        "large-swap-70b",
        "unknown-size",
        "noisy-vs-quiet",
        "max-wait",
        "interactive-vs-batch",
        "rate-window",
        "vram-full",
        "exact-ties",
    ):
        assert any(required in n for n in names), required


@pytest.mark.parametrize("policy", sorted(EXAMPLE.policies))
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda p: p.stem)
def test_dispatch_sequence(policy, scenario, snapshot_json):
    """Each policy dispatches each scenario's tickets in the pinned order with pinned scores."""
    loaded = load_scenario(scenario)
    sequence = dispatch_sequence(EXAMPLE, loaded, policy)
    assert sorted(step["ticket"] for step in sequence) == sorted(t.id for t in loaded.tickets)
    assert {"policy": policy, "scenario": loaded.description, "dispatch": sequence} == snapshot_json


def test_fifo_is_arrival_order():
    """The fifo baseline dispatches strictly by arrival, whatever the models."""
    for path in SCENARIOS:
        scenario = load_scenario(path)
        expected = [t.id for t in sorted(scenario.tickets, key=lambda t: t.arrival)]
        got = [s["ticket"] for s in dispatch_sequence(EXAMPLE, scenario, "fifo")]
        assert got == expected, path.stem


SCENARIO_HEAD = 'description = "review"\nnow = 100.0\n'


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(
            '[[tickets]]\nid = "a"\nmodel = "m"\nclient = "c"\narrival = 200.0\n',
            ["s.toml: tickets[0].arrival: 200.0 is after now (100.0); tickets arrive by now"],
            id="ticket-after-now",
        ),
        pytest.param(
            '[[history]]\nclient = "c"\nat = [50.0, 300.0]\n',
            ["s.toml: history[0].at[1]: 300.0 is after now (100.0); history lies in the past"],
            id="history-after-now",
        ),
        pytest.param(
            '[[tickets]]\nid = "a"\nmodel = "m"\nclient = "c"\narrival = 1.0\n'
            '[[tickets]]\nid = "a"\nmodel = "n"\nclient = "c"\narrival = 2.0\n',
            ['s.toml: tickets[1].id: "a" is already the id of tickets[0]; ids must be unique'],
            id="duplicate-id",
        ),
        pytest.param(
            'loaded = [{ model = "m", size_gb = 1e300 }]\n',
            ["s.toml: loaded[0].size_gb: 1e+300 is out of range: must be <= 1000000.0"],
            id="size-overflows",
        ),
        pytest.param(
            'step = 1e308\n[[tickets]]\nid = "a"\nmodel = "m"\nclient = "c"\narrival = 1.0\n',
            ["s.toml: step: 1e+308 is out of range: must be <= 1000000000000.0"],
            id="clock-overflows",  # now + step = inf; the seed's whole-seconds aging then crashed
        ),
    ],
)
def test_bad_scenario_is_an_error_not_a_traceback(tmp_path, monkeypatch, body, expected):
    """Scenarios that replaying would crash on (a clock going backwards, an id scheduled twice,
    a size that overflows) are reported like every other scenario problem."""
    monkeypatch.chdir(tmp_path)
    Path("s.toml").write_text(SCENARIO_HEAD + body, encoding="utf-8")
    with pytest.raises(PolicyError) as caught:
        load_scenario("s.toml")
    assert caught.value.lines == expected
