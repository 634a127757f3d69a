"""Does Ollama's own `/api/ps` contradict the policy's `[backend]` promises?

The residency model trusts `backend.vram_gb` and `backend.max_loaded_models` to predict what fits
beside what. When Ollama reports more VRAM in use, or more models loaded, than those allow, every
prediction of a swap is wrong and nothing else would tell the operator: a policy written for
another GPU (or the example file's 24 GiB in front of an 80 GB card) looks like it works. So each
poll is compared with the policy; a contradiction makes `/proxy/health` degraded with the reason,
sets `smart_proxy_policy_mismatch{kind}` to 1, and is logged once when it appears and once when it
goes away — never once per poll.

Ollama's /api/ps carries no per-model count of running requests, so a `num_parallel` contradiction
cannot be observed here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from policy.load import BackendSettings, NodeSettings

log = logging.getLogger("smart_proxy.upstream")

GIB = 1024**3
Kind = Literal["vram", "max_loaded"]
KINDS: tuple[Kind, ...] = ("vram", "max_loaded")

# /api/ps sizes are whole bytes and vram_gb is a decimal in GiB: a few MiB of slack keeps a
# policy written as exactly what Ollama reports (e.g. by `smart-proxy demo`) from flapping.
VRAM_SLACK_GB = 0.01


@dataclass(frozen=True, slots=True)
class Observed:
    """What one /api/ps answer says Ollama holds."""

    vram_gb: float  # GPU memory in use (size_vram, else size), GiB
    loaded: int  # models listed, loading ones included


def observe(ps: Mapping[str, Any]) -> Observed | None:
    """None when the answer has no `models` list: it says nothing, so it contradicts nothing."""
    models = ps.get("models")
    if not isinstance(models, list):
        return None
    used = 0.0
    count = 0
    for entry in models:
        if not isinstance(entry, dict):
            continue
        count += 1
        # size_vram is what sits on the GPU; size includes any part Ollama offloaded to the CPU.
        for key in ("size_vram", "size"):
            value = entry.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
                used += value
                break
    return Observed(vram_gb=used / GIB, loaded=count)


def contradictions(seen: Observed, backend: BackendSettings | NodeSettings) -> dict[Kind, str]:
    """Each contradiction of the policy by Ollama's report, as a sentence for a person. The
    sentences name no model: /proxy/health is public."""
    found: dict[Kind, str] = {}
    if seen.vram_gb > backend.vram_gb + VRAM_SLACK_GB:
        found["vram"] = (
            f"Ollama reports {seen.vram_gb:.1f} GiB in use, the policy's vram_gb is "
            f"{backend.vram_gb:g}; set [backend] vram_gb to what the GPU holds"
        )
    if seen.loaded > backend.max_loaded_models:
        found["max_loaded"] = (
            f"Ollama reports {seen.loaded} models loaded, the policy's max_loaded_models is "
            f"{backend.max_loaded_models}; set it to Ollama's OLLAMA_MAX_LOADED_MODELS"
        )
    return found


class PolicyConsistency:
    """The current contradictions, updated from each /api/ps answer (and after a policy reload,
    against the last answer). `on_change(kind, active)` is told of each state change, e.g. to set
    a gauge."""

    def __init__(
        self,
        backend: Callable[[], BackendSettings | NodeSettings],
        on_change: Callable[[Kind, bool], None] | None = None,
    ) -> None:
        self._backend = backend
        self._on_change = on_change
        self._active: dict[Kind, str] = {}

    @property
    def reasons(self) -> list[str]:
        return [self._active[kind] for kind in KINDS if kind in self._active]

    def active(self, kind: Kind) -> bool:
        return kind in self._active

    def check(self, ps: Mapping[str, Any] | None) -> None:
        if ps is None:
            return
        seen = observe(ps)
        if seen is None:
            return
        backend = self._backend()
        found = contradictions(seen, backend)
        for kind in KINDS:
            was, now = kind in self._active, kind in found
            if now:
                self._active[kind] = found[kind]  # the figures may move; the state is the same
            else:
                self._active.pop(kind, None)
            if was == now:
                continue
            if now:
                log.warning("the policy contradicts Ollama: %s", found[kind])
            else:
                log.info("Ollama's report agrees with the policy's %s again (%s)", _setting(kind),
                         _figures(kind, seen, backend))
            if self._on_change is not None:
                self._on_change(kind, now)


def _setting(kind: Kind) -> str:
    return "vram_gb" if kind == "vram" else "max_loaded_models"


def _figures(kind: Kind, seen: Observed, backend: BackendSettings | NodeSettings) -> str:
    if kind == "vram":
        return f"{seen.vram_gb:.1f} GiB in use, vram_gb {backend.vram_gb:g}"
    return f"{seen.loaded} models loaded, max_loaded_models {backend.max_loaded_models}"
