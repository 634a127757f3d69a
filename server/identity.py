"""Who is asking: the client's address (X-Forwarded-For counts only when the peer is a trusted
proxy) and its client id (API key -> name, the client header, or the address), in the order the
policy's `clients.identify_by` lists."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from starlette.datastructures import Headers

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# A client id from a header is shown in logs, metrics and the queue view: keep it printable.
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")


def parse_address(text: str) -> IPAddress | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[::1]:port" as some proxies write it
        text = text[1 : text.index("]")]
    try:
        addr = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def in_networks(addr: IPAddress | None, networks: Sequence[IPNetwork]) -> bool:
    return addr is not None and any(addr in net for net in networks)


def client_address(
    peer: str | None, headers: Headers, trusted: Sequence[IPNetwork]
) -> IPAddress | None:
    """The address of the client that sent the request.

    The peer is believed; X-Forwarded-For only when the peer is a trusted proxy, and then read
    from the right, skipping further trusted proxies: the first untrusted hop is the client. Every
    hop left of it could have been written by the client itself.
    """
    addr = parse_address(peer) if peer else None
    if not in_networks(addr, trusted):
        return addr
    hops = [h for value in headers.getlist("x-forwarded-for") for h in value.split(",")]
    for hop in reversed(hops):
        hop_addr = parse_address(hop)
        if hop_addr is None:
            break  # a garbled hop: stop at the last address we can vouch for
        addr = hop_addr
        if not in_networks(hop_addr, trusted):
            break
    return addr


def parse_api_keys(text: str) -> dict[str, str]:
    """`"key=name,key=name"` (the variable `clients.api_keys_env` names) -> {key: name}."""
    keys: dict[str, str] = {}
    for item in text.split(","):
        key, sep, name = item.strip().partition("=")
        if sep and key.strip() and name.strip():
            keys[key.strip()] = name.strip()
    return keys


def bearer(headers: Headers) -> str | None:
    value = headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


@dataclass(frozen=True, slots=True)
class Identity:
    client: str
    address: str  # "" when the peer address is unknown (a test transport, a Unix socket)


def identify(
    *,
    headers: Headers,
    address: IPAddress | None,
    identify_by: Sequence[str],
    header: str,
    api_keys: Mapping[str, str],
) -> Identity:
    """The first rule that yields a name wins; the address is the fallback of last resort."""
    ip = str(address) if address is not None else ""
    for rule in identify_by:
        if rule == "api_key":
            key = bearer(headers)
            if key is not None and key in api_keys:
                return Identity(api_keys[key], ip)
        elif rule == "header":
            value = headers.get(header, "").strip()
            if _CLIENT_ID.match(value):
                return Identity(value, ip)
        elif rule == "ip" and ip:
            return Identity(ip, ip)
    return Identity(ip or "unknown", ip)
