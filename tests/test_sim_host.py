"""Ollama's Host check, emulated: on loopback it refuses foreign Host headers with a bare 403,
so a proxy must rewrite Host — and the sidecar does."""

import httpx
import pytest

from sim.hostcheck import allowed_host


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        # allowed: loopback, private, localhost names, the special suffixes, no Host at all
        ("127.0.0.1:11434", True),
        ("[::1]:11434", True),
        ("localhost", True),
        ("LOCALHOST:8080", True),
        ("10.1.2.3:11434", True),
        ("192.168.0.7", True),
        ("gpu.internal", True),
        ("box.local:11434", True),
        ("app.localhost", True),
        ("", True),
        # refused: public names and addresses (what a rebinding attack or an unrewritten proxy sends)
        ("example.com", False),
        ("proxy.example.com:8003", False),
        ("8.8.8.8", False),
        ("[2001:db8::1]:80", False),
        ("internal", False),
    ],
)
def test_allowed_host_rules(host, allowed):
    """Loopback, private, localhost, the host's own name and *.localhost/.local/.internal pass."""
    assert allowed_host(host) is allowed


def test_emulator_refuses_a_foreign_host(ollama_emulator):
    """Direct to the emulator with a public Host: 403 and an empty body, as Ollama does."""
    refused = httpx.get(ollama_emulator.url + "/api/version", headers={"host": "example.com"})
    assert (refused.status_code, refused.content) == (403, b"")
    allowed = httpx.get(ollama_emulator.url + "/api/version", headers={"host": "localhost"})
    assert allowed.status_code == 200


def test_the_sidecar_rewrites_host(ollama_emulator, sidecar_factory):
    """A client that reached the sidecar under a public name still gets answers from Ollama."""
    proxy = sidecar_factory(upstream=ollama_emulator.url)
    headers = {"host": "proxy.example.com"}
    assert httpx.get(proxy.url + "/api/tags", headers=headers, timeout=10).status_code == 200
    chat = {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "hi"}], "stream": False}
    answer = httpx.post(proxy.url + "/api/chat", json=chat, headers=headers, timeout=30)
    assert answer.status_code == 200 and answer.json()["done"] is True
