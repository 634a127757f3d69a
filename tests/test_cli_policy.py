"""`smart-proxy policy check|show|explain|snapshot`, driven through the real entry point."""

import json
from pathlib import Path

import pytest

from policy.load import load_policy_text
from server.cli import main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = str(ROOT / "policies.example.toml")
SCENARIOS = str(ROOT / "tests" / "scenarios")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ---- check -----------------------------------------------------------------------------


def test_check_prints_ok_for_the_example(capsys):
    """The example file checks clean: "ok" and exit 0."""
    code, out, _ = run(capsys, "policy", "check", EXAMPLE)
    assert code == 0
    assert out.startswith("ok: ")
    assert "5 policies, active 'balanced'" in out


def test_check_prints_every_error_and_exits_1(capsys, tmp_path):
    """A broken file: every problem on its own line, naming file and path; exit 1."""
    bad = tmp_path / "bad.toml"
    bad.write_text('active = "nope"\n[backend]\nmax_parallel = 0\n[policies.a]\n')
    code, out, err = run(capsys, "policy", "check", str(bad))
    assert (code, out) == (1, "")
    assert err.splitlines() == [
        f"{bad}: backend.max_parallel: 0 is out of range: must be >= 1",
        f'{bad}: active: "nope" names no policy in this file; defined: a',
    ]


# ---- show ------------------------------------------------------------------------------


def test_show_fills_every_default_and_reads_back_the_same(capsys):
    """`show` prints TOML with defaults filled in that loads to the same policies."""
    code, out, _ = run(capsys, "policy", "show", EXAMPLE)
    assert code == 0
    assert "per_recent = 0.0" in out  # throughput's fairness sets it; window default filled too
    again = load_policy_text(out.encode(), "shown.toml")
    assert list(again.policies) == ["balanced", "throughput", "fair", "fifo", "seed"]
    assert 'window = "10m"' in out.split("[policies.throughput.terms.fairness]")[1]


# ---- explain ---------------------------------------------------------------------------


def test_explain_prints_a_table_with_every_term(capsys):
    """A ranked table: rank, ticket, model, client, each term, total; then the dispatch order."""
    code, out, _ = run(
        capsys,
        "policy",
        "explain",
        EXAMPLE,
        "--scenario",
        f"{SCENARIOS}/06-max-wait.toml",
        "--policy",
        "seed",
    )
    assert code == 0
    for header in ("rank", "ticket", "model", "client", "vram", "fairness", "aging", "total"):
        assert header in out
    assert (
        "dispatch order, one slot freeing at a time: f1 (attach) → f2 (attach) → f3 (attach) → old (swap)"
        in out
    )


def test_explain_prints_names_with_brackets_as_written(capsys, tmp_path):
    """Scenario strings are data, not rich markup: "[/]" crashed explain with a MarkupError and
    "[bold]x" lost its brackets."""
    scenario = tmp_path / "brackets.toml"
    scenario.write_text(
        'description = "ids [/] in [bold]brackets"\nnow = 100.0\n[[tickets]]\nid = "[/]"\n'
        'model = "m"\nclient = "[bold]x"\narrival = 50.0\n'
    )
    code, out, _ = run(capsys, "policy", "explain", EXAMPLE, "--scenario", str(scenario))
    assert code == 0
    assert "[bold]x" in out and "ids [/] in [bold]brackets" in out
    assert "dispatch order, one slot freeing at a time: [/] (load)" in out


def test_explain_unknown_policy_is_a_clear_error(capsys):
    """Naming a policy the file lacks lists the ones it has."""
    code, _, err = run(
        capsys,
        "policy",
        "explain",
        EXAMPLE,
        "--scenario",
        f"{SCENARIOS}/01-empty-gpu.toml",
        "--policy",
        "nope",
    )
    assert code == 2
    assert "no policy named 'nope'; defined: balanced, throughput, fair, fifo, seed" in err


# ---- snapshot --------------------------------------------------------------------------


