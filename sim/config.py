"""The emulator's configuration file: decode (strict msgspec), validate, resolve into settings.

Errors name the file, the TOML path, the value and the rule, all at once, and never come out as a
traceback: `sim.toml: models[1].size_gb: "big": Expected `float`, got `str``.
"""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from schemas.common import NonNegativeFloat, PositiveFloat, PositiveInt, Strict
from schemas.model_name import is_cloud
from sim.catalog import GB, ModelSpec, canonical, digest_for
from sim.gotime import keep_alive_seconds
from sim.library import LIBRARY


class NodeConfig(Strict, frozen=True):
    """The GPU node and Ollama's scheduler environment variables."""

    vram_gb: PositiveFloat = 24.0
    num_parallel: PositiveInt = 1  # OLLAMA_NUM_PARALLEL
    max_loaded_models: PositiveInt = 3  # OLLAMA_MAX_LOADED_MODELS
    max_queue: PositiveInt = 512  # OLLAMA_MAX_QUEUE
    keep_alive: float | str = "5m"  # OLLAMA_KEEP_ALIVE: seconds or a Go duration
    page_cache_gb: NonNegativeFloat = 32.0  # host RAM that keeps recently read weights warm
    time_scale: NonNegativeFloat = 1.0
    # OLLAMA_CONTEXT_LENGTH: the context a request without num_ctx gets. Unset, Ollama picks it by
    # the GPU's VRAM (default_context below), so one tag is bigger on a bigger card.
    context_length: PositiveInt | None = None
    # Cloud models (names ending -cloud): the hosted service's answer time and its limit on
    # concurrent requests from this server, beyond which it answers 429.
    cloud_first_token_s: NonNegativeFloat = 0.4
    cloud_tokens_per_s: PositiveFloat = 80.0
    cloud_max_concurrent: PositiveInt = 8
    cloud_reachable: bool = True  # false: every cloud request gets Ollama's 502


class ModelConfig(Strict, frozen=True):
    """One installed model; fields left out come from the built-in library (sim/library.py)."""

    name: str
    size_gb: PositiveFloat | None = None
    parameter_size: str | None = None
    quantization: str | None = None
    family: str | None = None
    embedding_length: PositiveInt | None = None
    embedding: bool | None = None
    # resident_factor is the weights plus KV cache at this context; the cache grows linearly from it.
    context_length: PositiveInt = 4096
    resident_factor: Annotated[float, Meta(ge=1.0, le=3.0)] = 1.2


