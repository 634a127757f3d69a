"""The web dashboard: static HTML, CSS and JavaScript shipped inside the package, read with
importlib.resources — no build step, no CDN, no remote font, so it works on an offline GPU box.

The page itself holds no data and is served to anyone (it is the login form too); everything it
shows comes from the admin routes, with the session cookie `POST /proxy/auth` sets. Its
Content-Security-Policy allows only this origin's own script, style and connections: no inline
script, no eval, no framing.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from server.http.dialects import error_response
from server.http.query_params import takes

ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "charts.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cache-control": "no-cache",
}


@cache
def asset(name: str) -> bytes:
    return resources.files("server.admin").joinpath("static", name).read_bytes()


def _serve(name: str) -> Response:
    return Response(asset(name), media_type=ASSETS[name], headers=HEADERS)


@takes()
async def page(request: Request) -> Response:
    return _serve("index.html")


@takes()
async def static(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in ASSETS:
        return error_response(request.url.path, 404, f"no such dashboard file: {name}")
    return _serve(name)


def routes() -> list[BaseRoute]:
    return [
        Route("/proxy/dashboard", page, methods=["GET"]),
        Route("/proxy/dashboard/{name}", static, methods=["GET"]),
    ]
