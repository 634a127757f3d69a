"""The README's performance section is generated from bench/results/, and `make bench` runs every
benchmark that writes a results file. Nothing is timed here: these check the plumbing."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
HELPERS = {"harness.py", "passthrough.py", "report.py", "run_all.py"}  # write no results of their own


def _module(name: str) -> ModuleType:
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


def test_the_readme_shows_what_the_results_files_hold() -> None:
    done = subprocess.run([sys.executable, str(BENCH / "report.py"), "--check"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_make_bench_runs_every_benchmark() -> None:
    scripts = {p.name for p in BENCH.glob("*.py")} - HELPERS
    listed = {script for _, script, _ in _module("run_all").BENCHMARKS}
    assert listed == scripts


def test_every_listed_benchmark_has_a_row_builder_and_a_results_file() -> None:
    report = _module("report")
    sections = {name for name, _ in report.SECTIONS}
    assert {name for name, _, _ in _module("run_all").BENCHMARKS} == sections
    assert all((BENCH / "results" / f"{name}.json").exists() for name in sections)


def test_a_benchmark_not_run_yet_or_of_an_older_shape_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = _module("report")
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    (tmp_path / "engine.json").write_text('{"results": [{"policy": "balanced"}]}')
    text = report.table()
    assert "| `upstream_hop` | not run yet (`make bench`) | | |" in text
    assert "| `engine.json` | unreadable here (KeyError" in text


def test_the_section_is_replaced_between_its_markers_only() -> None:
    report = _module("report")
    readme = f"intro\n{report.BEGIN}\nold table\n{report.END}\noutro\n"
    assert report.render(readme, "new") == f"intro\n{report.BEGIN}\nnew\n{report.END}\noutro\n"
    with pytest.raises(SystemExit, match="no"):
        report.render("no markers", "new")
