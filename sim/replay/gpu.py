"""The simulated GPU of a replay: a built-in emulator preset, a sim TOML file, or — with neither —
the smallest built-in preset whose catalog holds every model of the trace; then the operator's
overrides ("would a 48 GB card or num_parallel = 4 fix this?")."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from schemas.model_name import canonical_model
from sim.catalog import GB
from sim.config import TRAINED_CONTEXT, Settings, SimConfigError, default_context, load_text
from sim.presets import PRESETS


@dataclasses.dataclass(frozen=True, slots=True)
class Gpu:
    name: str  # the preset's name or the file's path
    settings: Settings  # time scale 1: the replay's clock is virtual anyway

    def as_json(self) -> dict[str, object]:
        s = self.settings
        return {
            "source": self.name, "vram_gb": round(s.vram / GB, 3), "num_parallel": s.num_parallel,
            "max_loaded_models": s.max_loaded_models, "max_queue": s.max_queue,
            "keep_alive_s": s.keep_alive, "context_length": min(s.context_length or default_context(s.vram), TRAINED_CONTEXT),
            "models": [m.name for m in s.models],
        }


def missing_models(models: set[str], settings: Settings) -> list[str]:
    """The trace's models (canonical, as the sidecar names them) this GPU does not have."""
    return sorted(models - {canonical_model(m.name) for m in settings.models})


def _preset(name: str) -> Settings:
    return load_text(PRESETS[name], f"preset {name}", 0.0)


def choose(
    models: set[str], *, preset: str | None, config: Path | None, vram_gb: float | None = None,
    num_parallel: int | None = None, max_loaded: int | None = None, context_length: int | None = None,
) -> Gpu:
    """SimConfigError (one line per problem) when the file is bad or models are missing."""
    if config is not None:
        try:
            text = config.read_text(encoding="utf-8")
        except OSError as exc:
            raise SimConfigError([f"{config}: cannot read: {exc.strerror}"]) from None
        except UnicodeDecodeError as exc:
            raise SimConfigError([f"{config}: not UTF-8 text ({exc.reason})"]) from None
        name, settings = str(config), load_text(text, str(config), time.time())
    elif preset is not None:
        name, settings = preset, _preset(preset)
    else:
        presets = {n: _preset(n) for n in sorted(PRESETS)}
        fitting = [(s.vram, n) for n, s in presets.items() if not missing_models(models, s)]
        if not fitting:
            raise SimConfigError([
                "no built-in GPU preset has every model of the trace (" + ", ".join(sorted(models))
                + "); describe the GPU and its models with --sim-config (docs/emulator.md)"
            ])
        name = min(fitting)[1]
        settings = _preset(name)
    missing = missing_models(models, settings)
    if missing:
        raise SimConfigError([f"{name}: the trace asks for models this GPU does not have: "
                              + ", ".join(missing) + " (add them under [[models]] in a --sim-config file)"])
    changes: dict[str, object] = {"time_scale": 1.0}
    if vram_gb is not None:
        changes["vram"] = int(vram_gb * GB)
    if num_parallel is not None:
        changes["num_parallel"] = num_parallel
    if max_loaded is not None:
        changes["max_loaded_models"] = max_loaded
    if context_length is not None:
        changes["context_length"] = context_length
    return Gpu(name, dataclasses.replace(settings, **changes))  # type: ignore[arg-type]
