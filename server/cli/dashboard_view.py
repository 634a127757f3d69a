"""What `smart-proxy dashboard` draws, from one `GET /proxy/overview` payload: pure functions from
the JSON to rich renderables, so a snapshot renders the same live, once, or in a test."""

from __future__ import annotations

import time
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

KIND = {"attach": "hit", "load": "load", "swap": "swap", "reload": "reload"}
KIND_STYLE = {"hit": "green", "load": "yellow", "swap": "red", "reload": "red"}
STATE_STYLE = {"loaded": "green", "loading": "yellow", "evicting": "red"}
BAR = 20
MAX_QUEUE_ROWS = 25


def _num(value: float | None, digits: int = 1, unit: str = "") -> str:
    return "–" if value is None else f"{value:.{digits}f}{unit}"


def _polled(age: float | None) -> str:
    return "no poll has succeeded yet" if age is None else f"last good poll {age:.0f}s ago"


def _table(title: str, plain: bool, *columns: str) -> Table:
    table = Table(title=title, title_justify="left", box=box.ASCII2 if plain else box.SIMPLE_HEAD,
                  expand=False, pad_edge=False)
    for name in columns:
        table.add_column(name, justify="right" if name in ("#", "waited", "score", "size",
                                                           "elapsed", "in flight", "requests")
                         else "left", overflow="fold")
    return table


def _row(table: Table, *cells: str | Text) -> None:
    """Cells as plain text: rich would read `[...]` in a model or client name as markup (a
    crash on `[/]`, a restyled screen on `[bold]`), and those names come from clients."""
    table.add_row(*(c if isinstance(c, Text) else Text(c) for c in cells))


def _bar(part: float, whole: float) -> str:
    if whole <= 0:
        return ""
    filled = max(0, min(BAR, round(BAR * part / whole)))
    return "#" * filled + "." * (BAR - filled)


def header(ov: dict[str, Any], source: str) -> Text:
    h = ov["health"]
    status = h["status"]
    style = {"ok": "bold green", "degraded": "bold yellow"}.get(status, "bold red")
    text = Text()
    text.append("Ollama Smart Proxy  ", style="bold")
    text.append(status, style=style)
    policy = h["policy"]
    up = "up" if h["upstream"]["up"] else "DOWN"
    text.append(
        f"  policy {policy['name']}@{policy['version']}  upstream {up}"
        f"  waiting {h['queue_depth']}  in flight {h['in_flight']}/{h['max_parallel']}"
    )
    if h["paused"]:
        text.append("  PAUSED", style="bold yellow")
    text.append(f"  [{source}, {time.strftime('%H:%M:%S', time.localtime(ov['at']))}]", style="dim")
    upstream = h["upstream"]
    if not upstream["up"]:  # what the health reason only points at: the error itself
        polled = _polled(upstream.get("last_poll_age_s"))
        text.append(f"\n  ! Ollama: {upstream.get('last_error') or 'not reached yet'} ({polled})",
                    style="red")
    for reason in h.get("reasons") or ():
        if "upstream.last_error" in reason or "policy.last_reload_error" in reason:
            continue  # shown in full here
        text.append(f"\n  ! {reason}", style="yellow")
    if policy.get("last_reload_error"):
        first = policy["last_reload_error"].strip().splitlines()[0]
        text.append(f"\n  ! policy reload failed: {first}", style="red")
    return text


def backends(ov: dict[str, Any], plain: bool) -> RenderableType | None:
    """Each Ollama server of the policy, in its order: up or down (with the error), its slots."""
    listed = ov["health"].get("backends") or []
    if not listed:  # a sidecar from before backends were listed
        return None
    table = _table("Backends", plain, "backend", "state", "in flight")
    for b in listed:
        if b["up"]:
            state = Text("up", style="" if plain else "green")
        else:
            error = b.get("last_error") or "not reached yet"
            state = Text(f"down: {error} ({_polled(b.get('last_poll_age_s'))})",
                         style="" if plain else "red")
        if b.get("retiring"):
            state.append(", retiring", style="" if plain else "yellow")
        _row(table, b["name"], state, f"{b['in_flight']}/{b['max_parallel']}")
    return table