class SimFile(Strict, frozen=True):
    node: NodeConfig = NodeConfig()
    models: list[ModelConfig] = msgspec.field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the backend needs, resolved and checked."""

    vram: int
    num_parallel: int
    max_loaded_models: int
    max_queue: int
    keep_alive: float  # seconds, gotime.FOREVER for "never"
    page_cache: int
    time_scale: float
    models: tuple[ModelSpec, ...]
    cloud_first_token_s: float = 0.4
    cloud_tokens_per_s: float = 80.0
    cloud_max_concurrent: int = 8
    cloud_reachable: bool = True
    context_length: int | None = None  # OLLAMA_CONTEXT_LENGTH; None: Ollama's choice by VRAM

    def context_for(self, spec: ModelSpec) -> int:
        """The context a request that names no num_ctx runs with: the server's default, never more
        than the model was trained for (embedding models keep their own)."""
        if spec.embedding:
            return spec.context_length
        return min(self.context_length or default_context(self.vram), TRAINED_CONTEXT)

    def with_time_scale(self, scale: float) -> Settings:
        return dataclasses.replace(self, time_scale=scale)


GIB = 1 << 30
TRAINED_CONTEXT = 131_072  # what /api/show reports as a generation model's context_length


def default_context(vram: int) -> int:
    """Ollama's default context length by the GPU's memory: 4k for cards under 24 GiB, 32k from
    24 GiB, 256k from 48 GiB (then capped by the model's trained context). Ollama tests against
    23 and 47 GiB, so a card sold as 24 GB that reports a little less still counts as 24."""
    if vram >= 47 * GIB:
        return 262_144
    if vram >= 23 * GIB:
        return 32_768
    return 4096


class SimConfigError(Exception):
    """All problems of one file, one per line, each `file: path: value: rule`."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _show(value: Any) -> str:
    text = json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def _lookup(raw: Any, path: str) -> Any:
    """The raw value at a msgspec path such as `$.models[1].size_gb`, or None if absent."""
    node = raw
    for key, index in re.findall(r"\.([^.\[]+)|\[(\d+)\]", path):
        try:
            node = node[key] if key else node[int(index)]
        except (KeyError, IndexError, TypeError):
            return None
    return node


def decode(text: str, file: str) -> SimFile:
    """TOML text → SimFile, or SimConfigError naming the file, path and value."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SimConfigError([f"{file}: not valid TOML: {exc}"]) from None
    try:
        return msgspec.convert(raw, SimFile)
    except msgspec.ValidationError as exc:
        message, _, where = str(exc).partition(" - at `")
        path = where.rstrip("`") if where else "$"
        unknown = re.match(r"Object contains unknown field `(.+)`", message)
        if unknown:
            shown = (path + "." + unknown.group(1)).removeprefix("$.")
            raise SimConfigError([f"{file}: {shown}: unknown key"]) from None
        value = _lookup(raw, path)
        shown = path.removeprefix("$.").removeprefix("$")
        where_text = f"{shown}: " if shown else ""
        value_text = f"{_show(value)}: " if value is not None else ""
        raise SimConfigError([f"{file}: {where_text}{value_text}{message}"]) from None


def resolve(parsed: SimFile, file: str, now: float) -> Settings:
    """Cross-field rules and library defaults; every problem reported together."""
    problems: list[str] = []
    try:
        keep_alive = keep_alive_seconds(parsed.node.keep_alive, 300.0)
    except ValueError as exc:
        problems.append(f"{file}: node.keep_alive: {_show(parsed.node.keep_alive)}: {exc}")
        keep_alive = 300.0
    specs: list[ModelSpec] = []
    seen: set[str] = set()
    for index, model in enumerate(parsed.models):
        where = f"{file}: models[{index}]"
        name = canonical(model.name)
        if not re.fullmatch(r"[a-z0-9][a-z0-9._/-]*:[a-z0-9._-]+", name):
            problems.append(f"{where}.name: {_show(model.name)}: is not a model name like \"llama3.2:3b\"")
            continue
        if name in seen:
            problems.append(f"{where}.name: {_show(model.name)}: is listed twice")
            continue
        seen.add(name)
        known = LIBRARY.get(name)
        cloud = is_cloud(name)
        if known is None and not cloud and (model.size_gb is None or model.parameter_size is None):
            problems.append(
                f"{where}: {_show(model.name)}: is not in the built-in library, so give "
                "size_gb and parameter_size (known: " + ", ".join(sorted(LIBRARY)) + ")"
            )
            continue
        # Ollama lists a cloud model with a size of a few hundred bytes: a stub, not weights.
        size_gb = model.size_gb if model.size_gb is not None else (
            known.size_gb if known else 4e-7  # cloud: ~400 bytes
        )
        specs.append(
            ModelSpec(
                name=name,
                size=int(size_gb * GB),
                parameter_size=model.parameter_size or (known.parameter_size if known else ""),
                quantization=model.quantization or (known.quantization if known else "Q4_K_M"),
                family=model.family or (known.family if known else name.split(":")[0]),
                digest=digest_for(name),
                # Earlier entries read as newer, so /api/tags keeps the file's order.
                modified_at=now - index * 60.0,
                context_length=model.context_length,
                embedding_length=model.embedding_length or (known.embedding_length if known else 4096),
                embedding=model.embedding if model.embedding is not None else bool(known and known.embedding),
                resident_factor=model.resident_factor,
                cloud=cloud,
            )
        )
    if problems:
        raise SimConfigError(problems)
    node = parsed.node
    return Settings(
        vram=int(node.vram_gb * GB),
        num_parallel=node.num_parallel,
        max_loaded_models=node.max_loaded_models,
        max_queue=node.max_queue,
        keep_alive=keep_alive,
        page_cache=int(node.page_cache_gb * GB),
        time_scale=node.time_scale,
        cloud_first_token_s=node.cloud_first_token_s,
        cloud_tokens_per_s=node.cloud_tokens_per_s,
        cloud_max_concurrent=node.cloud_max_concurrent,
        cloud_reachable=node.cloud_reachable,
        context_length=node.context_length,
        models=tuple(specs),
    )


def load_text(text: str, file: str, now: float) -> Settings:
    return resolve(decode(text, file), file, now)
