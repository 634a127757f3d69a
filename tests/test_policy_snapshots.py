"""Snapshots pin how every example policy orders every scenario: the dispatch sequence, slots
freeing one at a time, with each dispatched ticket's per-term breakdown. Changing a weight in
policies.example.toml shows up here as a snapshot diff to review (`pytest --snapshot-update`)."""

from pathlib import Path

import pytest
from syrupy.extensions.json import JSONSnapshotExtension

from engine.scenario import dispatch_sequence, load_scenario, scenario_files
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
