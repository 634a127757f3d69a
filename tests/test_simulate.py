"""The simulator: synthetic traces, the replay under every example policy and plain Ollama, the
figures it reports, the CI gate (`simulate --check`) and the tuner (`policy tune`), end to end
through the command line."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import msgspec
import pytest

from policy.load import load_policy_file
from schemas.trace import TraceRecord
from server.cli.main import main
from sim.config import load_text
from sim.presets import PRESETS
from sim.replay.gpu import choose
from sim.replay.measure import Collector
from sim.replay.run import PLAIN, replay_plain, replay_policy
from sim.replay.synth import TRACE_PRESETS, synthesize
from sim.replay.workload import DEFAULT_OUTPUT_TOKENS, Request, classify, prepare

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = str(ROOT / "policies.example.toml")
COMPILED = load_policy_file(EXAMPLE)


def write_trace(path: Path, records: list[TraceRecord]) -> Path:
    path.write_bytes(b"".join(msgspec.json.encode(r) + b"\n" for r in records))
    return path


# -- synthetic traces --------------------------------------------------------------------------


@pytest.mark.parametrize("preset", list(TRACE_PRESETS))
def test_a_preset_is_deterministic_and_fits_its_gpu(preset: str) -> None:
    first = synthesize(preset, 400, seed=7)
    assert first == synthesize(preset, 400, seed=7)
    assert first != synthesize(preset, 400, seed=8)
    assert len(first) == 400 and first[0].arrival == 0.0
    assert [r.arrival for r in first] == sorted(r.arrival for r in first)
    gpu = load_text(PRESETS[TRACE_PRESETS[preset].gpu], "p", 0.0)
    assert {r.model for r in first} <= {m.name for m in gpu.models}
    assert all(r.prompt_tokens and r.output_tokens is not None and r.request_class for r in first)


def test_synth_writes_the_export_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "t.jsonl"
    assert main(["trace", "synth", "--preset", "flood", "--requests", "50", "--seed", "3", "-o", str(out)]) == 0
    lines = out.read_bytes().splitlines()
    assert len(lines) == 50
    decoded = [msgspec.json.decode(line, type=TraceRecord) for line in lines]
    assert decoded == synthesize("flood", 50, 3)
    assert b'"class":"batch"' in out.read_bytes()  # the export's field name, not ours


def test_synth_help_lists_every_preset(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["trace", "synth", "--help"])
    text = capsys.readouterr().out
    for name, preset in TRACE_PRESETS.items():
        assert name in text and preset.summary[:30] in text


# -- the replay ----------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", list(TRACE_PRESETS))
def test_every_preset_replays_under_every_policy_and_plain_ollama(preset: str) -> None:
    workload = classify(prepare(synthesize(preset, 150, seed=1)), COMPILED)
    gpu = choose(workload.models(), preset=TRACE_PRESETS[preset].gpu, config=None).settings
    rows = [replay_plain(workload, gpu, COMPILED.active.max_wait)]
    rows += [replay_policy(workload, gpu, COMPILED, name) for name in COMPILED.policies]
    for row in rows:
        f = row.figures
        # Nothing accepted is lost or doubled: every request ends exactly one way.
        assert f["completed"] + f["timed_out"] + sum(f["refused"].values()) == 150, row.policy
        assert f["loads"] >= 1 and f["gpu_generate_s"] > 0
        assert 0 < f["jain"] <= 1.0
        assert 0 <= f["wait_s"]["p50"] <= f["wait_s"]["p95"] <= f["wait_s"]["max"]
    assert rows[0].policy == PLAIN


def test_the_replay_is_deterministic() -> None:
    workload = classify(prepare(synthesize("agents", 150, seed=2)), COMPILED)
    gpu = choose(workload.models(), preset=None, config=None).settings
    assert replay_policy(workload, gpu, COMPILED, "balanced") == replay_policy(workload, gpu, COMPILED, "balanced")


def test_batching_by_model_saves_loads_against_plain_ollama() -> None:
    """The reason the sidecar exists, in one assertion: on many models over a small card, the
    default policy loads models far less often than Ollama's own first-come, first-served queue,
    and nobody waits as long."""
    workload = classify(prepare(synthesize("many-models", 600, seed=1)), COMPILED)
    gpu = choose(workload.models(), preset=None, config=None).settings
    plain = replay_plain(workload, gpu, 300.0).figures
    balanced = replay_policy(workload, gpu, COMPILED, "balanced").figures
    assert balanced["loads"] < 0.8 * plain["loads"]
    assert balanced["wait_s"]["p95"] < plain["wait_s"]["p95"] / 5


def test_plain_ollama_refuses_beyond_its_queue() -> None:
    """OLLAMA_MAX_QUEUE (512 in the presets) bounds Ollama's one queue of requests that wait for
    a model to load: 600 at once for a model that must wait behind another get 503s beyond it.
    (Requests for the loaded or loading model skip that queue, as in Ollama.)"""
    records = [TraceRecord(arrival=0.0, at=0.0, client=f"c{i % 3}",
                           model="gemma3:27b" if i else "llama3.1:8b",
                           endpoint="/api/chat", prompt_tokens=100, output_tokens=20) for i in range(601)]
    workload = classify(prepare(records), COMPILED)
    gpu = choose(workload.models(), preset="workstation-24gb", config=None).settings
    f = replay_plain(workload, gpu, None).figures
    assert f["refused"] == {"ollama_queue_full": 600 - 512}
    assert f["completed"] == 601 - 88


def test_missing_token_counts_are_estimated_from_the_trace() -> None:
    records = [
        TraceRecord(arrival=0.0, at=0.0, client="a", model="mistral:7b", endpoint="/api/chat",
                    prompt_tokens=100, output_tokens=40),
        TraceRecord(arrival=1.0, at=1.0, client="a", model="mistral:7b", endpoint="/api/chat",
                    prompt_tokens=300, output_tokens=60),
        TraceRecord(arrival=2.0, at=2.0, client="a", model="mistral:7b", endpoint="/api/chat",
                    status="failed"),
        TraceRecord(arrival=3.0, at=3.0, client="b", model="gemma3:12b", endpoint="/api/generate"),
        TraceRecord(arrival=4.0, at=4.0, client="b", model="nomic-embed-text", endpoint="/api/embed"),
        TraceRecord(arrival=5.0, at=5.0, client="b", model=None, endpoint="/api/chat", status="rejected"),
    ]
    workload = prepare(records)
    assert workload.skipped == 1 and workload.estimated == 3
    by_model = {r.model: r for r in workload.requests}
    failed = workload.requests[2]  # the medians of the same model's known counts
    assert (failed.prompt_tokens, failed.output_tokens) == (200, 50)
    assert by_model["gemma3:12b"].output_tokens == DEFAULT_OUTPUT_TOKENS
    embed = by_model["nomic-embed-text:latest"]
    assert embed.embed and embed.output_tokens == 0


def test_fairness_is_service_against_a_max_min_share() -> None:
    """Two clients backlogged on one slot: served alternately, each gets half (Jain 1); one
    served only after the other's whole backlog, the late one got none of its share while it
    waited."""
    def req(i: int, client: str) -> Request:
        return Request(i, 0.0, client, "c", "m", "/api/chat", False, 1, 1)

    def run(order: list[str]) -> Collector:
        out = Collector(None)
        reqs = [req(i, c) for i, c in enumerate(["a", "a", "b", "b"])]
        for r in reqs:
            out.admitted(r, 0.0)
        t = 0.0
        for client in order:
            r = next(x for x in reqs if x.client == client)
            reqs.remove(r)
            out.started(r, "c", t)
            t += 1.0
            out.finished(r, t)
        return out

    fair, _, _ = run(["a", "b", "a", "b"]).fairness()
    unfair, worst, share = run(["a", "a", "b", "b"]).fairness()
    assert fair > 0.9 and unfair < 0.85
    assert worst == "b" and share is not None and share < 1


# -- the command line: report, JSON, gate, tune ----------------------------------------------


@pytest.fixture(scope="module")
def many_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_trace(tmp_path_factory.mktemp("trace") / "mm.jsonl", synthesize("many-models", 400, seed=1))


def test_simulate_prints_a_table_and_writes_the_json(many_models: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.json"
    code = main(["simulate", "--trace", str(many_models), "--policy", EXAMPLE, "--all", "--json", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "plain Ollama" in text and "model loads" in text and "Jain fairness" in text
    report = json.loads(out.read_text())
    assert report["format"] == 1 and report["trace"]["requests"] == 400
    assert [r["policy"] for r in report["rows"]] == [PLAIN, *COMPILED.policies]
    assert report["gpu"]["source"] == "workstation-24gb"  # the smallest preset with every model
    for key in ("loads", "evictions", "gpu_load_s", "gpu_generate_s", "makespan_s", "wait_s",
                "wait_s_by_class", "over_max_wait", "timed_out", "refused", "jain", "worst_client"):
        assert key in report["rows"][1]


def test_gpu_overrides_change_the_answer(many_models: Path, tmp_path: Path) -> None:
    """"Would a 96 GB card fix this?" — with room for everything, hardly anything is swapped, as
    long as the operator keeps the context Ollama would otherwise grow with the card."""
    small, big, wide = tmp_path / "small.json", tmp_path / "big.json", tmp_path / "wide.json"
    base = ["simulate", "--trace", str(many_models), "--policy", EXAMPLE]
    assert main([*base, "--json", str(small)]) == 0
    bigger = [*base, "--vram-gb", "96", "--max-loaded", "9"]
    assert main([*bigger, "--context-length", "4096", "--json", str(big)]) == 0
    assert main([*bigger, "--json", str(wide)]) == 0
    loads = [json.loads(p.read_text())["rows"][1]["loads"] for p in (small, big, wide)]
    assert loads[1] < loads[0] / 5
    # Left to Ollama, a 96 GB card gives every model a 128k context: far fewer fit side by side.
    assert loads[2] > loads[1] * 2
    gpus = [json.loads(p.read_text())["gpu"] for p in (big, wide)]
    assert gpus[0]["vram_gb"] == 96 and gpus[0]["context_length"] == 4096
    assert gpus[1]["context_length"] == 131_072  # 256k by VRAM, capped at what models know


def test_the_gate_passes_a_policy_against_itself_and_fails_a_worse_one(
    many_models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    baseline = tmp_path / "baseline.json"
    run = ["simulate", "--trace", str(many_models), "--policy", EXAMPLE]
    assert main([*run, "--policies", "balanced", "--json", str(baseline)]) == 0
    assert main([*run, "--policies", "balanced", "--check", str(baseline)]) == 0
    assert "no gated figure" in capsys.readouterr().out
    # fifo against balanced's baseline: the one-policy rows are compared with each other.
    assert main([*run, "--policies", "fifo", "--check", str(baseline), "--tolerance", "5%"]) == 1
    text = capsys.readouterr().out
    assert "worse than the baseline" in text and "wait p95 s" in text


def test_the_gate_counts_refusals(many_models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Refusing clients shortens every wait and leaves the refused out of the fairness index; the
    gate must see it anyway."""
    baseline = tmp_path / "baseline.json"
    run = ["simulate", "--trace", str(many_models), "--policies", "balanced"]
    assert main([*run, "--policy", EXAMPLE, "--json", str(baseline)]) == 0
    strict = tmp_path / "strict.toml"
    strict.write_text(Path(EXAMPLE).read_text().replace("max_queued_per_client = 1000", "max_queued_per_client = 2"))
    assert main([*run, "--policy", str(strict), "--check", str(baseline)]) == 1
    assert "refused or timed out" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"rows": []}', "not a simulation report"),
        ("[1, 2]", "not a simulation report"),
        ("not json", "Expecting value"),
        ('{"format": 1, "rows": [3]}', "rows[0] is not a report row"),
        ('{"format": 1, "rows": [{"policy": "balanced", "loads": "x"}]}', "no finite number for 'loads'"),
        ('{"format": 1, "rows": [{"policy": "balanced", "loads": 3, "wait_s": []}]}', "for 'wait p95 s'"),
        ('{"format": 1, "rows": [{"policy": "balanced", "loads": NaN}]}', "no finite number for 'loads'"),
        ("[" * 100000 + "]" * 100000, "nested too deeply"),
    ],
)
def test_the_gate_refuses_a_file_that_is_not_a_report(
    content: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Checked before the replay: one line, exit 2, no table printed first."""
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    trace = str(ROOT / "tests" / "traces" / "small.jsonl")
    assert main(["simulate", "--trace", trace, "--policy", EXAMPLE, "--check", str(bad)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and message in captured.err, captured.err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"arrival": 0, "at": 0, "client": "a", "model": "llama3.1:8b", "endpoint": "/api/chat"}\n{"arrival": "soon"}\n',
         ":2: not a trace record"),
        ("", "holds no requests"),
        ('{"arrival": 0, "at": 0, "client": "a", "model": "mystery:9b", "endpoint": "/api/chat"}\n',
         "no built-in GPU preset has every model"),
    ],
)
def test_a_bad_trace_is_one_line(content: str, message: str, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "t.jsonl"
    trace.write_text(content)
    assert main(["simulate", "--trace", str(trace), "--policy", EXAMPLE]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1 and message in err, err


def test_tune_beats_its_base_within_the_constraints(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = write_trace(tmp_path / "t.jsonl", synthesize("many-models", 1200, seed=4))
    tuned = tmp_path / "tuned.toml"
    code = main(["policy", "tune", "--trace", str(trace), "--policy", EXAMPLE, "--base", "balanced",
                 "--minimize", "loads", "--subject-to", "p95_wait<=150s,jain>=0.85",
                 "--budget", "16", "--seed", "3", "-o", str(tuned)])
    assert code == 0, capsys.readouterr()
    assert "balanced-tuned" in capsys.readouterr().out
    assert main(["policy", "check", str(tuned)]) == 0
    report = tmp_path / "r.json"
    assert main(["simulate", "--trace", str(trace), "--policy", str(tuned),
                 "--policies", "balanced,balanced-tuned", "--json", str(report)]) == 0
    base, best = json.loads(report.read_text())["rows"][1:]
    assert best["loads"] < base["loads"]
    assert best["wait_s"]["p95"] <= 150 and best["jain"] >= 0.85


def test_tune_says_so_when_nothing_meets_the_constraints(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = write_trace(tmp_path / "t.jsonl", synthesize("many-models", 300, seed=4))
    code = main(["policy", "tune", "--trace", str(trace), "--policy", EXAMPLE, "--minimize", "loads",
                 "--subject-to", "max_wait<=0.001s", "--budget", "4", "-o", str(tmp_path / "o.toml")])
    assert code == 1
    assert "no candidate meets" in capsys.readouterr().out
    assert not (tmp_path / "o.toml").exists()


def test_json_on_stdout_is_one_document(many_models: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--trace", str(many_models), "--policy", EXAMPLE, "--json", "-"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["format"] == 1
    assert "model loads" in captured.err  # the table went to stderr


def test_a_poll_interval_of_zero_polls_at_every_event(tmp_path: Path) -> None:
    text = Path(EXAMPLE).read_text().replace('poll_interval = "5s"', "poll_interval = 0")
    compiled = load_policy_file(write_policy(tmp_path, text))
    workload = classify(prepare(synthesize("many-models", 150, seed=1)), compiled)
    gpu = choose(workload.models(), preset=None, config=None).settings
    assert replay_policy(workload, gpu, compiled, "balanced").figures["completed"] == 150


def write_policy(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "p.toml"
    path.write_text(text)
    return path


def test_ollama_refusing_a_dispatched_request_ends_it_once(tmp_path: Path) -> None:
    """A GPU whose Ollama queue holds one request, behind a sidecar that sends eight at once:
    Ollama's 503s are counted as refusals and their slots freed, nothing is lost."""
    sim = tmp_path / "sim.toml"
    sim.write_text('[node]\nvram_gb = 24\nnum_parallel = 4\nmax_loaded_models = 1\nmax_queue = 1\n'
                   + "".join(f'[[models]]\nname = "{m}"\n' for m in ("llama3.1:8b", "mistral:7b", "gemma3:12b")))
    records = [TraceRecord(arrival=i * 0.01, at=0.0, client="c", model=("llama3.1:8b", "mistral:7b", "gemma3:12b")[i % 3],
                           endpoint="/api/chat", prompt_tokens=50, output_tokens=50) for i in range(60)]
    compiled = dataclasses.replace(COMPILED, backend=dataclasses.replace(COMPILED.backend, max_parallel=8))
    workload = classify(prepare(records), compiled)
    gpu = choose(workload.models(), preset=None, config=sim).settings
    f = replay_policy(workload, gpu, compiled, "fifo").figures
    assert f["refused"].get("ollama_queue_full", 0) > 0
    assert f["completed"] + f["timed_out"] + sum(f["refused"].values()) == 60


def test_model_names_are_canonical_as_the_sidecar_writes_them() -> None:
    records = [TraceRecord(arrival=float(i), at=0.0, client="c", model=name, endpoint="/api/chat",
                           prompt_tokens=10, output_tokens=10)
               for i, name in enumerate(["library/mistral:7b", "registry.ollama.ai/library/mistral:7b",
                                         "Mistral:7B", "nomic-embed-text"])]
    workload = prepare(records)
    assert workload.models() == {"mistral:7b", "nomic-embed-text:latest"}
    gpu = choose(workload.models(), preset=None, config=None)
    assert gpu.name == "workstation-24gb"


def test_a_sim_config_that_is_not_text_is_one_line(many_models: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "sim.toml"
    bad.write_bytes(b"\xff\xfe\x00garbage")
    assert main(["simulate", "--trace", str(many_models), "--policy", EXAMPLE, "--sim-config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not UTF-8" in err


def test_tune_explores_negative_weights_and_keeps_tier_order() -> None:
    import random

    from sim.replay.space import Dimension, keep_tier_order

    negative = Dimension("class_offset", ("offsets", "interactive"), -50.0, -1e9, 1e9, False)
    drawn = {negative.draw(random.Random(i)) for i in range(20)}
    assert len(drawn) > 10 and all(-200 <= v <= -12.5 for v in drawn)
    tiers = [Dimension("vram", ("swap", 0, "points"), 120, -1e9, 1e9, False),
             Dimension("vram", ("swap", 1, "points"), 180, -1e9, 1e9, False),
             Dimension("vram", ("swap_above",), 240, -1e9, 1e9, False)]
    assert keep_tier_order(tiers, [478.0, 373.0, 325.0]) == [325.0, 373.0, 478.0]


def test_tune_refuses_to_overwrite_its_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = write_policy(tmp_path, Path(EXAMPLE).read_text())
    trace = str(ROOT / "tests" / "traces" / "small.jsonl")
    assert main(["policy", "tune", "--trace", trace, "--policy", str(policy), "--minimize", "loads",
                 "-o", str(policy)]) == 2
    assert "is the --policy file itself" in capsys.readouterr().err
