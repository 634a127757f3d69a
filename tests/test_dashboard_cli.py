"""`smart-proxy dashboard` against a live sidecar and emulator: `--once` prints the queue in
dispatch order with each score term, and the residency; a wrong key, an unreachable sidecar, a
narrow terminal and a pipe without --once each get one clear line and exit 2. `load` drives it.

Set SMART_PROXY_SCREENSHOTS=DIR to also write the terminal view as an SVG there (the README's
picture comes from this test); it always goes to tests/artifacts/."""

from __future__ import annotations

import concurrent.futures
import os
import pty
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import msgspec
from sidecar_fixtures import SidecarFactory, make_policy

from schemas.overview import LiveFigures, Overview
from schemas.proxy_api import BackendHealth, Health, PolicyInfo, QueueView, UpstreamHealth

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
MODELS = ("llama3.2:1b", "llama3.2:3b", "llama3.1:8b")


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *args], capture_output=True, text=True, timeout=60,
        env={**os.environ, "PROXY_ADMIN_KEY": "", **(env or {})},
    )


def _screenshot(name: str, data: str) -> None:
    targets = [ARTIFACTS] + ([Path(d)] if (d := os.environ.get("SMART_PROXY_SCREENSHOTS")) else [])
    for directory in targets:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text(data, encoding="utf-8")


