"""Parameters of each scoring term type, as written under `[policies.NAME.terms.TERM]`.

Points are added to a ticket's score; lower scores are served sooner.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from schemas.common import (
    Duration,
    NonNegativeInt,
    NonNegativePoints,
    Points,
    PositiveFloat,
    Strict,
)


class SwapTier(Strict, frozen=True):
    up_to_gb: PositiveFloat  # models up to this resident size (GiB) cost `points` to swap in
    points: Points


class VramParams(Strict, frozen=True):
    loaded: Points = 0  # the model is loaded or loading: the request runs without a swap
    fits: Points = 100  # not loaded, but fits beside the loaded models: a load, no eviction
    # The seed only gave the `fits` tier when some other model was already loaded.
    fits_when_empty: bool = True
    # "ollama": fits only if free VRAM suffices AND the loaded count is under max_loaded_models,
    # as Ollama decides. "vram_only": VRAM alone, as the seed did.
    fits_check: Literal["ollama", "vram_only"] = "ollama"
    # A model whose size nobody has reported yet. Never "small" by default: a never-seen 70B model
    # must not rank like a 3B one.
    unknown_size: Points = 600
    swap: list[SwapTier] = msgspec.field(
        default_factory=lambda: [
            SwapTier(up_to_gb=16, points=300),
            SwapTier(up_to_gb=40, points=400),
        ]
    )
    swap_above: Points = 800  # models larger than every tier


class FairnessParams(Strict, frozen=True):
    per_queued: Points = 5  # per waiting request of the same client, this one included
    per_recent: Points = 5  # per arrival of the same client within `window`, this one included
    window: Duration = "10m"
    cap: NonNegativePoints = 100


class AgingParams(Strict, frozen=True):
    per_second: NonNegativePoints = 1.0  # points taken off per second waited
    whole_seconds: bool = False  # count only whole seconds, as the seed did
    # After this wait the ticket goes before every ticket that has not waited as long.
    max_wait: Duration | None = None
    # Per request class, in place of max_wait: a batch job that may wait half an hour must not
    # jump ahead of people at a prompt after five minutes. Classes not listed use max_wait.
    max_wait_by_class: dict[str, Duration] = msgspec.field(default_factory=dict)


class FairShareParams(Strict, frozen=True):
    # Points per unit of service a client has had beyond the least-served waiting client.
    per_unit: NonNegativePoints = 0.05
    unit: Literal["tokens", "gpu_seconds"] = "tokens"  # what counts as service
    input_weight: NonNegativePoints = 1.0  # tokens: a prompt token costs this
    output_weight: NonNegativePoints = 2.0  # tokens: a generated token costs this
    half_life: Duration = "10m"  # service this long ago counts half
    cap: NonNegativePoints = 600.0  # the term never exceeds this


class SwapCostParams(Strict, frozen=True):
    # Points per second of GPU time a load would take: the model's own load, plus `evict_weight`
    # of the reload of each model it evicts (that work may come back).
    per_second: NonNegativePoints = 1.0
    evict_weight: NonNegativePoints = 0.5
    cap: NonNegativePoints = 600.0  # the term never exceeds this


class BackendLoadParams(Strict, frozen=True):
    # Points at a fully busy backend, scaled by its share of slots in use (half busy: half of
    # them). Positive spreads work over backends; negative packs it onto the busy ones.
    points: Points = 100.0


class ClassOffsetParams(Strict, frozen=True):
    offsets: dict[str, Points] = msgspec.field(default_factory=dict)  # class name -> points


class RatePenaltyParams(Strict, frozen=True):
    window: Duration = "1m"
    threshold: NonNegativeInt = 10  # arrivals within the window before the penalty starts
    per_request: Points = 20  # points per arrival beyond the threshold
    cap: NonNegativePoints = 500
