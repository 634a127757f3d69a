"""Ollama's Host check: listening on a loopback address, it answers 403 to a request whose Host
header names anything but a loopback or private address, `localhost`, its own hostname, or a
`*.localhost`, `*.local` or `*.internal` name (a guard against DNS rebinding). A proxy in front of
it must therefore rewrite Host, and with this check every test through the sidecar proves it does.
"""

from __future__ import annotations

import ipaddress
import socket

from starlette.types import ASGIApp, Receive, Scope, Send

_SUFFIXES = (".localhost", ".local", ".internal")
# Go's net.IP.IsPrivate (RFC 1918 and RFC 4193), which Ollama uses; Python's is_private is wider.
_PRIVATE = tuple(
    ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
)


def _host_only(header: str) -> str:
    if header.startswith("["):  # [IPv6]:port
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def allowed_host(header: str) -> bool:
    host = _host_only(header.strip()).lower()
    if not host or host == "localhost" or host.endswith(_SUFFIXES):
        return True
    if host == socket.gethostname().lower():
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if address.is_loopback or address.is_unspecified:
        return True
    return any(address.version == net.version and address in net for net in _PRIVATE)


def _listening_on_loopback(scope: Scope) -> bool:
    server = scope.get("server")
    if not server:
        return False
    try:
        return ipaddress.ip_address(server[0]).is_loopback
    except ValueError:
        return False


class HostCheck:
    """ASGI middleware applying the check when the connection arrived on a loopback address."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _listening_on_loopback(scope):
            host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), "")
            if not allowed_host(host):
                # Ollama aborts with a bare 403: no body.
                await send(
                    {
                        "type": "http.response.start",
                        "status": 403,
                        "headers": [(b"content-length", b"0")],
                    }
                )
                await send({"type": "http.response.body", "body": b""})
                return
        await self.app(scope, receive, send)