def test_snapshot_is_deterministic(capsys, tmp_path):
    """Two runs write byte-identical orderings files."""
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    assert (
        run(capsys, "policy", "snapshot", EXAMPLE, "--scenarios", SCENARIOS, "-o", str(first))[0]
        == 0
    )
    assert (
        run(capsys, "policy", "snapshot", EXAMPLE, "--scenarios", SCENARIOS, "-o", str(second))[0]
        == 0
    )
    assert first.read_bytes() == second.read_bytes()
    data = json.loads(first.read_text())
    assert set(data["orderings"]) == {"balanced", "throughput", "fair", "fifo", "seed"}


def test_snapshot_check_passes_when_nothing_moved(capsys, tmp_path):
    """--check against the file's own orderings: ok, exit 0."""
    golden = tmp_path / "golden.json"
    run(capsys, "policy", "snapshot", EXAMPLE, "--scenarios", SCENARIOS, "-o", str(golden))
    code, out, _ = run(
        capsys, "policy", "snapshot", EXAMPLE, "--scenarios", SCENARIOS, "--check", str(golden)
    )
    assert (code, out.strip()) == (0, f"ok: orderings match {golden}")


def test_snapshot_check_shows_what_moved(capsys, tmp_path):
    """Raising balanced's `fits` cost moves loads behind the swap: exit 1 and a readable diff."""
    golden = tmp_path / "golden.json"
    run(capsys, "policy", "snapshot", EXAMPLE, "--scenarios", SCENARIOS, "-o", str(golden))
    edited = tmp_path / "edited.toml"
    text = Path(EXAMPLE).read_text()
    assert "\nfits = 30 " in text
    edited.write_text(text.replace("\nfits = 30 ", "\nfits = 300 ", 1))
    code, out, _ = run(
        capsys, "policy", "snapshot", str(edited), "--scenarios", SCENARIOS, "--check", str(golden)
    )
    assert code == 1
    assert "balanced / 02-loaded-vs-swaps: order changed" in out
    assert "  before: b1 b2 c1 d1 a1\n  after:  b1 b2 a1 c1 d1" in out
    assert "seed /" not in out  # other policies did not move


@pytest.mark.parametrize(
    ("golden_text", "message"),
    [
        ("{not json", "not a readable orderings file"),
        ('{"format": 1}', "not a readable orderings file"),
        ('{"orderings": [1]}', "not a readable orderings file"),
        ('{"orderings": {"balanced": 5}}', "not a readable orderings file"),
        ('{"orderings": {"balanced": {"01-empty-gpu": [1, 2]}}}', "not a readable orderings file"),
        ('{"orderings": {"balanced": {"01-empty-gpu": "a1 b1"}}}', "not a readable orderings file"),
        ('{"orderings": {"balanced": {"01-empty-gpu": [""]}}}', "not a readable orderings file"),
    ],
)
def test_snapshot_check_rejects_a_bad_golden_file(capsys, tmp_path, golden_text, message):
    """A golden file that is not an orderings file is reported, exit 2."""
    golden = tmp_path / "golden.json"
    golden.write_text(golden_text)
    code, _, err = run(
        capsys, "policy", "snapshot", EXAMPLE, "--scenarios", SCENARIOS, "--check", str(golden)
    )
    assert code == 2
    assert message in err


def test_snapshot_without_scenarios_is_an_error(capsys, tmp_path):
    """An empty scenarios directory is a usage error, not an empty success."""
    code, _, err = run(capsys, "policy", "snapshot", EXAMPLE, "--scenarios", str(tmp_path))
    assert code == 2
    assert "no scenario files" in err


def test_snapshot_output_that_cannot_be_written_is_an_error(capsys, tmp_path):
    """-o into a missing directory: a one-line error and exit 2, not a traceback."""
    target = tmp_path / "missing" / "orderings.json"
    code, _, err = run(
        capsys, "policy", "snapshot", EXAMPLE, "--scenarios", SCENARIOS, "-o", str(target)
    )
    assert code == 2
    assert err.startswith(f"{target}: cannot write the orderings file")
