"""Who the client is behind a trusted proxy: every form a forwarded hop takes, one row each.

The rule under test: a hop that does not name an address we can parse ends the walk with an
unknown client (None), never with the trusted proxy's own address.
"""

from __future__ import annotations

import ipaddress

import pytest
from starlette.datastructures import Headers

from server.http.identity import client_address, parse_hop

TRUSTED = [ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("10.0.0.0/8")]
PROXY = "127.0.0.1"

HOPS = [
    ("203.0.113.7", "203.0.113.7"),
    ("203.0.113.7:5555", "203.0.113.7"),
    (" 203.0.113.7 ", "203.0.113.7"),
    ('"203.0.113.7:5555"', "203.0.113.7"),
    ("2001:db8::1", "2001:db8::1"),
    ("[2001:db8::1]", "2001:db8::1"),
    ("[2001:db8::1]:4711", "2001:db8::1"),
    ('"[2001:db8::1]:4711"', "2001:db8::1"),
    ("::ffff:203.0.113.7", "203.0.113.7"),
    ("unknown", None),
    ("_hidden", None),
    ("", None),
    ("example.com", None),
    ("example.com:80", None),
    ("203.0.113.7:", None),
    ("203.0.113.7:port", None),
    (":5555", None),
    ("[203.0.113.7]:5555", None),  # brackets are for IPv6 only
    ("[2001:db8::1", None),
    ("[2001:db8::1]x", None),
    ("2001:db8::1:", None),
    ("203.0.113.7:5555:1", None),
]


@pytest.mark.parametrize(("hop", "expected"), HOPS, ids=[repr(h) for h, _ in HOPS])
def test_hop_forms(hop: str, expected: str | None) -> None:
    parsed = parse_hop(hop)
    assert (str(parsed) if parsed is not None else None) == expected


# (case, peer, headers, expected client address)
CASES = [
    ("untrusted peer: headers ignored", "198.51.100.1", {"x-forwarded-for": "10.1.1.1"}, "198.51.100.1"),
    ("trusted peer, no header: the proxy itself", PROXY, {}, PROXY),
    ("bare address", PROXY, {"x-forwarded-for": "203.0.113.7"}, "203.0.113.7"),
    ("ip:port", PROXY, {"x-forwarded-for": "203.0.113.7:5555"}, "203.0.113.7"),
    ("bracketed v6 with port", PROXY, {"x-forwarded-for": "[2001:db8::1]:4711"}, "2001:db8::1"),
    ("trusted hops skipped", PROXY, {"x-forwarded-for": "203.0.113.7, 10.0.0.2"}, "203.0.113.7"),
    ("spoofed left of the client", PROXY, {"x-forwarded-for": "10.9.9.9, 203.0.113.7"}, "203.0.113.7"),
    ("two header lines", PROXY, [("x-forwarded-for", "203.0.113.7"), ("x-forwarded-for", "10.0.0.2")],
     "203.0.113.7"),
    ("all hops trusted: the leftmost", PROXY, {"x-forwarded-for": "10.0.0.3, 10.0.0.2"}, "10.0.0.3"),
    ("unknown", PROXY, {"x-forwarded-for": "unknown"}, None),
    ("client then unknown", PROXY, {"x-forwarded-for": "203.0.113.7, unknown"}, None),
    ("garbage behind a trusted hop", PROXY, {"x-forwarded-for": "junk, 10.0.0.2"}, None),
    ("empty value", PROXY, {"x-forwarded-for": ""}, None),
    ("trailing comma", PROXY, {"x-forwarded-for": "203.0.113.7,"}, None),
    ("Forwarded, bare", PROXY, {"forwarded": "for=203.0.113.7"}, "203.0.113.7"),
    ("Forwarded, quoted v6 with port", PROXY, {"forwarded": 'for="[2001:db8::1]:4711";proto=https'},
     "2001:db8::1"),
    ("Forwarded, case of the name", PROXY, {"forwarded": "For=203.0.113.7"}, "203.0.113.7"),
    ("Forwarded, chain", PROXY, {"forwarded": "for=203.0.113.7, for=10.0.0.2;by=10.0.0.1"}, "203.0.113.7"),
    ("Forwarded, unknown", PROXY, {"forwarded": "for=unknown"}, None),
    ("Forwarded, obfuscated", PROXY, {"forwarded": 'for="_hidden"'}, None),
    ("Forwarded, no for", PROXY, {"forwarded": "proto=https;host=example.com"}, None),
    ("Forwarded, one element lacks for", PROXY, {"forwarded": "for=203.0.113.7, proto=https"}, None),
    ("both headers agree", PROXY, {"x-forwarded-for": "203.0.113.7", "forwarded": "for=203.0.113.7:1"},
     "203.0.113.7"),
    ("both headers disagree", PROXY, {"x-forwarded-for": "127.0.0.1", "forwarded": "for=203.0.113.7"}, None),
    ("unparseable peer", "not-an-ip", {"x-forwarded-for": "10.0.0.2"}, None),
]


@pytest.mark.parametrize(("case", "peer", "headers", "expected"), CASES, ids=[c[0] for c in CASES])
def test_client_address(case: str, peer: str, headers: object, expected: str | None) -> None:
    raw = headers.items() if isinstance(headers, dict) else headers
    scope_headers = [(k.encode(), v.encode()) for k, v in raw]  # type: ignore[attr-defined]
    found = client_address(peer, Headers(raw=scope_headers), TRUSTED)
    assert (str(found) if found is not None else None) == expected
