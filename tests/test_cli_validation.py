"""Every `smart-proxy` verb refuses a bad value of every option, and of every SMART_PROXY_*
variable the CLI reads, with one line on stderr naming it and exit status 2 — never a traceback,
never a server started, never a file created by a command that only reads."""

from __future__ import annotations

import argparse
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sidecar_fixtures import cli_process

from policy.load import load_policy_file
from schemas.journal import JournalRecord
from server.cli.args import CliError
from server.cli.main import build_parser, main
from server.journal.fallback import FallbackSpool

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = str(ROOT / "policies.example.toml")
SCENARIO = str(ROOT / "tests" / "scenarios" / "01-empty-gpu.toml")
SCENARIOS = str(ROOT / "tests" / "scenarios")
MISSING = "/nonexistent-dir-of-smart-proxy-tests"

SERVE = ("serve", "--policy", EXAMPLE)
EXPLAIN = ("policy", "explain", EXAMPLE, "--scenario", SCENARIO)
SNAPSHOT = ("policy", "snapshot", EXAMPLE, "--scenarios", SCENARIOS)
TRACE = str(ROOT / "tests" / "traces" / "small.jsonl")
SIMULATE = ("simulate", "--trace", TRACE, "--policy", EXAMPLE)
TUNE = ("policy", "tune", "--trace", TRACE, "--policy", EXAMPLE, "--minimize", "loads")
# Options `simulate` and `policy tune` share, each with a bad value.
SETUP_CASES: list[tuple[tuple[str, ...], str]] = [
    (("--sim", "nope"), "--sim"),
    (("--sim-config", f"{MISSING}/sim.toml"), "--sim-config"),
    *[(("--vram-gb", v), "--vram-gb") for v in ("0", "-1", "abc", "inf")],
    (("--num-parallel", "0"), "--num-parallel"),
    (("--max-loaded", "x"), "--max-loaded"),
    (("--context-length", "0"), "--context-length"),
    (("--max-parallel", "-2"), "--max-parallel"),
]

