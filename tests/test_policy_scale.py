"""`smart-proxy policy scale FILE --by FACTOR`: every scheduling duration × FACTOR, every
per-second rate ÷ FACTOR, everything else as written; the result always compiles."""

from __future__ import annotations

import math
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import msgspec
import pytest

from policy.errors import PolicyError
from policy.load import CompiledFile, load_policy_text
from policy.scale import (
    PER_SECOND,
    UNSCALED,
    duration_fields,
    is_duration,
    scale_policy,
    scale_policy_text,
)
from policy.terms import REGISTRY
from schemas.policy_file import PolicyFile
from server.cli.main import main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "policies.example.toml"
EXAMPLE_TEXT = EXAMPLE.read_text(encoding="utf-8")
# The example's `seed` policy counts whole seconds, which no factor can scale (tested below); it
# is the file's last table, so the rest of the file is the example without it.
SCALABLE_TEXT = EXAMPLE_TEXT.split("\n[policies.seed]")[0]

# Every value `--by 0.01` changes in the example (without `seed`), and what it becomes.
EXPECTED_AT_A_HUNDREDTH: dict[str, float] = {
    "backend.poll_interval": 0.05,  # "5s"
    "backend.request_timeout": 6.0,  # "10m"
    "backend.queue_timeout": 6.0,  # "10m"
    "limits.classes.interactive.queue_timeout": 6.0,  # "10m"
    "limits.classes.batch.queue_timeout": 18.0,  # "30m"
    "limits.rate.abuse.window": 0.1,  # "10s"
    "policies.balanced.terms.fairness.window": 6.0,  # "10m"
    "policies.balanced.terms.rate_penalty.window": 0.6,  # "1m"
    "policies.balanced.terms.aging.max_wait": 3.0,  # "5m"
    "policies.balanced.terms.aging.per_second": 100.0,  # 1.0
    "policies.balanced.terms.fair_share.half_life": 6.0,  # "10m"
    "policies.balanced.terms.aging.max_wait_by_class.batch": 15.0,  # "25m"
    "policies.throughput.terms.aging.max_wait_by_class.batch": 15.0,
    "policies.fair.terms.aging.max_wait_by_class.batch": 15.0,
    "policies.throughput.terms.fairness.window": 6.0,  # not written: the default "10m"
    "policies.throughput.terms.aging.max_wait": 3.0,  # "5m"
    "policies.throughput.terms.aging.per_second": 100.0,
    "policies.throughput.terms.swap_cost.per_second": 200.0,  # 2.0: a rate per second too
    "policies.fair.terms.fairness.window": 6.0,
    "policies.fair.terms.aging.max_wait": 3.0,
    "policies.fair.terms.aging.per_second": 100.0,
    "policies.throughput.swap_hold": 1.2,  # "2m"
}


def flat(value: Any, path: str = "") -> dict[str, Any]:
    """{dotted path: scalar or array} for a TOML document."""
    if not isinstance(value, dict):
        return {path: value}
    out: dict[str, Any] = {}
    for key, item in value.items():
        out.update(flat(item, f"{path}.{key}" if path else key))
    return out


def scaled_doc(text: str, factor: float) -> dict[str, Any]:
    return tomllib.loads(scale_policy_text(text, "p.toml", factor))


def timing(compiled: CompiledFile) -> dict[str, Any]:
    """Every number the scheduler derives from time, per compiled part."""
    return {
        "backend": (compiled.backend.poll_interval, compiled.backend.request_timeout,
                    compiled.backend.queue_timeout),
        "rate": [seconds for _, seconds, _ in compiled.limits.rate_windows],
        "windows": sorted(compiled.windows),
        "policies": {
            name: (p.max_wait, p.wait_slope, sorted(p.windows), p.swap_hold)
            for name, p in compiled.policies.items()
        },
    }


def test_the_scalable_example_is_the_example_without_seed() -> None:
    compiled = load_policy_text(SCALABLE_TEXT.encode(), "example")
    assert set(compiled.policies) == {"balanced", "throughput", "fair", "fifo"}


