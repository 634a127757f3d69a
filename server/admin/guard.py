"""Who may use an admin route: `admin_only` (the network, X-Admin-Key or a session) and, for
every request that changes something, the cross-site check (server/http/cross_site.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from server.http.cross_site import cross_site
from server.http.dialects import error_response
from server.sidecar import sidecar_of

Endpoint = Callable[[Request], Awaitable[Response]]


def json_response(payload: Any, status: int = 200) -> Response:
    return Response(msgspec.json.encode(payload), status, media_type="application/json")


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
