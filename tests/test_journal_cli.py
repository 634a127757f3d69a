"""`smart-proxy db …` and `smart-proxy trace export` on both databases, and their bad-input errors."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import msgspec
import pytest
from journal_fixtures import run_db as run

from schemas.journal import JournalRecord
from schemas.trace import TraceRecord
from server.journal import open_journal
from server.journal.fallback import FallbackSpool
from server.journal.migrations import LATEST


def existing(dsn: str) -> str:
    """The DSN, with a SQLite file made first (empty: no tables yet): the CLI creates neither a
    database a read-only verb names nor a directory a writing one names."""
    if dsn.startswith("sqlite:///"):
        path = Path(dsn.removeprefix("sqlite:///"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    return dsn


def seed(dsn: str, fallback: Path, records: list[JournalRecord]) -> None:
    async def main() -> None:
        journal = open_journal(dsn, fallback_dir=fallback)
        await journal.start()
        for record in records:
            journal.submit(record)
        await journal.stop()

    asyncio.run(main())


def test_migrate_then_status(journal_dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    """status exits 1 while migrations are pending, 0 after migrate; migrate is idempotent."""
    journal_dsn = existing(journal_dsn)
    assert run("db", "status", "--db", journal_dsn) == 1
    assert "pending" in capsys.readouterr().out
    assert run("db", "migrate", "--db", journal_dsn) == 0
    assert "applied migration(s) 1, 2" in capsys.readouterr().out
    assert run("db", "migrate", "--db", journal_dsn) == 0
    assert f"up to date at version {LATEST}" in capsys.readouterr().out
    assert run("db", "status", "--db", journal_dsn) == 0
    out = capsys.readouterr().out
    assert "records: 0" in out and "pending" not in out


def test_backfill_replays_by_hand_and_reports_bad_lines(
    journal_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """backfill commits every whole line, names the partial one on stderr and exits 1."""
    journal_dsn = existing(journal_dsn)
    fallback = tmp_path / "fallback"
    spool = FallbackSpool(fallback)
    spool.append([JournalRecord(request_id=f"b{i}", client="c", endpoint="/api/chat",
                                received_at=1.0 + i, status="completed") for i in range(3)])
    spool.close()
    with spool.files()[0].open("ab") as out:
        out.write(b'{"request_id": "cut')
    assert run("db", "backfill", "--db", journal_dsn, "--fallback-dir", str(fallback)) == 1
    captured = capsys.readouterr()
    assert "replayed 3 record(s) from 1 file(s)" in captured.out
    assert ":4: truncated line" in captured.err
    assert spool.files() == [] and len(spool.bad_files()) == 1


def test_trace_export(journal_dsn: str, tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    """Every request in the window, oldest first, as TraceRecord lines with relative arrivals."""
    now = time.time()
    seed(journal_dsn, tmp_path / "fb", [
        JournalRecord(request_id="t2", client="bob", endpoint="/v1/chat/completions", received_at=now - 60,
                      status="completed", model="qwen:7b", request_class="batch",
                      prompt_eval_count=12, eval_count=34),
        JournalRecord(request_id="t1", client="alice", endpoint="/api/chat", received_at=now - 90,
                      status="rejected", model="llama3:8b"),
        JournalRecord(request_id="t0", client="old", endpoint="/api/chat", received_at=now - 7200,
                      status="completed"),
    ])
    assert run("trace", "export", "--since", "1h", "--db", journal_dsn) == 0
    lines = capsysbinary.readouterr().out.splitlines()
    trace = [msgspec.json.decode(line, type=TraceRecord) for line in lines]
    assert [(t.client, t.model, t.status, t.prompt_tokens, t.output_tokens) for t in trace] == [
        ("alice", "llama3:8b", "rejected", None, None), ("bob", "qwen:7b", "completed", 12, 34)]
    assert trace[0].arrival == 0.0 and trace[1].arrival == pytest.approx(30.0)
    assert trace[1].request_class == "batch" and trace[1].endpoint == "/v1/chat/completions"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("db", "migrate", "--db", "mysql://x/y"), "unknown scheme 'mysql'"),
        (("db", "status", "--db", "sqlite://relative.db"), "write sqlite:///relative/path.db"),
        (("db", "migrate", "--db", "postgresql://nobody@127.0.0.1:1/x", "--timeout", "0.5"),
         "journal database unavailable"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv: tuple[str, ...], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    """No traceback: a message naming the problem and exit code 2."""
    assert run(*argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_bad_duration_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """--since takes the policy file's duration spellings; anything else is argparse's exit 2."""
    with pytest.raises(SystemExit) as info:
        run("trace", "export", "--since", "3 fortnights")
    assert info.value.code == 2
    assert "is not a duration" in capsys.readouterr().err


def test_backfill_recovers_the_admission_log_of_a_sidecar_that_never_came_back(
    journal_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A killed sidecar's unfinished requests become `interrupted` records by hand too."""
    from test_kill_durability import leave_admission_log

    from server.proxy.facts import RequestFacts

    journal_dsn = existing(journal_dsn)
    fallback = tmp_path / "fallback"
    facts = RequestFacts(request_id="lost", endpoint="/api/chat", received_at=time.time())
    leave_admission_log(fallback, facts.admission())
    assert run("db", "backfill", "--db", journal_dsn, "--fallback-dir", str(fallback)) == 0
    out = capsys.readouterr().out
    assert "recovered 1 admission(s) from 1 log(s)" in out and "replayed 1 record(s)" in out
    assert list(fallback.iterdir()) == []


def test_backfill_with_an_unreadable_file_is_a_message_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "fb" / "journal-0.jsonl").mkdir(parents=True)
    code = run("db", "backfill", "--db", f"sqlite:///{tmp_path / 'd.db'}", "--fallback-dir", str(tmp_path / "fb"))
    err = capsys.readouterr().err
    assert code == 1 and "journal-0.jsonl" in err and "Traceback" not in err


@pytest.mark.parametrize("value", ["inf", "nan", "0", "-1"])
def test_cli_timeout_must_be_a_positive_number(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    """--timeout inf waited forever for an unreachable PostgreSQL; nan/0/-1 made no sense either."""
    with pytest.raises(SystemExit) as info:
        run("db", "status", "--db", "postgresql://nobody@127.0.0.1:1/x", "--timeout", value)
    assert info.value.code == 2
    assert "--timeout" in capsys.readouterr().err