def test_the_example_at_a_hundredth() -> None:
    before = flat(tomllib.loads(SCALABLE_TEXT))
    after = flat(scaled_doc(SCALABLE_TEXT, 0.01))
    changed = {path: value for path, value in after.items() if before.get(path) != value}
    assert changed == EXPECTED_AT_A_HUNDREDTH  # exactly these keys, exactly these values
    assert all(type(v) is float for v in changed.values())
    # Nothing else moved: the rest is as written, strings included.
    unchanged = {p: v for p, v in after.items() if p not in changed}
    assert unchanged == {p: v for p, v in before.items() if p not in changed}
    assert after.keys() - before.keys() == {"policies.throughput.terms.fairness.window"}
    for path in ("admin.session_lifetime", "journal.retention", "admin.auth_attempts_per_minute",
                 "backend.vram_gb", "limits.max_body", "policies.balanced.terms.fairness.cap",
                 "policies.balanced.terms.rate_penalty.threshold",
                 "policies.balanced.terms.class_offset.offsets.batch"):
        assert after[path] == before[path], path
    assert after["admin.session_lifetime"] == "24h" and after["journal.retention"] == "30d"


def test_the_scaled_example_compiles_to_the_scaled_times() -> None:
    text = scale_policy_text(SCALABLE_TEXT, "p.toml", 0.01)
    compiled = load_policy_text(text.encode(), "scaled.toml")
    assert compiled.backend.poll_interval == 0.05
    assert compiled.limits.rate_windows == (("abuse", 0.1, 1000),)
    assert compiled.limits.queue_timeout("batch") == 18.0
    assert compiled.policies["balanced"].max_wait == 3.0
    assert compiled.policies["balanced"].wait_slope == 100.0
    assert compiled.policies["balanced"].windows == frozenset({6.0, 0.6})
    assert compiled.admin.session_lifetime == 86400.0
    assert compiled.journal.retention == 30 * 86400.0
    assert text.startswith("# p.toml, scaled by 0.01 with `smart-proxy policy scale`")


@pytest.mark.parametrize("factor", [0.01, 0.001, 3.0, 1 / 7])
def test_scaling_back_round_trips(factor: float) -> None:
    there = scale_policy_text(SCALABLE_TEXT, "p.toml", factor)
    back = scale_policy_text(there, "there.toml", 1 / factor)
    original = timing(load_policy_text(SCALABLE_TEXT.encode(), "a"))
    assert _close(timing(load_policy_text(back.encode(), "b")), original)


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        return all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        assert len(a) == len(b)
        return all(_close(x, y) for x, y in zip(a, b, strict=True))
    if a is None or b is None:
        assert a is b
        return True
    assert math.isclose(a, b, rel_tol=1e-8), (a, b)
    return True


def test_strings_and_defaults() -> None:
    text = """
active = "p"
[limits.rate.slow]
window = "1h30m"
max_requests = 5
[limits.rate.quick]
window = "500ms"
max_requests = 5
[policies.p.terms.aging]
[policies.p.terms.penalty]
type = "rate_penalty"
window = 90
"""
    doc = scaled_doc(text, 0.01)
    assert doc["limits"]["rate"] == {"slow": {"window": 54.0, "max_requests": 5},
                                     "quick": {"window": 0.005, "max_requests": 5}}
    # Defaults are durations the scheduler uses too: written out, scaled.
    assert doc["backend"] == {"poll_interval": 0.05, "request_timeout": 6.0, "queue_timeout": 6.0}
    assert doc["policies"]["p"]["terms"]["aging"] == {"per_second": 100.0}  # no max_wait: never
    assert doc["policies"]["p"]["terms"]["penalty"] == {"type": "rate_penalty", "window": 0.9}
    assert "admin" not in doc and "journal" not in doc


def test_whole_seconds_is_refused() -> None:
    with pytest.raises(PolicyError) as caught:
        scale_policy_text(EXAMPLE_TEXT, "policies.example.toml", 0.01)
    (line,) = caught.value.lines
    assert line.startswith(
        "policies.example.toml: policies.seed.terms.aging.whole_seconds: true cannot be scaled: "
    )
    assert "whole_seconds = false" in line


def test_whole_seconds_refused_by_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "scale", str(EXAMPLE), "--by", "0.01"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "Traceback" not in err
    assert "policies.seed.terms.aging.whole_seconds: true cannot be scaled" in err


def test_a_value_scaled_out_of_range_is_an_error() -> None:
    text = 'active = "p"\n[policies.p.terms.aging]\nper_second = 1e9\n'
    with pytest.raises(PolicyError) as caught:
        scale_policy_text(text, "p.toml", 0.01)
    assert caught.value.lines == [
        "p.toml (scaled by 0.01): policies.p.terms.aging.per_second: 100000000000.0 is out of "
        "range: must be <= 1000000000.0"
    ]


