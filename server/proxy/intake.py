"""Intake of a scheduled request: decode what scheduling needs, check the policy's limits, and
hand the exchange one `Admission` — everything decided under a single policy snapshot.

The body is read and decoded once. Fields the journal may store (the prompt) are kept as raw
JSON and decoded only if the policy stores prompts at all.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import msgspec

from engine.admission import Refusal, admit
from engine.eta import ServiceTimes
from policy.load import CompiledFile
from schemas.multipart import FormError, form_field
from server.http.dialects import ProxyError
from server.proxy.facts import RequestFacts, prompt_text
from server.runtime.dispatcher import Dispatcher, Shed

_NOTHING = msgspec.Raw(b"")


class ScheduledBody(msgspec.Struct):
    """Only what scheduling needs; every other field stays in the raw bytes, forwarded as sent."""

    model: str = ""
    stream: bool | None = None
    options: dict[str, Any] | None = None
    keep_alive: float | str | None = None
    # For the journal, and only when it stores prompts: left undecoded until then.
    prompt: msgspec.Raw = _NOTHING
    input: msgspec.Raw = _NOTHING
    messages: msgspec.Raw = _NOTHING

    def prompt_text(self) -> str | None:
        """The prompt as text for the journal. A part the sidecar cannot read (a number beyond
        float range, nesting too deep) is Ollama's to judge, not a reason to refuse: None."""
        parts: dict[str, Any] = {}
        for name in ("prompt", "input", "messages"):
            raw = getattr(self, name)
            if len(raw):
                with contextlib.suppress(msgspec.DecodeError, RecursionError):
                    parts[name] = msgspec.json.decode(raw)
        return prompt_text(parts)


_decoder = msgspec.json.Decoder(ScheduledBody)


@dataclass(frozen=True, slots=True)
class Scheduling:
    model: str
    client: str
    cls: str
    variant: str = ""  # options that force Ollama to reload the model (engine.residency)


@dataclass(frozen=True, slots=True)
class Admission:
    """A request the sidecar has accepted, with the one policy snapshot it is served under."""

    compiled: CompiledFile
    facts: RequestFacts
    scheduling: Scheduling | None  # None: a pass-through (no queue)
    keep_text: bool  # the journal stores prompts and answers (hashed or whole)
    streamed: bool = False  # the body asked for a stream ("stream": true)


def parse_scheduled(body: bytes) -> ScheduledBody:
    if not body.strip():
        raise ProxyError(400, "missing request body")
    try:
        parsed = _decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise ProxyError(400, f"invalid request body: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ProxyError(400, f"invalid JSON in request body: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ProxyError(400, f"invalid request body: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except RecursionError:  # msgspec's guard against a stack overflow: a client's input, not ours
        raise ProxyError(400, "invalid JSON in request body: nested too deeply") from None
    if not parsed.model.strip():
        raise ProxyError(400, "model is required")
    return parsed


# Only the top level and `options` are decoded; every other value is kept as the client's bytes
# (a number beyond a double's range, a long decimal, a 16 MB image stay exactly as sent).
_OBJECT = msgspec.json.Decoder(dict[str, msgspec.Raw])


def with_num_ctx(body: bytes | AsyncIterator[bytes], num_ctx: int) -> bytes | None:
    """The JSON body with `options.num_ctx` set to `num_ctx`, everything else as the client sent it
    (num_ctx normalisation); None when it cannot be rewritten (not a JSON body held whole), and
    the request then goes as sent."""
    if not isinstance(body, bytes):
        return None
    try:
        top = _OBJECT.decode(body)
        options = _OBJECT.decode(top["options"])
    except (msgspec.DecodeError, KeyError):  # ValidationError is a DecodeError
        return None
    options["num_ctx"] = msgspec.Raw(b"%d" % num_ctx)
    top["options"] = msgspec.Raw(msgspec.json.encode(options))
    return msgspec.json.encode(top)


def parse_form(body: bytes, content_type: str) -> ScheduledBody:
    """A multipart form (an audio transcription): its `model` field is all scheduling needs; the
    audio is forwarded as sent and never decoded (or journaled)."""
    try:
        model = form_field(body, content_type, "model")
    except FormError as exc:
        raise ProxyError(400, f"invalid request body: {exc}") from None
    if not model or not model.strip():
        raise ProxyError(400, "model is required (a form field)")
    return ScheduledBody(model=model)


def id_in_use(request_id: str) -> ProxyError:
    """A request whose X-Request-Id another one, waiting or running, already has."""
    return ProxyError(400, f"X-Request-Id {request_id!r} is already used by a request in progress")


def check_limits(
    compiled: CompiledFile, dispatcher: Dispatcher, times: ServiceTimes, client: str, cls: str,
    model: str, *, stopping: bool, request_id: str = "",
) -> None:
    """The policy's limits (engine/admission.py): no room or no time -> 503 + Retry-After;
    per-client cap and hard rate windows -> 429. When the queue is full, the newest waiting
    request of a less urgent class may be shed (answered 503 now) for this one."""
    if stopping:
        raise ProxyError(503, "the proxy is shutting down", retry_after=5)
    scheduler = dispatcher.scheduler
    decided = admit(compiled, scheduler, client, cls,
                    times.mean() if times.measured else None, model, times.gap(),
                    times.arrival_rates(time.monotonic()), times.mean, times.gap_slot())
    if isinstance(decided, Refusal):
        raise ProxyError(decided.status, decided.message, retry_after=decided.retry_after)
    if decided.shed is not None:
        if request_id and dispatcher.known(request_id):
            # The exchange will refuse it (its id is in use): nobody gives up a place for that.
            raise id_in_use(request_id)
        shed = Shed(f"server busy, please try again. the queue is full and a more urgent {cls!r} "
                    "request took this one's place", retry_after=30)
        if not dispatcher.remove(decided.shed, shed):  # it left or was granted meanwhile
            raise ProxyError(503, "server busy, please try again. the proxy's queue is full",
                             retry_after=10)
    if not scheduler.is_cloud(model):  # admitted to the local queue: the rates the drain reads
        times.arrived(cls, time.monotonic())
