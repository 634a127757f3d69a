"""Requests a browser makes on another site's behalf: refused for anything that changes state.

A browser sends the session cookie (SameSite=Strict) only on requests from the sidecar's own
pages, but an admin network is admin whatever page a browser on it shows. So a state-changing
request is also refused when the browser says it came from another site — `Sec-Fetch-Site`
(trusted when present: a reverse proxy may rewrite `Host`, never this), else an `Origin` that is
not this host — and when it is authenticated by the cookie alone it must carry
`X-Smart-Proxy-Csrf`, a header no cross-site form can send and no cross-site script may send
without a CORS preflight, which the sidecar never grants. Tools (curl, the CLI) send none of these
browser headers and are unaffected.

DNS rebinding — another site's page whose host name now resolves to the sidecar — is same-origin
as far as the browser knows; `identity.named_by_browser` lets admin auth refuse the network's trust
to a browser that reached the sidecar by a host name (docs/dashboards.md).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.requests import Request

from server.http.auth import SESSION_COOKIE, cookie
from server.http.identity import ADMIN_HEADERS

CSRF_HEADER = "x-smart-proxy-csrf"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def cross_site(request: Request) -> str | None:
    """Why this state-changing request must be refused as cross-site; None when it may go on."""
    if request.method in SAFE_METHODS:
        return None
    headers = request.headers
    site = headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return f"cross-site request refused (Sec-Fetch-Site: {site})"
    origin = headers.get("origin")
    # A browser without fetch metadata: its Origin must be this host.
    if site is None and origin is not None and (
        origin == "null" or urlsplit(origin).netloc.lower() != headers.get("host", "").lower()
    ):
        return f"cross-site request refused (Origin {origin} is not this sidecar)"
    cookie_only = cookie(headers, SESSION_COOKIE) is not None and not any(
        h in headers for h in ADMIN_HEADERS
    )
    if cookie_only and CSRF_HEADER not in headers:
        return f"a request authenticated by the session cookie must send {CSRF_HEADER}"
    return None
