"""What `smart-proxy demo` prepares before the sidecar starts: a directory of its own holding a
policy whose `[backend]` describes the emulator actually started, and (unless `--db` or
SMART_PROXY_DB names one) the demo's own journal.

Why: the example policy is written for one kind of GPU (`num_parallel = 1`, `vram_gb = 24`); in
front of an emulator with 2 slots per model the sidecar held back requests Ollama would have run,
and in front of `server-80gb` it reported 48 GiB used of a 24 GiB "total". And the demo's made-up
traffic must never land in the journal `serve` keeps for real analytics (./db/requests.db).

The directory is a fresh temporary one, removed when the demo stops: nothing is left behind, and
the policy file the user pointed at is only read, never written.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import tomllib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from policy.load import load_policy_file
from sim.config import Settings as EmulatorSettings

GIB = 1024**3
DIR_PREFIX = "smart-proxy-demo-"
POLICY_NAME = "policy.toml"
JOURNAL_NAME = "journal.db"


def backend_for(emulator: EmulatorSettings, url: str) -> dict[str, Any]:
    """The policy's `[backend]` values that describe `emulator`, listening at `url`."""
    backend: dict[str, Any] = {
        "url": url,
        # Ollama runs num_parallel requests on each of max_loaded_models models at once; a smaller
        # max_parallel would hold back requests Ollama serves at once, so the sidecar would be
        # slower than Ollama alone (the scheduler still keeps a model's extra requests waiting
        # here, where the policy can reorder them).
        "max_parallel": emulator.num_parallel * emulator.max_loaded_models,
        "num_parallel": emulator.num_parallel,
        # The emulator counts decimal GB like Ollama's output; the policy counts GiB.
        "vram_gb": emulator.vram / GIB,
        "max_loaded_models": emulator.max_loaded_models,
    }
    factors = {spec.resident_factor for spec in emulator.models}
    if len(factors) == 1:  # one factor for all: the sidecar's estimate from /api/tags is exact
        backend["resident_factor"] = factors.pop()
    return backend


def derive_policy(source: Path, backend: dict[str, Any], target: Path) -> None:
    """Write `source` with its `[backend]` values replaced by `backend` to `target`.

    The source is compiled first, so a broken file is reported (every problem, naming the user's
    file) rather than copied; everything but `[backend]` is kept as written."""
    load_policy_file(source)  # PolicyError, as `serve` would raise it
    data = tomllib.loads(source.read_text(encoding="utf-8"))
    section = data.get("backend")
    data["backend"] = {**(section if isinstance(section, dict) else {}), **backend}
    header = (
        f"# Written by `smart-proxy demo` from {source.resolve()}:\n"
        "# [backend] describes the emulator the demo started; everything else is the file as written.\n"
        "# Edits here reload live, and vanish with the demo's directory when it stops.\n\n"
    )
    target.write_text(header + tomli_w.dumps(data), encoding="utf-8")


@dataclass(frozen=True, slots=True)
class DemoSetup:
    directory: Path
    source: Path  # the policy file the user chose (or the example)
    policy: Path  # the derived copy the sidecar runs on
    db: str  # the journal DSN the sidecar opens
    own_journal: bool  # False when --db or SMART_PROXY_DB chose the journal


@asynccontextmanager
async def demo_directory(
    source: Path, emulator: EmulatorSettings, url: str, db: str | None
) -> AsyncIterator[DemoSetup]:
    """A temporary directory with the derived policy and, unless `db` is given, the journal;
    removed on the way out. File work runs in a thread: the emulator is already serving."""
    directory = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix=DIR_PREFIX))
    try:
        policy = directory / POLICY_NAME
        await asyncio.to_thread(derive_policy, source, backend_for(emulator, url), policy)
        journal = str(directory / JOURNAL_NAME) if db is None else db
        yield DemoSetup(directory, source, policy, journal, own_journal=db is None)
    finally:
        await asyncio.to_thread(shutil.rmtree, directory, ignore_errors=True)


def describe(setup: DemoSetup, preset: str) -> str:
    """Banner lines: where the policy and the journal are, and why."""
    journal = (
        f"{setup.db}   (the demo's own; removed on exit, ./db/requests.db is never touched)"
        if setup.own_journal else f"{setup.db}   (from --db / SMART_PROXY_DB)"
    )
    return (
        f"  policy     {setup.policy}\n"
        f"             ({setup.source} with [backend] set to the {preset} emulator)\n"
        f"  journal    {journal}"
    )
