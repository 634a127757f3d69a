"""`policy from-env`: the earlier proxy's .env becomes a policy file that orders like `seed`, the
rest becomes environment variables, secrets are never copied, unknown variables are reported."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from engine.scenario import dispatch_sequence, load_scenario, scenario_files
from policy.from_env import EnvFileError, migrate, parse_env
from policy.load import load_policy_file
from server.cli.main import main

ROOT = Path(__file__).resolve().parent.parent
SEED_ENV = ROOT / "tests" / "migration" / "seed-example.env"
EXAMPLE = load_policy_file(ROOT / "policies.example.toml")


@pytest.fixture
def migrated(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, str]:
    out = tmp_path / "policies.toml"
    assert main(["policy", "from-env", str(SEED_ENV), "-o", str(out)]) == 0
    return out, capsys.readouterr().err


def test_the_documented_example_converts_and_passes_check(migrated: tuple[Path, str],
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    path, err = migrated
    assert main(["policy", "check", str(path)]) == 0
    compiled = load_policy_file(path)
    b = compiled.backend
    assert (b.url, b.vram_gb, b.max_parallel, b.poll_interval) == ("http://localhost:11434", 78.125, 3, 5.0)
    assert [str(n) for n in compiled.admin.networks] == ["127.0.0.1/32", "::1/128"]
    assert compiled.admin.key_env == "PROXY_ADMIN_KEY"
    assert "your_secret_key" not in path.read_text() + err  # the key is never copied
    for line in ("SMART_PROXY_DB=./db/requests.db", "SMART_PROXY_LOG_FORMAT=json",
                 "SMART_PROXY_LOG_LEVEL=info", "SMART_PROXY_HOST=0.0.0.0", "SMART_PROXY_PORT=8003"):
        assert line in err


def test_it_orders_every_scenario_as_the_seed_policy_does(migrated: tuple[Path, str]) -> None:
    compiled = load_policy_file(migrated[0])
    reference = dataclasses.replace(EXAMPLE, backend=compiled.backend, clients=compiled.clients)
    files = scenario_files(ROOT / "tests" / "scenarios")
    assert len(files) >= 10
    for file in files:
        scenario = load_scenario(file)
        assert dispatch_sequence(compiled, scenario, "seed") == dispatch_sequence(reference, scenario, "seed"), file.name


def test_every_priority_number_lands_in_the_seed_terms() -> None:
    env = parse_env("PRIORITY_BASE_LOADED=0\nPRIORITY_BASE_PARALLEL=150\nPRIORITY_BASE_SMALL_SWAP=350\n"
                    "PRIORITY_BASE_LARGE_SWAP=900\nPRIORITY_BASE_LARGE_SWAP_THRESHOLD_GB=30\n"
                    "PRIORITY_WAIT_TIME_MULTIPLIER=-2\nPRIORITY_RATE_LIMIT_MULTIPLIER=3\n"
                    "RATE_LIMIT_WINDOW=300\nREQUEST_TIMEOUT=120\n", ".env")
    result = migrate(env, ".env")
    terms = result.document["policies"]["seed"]["terms"]
    assert terms["vram"] == {
        "loaded": 0, "fits": 150, "fits_when_empty": False, "fits_check": "vram_only",
        "unknown_size": 350, "swap": [{"up_to_gb": 30, "points": 350}], "swap_above": 900,
    }
    assert terms["aging"] == {"per_second": 2, "whole_seconds": True}
    assert terms["fairness"] == {"per_queued": 3, "per_recent": 3, "window": 300, "cap": 100}
    assert result.document["backend"]["request_timeout"] == 120
    zero = migrate(parse_env("PRIORITY_WAIT_TIME_MULTIPLIER=0", ".env"), ".env")
    assert str(zero.document["policies"]["seed"]["terms"]["aging"]["per_second"]) == "0.0"  # not -0.0


def test_what_the_env_leaves_out_gets_the_earlier_proxys_defaults() -> None:
    """Not this project's defaults: the converted file must behave as the earlier proxy did."""
    result = migrate(parse_env("PRIORITY_BASE_LOADED=0\n", ".env"), ".env")
    assert result.document["backend"] == {"url": "http://localhost:11434", "vram_gb": 78.125,
                                          "max_parallel": 3, "poll_interval": 5.0}
    assert any("TOTAL_VRAM_MB was not set" in note for note in result.notes)
    fallback = migrate(parse_env("OLLAMA_HOST=gpu-box:11434\n", ".env"), ".env")
    assert fallback.document["backend"]["url"] == "http://gpu-box:11434"
    assert fallback.unknown == []


