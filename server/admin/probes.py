"""Kubernetes-style probes: `GET /livez` and `GET /readyz`, public, for kubelets, load balancers
and container health checks; `/proxy/health` stays the human summary.

In the format of Kubernetes' own API server probes: each check is one line, `[+]name ok` or
`[-]name failed: reason withheld`, listed with `?verbose`, and the last line says whether the
probe passed. 200 when it did, 503 when not. Reasons are withheld because the probes are public
(`/proxy/health` and the log say what failed).

- livez: the process answers; no dependency is checked (a sidecar whose Ollama is down must not be
  restarted for it). 503 once shutting down, so nothing new is routed to a draining sidecar.
- readyz: `policy` (a policy is in force), `journal` (records reach the database, or the fallback
  file while it is down), `upstream` (the last poll of Ollama succeeded), `shutdown` (not draining).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from server.http.query_params import Param, takes
from server.sidecar import Sidecar, sidecar_of

VERBOSE = {"verbose": Param(lambda text: True, False)}  # `?verbose` or `?verbose=anything`


def journal_ok(health: dict[str, Any]) -> bool:
    """Records have somewhere to go: the database, or the fallback file while it is down."""
    if health.get("backend") == "none":
        return True
    if health.get("state") != "running":
        return False
    return bool(health.get("connected")) or bool(health.get("fallback_writable", True))


def ready_checks(sc: Sidecar) -> list[tuple[str, bool]]:
    return [
        ("policy", sc.holder.current is not None),
        ("journal", journal_ok(sc.journal.health())),
        ("upstream", sc.backends.any_up()),  # with several, one that answers is enough to serve
        ("shutdown", not sc.stopping),
    ]


def _answer(name: str, checks: list[tuple[str, bool]], verbose: bool) -> Response:
    passed = all(ok for _, ok in checks)
    lines = [f"[+]{n} ok" if ok else f"[-]{n} failed: reason withheld" for n, ok in checks] if verbose else []
    lines.append(f"{name} check {'passed' if passed else 'failed'}")
    return PlainTextResponse("\n".join(lines) + "\n", 200 if passed else 503,
                             headers={"cache-control": "no-store"})


@takes(VERBOSE)
async def livez(request: Request) -> Response:
    sc = sidecar_of(request)
    return _answer("livez", [("ping", True), ("shutdown", not sc.stopping)],
                   request.state.query["verbose"])


@takes(VERBOSE)
async def readyz(request: Request) -> Response:
    return _answer("readyz", ready_checks(sidecar_of(request)), request.state.query["verbose"])


def routes() -> list[BaseRoute]:
    return [
        Route("/livez", livez, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
    ]
