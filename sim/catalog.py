"""The models an emulated Ollama knows: what /api/tags lists and what the scheduler can load."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace

GB = 1_000_000_000  # Ollama prints decimal gigabytes


# Architectures Ollama serves one request at a time, whatever OLLAMA_NUM_PARALLEL says: vision
# models with a separate projector and hybrid (recurrent-state) ones (docs/ollama.md).
SINGLE_SLOT_FAMILIES = frozenset({"mllama", "qwen3vl", "qwen3vlmoe", "qwen3next", "lfm2", "nemotron_h"})


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One installed model. Sizes in bytes; `resident_factor` covers the KV cache at the default
    context length, so /api/ps reports more than /api/tags, as Ollama does."""

    name: str  # canonical "name:tag"
    size: int
    parameter_size: str  # as Ollama prints it: "3.2B", "137M"
    quantization: str
    family: str
    digest: str  # 64 hex, shared by copies as in Ollama
    modified_at: float  # epoch seconds
    context_length: int = 4096
    embedding_length: int = 4096
    embedding: bool = False
    resident_factor: float = 1.2
    cloud: bool = False  # served by Ollama's hosted service: no VRAM, no local slot, no load

    def slots(self, num_parallel: int) -> int:
        """Requests this model serves at once on a server with OLLAMA_NUM_PARALLEL = num_parallel."""
        return 1 if self.family in SINGLE_SLOT_FAMILIES else num_parallel

    @property
    def params_billions(self) -> float:
        """Parameter count in billions, parsed from the printed size ("137M" → 0.137)."""
        match = re.fullmatch(r"([\d.]+)\s*([KMBT]?)", self.parameter_size.upper())
        if match is None:
            return max(self.size / GB * 1.6, 0.01)  # ≈ Q4 weights: 0.6 GB per billion
        scale = {"K": 1e-6, "M": 1e-3, "B": 1.0, "T": 1e3, "": 1e-9}[match.group(2)]
        return max(float(match.group(1)) * scale, 0.01)

    def resident_size(self, num_ctx: int) -> int:
        """Weights plus a KV cache that grows linearly with the context length."""
        kv = self.size * (self.resident_factor - 1.0) * num_ctx / self.context_length
        return int(self.size + kv)


def canonical(name: str) -> str:
    """Ollama's short names: "llama3.2" means "llama3.2:latest"; case does not matter."""
    name = name.strip().lower()
    tail = name.rsplit("/", 1)[-1]
    return name if ":" in tail else name + ":latest"


def digest_for(name: str) -> str:
    """A stable fake sha256 for a model name, so restarts and copies agree."""
    return hashlib.sha256(("ollama-sim:" + name).encode()).hexdigest()


class Catalog:
    """Installed models by canonical name. Mutated only by pull/copy/create/delete."""

    def __init__(self, specs: list[ModelSpec]) -> None:
        self._models: dict[str, ModelSpec] = {spec.name: spec for spec in specs}

    def get(self, name: str) -> ModelSpec | None:
        return self._models.get(canonical(name))

    def __contains__(self, name: str) -> bool:
        return canonical(name) in self._models

    def all(self) -> list[ModelSpec]:
        """Newest first, as /api/tags lists them; ties by name so the order never flaps."""
        return sorted(self._models.values(), key=lambda s: (-s.modified_at, s.name))

    def add(self, spec: ModelSpec) -> None:
        self._models[spec.name] = spec

    def copy(self, source: str, destination: str, now: float) -> ModelSpec:
        """Same weights under a new name; KeyError if the source is unknown."""
        spec = self._models[canonical(source)]
        clone = replace(spec, name=canonical(destination), modified_at=now)
        self._models[clone.name] = clone
        return clone

    def delete(self, name: str) -> ModelSpec:
        """KeyError if unknown."""
        return self._models.pop(canonical(name))
