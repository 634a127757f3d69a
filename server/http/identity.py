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
ADMIN_KEY_HEADER = "x-admin-key"
ADMIN_TOKEN_HEADER = "x-admin-token"
# Headers that carry admin credentials: stripped from everything forwarded to Ollama.
ADMIN_HEADERS = frozenset({ADMIN_KEY_HEADER, ADMIN_TOKEN_HEADER})

_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
_PORT = re.compile(r"^:[0-9]{1,5}$")


def parse_address(text: str) -> IPAddress | None:
    """A bare address as a socket reports it (`10.0.0.1`, `::1`, `fe80::1%eth0`), else None."""
    try:
        addr = ipaddress.ip_address(text.strip().split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def parse_hop(text: str) -> IPAddress | None:
    """One forwarded hop as proxies write it, else None.

    Accepted: `203.0.113.7`, `203.0.113.7:5555`, `2001:db8::1`, `[2001:db8::1]`,
    `[2001:db8::1]:5555`, and any of them in double quotes (RFC 7239 quotes anything with a
    colon). Everything else — `unknown`, RFC 7239's obfuscated `_hidden`, an empty hop, a host
    name, a port without an address — is None: the hop names no one we could vouch for.
    """
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1].strip()
    if text.startswith("["):
        close = text.find("]")
        rest = text[close + 1 :] if close > 0 else "?"
        if rest and not _PORT.match(rest):
            return None
        addr = parse_address(text[1:close])
        return addr if isinstance(addr, ipaddress.IPv6Address) else None
    if text.count(":") == 1:  # IPv4 with a port; a bare IPv6 address has at least two colons
        host, _, port = text.partition(":")
        if not _PORT.match(":" + port):
            return None
        addr = parse_address(host)
        return addr if isinstance(addr, ipaddress.IPv4Address) else None
    return parse_address(text)


def _forwarded_for(value: str) -> list[str | None]:
    """The `for=` of each element of an RFC 7239 `Forwarded` header; None where an element has none."""
    hops: list[str | None] = []
    for element in value.split(","):
        found: str | None = None
        for pair in element.split(";"):
            name, sep, param = pair.partition("=")
            if sep and name.strip().lower() == "for":
                found = param
        hops.append(found)
    return hops


def _walk(hops: Sequence[str | None], peer: IPAddress, trusted: Sequence[IPNetwork]) -> IPAddress | None:
    """Right to left, skipping trusted proxies: the first untrusted hop is the client.

    A hop that does not parse ends the walk with None — never with the trusted proxy's own
    address, which would hand whoever wrote the garbage the proxy's privileges (admin, when the
    proxy sits inside `admin.networks`).
    """
    addr: IPAddress | None = peer
    for hop in reversed(hops):
        addr = parse_hop(hop) if hop is not None else None
        if addr is None or not in_networks(addr, trusted):
            return addr
    return addr


def in_networks(addr: IPAddress | None, networks: Sequence[IPNetwork]) -> bool:
    return addr is not None and any(addr in net for net in networks)


def client_address(
    peer: str | None, headers: Headers, trusted: Sequence[IPNetwork]
) -> IPAddress | None:
    """The address of the client that sent the request; None when it cannot be known.

    The peer is believed; `X-Forwarded-For` and RFC 7239 `Forwarded` only when the peer is a
    trusted proxy, and then read from the right, skipping further trusted proxies (every hop
    left of the first untrusted one could have been written by the client itself). None — an
    unknown client, never admin by network — when a hop does not parse, or when both headers
    are present and name different clients (a proxy that writes one of them passes the other
    through from the client unchecked, and we cannot tell which one it writes).
    """
    addr = parse_address(peer) if peer else None
    if addr is None or not in_networks(addr, trusted):
        return addr
    answers: list[IPAddress | None] = []
    xff = headers.getlist("x-forwarded-for")
    if xff:
        answers.append(_walk([h for v in xff for h in v.split(",")], addr, trusted))
    forwarded = headers.getlist("forwarded")
    if forwarded:
        answers.append(_walk([h for v in forwarded for h in _forwarded_for(v)], addr, trusted))
    if not answers:
        return addr  # the trusted proxy itself (its own health check, say)
    if len(set(answers)) != 1:
        return None
    return answers[0]


class ApiKeysError(ValueError):
    """What is wrong with the API keys variable, entry by entry; never the keys themselves."""


_KEY = re.compile(r"^[!-~]{1,512}$")  # printable ASCII, no spaces: what a bearer token can carry


def parse_api_keys(text: str) -> dict[str, str]:
    """`"key=name,key=name"` (the variable `clients.api_keys_env` names) -> {key: name}.

    Strict: an entry that does not parse used to be dropped silently, so a typo turned a named
    client into an anonymous one. ApiKeysError lists every bad entry by its position (1-based)
    without echoing the key. Empty entries (a trailing comma) are ignored."""
    keys: dict[str, str] = {}
    problems: list[str] = []
    for position, item in enumerate(text.split(","), 1):
        if not item.strip():
            continue
        key, sep, name = (part.strip() for part in item.partition("="))
        if not sep:
            problems.append(f"entry {position} has no '=' (write key=name)")
        elif not key:
            problems.append(f"entry {position} has an empty key")
        elif not _KEY.match(key):
            problems.append(f"entry {position}: the key must be printable ASCII without spaces")
        elif not name or name.startswith("=") or not _CLIENT_ID.match(name):
            problems.append(
                f"entry {position}: the client name {name!r} must be 1-128 of A-Z a-z 0-9 . _ : @ / + = - "
                "(a key cannot contain '=' or ',')"
            )
        elif keys.get(key, name) != name:
            problems.append(f"entry {position} repeats an earlier key with another name ({keys[key]!r}, then {name!r})")
        else:
            keys[key] = name
    if problems:
        raise ApiKeysError("; ".join(problems))
    return keys


def bearer(headers: Headers) -> str | None:
    """The client's API key: `Authorization: Bearer KEY`, or Anthropic clients' `x-api-key`."""
    value = headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    key = headers.get("x-api-key", "").strip()
    return key or None


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


_BROWSER_HEADERS = ("sec-fetch-site", "sec-fetch-mode", "origin")


def named_by_browser(headers: Headers) -> bool:
    """A browser's request that reached the sidecar by a host name (not an IP address, not
    localhost): one a rebinding attack could have made, so the network alone must not make it
    admin."""
    if not any(h in headers for h in _BROWSER_HEADERS):
        return False
    host = headers.get("host", "")
    name = host[1:].split("]", 1)[0] if host.startswith("[") else host.rsplit(":", 1)[0]
    name = name.rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return False
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return True
    return False
