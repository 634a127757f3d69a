"""Who may use an admin route, and from where: `admin_only` (the network, X-Admin-Key or a
session) and, for every request that changes something, the cross-site check.

A browser sends the session cookie (SameSite=Strict) only on requests from the sidecar's own
pages, and an admin network is admin whoever's page sent the request; so a state-changing request
is also refused when the browser says it came from another site (Sec-Fetch-Site, Origin), and
when it is authenticated by the cookie alone it must carry `X-Smart-Proxy-Csrf` — a header no
cross-site form can send, and no cross-site script may send without a CORS preflight that the
sidecar never grants. Tools (curl, the CLI) send none of these browser headers and are unaffected.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from server.http.auth import SESSION_COOKIE
from server.http.dialects import error_response
from server.http.identity import ADMIN_HEADERS
from server.sidecar import sidecar_of

Endpoint = Callable[[Request], Awaitable[Response]]

CSRF_HEADER = "x-smart-proxy-csrf"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def json_response(payload: Any, status: int = 200) -> Response:
    return Response(msgspec.json.encode(payload), status, media_type="application/json")


def cross_site(request: Request) -> str | None:
    """Why this state-changing request must be refused as cross-site; None when it may go on."""
    if request.method in SAFE_METHODS:
        return None
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return f"cross-site request refused (Sec-Fetch-Site: {site})"
    origin = request.headers.get("origin")
    if origin is not None:
        host = request.headers.get("host", "")
        if origin == "null" or urlsplit(origin).netloc.lower() != host.lower():
            return f"cross-site request refused (Origin {origin} is not this sidecar)"
    cookie_only = SESSION_COOKIE in request.cookies and not any(
        h in request.headers for h in ADMIN_HEADERS
    )
    if cookie_only and CSRF_HEADER not in request.headers:
        return f"a request authenticated by the session cookie must send {CSRF_HEADER}"
    return None


def admin_only(endpoint: Endpoint) -> Endpoint:
    async def guarded(request: Request) -> Response:
        sc = sidecar_of(request)
        if not sc.is_admin(request, sc.caller(request)):
            return error_response(
                request.url.path, 403,
                "admin only: connect from an admin network, or send X-Admin-Key or a session token",
            )
        if (why := cross_site(request)) is not None:
            return error_response(request.url.path, 403, why)
        return await endpoint(request)

    guarded.__name__ = endpoint.__name__
    return guarded