def test_a_broken_file_reports_as_check_does(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('active = "p"\n[backend]\npoll_interval = "soon"\n[policies.p]\n')
    with pytest.raises(PolicyError) as caught:
        scale_policy(bad.read_text(), str(bad), 0.5)
    assert main(["policy", "scale", str(bad), "--by", "0.5"]) == 1
    assert capsys.readouterr().err.splitlines() == caught.value.lines
    assert "backend.poll_interval" in caught.value.lines[0]


@pytest.mark.parametrize("factor", [0.0, -1.0, math.inf, math.nan])
def test_a_bad_factor_in_the_function(factor: float) -> None:
    with pytest.raises(ValueError, match="positive, finite"):
        scale_policy_text(SCALABLE_TEXT, "p.toml", factor)


@pytest.mark.parametrize("factor", ["0", "-1", "abc", "inf", "nan"])
def test_a_bad_factor_on_the_command_line(
    factor: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["policy", "scale", str(EXAMPLE), "--by", factor, "-o", "out.toml"])
    assert exit_.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err and err.count("\n") == 1
    assert err.startswith(f"smart-proxy policy scale: error: argument --by: {factor!r} ")
    assert list(tmp_path.iterdir()) == []


def test_a_bad_factor_in_a_real_process() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "server.cli", "policy", "scale", str(EXAMPLE), "--by", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        "smart-proxy policy scale: error: argument --by: '0' must be above zero, and finite\n"
    )


def test_output_file_passes_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source, out = tmp_path / "policies.toml", tmp_path / "fast.toml"
    source.write_text(SCALABLE_TEXT, encoding="utf-8")
    assert main(["policy", "scale", str(source), "--by", "0.01", "-o", str(out)]) == 0
    assert capsys.readouterr() == ("", "")
    assert out.read_text(encoding="utf-8") == scale_policy_text(SCALABLE_TEXT, str(source), 0.01)
    assert main(["policy", "check", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"ok: {out} — 4 policies, active 'balanced'")


def test_standard_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "policies.toml"
    source.write_text(SCALABLE_TEXT, encoding="utf-8")
    assert main(["policy", "scale", str(source), "--by", "2"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and out == scale_policy_text(SCALABLE_TEXT, str(source), 2.0)
    assert tomllib.loads(out)["policies"]["balanced"]["terms"]["aging"]["per_second"] == 0.5


# ---- every time-typed key is a decision, not an accident ------------------------------------

# Term parameters that are not time: points, counts, sizes, switches. A new parameter must be
# added here, be a Duration (scaled), or be listed in PER_SECOND — or this test fails.
NOT_TIME = {
    "vram": {"loaded", "fits", "fits_when_empty", "fits_check", "unknown_size", "swap",
             "swap_above"},
    "fairness": {"per_queued", "per_recent", "cap"},
    "rate_penalty": {"threshold", "per_request", "cap"},
    "class_offset": {"offsets"},
    "aging": {"whole_seconds"},
    "fair_share": {"per_unit", "unit", "input_weight", "output_weight", "cap"},
    "swap_cost": {"evict_weight", "cap"},
    "backend_load": {"points"},
}


def test_every_term_parameter_is_classified() -> None:
    for term in REGISTRY:
        fields = msgspec.structs.fields(term.params)
        durations = {f.encode_name for f in fields if is_duration(f.type)} | {
            p.split(".")[0] for p in duration_fields(term.params) if p.endswith(".*")}
        rates = set(PER_SECOND.get(term.name, ()))
        rest = {f.encode_name for f in fields} - durations - rates
        assert rest == NOT_TIME[term.name], term.name
        assert not any("[]" in p for p in duration_fields(term.params)), term.name


def test_the_file_durations_scaled_and_not() -> None:
    found = set(duration_fields(PolicyFile))
    assert found >= UNSCALED
    assert found - UNSCALED == {"backend.poll_interval", "backend.request_timeout",
                                "backend.queue_timeout", "backends.*.poll_interval",
                                "backends.*.request_timeout", "backends.*.queue_timeout",
                                "limits.rate.*.window", "limits.classes.*.queue_timeout",
                                "policies.*.swap_hold"}


def test_a_file_of_several_backends_scales_each() -> None:
    text = (Path(__file__).resolve().parent.parent / "docs" / "examples" / "two-gpus.toml").read_text()
    scaled = scale_policy(text, "two-gpus.toml", 0.01)
    assert "backend" not in scaled
    assert {n: b["queue_timeout"] for n, b in scaled["backends"].items()} == {"gpu0": 6.0, "gpu1": 6.0}
