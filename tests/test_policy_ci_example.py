"""docs/examples/policy-ci.sh, run as an operator's CI would: green on the committed state, red
when an edit makes the orderings or a week of traffic worse."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "docs" / "examples" / "policy-ci.sh"


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("SMART_PROXY_POLICY", None)
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)


def test_the_policy_ci_example(tmp_path: Path) -> None:
    repo = tmp_path / "policy-repo"
    (repo / "traces").mkdir(parents=True)
    shutil.copy(ROOT / "policies.example.toml", repo / "policies.toml")
    shutil.copytree(ROOT / "tests" / "scenarios", repo / "scenarios")
    setup = [
        ["smart-proxy", "policy", "snapshot", "policies.toml", "--scenarios", "scenarios", "-o", "orderings.json"],
        ["smart-proxy", "trace", "synth", "--preset", "many-models", "--requests", "400", "-o", "traces/week.jsonl"],
        ["smart-proxy", "simulate", "--trace", "traces/week.jsonl", "--policy", "policies.toml",
         "--json", "traces/week.baseline.json"],
    ]
    for args in setup:
        done = run(args, repo)
        assert done.returncode == 0, done.stderr
    green = run(["sh", str(SCRIPT)], repo)
    assert green.returncode == 0, green.stdout + green.stderr
    assert "ok: policies.toml" in green.stdout and "no gated figure" in green.stdout

    # An edit that orders the queue first come, first served: the snapshot check catches it.
    policy = repo / "policies.toml"
    policy.write_text(policy.read_text().replace('active = "balanced"', 'active = "fifo"'))
    red = run(["sh", str(SCRIPT)], repo)
    assert red.returncode == 1, red.stdout + red.stderr

    # Refresh the orderings as the script's header says: now the replay is what fails it.
    assert run(["smart-proxy", "policy", "snapshot", "policies.toml", "--scenarios", "scenarios",
                "-o", "orderings.json"], repo).returncode == 0
    red = run(["sh", str(SCRIPT)], repo)
    assert red.returncode == 1 and "worse than the baseline" in red.stdout, red.stdout + red.stderr
