"""How long things take on the emulated GPU, in unscaled seconds (the backend applies time_scale).

Figures follow docs/ollama.md: a load is 1–2.5 s of process start plus the weights read at
~2 GB/s from disk or ~10 GB/s from the page cache; unload 0.3–1.5 s; 60–140 tokens/s for a 3B model,
falling with size. Per-model jitter comes from the digest, so a run is reproducible.
"""

from __future__ import annotations

import hashlib

from sim.catalog import GB, ModelSpec

DISK_BYTES_PER_S = 2.0 * GB
CACHE_BYTES_PER_S = 10.0 * GB


def _fraction(spec: ModelSpec, salt: str) -> float:
    """A stable number in [0, 1) for this model and purpose."""
    digest = hashlib.sha256((spec.digest + salt).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def load_seconds(spec: ModelSpec, warm: bool) -> float:
    start = 1.0 + 1.5 * _fraction(spec, "start")
    return start + spec.size / (CACHE_BYTES_PER_S if warm else DISK_BYTES_PER_S)


def unload_seconds(spec: ModelSpec) -> float:
    return 0.3 + 1.2 * _fraction(spec, "unload")


def vram_release_seconds(spec: ModelSpec) -> float:
    """The pause after an unload before Ollama sees the VRAM free again (usually 0.5–1.5 s)."""
    return 0.5 + 1.0 * _fraction(spec, "release")


def tokens_per_second(spec: ModelSpec) -> float:
    """Generation speed: ~100 tok/s at 3B, ~15 at 70B (memory bandwidth bound, so ∝ size^-0.6)."""
    return min(100.0 * (3.0 / spec.params_billions) ** 0.6, 400.0)


def prompt_tokens_per_second(spec: ModelSpec) -> float:
    """Prompt evaluation is batched, so it runs an order of magnitude faster than generation."""
    return 20.0 * tokens_per_second(spec)
