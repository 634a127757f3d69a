"""Emulator-only counters (GET /sim/stats): what benchmarks measure, outside Ollama's namespace."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class ModelStats:
    loads: int = 0
    unloads: int = 0
    load_seconds: float = 0.0
    busy_seconds: float = 0.0  # time with at least one request generating
    requests: int = 0


@dataclass(slots=True)
class Stats:
    """Counters on the backend's clock (wall seconds under HTTP, already scaled by time_scale)."""

    loads: int = 0
    load_aborts: int = 0
    unloads: int = 0
    evictions: int = 0
    reloads: int = 0
    load_seconds: float = 0.0
    requests_served: int = 0
    requests_cancelled: int = 0
    queue_full_rejections: int = 0
    cloud_requests: int = 0  # forwarded to the hosted service (cloud models)
    cloud_rejections: int = 0  # refused with 429 past its concurrency limit
    peak_concurrency: int = 0
    peak_pending: int = 0
    per_model: dict[str, ModelStats] = field(default_factory=dict)

    def model(self, name: str) -> ModelStats:
        found = self.per_model.get(name)
        if found is None:
            found = self.per_model[name] = ModelStats()
        return found

    def as_json(self) -> dict[str, object]:
        return {
            "loads": self.loads,
            "load_aborts": self.load_aborts,
            "unloads": self.unloads,
            "evictions": self.evictions,
            "reloads": self.reloads,
            "load_seconds": round(self.load_seconds, 9),
            "requests_served": self.requests_served,
            "requests_cancelled": self.requests_cancelled,
            "queue_full_rejections": self.queue_full_rejections,
            "cloud_requests": self.cloud_requests,
            "cloud_rejections": self.cloud_rejections,
            "peak_concurrency": self.peak_concurrency,
            "peak_pending": self.peak_pending,
            "busy_seconds": {k: round(v.busy_seconds, 9) for k, v in sorted(self.per_model.items())},
            "models": {
                name: {
                    "loads": m.loads,
                    "unloads": m.unloads,
                    "load_seconds": round(m.load_seconds, 9),
                    "busy_seconds": round(m.busy_seconds, 9),
                    "requests": m.requests,
                }
                for name, m in sorted(self.per_model.items())
            },
        }