def test_once_shows_the_queue_in_order_with_terms_and_the_residency(
    sidecar_factory: SidecarFactory, ollama_emulator: Any
) -> None:
    proxy = sidecar_factory(upstream=ollama_emulator.url, policy=make_policy(max_parallel=1))
    body = {"model": MODELS[0], "prompt": "warm up", "stream": False}
    assert httpx.post(proxy.url + "/api/generate", json=body, timeout=30).status_code == 200
    proxy.wait_for(lambda h: h["upstream"]["up"])
    proxy.admin("POST", "/proxy/pause")
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        waiting = []
        for n, (client, model) in enumerate(
            [("alice", MODELS[1]), ("bob", MODELS[0]), ("alice", MODELS[2]), ("carol", MODELS[0])]
        ):
            waiting.append(pool.submit(
                httpx.post, proxy.url + "/api/generate", timeout=30,
                json={"model": model, "prompt": "hi", "stream": False},
                headers={"x-client-id": client, "x-request-id": f"req-{n}"},
            ))
            proxy.wait_depth(n + 1)
        overview = proxy.admin("GET", "/proxy/overview").json()  # for the picture
        # Names are the clients' own: rich must print them, not read them as markup.
        odd = pool.submit(
            httpx.post, proxy.url + "/api/generate", timeout=30,
            json={"model": "evil[/]", "prompt": "hi", "stream": False},
            headers={"x-client-id": "mallory", "x-request-id": "req-odd"},
        )
        proxy.wait_depth(5)
        shown = _cli("dashboard", "--url", proxy.url, "--once")
        proxy.admin("POST", "/proxy/resume")
        assert all(f.result().status_code == 200 for f in waiting)
        assert odd.result().status_code == 404  # Ollama has no such model
    assert shown.returncode == 0, shown.stderr
    assert "evil[/]:latest" in shown.stdout  # (the client header was not a usable id: the address)
    out = shown.stdout
    assert "\x1b[" not in out  # plain text when not a terminal
    lines = out.splitlines()
    # The order the policy gives, worked by hand (lower scores go first): the two requests for the
    # loaded 1b cost no load (vram 0, fairness 5 queued + 5 recent: 10), in arrival order; then
    # alice's two, whose models fit beside it (fits 100, fairness 2 queued + 2 recent: 20); last
    # the model nobody has heard of (unknown_size 600, fairness 10).
    expected = [("req-1", 10, "vram 0 fairness 10"), ("req-3", 10, "vram 0 fairness 10"),
                ("req-0", 120, "vram 100 fairness 20"), ("req-2", 120, "vram 100 fairness 20"),
                ("req-odd", 610, "vram 600 fairness 10")]
    rows = [line for line in lines if any(f"| {rid} " in line for rid, _, _ in expected)]
    assert len(rows) == len(expected), out
    for position, (row, (rid, score, terms)) in enumerate(zip(rows, expected, strict=True), 1):
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[0] == str(position) and cells[1] == rid, row
        assert cells[6] == str(score) and cells[7] == terms, row
    assert "Queue: 5 waiting, in dispatch order" in out and "PAUSED" in out
    resident = next(line for line in lines if line.startswith(f"|{MODELS[0]} "))
    assert "loaded" in resident and "GB" in resident and "#" in resident
    # The warm-up was the one dispatch so far, and it loaded its model.
    recent = lines[next(i for i, x in enumerate(lines) if x.startswith("Recent dispatches")):]
    assert any(f"| {MODELS[0]} |" in row and "| load |" in row for row in recent), out

    from rich.console import Console

    from server.cli.dashboard_view import render

    console = Console(record=True, width=130, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(render(overview, source="live"))
    console.file.close()
    _screenshot("dashboard-terminal.svg", console.export_svg(title="smart-proxy dashboard"))


def test_failures_are_one_clear_line(tmp_path: Path, sidecar_factory: SidecarFactory, ollama_emulator: Any) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    unreachable = _cli("dashboard", "--url", dead, "--once")
    assert unreachable.returncode == 2 and unreachable.stdout == ""
    assert unreachable.stderr.count("\n") == 1 and f"cannot reach the sidecar at {dead}" in unreachable.stderr

    guarded = sidecar_factory(
        upstream=ollama_emulator.url, env={"PROXY_ADMIN_KEY": "right"},
        policy=make_policy(extra='[admin]\nnetworks = ["10.9.9.9/32"]\n'),
    )
    wrong = _cli("dashboard", "--url", guarded.url, "--once", "--key", "wrong")
    assert wrong.returncode == 2 and wrong.stderr.count("\n") == 1
    assert "the admin key is wrong" in wrong.stderr
    keyless = _cli("dashboard", "--url", guarded.url, "--once")
    assert keyless.returncode == 2 and "admin only" in keyless.stderr
    right = _cli("dashboard", "--url", guarded.url, "--once", env={"PROXY_ADMIN_KEY": "right"})
    assert right.returncode == 0 and "Ollama Smart Proxy" in right.stdout

    piped = _cli("dashboard", "--url", guarded.url, "--key", "right")
    assert piped.returncode == 2 and "use --once" in piped.stderr
    not_a_sidecar = _cli("dashboard", "--url", ollama_emulator.url, "--once")
    assert not_a_sidecar.returncode == 2 and "not a smart-proxy sidecar" in not_a_sidecar.stderr


def test_a_narrow_terminal_is_told_how_wide_it_must_be() -> None:
    leader, follower = pty.openpty()
    try:
        process = subprocess.run(
            [sys.executable, "-m", "server.cli", "dashboard", "--url", "http://127.0.0.1:9", "--once"],
            stdout=follower, stderr=subprocess.PIPE, text=True, timeout=60,
            env={**os.environ, "COLUMNS": "60", "LINES": "40", "TERM": "xterm"},
        )
    finally:
        os.close(follower)
        os.close(leader)
    assert process.returncode == 2
    assert process.stderr.count("\n") == 1 and "60 columns wide" in process.stderr
    assert "at least 80" in process.stderr


def test_once_says_why_ollama_is_down(sidecar_factory: SidecarFactory) -> None:
    """Health names the upstream's error itself, not only a pointer to where it is."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    proxy = sidecar_factory(upstream=dead)
    proxy.wait_for(lambda h: h["upstream"]["last_error"])
    shown = _cli("dashboard", "--url", proxy.url, "--once")
    assert shown.returncode == 0, shown.stderr
    line = next(x for x in shown.stdout.splitlines() if "! Ollama:" in x)
    assert "upstream DOWN" in shown.stdout and "no poll has succeeded yet" in line
    assert "ConnectError" in line  # the poll's own error
    assert "see upstream.last_error" not in shown.stdout


def _overview(backends: list[BackendHealth]) -> dict[str, Any]:
    """A snapshot as GET /proxy/overview gives it, built from its schema: nothing queued."""
    policy = PolicyInfo(name="two-gpus", version="abc123")
    in_flight = sum(b.in_flight for b in backends)
    slots = sum(b.max_parallel for b in backends)
    overview = Overview(
        at=1_700_000_000.0, last_event_id=7,
        health=Health(status="ok", queue_depth=0, in_flight=in_flight, max_parallel=slots,
                      paused=False, upstream=UpstreamHealth(up=any(b.up for b in backends)),
                      policy=policy, backends=backends),
        queue=QueueView(paused=False, depth=0, max_parallel=slots, policy=policy, waiting=[],
                        in_flight=[]),
        residency={"vram_total_gb": 24.0, "vram_used_gb": 0.0, "loaded_count": 0,
                   "max_loaded_models": 2, "models": []},
        recent_dispatches=[],
        figures=LiveFigures(requests=0, since=None, errors=0, error_rate=None, rejected=0,
                            cancelled=0, wait_p50_s=None, wait_p95_s=None, wait_p99_s=None,
                            wait_max_s=None, top_clients=[], top_models=[]),
        series=[], event_subscribers=0, event_subscribers_dropped=0,
    )
    overview_json: dict[str, Any] = msgspec.to_builtins(overview)
    return overview_json


def test_the_backends_table_shows_each_backend_and_why_one_is_down() -> None:
    """Two backends, the second down: both are listed in the policy's order, the down one with its
    error (which rich must print, not read as markup) and how long ago it last answered."""
    import io

    from rich.console import Console

    from server.cli.dashboard_view import render

    def shown(backends: list[BackendHealth], plain: bool = True) -> list[str]:
        out = io.StringIO()
        console = Console(file=out, width=160, highlight=False, no_color=True, force_terminal=False)
        console.print(render(_overview(backends), source="snapshot", plain=plain))
        return out.getvalue().splitlines()

    error = "ConnectError: [Errno 111] Connection refused"
    up = BackendHealth(name="gpu-a", up=True, last_poll_age_s=1.0, in_flight=1, max_parallel=2)
    down = BackendHealth(name="gpu-b", up=False, last_error=error, last_poll_age_s=42.0,
                         in_flight=0, max_parallel=4)
    lines = shown([up, down])
    table = lines[lines.index(next(x for x in lines if x.startswith("Backends"))):]
    rows = [[c.strip() for c in x.strip("|").split("|")] for x in table if x.startswith("|gpu-")]
    assert rows == [["gpu-a", "up", "1/2"],
                    ["gpu-b", f"down: {error} (last good poll 42s ago)", "0/4"]], lines
    coloured = shown([up, down], plain=False)  # the live view's boxes, same words
    assert any("gpu-b" in x and f"down: {error}" in x for x in coloured), coloured

    retiring = shown([up, msgspec.structs.replace(down, up=True, retiring=True)])
    assert any(x.startswith("|gpu-b") and "up, retiring" in x for x in retiring), retiring
    assert not any(x.startswith("Backends") for x in shown([]))  # a sidecar listing none


def test_load_sends_requests_from_several_clients(
    sidecar_factory: SidecarFactory, ollama_emulator: Any
) -> None:
    proxy = sidecar_factory(upstream=ollama_emulator.url)
    done = _cli("load", "--url", proxy.url, "--duration", "1", "--rate", "20", "--clients", "3",
                "--seed", "4")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("sent ") and "200: " in done.stdout and "from 3 clients" in done.stdout
    clients = {r.client for r in proxy.journal.records if r.endpoint == "/api/generate"}
    assert clients <= {"load-1", "load-2", "load-3"} and len(clients) >= 2
    bad = _cli("load", "--url", proxy.url, "--models", " , ")
    assert bad.returncode == 2 and "--models" in bad.stderr


def test_live_mode_draws_follows_events_and_quits_on_ctrl_c(
    sidecar_factory: SidecarFactory, ollama_emulator: Any
) -> None:
    """In a (pseudo-)terminal: the live view appears, redraws when a request comes through the
    event stream, and Ctrl-C leaves with status 0."""
    import select
    import signal
    import time

    proxy = sidecar_factory(upstream=ollama_emulator.url)
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "dashboard", "--url", proxy.url, "--refresh", "30"],
        stdin=follower, stdout=follower, stderr=subprocess.PIPE,
        env={**os.environ, "COLUMNS": "140", "LINES": "60", "TERM": "xterm", "PROXY_ADMIN_KEY": ""},
    )
    os.close(follower)
    screen = b""

    def read_until(marker: bytes, within: float) -> None:
        nonlocal screen
        deadline = time.monotonic() + within
        while marker not in screen:
            assert time.monotonic() < deadline, f"{marker!r} never drawn; screen: {screen[-2000:]!r}"
            ready, _, _ = select.select([leader], [], [], 0.2)
            if ready:
                screen += os.read(leader, 65536)

    try:
        read_until(b"Ollama Smart Proxy", 30)
        read_until(b"live", 15)  # the event stream feeds it, not polling
        screen = b""
        # --refresh 30: only an event can make it redraw this soon.
        httpx.post(proxy.url + "/api/generate", timeout=30,
                   json={"model": MODELS[0], "prompt": "hi", "stream": False},
                   headers={"x-client-id": "dora"})
        read_until(b"dora", 15)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(leader)
        if process.stderr is not None:
            process.stderr.close()
