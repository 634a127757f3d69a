"""`smart-proxy demo` runs a policy whose [backend] is the emulator it started, and keeps a journal
of its own: the example policy file and ./db/requests.db are never touched."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from sidecar_fixtures import cli_process, wait_upstream_up

from policy.errors import PolicyError
from policy.load import load_policy_file
from server.cli.demo import example_policy
from server.cli.demo_setup import GIB, backend_for, derive_policy
from sim.presets import PRESETS
from sim.serve import preset_settings

PRESET_NAMES = sorted(PRESETS)
URL = "http://127.0.0.1:5555"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_the_derived_policy_describes_the_preset(preset: str, tmp_path: Path) -> None:
    emulator = preset_settings(preset)
    source = example_policy()
    before = digest(source)
    target = tmp_path / "policy.toml"
    derive_policy(source, backend_for(emulator, URL), target)

    backend = load_policy_file(target).backend
    assert backend.vram_gb * GIB == pytest.approx(emulator.vram)
    assert backend.num_parallel == emulator.num_parallel
    assert backend.max_loaded_models == emulator.max_loaded_models
    # as many requests in flight as Ollama runs at once: never slower than Ollama alone
    assert backend.max_parallel == emulator.num_parallel * emulator.max_loaded_models
    assert backend.url == URL
    assert backend.resident_factor == emulator.models[0].resident_factor
    # Everything else is the file as written, and the file itself is unchanged.
    original = msgspec.to_builtins(load_policy_file(source).raw)
    derived = msgspec.to_builtins(load_policy_file(target).raw)
    for section in set(original) | set(derived):
        if section != "backend":
            assert derived.get(section) == original.get(section), section
    for key in ("poll_interval", "request_timeout", "queue_timeout"):
        assert derived["backend"][key] == original["backend"][key]
    assert digest(source) == before


def test_a_broken_policy_is_reported_against_the_users_file(tmp_path: Path) -> None:
    source = tmp_path / "mine.toml"
    source.write_text('active = "nope"\n[backend]\nmax_paralel = 2\n', encoding="utf-8")
    target = tmp_path / "derived.toml"
    with pytest.raises(PolicyError) as caught:
        derive_policy(source, backend_for(preset_settings("tiny-8gb"), URL), target)
    assert str(source) in str(caught.value) and "max_paralel" in str(caught.value)
    assert not target.exists()


@contextmanager
def demo_process(args: list[str], cwd: Path) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    """`smart-proxy demo ARGS` run from `cwd` with no journal or policy chosen by the environment;
    yields the process and its banner, once printed. Killed however the test ends."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMART_PROXY_")}
    env["SMART_PROXY_LOG_FORMAT"] = "human"
    with cli_process(["demo", *args], env, cwd) as process:
        assert process.stderr is not None
        banner: list[str] = []
        for line in process.stderr:
            banner.append(line)
            if "Ctrl-C stops both" in line:
                break
        assert banner and "Ctrl-C stops both" in banner[-1], "".join(banner)
        yield process, banner


def banner_value(banner: list[str], label: str) -> str:
    for line in banner:
        match = re.match(rf"\s+{label}\s+(\S+)", line)
        if match:
            return match.group(1)
    raise AssertionError(f"no {label} line in the banner:\n{''.join(banner)}")


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_demo_matches_its_emulator_and_keeps_its_own_journal(preset: str, tmp_path: Path) -> None:
    emulator = preset_settings(preset)
    with demo_process(["--preset", preset, "--port", "0", "--time-scale", "0"], tmp_path) as (
        process, banner,
    ):
        proxy = banner_value(banner, "proxy")
        policy_path = Path(banner_value(banner, "policy"))
        journal_path = Path(banner_value(banner, "journal"))
        directory = policy_path.parent
        assert journal_path.parent == directory and directory != tmp_path
        wait_upstream_up(proxy)

        residency: dict[str, Any] = httpx.get(proxy + "/proxy/vram", timeout=10).json()["residency"]
        assert residency["vram_total_gb"] * GIB == pytest.approx(emulator.vram)
        assert residency["max_loaded_models"] == emulator.max_loaded_models
        backend = httpx.get(proxy + "/proxy/policy", timeout=10).json()["file"]["backend"]
        assert backend["vram_gb"] * GIB == pytest.approx(emulator.vram)
        assert backend["num_parallel"] == emulator.num_parallel
        assert backend["max_loaded_models"] == emulator.max_loaded_models
        health = httpx.get(proxy + "/proxy/health", timeout=10).json()
        assert health["max_parallel"] == emulator.num_parallel * emulator.max_loaded_models

        body = {"model": emulator.models[0].name, "prompt": "hi", "stream": False}
        assert httpx.post(proxy + "/api/generate", json=body, timeout=60).status_code == 200
        journal = httpx.get(proxy + "/proxy/journal", timeout=10).json()
        assert journal["backend"] == "sqlite" and Path(journal["target"]) == journal_path

        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
    # Run from tmp_path, as from a checkout: nothing was written where `serve` keeps its journal,
    # and the demo's own directory went with it.
    assert not (tmp_path / "db").exists()
    assert list(tmp_path.iterdir()) == []
    assert not directory.exists()