# (argv, the option the message must name). `{tmp}` is the test's directory.
CASES: list[tuple[tuple[str, ...], str]] = [
    *[((*SERVE, "--port", v), "--port") for v in ("99999", "-5", "abc", "1.5")],
    *[((*SERVE, "--host", v), "--host") for v in ("bad host", "999.1.1.1", "a_b", "")],
    *[((*SERVE, "--upstream", v), "--upstream") for v in ("notaurl", "ftp://x", "http://", "http://h:99999")],
    *[((*SERVE, "--db", v), "--db") for v in ("mysql://x/y", f"{MISSING}/x.db", "{tmp}")],
    ((*SERVE, "--log-format", "xml"), "--log-format"),
    ((*SERVE, "--log-level", "loud"), "--log-level"),
    *[((*SERVE, "--shutdown-grace", v), "--shutdown-grace") for v in ("-1", "nan", "inf", "soon")],
    ((*SERVE, "--header-timeout", "0"), "--header-timeout"),
    ((*SERVE, "--body-timeout", "inf"), "--body-timeout"),
    ((*SERVE, "--max-connections", "0"), "--max-connections"),
    *[((*SERVE, "--instance", v), "--instance") for v in ("", "-gpu", "a b", "x" * 129, "gpu/0")],
    (("serve", "--policy", f"{MISSING}/p.toml"), "--policy"),
    (("serve", "--policy", "{tmp}"), "--policy"),
    (("demo", "--port", "99999"), "--port"),
    (("demo", "--host", "not a host"), "--host"),
    *[(("demo", "--time-scale", v), "--time-scale") for v in ("-1", "nan", "inf", "fast")],
    (("demo", "--preset", "nope"), "--preset"),
    (("demo", "--policy", f"{MISSING}/p.toml"), "--policy"),
    (("demo", "--db", "ftp://x"), "--db"),
    (("demo", "--log-format", "xml"), "--log-format"),
    (("demo", "--log-level", "loud"), "--log-level"),
    (("demo", "--shutdown-grace", "-1"), "--shutdown-grace"),
    (("demo", "--header-timeout", "-1"), "--header-timeout"),
    (("demo", "--instance", "a b"), "--instance"),
    (("demo", "--body-timeout", "0"), "--body-timeout"),
    (("demo", "--max-connections", "x"), "--max-connections"),
    (("sim", "--port", "70000"), "--port"),
    (("sim", "--host", "a b"), "--host"),
    *[(("sim", "--time-scale", v), "--time-scale") for v in ("-1", "nan")],
    (("sim", "--preset", "nope"), "--preset"),
    *[(("sim", "--nodes", v), "--nodes") for v in ("0", "17", "two", "-1")],
    (("sim", "--port", "65535", "--nodes", "2"), "--nodes"),
    (("sim", "--config", f"{MISSING}/sim.toml"), "--config"),
    (("policy", "check", f"{MISSING}/p.toml"), "FILE"),
    (("policy", "show", "{tmp}"), "FILE"),
    (("policy", "explain", f"{MISSING}/p.toml", "--scenario", SCENARIO), "FILE"),
    (("policy", "explain", EXAMPLE, "--scenario", f"{MISSING}/s.toml"), "--scenario"),
    ((*EXPLAIN, "--policy", "nope"), "--policy"),
    (("policy", "snapshot", f"{MISSING}/p.toml", "--scenarios", SCENARIOS), "FILE"),
    (("policy", "snapshot", EXAMPLE, "--scenarios", f"{MISSING}/s"), "--scenarios"),
    (("policy", "snapshot", EXAMPLE, "--scenarios", EXAMPLE), "--scenarios"),
    ((*SNAPSHOT, "--check", f"{MISSING}/golden.json"), "--check"),
    ((*SNAPSHOT, "-o", f"{MISSING}/o.json"), "--output"),
    (("policy", "scale", f"{MISSING}/p.toml", "--by", "0.01"), "FILE"),
    *[(("policy", "scale", EXAMPLE, "--by", v), "--by") for v in ("0", "-1", "abc", "inf", "nan")],
    (("policy", "scale", EXAMPLE, "--by", "0.01", "-o", f"{MISSING}/o.toml"), "--output"),
    (("simulate", "--trace", f"{MISSING}/t.jsonl", "--policy", EXAMPLE), "--trace"),
    (("simulate", "--trace", TRACE, "--policy", f"{MISSING}/p.toml"), "--policy"),
    *[((*SIMULATE, *extra), option) for extra, option in SETUP_CASES],
    ((*SIMULATE, "--policies", "nope"), "--policies"),
    ((*SIMULATE, "--json", f"{MISSING}/o.json"), "--json"),
    ((*SIMULATE, "--check", f"{MISSING}/base.json"), "--check"),
    *[((*SIMULATE, "--tolerance", v), "--tolerance") for v in ("150%", "abc", "-1")],
    (("trace", "synth", "--preset", "nope"), "--preset"),
    (("trace", "synth", "--preset", "flood", "--requests", "0"), "--requests"),
    (("trace", "synth", "--preset", "flood", "--seed", "x"), "--seed"),
    (("trace", "synth", "--preset", "flood", "-o", f"{MISSING}/t.jsonl"), "--output"),
    (("policy", "tune", "--trace", f"{MISSING}/t.jsonl", "--minimize", "loads"), "--trace"),
    (("policy", "tune", "--trace", TRACE, "--policy", f"{MISSING}/p.toml", "--minimize", "loads"), "--policy"),
    *[((*TUNE, *extra), option) for extra, option in SETUP_CASES],
    ((*TUNE, "--base", "nope"), "--base"),
    (("policy", "tune", "--trace", TRACE, "--policy", EXAMPLE, "--minimize", "speed"), "--minimize"),
    (("policy", "tune", "--trace", TRACE, "--policy", EXAMPLE, "--maximize", "joy"), "--maximize"),
    *[((*TUNE, "--subject-to", v), "--subject-to") for v in ("p95<=60s", "loads==3", "jain>=x")],
    ((*TUNE, "--budget", "0"), "--budget"),
    ((*TUNE, "--seed", "1.5"), "--seed"),
    ((*TUNE, "-o", f"{MISSING}/t.toml"), "--output"),
    (("policy", "from-env", f"{MISSING}/.env"), "ENV_FILE"),
    (("policy", "from-env", str(ROOT / "tests" / "migration" / "seed-example.env"), "-o", f"{MISSING}/p.toml"), "--output"),
    (("db", "migrate", "--db", f"{MISSING}/x.db"), "--db"),
    (("db", "migrate", "--db", "mysql://x/y"), "--db"),
    (("db", "migrate", "--timeout", "nan"), "--timeout"),
    (("db", "status", "--db", "{tmp}/typo.db"), "--db"),
    (("db", "status", "--timeout", "-1"), "--timeout"),
    (("db", "status", "--fallback-dir", f"{MISSING}/fb"), "--fallback-dir"),
    (("db", "backfill", "--db", f"{MISSING}/x.db"), "--db"),
    (("db", "backfill", "--timeout", "0"), "--timeout"),
    (("db", "backfill", "--fallback-dir", EXAMPLE), "--fallback-dir"),
    (("trace", "export", "--db", "{tmp}/typo.db"), "--db"),
    (("trace", "export", "--timeout", "inf"), "--timeout"),
    *[(("trace", "export", "--since", v), "--since") for v in ("-1", "3x", "nan", "3 fortnights")],
    *[(("dashboard", "--url", v), "--url") for v in ("notaurl", "ftp://x", "http://h:99999")],
    *[(("dashboard", "--once", "--refresh", v), "--refresh") for v in ("0", "-1", "nan", "soon")],
    (("dashboard", "--once", "--key", ""), "--key"),
    (("load", "--url", "notaurl"), "--url"),
    *[(("load", "--clients", v), "--clients") for v in ("0", "x")],
    (("load", "--models", ""), "--models"),
    *[(("load", "--rate", v), "--rate") for v in ("0", "inf")],
    (("load", "--duration", "-5"), "--duration"),
    (("load", "--max-tokens", "0"), "--max-tokens"),
    (("load", "--seed", "1.5"), "--seed"),
]