def residency(ov: dict[str, Any], plain: bool) -> Table:
    res = ov["residency"]
    total = float(res.get("vram_total_gb") or 0)
    table = _table(
        f"GPU: {_num(res.get('vram_used_gb'))} of {_num(total)} GB, "
        f"{res.get('loaded_count', 0)} of {res.get('max_loaded_models', '?')} models",
        plain, "model", "state", "size", f"VRAM (of {total:.1f} GB)", "in flight",
    )
    for m in res.get("models") or ():
        state = m["state"] + (f" (for {m['evicting_for']})" if m.get("evicting_for") else "")
        size = m.get("size_gb")
        _row(
            table, m["model"], Text(state, style="" if plain else STATE_STYLE.get(m["state"], "")),
            "?" if size is None else f"{size:.1f} GB", _bar(size or 0.0, total), str(m["in_flight"]),
        )
    return table


def _terms(terms: dict[str, float]) -> str:
    return " ".join(f"{k} {v:g}" for k, v in terms.items())


def queue(ov: dict[str, Any], plain: bool) -> RenderableType:
    q = ov["queue"]
    waiting = q["waiting"]
    if not waiting:
        return Text("Queue: nothing waiting", style="bold")
    title = f"Queue: {q['depth']} waiting, in dispatch order"
    if len(waiting) > MAX_QUEUE_ROWS:
        title += f" (first {MAX_QUEUE_ROWS} shown)"
    table = _table(title, plain, "#", "request", "client", "class", "model", "waited", "score",
                   "terms", "why it waits")
    for w in waiting[:MAX_QUEUE_ROWS]:
        _row(
            table, str(w["position"]), w["request_id"], w["client"], w["class"], w["model"],
            f"{w['waited_s']:.1f}s", f"{w['score']:g}", _terms(w["terms"]), w.get("reason") or "",
        )
    return table


def in_flight(ov: dict[str, Any], plain: bool) -> RenderableType:
    if not ov["queue"]["in_flight"]:
        return Text("In flight: nothing", style="bold")
    table = _table("In flight", plain, "request", "client", "model", "elapsed")
    for f in ov["queue"]["in_flight"]:
        _row(table, f["request_id"], f["client"], f["model"], f"{f['elapsed_s']:.1f}s")
    return table


def recent(ov: dict[str, Any], plain: bool, limit: int = 10) -> RenderableType:
    if not ov["recent_dispatches"]:
        return Text("Recent dispatches: none yet", style="bold")
    table = _table("Recent dispatches", plain, "time", "model", "client", "kind", "waited")
    for d in reversed(ov["recent_dispatches"][-limit:]):
        kind = KIND.get(d["action"], d["action"])
        label = kind + (f" (evicts {', '.join(d['evicts'])})" if d["evicts"] else "")
        _row(
            table, time.strftime("%H:%M:%S", time.localtime(d["at"])), d["model"], d["client"],
            Text(label, style="" if plain else KIND_STYLE.get(kind, "")), f"{d['waited_s']:.1f}s",
        )
    return table


def figures(ov: dict[str, Any], plain: bool) -> RenderableType:
    f = ov["figures"]
    rate = "–" if f["error_rate"] is None else f"{100 * f['error_rate']:.1f}%"
    line = Text(
        f"Last {f['requests']} requests: wait p50 {_num(f['wait_p50_s'], unit='s')}"
        f"  p95 {_num(f['wait_p95_s'], unit='s')}  p99 {_num(f['wait_p99_s'], unit='s')}"
        f"  errors {rate}  rejected {f['rejected']}  cancelled {f['cancelled']}", style="bold",
    )
    if not f["top_clients"]:
        return line
    table = _table("Top clients and models", plain, "client", "requests", "model", "requests")
    clients, models = f["top_clients"], f["top_models"]
    for i in range(max(len(clients), len(models))):
        c = clients[i] if i < len(clients) else None
        m = models[i] if i < len(models) else None
        _row(table, c["name"] if c else "", str(c["requests"]) if c else "",
                      m["name"] if m else "", str(m["requests"]) if m else "")
    return Group(line, table)


def render(ov: dict[str, Any], *, source: str, plain: bool = False) -> RenderableType:
    parts = (
        header(ov, source), backends(ov, plain), residency(ov, plain), queue(ov, plain),
        in_flight(ov, plain), recent(ov, plain), figures(ov, plain),
    )
    return Group(*(part for part in parts if part is not None))