@pytest.mark.parametrize(
    ("host", "dsn"),
    [("::1", "postgresql://me@[::1]:5432/req"),
     ("/var/run/postgresql", "postgresql://me@/req?host=/var/run/postgresql&port=5432")],
)
def test_dsn_hosts(host: str, dsn: str) -> None:
    env = parse_env(f"DB_TYPE=postgres\nDB_HOST={host}\nDB_NAME=req\nDB_USER=me\n", ".env")
    assert migrate(env, ".env").environment[0][:2] == ("SMART_PROXY_DB", dsn)


@pytest.mark.parametrize(("given", "level"), [("WARN", "warning"), ("CRITICAL", "error"), ("info", "info")])
def test_log_levels_become_ones_serve_accepts(given: str, level: str) -> None:
    env = migrate(parse_env(f"LOG_LEVEL={given}\n", ".env"), ".env").environment
    assert ("SMART_PROXY_LOG_LEVEL", level) in [e[:2] for e in env]


def test_postgres_settings_become_a_dsn_without_the_password() -> None:
    env = parse_env("DB_TYPE=postgres\nDB_HOST=db\nDB_PORT=5433\nDB_NAME=proxy\nDB_USER=ops\n"
                    "DB_PASSWORD=hunter2\n", ".env")
    result = migrate(env, ".env")
    assert result.environment[0][:2] == ("SMART_PROXY_DB", "postgresql://ops@db:5433/proxy")
    assert "hunter2" not in repr(result)
    assert any("DB_PASSWORD" in note for note in result.notes)


def test_dotenv_syntax_and_unknown_variables() -> None:
    text = ("\ufeffexport OLLAMA_API_BASE='http://gpu:11434'  # quoted\n# comment\n\nLOG_LEVEL=\"DEBUG\"\n"
            "TOTAL_VRAM_MB=24576 # a comment\nDASHBOARD_REFRESH=5\nPRIORITY_TURBO=1\n")
    result = migrate(parse_env(text, ".env"), ".env")
    assert result.document["backend"]["url"] == "http://gpu:11434"
    assert result.document["backend"]["vram_gb"] == 24.0
    assert result.environment[0][:2] == ("SMART_PROXY_LOG_LEVEL", "debug")
    assert result.unknown == ["DASHBOARD_REFRESH", "PRIORITY_TURBO"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("TOTAL_VRAM_MB=lots\n", "TOTAL_VRAM_MB: 'lots' is not a number"),
        ("ADMIN_IPS=10.0.0.1,not-an-ip\n", "ADMIN_IPS: 'not-an-ip'"),
        ("PRIORITY_WAIT_TIME_MULTIPLIER=2\n", "must be zero or negative"),
        ("OLLAMA_API_BASE=localhost:11434\n", "is not an http(s) URL"),
        ("DB_TYPE=mysql\n", "DB_TYPE: 'mysql'"),
        ("OLLAMA_MAX_PARALLEL=0\n", "must be at least 1"),
        ("just words\n", ":1: not a KEY=VALUE line"),
        ("KEY='open\n", "the quote is not closed"),
        ("KEY='closed' trailing\n", "text after the closing quote"),
        ("LOG_LEVEL=loud\n", "LOG_LEVEL: 'loud'"),
        ("PROXY_PORT=abc\n", "PROXY_PORT: 'abc' is not a port number"),
        ("DB_TYPE=postgres\nDB_PORT=99999\n", "DB_PORT: '99999'"),
    ],
)
def test_bad_values_are_one_line_and_exit_2(text: str, message: str, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    env = tmp_path / ".env"
    env.write_text(text)
    assert main(["policy", "from-env", str(env)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    assert captured.err.count("\n") == 1 and message in captured.err, captured.err
    with pytest.raises(EnvFileError):
        migrate(parse_env(text, ".env"), ".env")
