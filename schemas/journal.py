"""The request journal's record: one per request that reached the sidecar, whatever its fate.

A record may be handed to the journal more than once as its request progresses; the journal stamps
each hand-off with a `revision` and the database keeps the highest, so a late replay of an older
copy (from the fallback file) can never overwrite a newer state.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from schemas.common import Strict
from schemas.policy_file import BACKEND_NAME

# How the request ended. A server that journals a request before it ends uses its expected state
# and submits again at the end; the later revision wins. `interrupted`: the sidecar process died
# (kill -9, a crash) before the request ended; written at admission, recovered at the next start.
Status = Literal["completed", "failed", "cancelled", "rejected", "interrupted"]
STATUSES: tuple[str, ...] = ("completed", "failed", "cancelled", "rejected", "interrupted")

# Seconds since the Unix epoch, UTC, as time.time() gives them.
Epoch = Annotated[float, Meta(ge=0)]
Millis = Annotated[float, Meta(ge=0)]
Count = Annotated[int, Meta(ge=0)]
# A sidecar's name on its records (`--instance`): a host or pod name fits.
INSTANCE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}\Z"  # \Z: no trailing newline
Instance = Annotated[str, Meta(pattern=INSTANCE_PATTERN)]
# The Ollama server of the policy's backends that served it: the policy's own name rule, anchored
# so a query-string filter cannot carry a trailing newline past it.
BACKEND_PATTERN = rf"^{BACKEND_NAME}\Z"
ServingBackend = Annotated[str, Meta(pattern=BACKEND_PATTERN)]


class JournalRecord(Strict, frozen=True):
    """Everything the sidecar knows about one request. Optional fields are None when not reached."""

    # The journal's key: unique per request, chosen by the sidecar. A client may send its own
    # X-Request-Id (kept in `client_request_id`), but clients reuse ids, and a reused id must
    # never overwrite another request's record.
    request_id: Annotated[str, Meta(min_length=1, max_length=200)]
    client: str
    endpoint: str
    received_at: Epoch
    status: Status
    ip: str | None = None
    model: str | None = None
    # `class` is a Python keyword; the JSON (and fallback file) spelling stays "class".
    request_class: str | None = msgspec.field(default=None, name="class")
    policy_name: str | None = None
    policy_version: str | None = None
    dispatched_at: Epoch | None = None
    first_byte_at: Epoch | None = None
    completed_at: Epoch | None = None
    # Filled from the timestamps by the journal when the server leaves them out.
    queue_wait_ms: Millis | None = None
    duration_ms: Millis | None = None
    http_status: Annotated[int, Meta(ge=100, le=599)] | None = None
    error: str | None = None
    # Score at dispatch (lower ran sooner) and what each policy term contributed to it.
    score: float | None = None
    score_terms: dict[str, float] = msgspec.field(default_factory=dict)
    rank: Count | None = None
    queue_depth: Count | None = None
    # Was the model already loaded when this request was dispatched? None: not dispatched/unknown.
    resident: bool | None = None
    # Ollama's counters from the final chunk (durations in nanoseconds, as Ollama reports them).
    prompt_eval_count: Count | None = None
    eval_count: Count | None = None
    total_duration: Count | None = None
    load_duration: Count | None = None
    prompt_eval_duration: Count | None = None
    eval_duration: Count | None = None
    # The `options.num_ctx` the client asked for (None: the model's default), and, when num_ctx
    # normalisation sent the request to a loaded runner instead of a reload, the num_ctx it was
    # forwarded with (None: forwarded as asked).
    num_ctx: Count | None = None
    num_ctx_forwarded: Count | None = None
    # Per `journal.store_prompts`: the text, "sha256:<hex>" of the text, or None.
    prompt: str | None = None
    response: str | None = None
    # Set by the journal on every hand-off (monotonic nanoseconds-since-epoch); higher wins.
    revision: Count = 0
    # The X-Request-Id the client sent, when the sidecar kept it (what the client knows its
    # request by); None when the sidecar chose the id, which is then `request_id` itself.
    client_request_id: str | None = None
    # The sidecar that wrote it (`--instance`, default the host name): several sidecars may share
    # one PostgreSQL journal, and analytics filter or group by it.
    instance: Instance | None = None
    # The Ollama server it was dispatched to (`[backends.NAME]`; "default" for a `[backend]`
    # file): one sidecar may feed several, and analytics filter or group by it. None: never sent
    # to one (rejected, cancelled while queued, passed through, a cloud model) or written before
    # the column existed.
    backend: ServingBackend | None = None


__all__ = ["BACKEND_PATTERN", "STATUSES", "JournalRecord", "Status"]
