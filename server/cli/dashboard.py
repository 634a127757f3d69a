"""`smart-proxy dashboard`: the sidecar's state in a terminal, live or once.

Live: follows `GET /proxy/events` and re-reads `GET /proxy/overview` when something happens (at
most a few times a second, and every `--refresh` seconds regardless); when the event stream is
refused or breaks it falls back to polling every `--refresh` seconds, and tries the stream again.
`--once` prints one snapshot and exits: plain text when stdout is not a terminal, for scripts and
SSH sessions.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from typing import Any

import httpx
from rich.console import Console
from rich.live import Live

from server.cli.args import CliError, env_default, http_url, names_env, positive_seconds
from server.cli.dashboard_view import render
from server.http.identity import ADMIN_KEY_HEADER

DEFAULT_URL = "http://127.0.0.1:8003"
MIN_WIDTH = 80
MAX_REDRAWS_PER_S = 4
STREAM_RETRY_S = 5.0


def register(subparsers: argparse._SubParsersAction) -> None:  # not subscriptable at run time
    env = os.environ
    verb = subparsers.add_parser(
        "dashboard", help="the sidecar's queue, GPU residency and recent dispatches in a terminal",
        description="Show what the GPU holds, who waits and why, live (Ctrl-C quits) or once. "
        "Needs admin: run it from an admin network, or give the admin key.",
    )
    verb.add_argument("--url", type=http_url, metavar="URL",
                      default=env_default(env, "SMART_PROXY_URL", DEFAULT_URL),
                      help=f"the sidecar (default $SMART_PROXY_URL or {DEFAULT_URL})")
    verb.add_argument("--key", type=admin_key, metavar="KEY",
                      default=env_default(env, "PROXY_ADMIN_KEY", None),
                      help="the admin key (default $PROXY_ADMIN_KEY)")
    verb.add_argument("--refresh", type=positive_seconds, default=2.0, metavar="S",
                      help="seconds between redraws when nothing happens (default 2)")
    verb.add_argument("--once", action="store_true",
                      help="print one snapshot and exit (plain text when not a terminal)")
    verb.set_defaults(run=run_dashboard, cli_prog=verb.prog)


@names_env
def admin_key(text: str) -> str:
    if not text.strip() or any(c in text for c in "\r\n"):
        raise argparse.ArgumentTypeError("the admin key must be a non-empty line of text")
    return text


class Sidecar:
    """The admin routes the dashboard reads, with every failure as one line in the user's terms."""

    def __init__(self, url: str, key: str | None) -> None:
        self.url = url.rstrip("/")
        headers = {ADMIN_KEY_HEADER: key} if key else {}
        self.client = httpx.AsyncClient(base_url=self.url, headers=headers, trust_env=False,
                                        timeout=httpx.Timeout(10.0))
        self.keyed = bool(key)

    async def overview(self) -> dict[str, Any]:
        try:
            response = await self.client.get("/proxy/overview")
        except httpx.HTTPError as exc:
            raise CliError(f"cannot reach the sidecar at {self.url}: {_reason(exc)}") from None
        if response.status_code == 403:
            raise CliError(
                f"the sidecar at {self.url} refused: "
                + ("the admin key is wrong" if self.keyed else
                   "admin only; give --key (or $PROXY_ADMIN_KEY), or run it from an admin network")
            )
        if response.status_code == 404:
            raise CliError(f"{self.url} is not a smart-proxy sidecar (no /proxy/overview there)")
        if response.status_code != 200:
            raise CliError(f"the sidecar at {self.url} answered {response.status_code}: {response.text[:200]}")
        try:
            data: dict[str, Any] = response.json()
        except ValueError:
            raise CliError(f"{self.url}/proxy/overview did not answer JSON") from None
        return data

    async def follow(self, after: int, changed: asyncio.Event, mode: list[str]) -> None:
        """Set `changed` on every event; `mode[0]` says whether the stream or polling feeds us."""
        last = str(after)
        while True:
            try:
                async with self.client.stream(
                    "GET", "/proxy/events", headers={"last-event-id": last},
                    timeout=httpx.Timeout(10.0, read=None),
                ) as response:
                    if response.status_code != 200:
                        raise httpx.HTTPStatusError("refused", request=response.request, response=response)
                    mode[0] = "live"
                    changed.set()  # redraw: the header says where the picture comes from
                    async for line in response.aiter_lines():
                        if line.startswith("id: "):
                            last = line[4:]
                        elif line.startswith("event: ") and line != "event: heartbeat":
                            changed.set()
            except httpx.HTTPError:
                pass
            mode[0] = "polling"
            await asyncio.sleep(STREAM_RETRY_S)

    async def close(self) -> None:
        await self.client.aclose()


def _reason(exc: httpx.HTTPError) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.ConnectError):
        return f"connection refused or no route ({text})"
    return text


async def _once(sidecar: Sidecar, console: Console, plain: bool) -> None:
    console.print(render(await sidecar.overview(), source="snapshot", plain=plain))


async def _live(sidecar: Sidecar, console: Console, refresh: float) -> None:
    overview = await sidecar.overview()  # a wrong key or a dead sidecar: say so and stop here
    changed, mode = asyncio.Event(), ["polling"]
    follower = asyncio.create_task(sidecar.follow(overview["last_event_id"], changed, mode))
    problem: str | None = None
    try:
        with Live(render(overview, source=mode[0]), console=console, screen=True,
                  auto_refresh=False) as live:
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(refresh):
                        await changed.wait()
                # Wait before asking, not after: the sidecar shares one snapshot among its
                # dashboards for 250 ms, and one taken just before the event would not show it.
                await asyncio.sleep(1 / MAX_REDRAWS_PER_S)
                changed.clear()
                try:
                    overview, problem = await sidecar.overview(), None
                except CliError as exc:  # keep showing the last snapshot, and why it is old
                    problem = str(exc)
                source = mode[0] if problem is None else f"stale: {problem}"
                live.update(render(overview, source=source), refresh=True)
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower


def run_dashboard(args: argparse.Namespace) -> int:
    terminal = sys.stdout.isatty()
    console = Console(highlight=False) if terminal else Console(
        highlight=False, no_color=True, width=160, force_terminal=False
    )
    if not terminal and not args.once:
        raise CliError("stdout is not a terminal: use --once for a plain-text snapshot")
    if terminal and console.width < MIN_WIDTH:
        raise CliError(
            f"the terminal is {console.width} columns wide; the dashboard needs at least "
            f"{MIN_WIDTH} (widen it, or pipe `--once` output, which is plain text)"
        )

    async def main() -> None:
        sidecar = Sidecar(args.url, args.key)
        try:
            if args.once:
                await _once(sidecar, console, plain=not terminal)
            else:
                await _live(sidecar, console, args.refresh)
        finally:
            await sidecar.close()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        return 0
    return 0
