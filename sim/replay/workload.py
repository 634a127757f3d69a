"""A trace made ready to replay: read (errors name file and line), token counts estimated where
the trace has none, every model matched to the simulated GPU's catalog.

Estimates, in order: the median of the same model's known counts in this trace; else of the same
endpoint's; else a default (200 prompt tokens; 250 output tokens, 0 for embeddings).
"""

from __future__ import annotations

import dataclasses
import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import msgspec

from policy.load import CompiledFile
from schemas.model_name import canonical_model as canonical
from schemas.trace import TraceRecord

DEFAULT_PROMPT_TOKENS = 200
DEFAULT_OUTPUT_TOKENS = 250


class TraceError(ValueError):
    """A trace that cannot be replayed; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class Request:
    index: int  # position in the trace: the request's id in a replay
    arrival: float
    client: str
    cls: str | None  # as the trace recorded it; None: the policy's rules classify it
    model: str  # canonical, as the sidecar names it (schemas/model_name.py)
    endpoint: str
    embed: bool
    prompt_tokens: int
    output_tokens: int
    num_ctx: int | None = None  # options.num_ctx as asked; None: the server's default context


@dataclass(frozen=True, slots=True)
class Workload:
    requests: tuple[Request, ...]
    skipped: int  # trace lines with no model (refused before a model was known)
    estimated: int  # requests with at least one estimated token count

    def models(self) -> set[str]:
        return {r.model for r in self.requests}


def read_trace(path: Path) -> list[TraceRecord]:
    decoder = msgspec.json.Decoder(TraceRecord)
    records: list[TraceRecord] = []
    try:
        with path.open("rb") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    records.append(decoder.decode(line))
                except msgspec.DecodeError as exc:
                    raise TraceError(f"{path}:{number}: not a trace record: {exc}") from None
    except OSError as exc:
        raise TraceError(f"{path}: cannot read the trace: {exc.strerror or exc}") from None
    if not records:
        raise TraceError(f"{path}: the trace holds no requests")
    return records


def is_embedding(endpoint: str) -> bool:
    return "embed" in endpoint


def prepare(records: Iterable[TraceRecord]) -> Workload:
    records = list(records)
    usable = [r for r in records if r.model]
    ordered = sorted(enumerate(usable), key=lambda ir: (ir[1].arrival, ir[0]))
    prompt_by: dict[str, list[int]] = defaultdict(list)
    output_by: dict[str, list[int]] = defaultdict(list)
    for _, r in ordered:
        for key in (f"m:{canonical(r.model or '')}", f"e:{r.endpoint}"):
            if r.prompt_tokens is not None:
                prompt_by[key].append(r.prompt_tokens)
            if r.output_tokens is not None:
                output_by[key].append(r.output_tokens)

    def estimate(known: dict[str, list[int]], model: str, endpoint: str, default: int) -> int:
        for key in (f"m:{model}", f"e:{endpoint}"):
            if known.get(key):
                return int(statistics.median(known[key]))
        return default

    requests = []
    estimated = 0
    for index, (_, r) in enumerate(ordered):
        model = canonical(r.model or "")
        embed = is_embedding(r.endpoint)
        prompt, output = r.prompt_tokens, r.output_tokens
        if prompt is None or output is None:
            estimated += 1
        if prompt is None:
            prompt = estimate(prompt_by, model, r.endpoint, DEFAULT_PROMPT_TOKENS)
        if output is None:
            output = 0 if embed else estimate(output_by, model, r.endpoint, DEFAULT_OUTPUT_TOKENS)
        requests.append(Request(index, r.arrival, r.client, r.request_class, model, r.endpoint,
                                embed, max(1, prompt), 0 if embed else output, r.num_ctx))
    return Workload(tuple(requests), len(records) - len(usable), estimated)


def classify(workload: Workload, compiled: CompiledFile) -> Workload:
    """Give every request a class: the trace's, else the policy file's rules (as the sidecar
    would have classified it; the class header is not in a trace)."""
    requests = tuple(
        r if r.cls else dataclasses.replace(r, cls=compiled.classify(r.client, r.model, r.endpoint, None))
        for r in workload.requests
    )
    return dataclasses.replace(workload, requests=requests)