# Environment variables the CLI reads, each set to a bad value: (argv, variable, option or None).
ENV_CASES: list[tuple[tuple[str, ...], str, str, str | None]] = [
    (("serve",), "SMART_PROXY_POLICY", f"{MISSING}/p.toml", "--policy"),
    (SERVE, "SMART_PROXY_UPSTREAM", "ftp://x", "--upstream"),
    (SERVE, "SMART_PROXY_DB", "mysql://x/y", "--db"),
    (SERVE, "SMART_PROXY_HOST", "bad host", "--host"),
    (SERVE, "SMART_PROXY_PORT", "99999", "--port"),
    (SERVE, "SMART_PROXY_PORT", "abc", "--port"),
    (SERVE, "SMART_PROXY_LOG_FORMAT", "xml", "--log-format"),
    (SERVE, "SMART_PROXY_LOG_LEVEL", "loud", "--log-level"),
    (SERVE, "SMART_PROXY_SHUTDOWN_GRACE", "-1", "--shutdown-grace"),
    (SERVE, "SMART_PROXY_HEADER_TIMEOUT", "nan", "--header-timeout"),
    (SERVE, "SMART_PROXY_BODY_TIMEOUT", "0", "--body-timeout"),
    (SERVE, "SMART_PROXY_INSTANCE", "gpu 0", "--instance"),
    (SERVE, "SMART_PROXY_MAX_CONNECTIONS", "many", "--max-connections"),
    (("demo",), "SMART_PROXY_PORT", "-5", "--port"),
    (("simulate", "--trace", TRACE), "SMART_PROXY_POLICY", f"{MISSING}/p.toml", "--policy"),
    (("policy", "tune", "--trace", TRACE, "--minimize", "loads"), "SMART_PROXY_POLICY", "{tmp}", "--policy"),
    (SERVE, "SMART_PROXY_JOURNAL_FALLBACK", EXAMPLE, None),
    (SERVE, "SMART_PROXY_API_KEYS", "sk-1=alice,sk-2", None),
    (("db", "status"), "SMART_PROXY_DB", "ftp://x", None),
    (("db", "migrate"), "SMART_PROXY_DB", f"{MISSING}/x.db", None),
    (("trace", "export"), "SMART_PROXY_DB", "{tmp}/typo.db", None),
    (("db", "status", "--db", "{tmp}/j.db"), "SMART_PROXY_JOURNAL_FALLBACK", EXAMPLE, None),
    (("dashboard", "--once"), "SMART_PROXY_URL", "ftp://x", "--url"),
    (("load",), "SMART_PROXY_URL", "notaurl", "--url"),
]


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """A clean environment in an empty directory; anything that would start serving fails the
    test instead of listening (so a missed check cannot hang the suite)."""
    for name in list(os.environ):
        if name.startswith("SMART_PROXY_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)

    def refuse(*_: Any, **__: Any) -> Any:
        raise AssertionError("the command got as far as serving")

    monkeypatch.setattr("server.cli.serve.listen", refuse)
    monkeypatch.setattr("server.cli.serve.configure", lambda *_: None)  # global logging
    monkeypatch.setattr("sim.cli.bind_nodes", refuse)
    yield tmp_path


def run_cli(argv: tuple[str, ...], tmp: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    args = [a.replace("{tmp}", str(tmp)) for a in argv]
    try:
        code = main(args)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    return code, capsys.readouterr().err


def one_error_line(err: str) -> str:
    assert "Traceback" not in err
    assert err.endswith("\n") and err.count("\n") == 1, f"not one line: {err!r}"
    return err.strip()


def _id(argv: tuple[str, ...]) -> str:
    return " ".join(Path(a).name if a.startswith("/") else a for a in argv)


@pytest.mark.parametrize(("argv", "option"), CASES, ids=[_id(c[0]) for c in CASES])
def test_a_bad_value_is_one_line_naming_the_option(
    argv: tuple[str, ...], option: str, cli: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run_cli(argv, cli, capsys)
    assert code == 2, err
    line = one_error_line(err)
    assert option in line
    if option != "--output":  # the orderings file keeps its own "PATH: cannot write …" form
        verb = " ".join(a for a in argv[:2] if not a.startswith("-") and "/" not in a)
        assert line.startswith(f"smart-proxy {verb}: error: "), line
    assert list(cli.iterdir()) == []  # nothing created, even on the way to the error


@pytest.mark.parametrize(("argv", "var", "value", "option"), ENV_CASES,
                         ids=[f"{c[0][0]}-{c[1]}={c[2]}" for c in ENV_CASES])
def test_a_bad_environment_variable_is_one_line_naming_it(
    argv: tuple[str, ...], var: str, value: str, option: str | None, cli: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(var, value.replace("{tmp}", str(cli)))
    if "{tmp}/j.db" in argv:
        (cli / "j.db").touch()
    code, err = run_cli(argv, cli, capsys)
    assert code == 2, err
    line = one_error_line(err)
    assert var in line and (option is None or option in line), line


def _verbs(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _verbs(sub, (*prefix, name))
            return
    yield prefix, parser


def test_the_table_covers_every_option_of_every_verb() -> None:
    """A new option without a bad-value case above fails here (flags that take no value and
    --help excepted)."""
    covered: dict[tuple[str, ...], set[str]] = {}
    for argv, option in CASES:
        for verb, _ in _verbs(build_parser()):
            if argv[: len(verb)] == verb:
                covered.setdefault(verb, set()).add(option)
    missing = []
    for verb, parser in _verbs(build_parser()):
        for action in parser._actions:
            if action.nargs == 0 or isinstance(action, argparse._HelpAction):
                continue
            name = action.option_strings[-1] if action.option_strings else action.metavar
            if name not in covered.get(verb, set()):
                missing.append(f"{' '.join(verb)} {name}")
    assert missing == []
    assert {" ".join(v) for v, _ in _verbs(build_parser())} >= {
        "serve", "demo", "sim", "policy check", "policy show", "policy explain",
        "policy snapshot", "policy scale", "policy tune", "simulate", "trace synth", "db migrate",
        "db status", "db backfill", "trace export"}


# ---- values that must work ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "attr", "expected"),
    [
        (("trace", "export", "--since", "3600"), "since", 3600.0),
        (("trace", "export", "--since", "0"), "since", 0.0),
        (("trace", "export", "--since", "1h30m"), "since", 5400.0),
        (("trace", "export", "--since", "7d"), "since", 604800.0),
        ((*SERVE, "--port", "0"), "port", 0),
        ((*SERVE, "--port", "65535"), "port", 65535),
        ((*SERVE, "--shutdown-grace", "0"), "shutdown_grace", 0.0),
        ((*SERVE, "--shutdown-grace", "30s"), "shutdown_grace", 30.0),
        ((*SERVE, "--host", "[::1]"), "host", "::1"),
        ((*SERVE, "--host", "localhost"), "host", "localhost"),
        ((*SERVE, "--upstream", "https://gpu.example:11434"), "upstream", "https://gpu.example:11434"),
        ((*SERVE, "--log-level", "DEBUG"), "log_level", "debug"),
        (("demo", "--time-scale", "0"), "time_scale", 0.0),
        (("sim", "--port", "0"), "port", 0),
    ],
)
def test_good_values_parse(argv: tuple[str, ...], attr: str, expected: object, cli: Path) -> None:
    assert getattr(build_parser().parse_args(list(argv)), attr) == expected


def test_an_empty_variable_counts_as_unset(cli: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMART_PROXY_PORT", "")
    monkeypatch.setenv("SMART_PROXY_UPSTREAM", " ")
    args = build_parser().parse_args(list(SERVE))
    assert (args.port, args.upstream) == (8003, None)


def test_trace_export_since_a_bare_number(cli: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--since 3600` was refused with "write seconds as a number"; now it is an hour."""
    db = cli / "j.db"
    assert run_cli(("db", "migrate", "--db", str(db)), cli, capsys)[0] == 0
    for since in ("3600", "0"):
        code, err = run_cli(("trace", "export", "--since", since, "--db", str(db)), cli, capsys)
        assert (code, err) == (0, "")


# ---- read-only verbs create nothing; writing ones create only ./db/ -----------------------


@pytest.mark.parametrize("argv", [("db", "status"), ("trace", "export")])
@pytest.mark.parametrize("db", ["typo.db", "sub/typo.db", None])
def test_read_only_verbs_never_create_a_database(
    argv: tuple[str, ...], db: str | None, cli: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run_cli((*argv, *(("--db", db) if db else ())), cli, capsys)
    assert code == 2
    assert "does not exist" in one_error_line(err)
    assert list(cli.iterdir()) == []


def test_migrate_creates_only_the_default_directory(cli: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_cli(("db", "migrate", "--db", str(cli / "a" / "b" / "x.db")), cli, capsys)
    assert code == 2 and "directory" in one_error_line(err)
    assert list(cli.iterdir()) == []
    assert run_cli(("db", "migrate"), cli, capsys)[0] == 0  # ./db/requests.db, serve's default
    assert (cli / "db" / "requests.db").is_file()


# ---- the fallback directory: one rule for serve, status and backfill -----------------------


def _spool(directory: Path, n: int) -> None:
    spool = FallbackSpool(directory)
    spool.append([JournalRecord(request_id=f"r{i}", client="c", endpoint="/api/chat",
                                received_at=1.0 + i, status="completed") for i in range(n)])
    spool.close()


def test_status_and_backfill_read_the_fallback_variable(
    cli: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fallback = cli / "outage"
    _spool(fallback, 3)
    monkeypatch.setenv("SMART_PROXY_JOURNAL_FALLBACK", str(fallback))
    db = str(cli / "j.db")
    assert main(["db", "migrate", "--db", db]) == 0
    assert main(["db", "status", "--db", db]) == 0
    assert f"fallback: {fallback} (3 line(s) waiting)" in capsys.readouterr().out
    assert main(["db", "backfill", "--db", db]) == 0
    assert f"replayed 3 record(s) from 1 file(s) in {fallback}" in capsys.readouterr().out
    assert FallbackSpool(fallback).files() == []


def test_serve_puts_the_fallback_where_status_looks(
    cli: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """serve's journal and `db status` pick the same directory from the same variable."""
    captured: dict[str, Any] = {}

    def fake_app(settings: Any, journal: Any) -> Any:
        captured["journal"] = journal
        raise CliError("stopped before serving")

    monkeypatch.setattr("server.cli.serve.create_app", fake_app)
    monkeypatch.setenv("SMART_PROXY_JOURNAL_FALLBACK", str(cli / "outage"))
    assert main([*SERVE, "--db", str(cli / "j.db")]) == 2
    capsys.readouterr()
    journal = captured["journal"](load_policy_file(EXAMPLE))
    assert journal.health()["fallback_dir"] == str(cli / "outage")


# ---- policy explain: names in full, and --json ---------------------------------------------

LONG_MODEL = "hf.co/bartowski/qwen2.5-coder-32b-instruct-gguf:q4_k_m"
LONG_CLIENT = "build-agent-number-seventeen@ci.example.internal"


def _long_names(tmp: Path) -> str:
    scenario = tmp / "long.toml"
    scenario.write_text(
        f'description = "long names"\nnow = 100.0\n'
        f'[[tickets]]\nid = "first-ticket"\nmodel = "{LONG_MODEL}"\nclient = "{LONG_CLIENT}"\narrival = 50.0\n'
        f'[[tickets]]\nid = "t2"\nmodel = "llama3.2:3b"\nclient = "bob"\narrival = 60.0\n'
    )
    return str(scenario)


def test_explain_never_truncates_names_in_80_columns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["policy", "explain", EXAMPLE, "--scenario", _long_names(tmp_path)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80 and "…" not in out
    # Rebuild each cell from its folded pieces: a row starts where the rank column is filled.
    rows: list[list[str]] = []
    for line in lines:
        if not line.startswith("│"):
            continue
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if cells[0]:
            rows.append(cells)
        else:
            rows[-1] = [a + b for a, b in zip(rows[-1], cells, strict=True)]
    assert [(r[1], r[2], r[3]) for r in rows] == [
        ("first-ticket", LONG_MODEL, LONG_CLIENT), ("t2", "llama3.2:3b", "bob")]


def test_explain_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scenario = _long_names(tmp_path)
    assert main(["policy", "explain", EXAMPLE, "--scenario", scenario, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["policy"], data["scenario"], data["description"]) == ("balanced", scenario, "long names")
    assert data["terms"] == ["vram", "fairness", "fair_share", "rate_penalty", "class_offset", "aging"]
    first = data["ranking"][0]
    assert (first["rank"], first["model"], first["client"]) == (1, LONG_MODEL, LONG_CLIENT)
    assert set(first["terms"]) == set(data["terms"])
    assert [step["ticket"] for step in data["dispatch"]] == ["first-ticket", "t2"]


# ---- end to end, in a process of its own ---------------------------------------------------


@pytest.mark.parametrize("verb", ["serve", "sim"])
def test_a_busy_port_names_the_address(verb: str, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        args = [verb, "--host", "127.0.0.1", "--port", str(port)]
        if verb == "serve":
            args += ["--policy", EXAMPLE, "--db", str(tmp_path / "j.db"), "--log-format", "json"]
        with cli_process(args, os.environ) as process:
            assert process.wait(timeout=60) == 2
            assert process.stderr is not None
            err = process.stderr.read()
    assert err == f"smart-proxy {verb}: error: cannot listen on 127.0.0.1:{port}: address already in use\n"


def test_bad_variable_in_a_real_process() -> None:
    with cli_process(["serve", "--policy", EXAMPLE], {**os.environ, "SMART_PROXY_PORT": "99999"}) as process:
        assert process.wait(timeout=60) == 2
        assert process.stderr is not None
        err = process.stderr.read()
    assert err == (
        "smart-proxy serve: error: argument --port: SMART_PROXY_PORT: '99999' is not a port; "
        "use 1 to 65535, or 0 for any free port\n"
    )
