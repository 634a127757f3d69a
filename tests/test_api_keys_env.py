"""The API keys variable (`clients.api_keys_env`, "key=name,key=name") is read strictly: an entry
that does not parse used to be dropped silently, so an operator's typo made a named client
anonymous. Now `serve` refuses to start (one line, exit 2), a reload that names a malformed
variable fails closed (no key identifies anyone) and says so once, and no message ever holds a
key."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from sidecar_fixtures import BASE_POLICY, RunningSidecar, SidecarFactory, cli_process, wait_until

from server.http.identity import ApiKeysError, parse_api_keys

EXAMPLE = str(Path(__file__).resolve().parent.parent / "policies.example.toml")
SECRET = "sk-very-secret"

GOOD = [
    ("", {}),
    (f"{SECRET}=alice", {SECRET: "alice"}),
    (f" {SECRET} = alice , k2=bob ,", {SECRET: "alice", "k2": "bob"}),  # spaces, a trailing comma
    (f"{SECRET}=alice,{SECRET}=alice", {SECRET: "alice"}),  # the same pair twice is harmless
    ("k=team/a:b@c.d+e", {"k": "team/a:b@c.d+e"}),
]

BAD = [
    (f"{SECRET}", "entry 1 has no '='"),
    (f"k1=alice,{SECRET}", "entry 2 has no '='"),
    ("=alice", "entry 1 has an empty key"),
    (f"{SECRET}=", "entry 1: the client name ''"),
    (f"{SECRET}=two words", "entry 1: the client name 'two words'"),
    (f"{SECRET}==alice", "a key cannot contain '='"),  # a base64 key's padding
    ("sk\u00e9=alice", "entry 1: the key must be printable ASCII"),
    (f"{SECRET}=alice,{SECRET}=bob", "entry 2 repeats an earlier key with another name ('alice', then 'bob')"),
]


@pytest.mark.parametrize(("text", "keys"), GOOD)
def test_well_formed_values(text: str, keys: dict[str, str]) -> None:
    assert parse_api_keys(text) == keys


@pytest.mark.parametrize(("text", "problem"), BAD)
def test_each_malformed_entry_is_named_by_position_never_by_key(text: str, problem: str) -> None:
    with pytest.raises(ApiKeysError) as caught:
        parse_api_keys(text)
    assert problem in str(caught.value)
    assert SECRET not in str(caught.value)


def test_serve_refuses_to_start_on_a_malformed_variable() -> None:
    env = {**os.environ, "SMART_PROXY_API_KEYS": f"k1=alice,{SECRET}"}
    with cli_process(["serve", "--policy", EXAMPLE, "--port", "0"], env) as process:
        assert process.wait(timeout=60) == 2
        assert process.stderr is not None
        err = process.stderr.read()
    assert err == "smart-proxy serve: error: SMART_PROXY_API_KEYS: entry 2 has no '=' (write key=name)\n"


def test_a_reload_to_a_malformed_variable_fails_closed_and_says_so_once(
    sidecar_factory: SidecarFactory, ollama_emulator: Any, caplog: pytest.LogCaptureFixture
) -> None:
    env = {"SMART_PROXY_API_KEYS": f"{SECRET}=alice", "OTHER_KEYS": f"{SECRET}=alice,oops"}
    proxy = sidecar_factory(upstream=ollama_emulator.url, env=env)
    body = {"model": "llama3.2:1b", "prompt": "hi", "stream": False}
    auth = {"authorization": f"Bearer {SECRET}", "x-request-id": "before"}
    assert httpx.post(proxy.url + "/api/generate", json=body, headers=auth, timeout=30).status_code == 200
    assert _record(proxy, "before").client == "alice"
    proxy.policy_path.write_text(BASE_POLICY + '\n[clients]\napi_keys_env = "OTHER_KEYS"\n', encoding="utf-8")
    assert proxy.admin("POST", "/proxy/policy/reload").json()["ok"] is True
    for rid in ("after-1", "after-2"):
        headers = {**auth, "x-request-id": rid}
        assert httpx.post(proxy.url + "/api/generate", json=body, headers=headers, timeout=30).status_code == 200
        assert _record(proxy, rid).client == "127.0.0.1", "no key identifies anyone"
    health = proxy.health()
    assert health["status"] == "degraded"
    assert any("OTHER_KEYS was refused" in reason for reason in health["reasons"]), health
    refused = [r.getMessage() for r in caplog.records if "api_keys_env" in r.getMessage()]
    assert refused == ["clients.api_keys_env OTHER_KEYS: entry 2 has no '=' (write key=name); "
                       "no API key identifies a client until it is fixed"]
    assert all(SECRET not in r.getMessage() for r in caplog.records)


def _record(proxy: RunningSidecar, request_id: str) -> Any:
    """The request's journal record: handed over just after its last byte, so waited for."""
    def found() -> list[Any]:
        return [r for r in proxy.journal.records if request_id in (r.request_id, r.client_request_id)]

    wait_until(lambda: bool(found()), within=10, what=f"the record of {request_id}")
    return found()[-1]
