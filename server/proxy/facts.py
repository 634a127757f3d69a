"""What the journal learns about one request: a builder filled in along the request path, and a
tap that reads Ollama's counters (and, if the policy stores them, the generated text) from the
answer as it streams past — without holding the stream up or keeping more than its tail."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec

from engine.grants import Grant
from schemas.journal import JournalRecord, Status

_COUNTERS = (
    "prompt_eval_count",
    "eval_count",
    "total_duration",
    "load_duration",
    "prompt_eval_duration",
    "eval_duration",
)
_TAIL_BYTES = 64 * 1024  # the final chunk of any real answer fits in this
_TEXT_LIMIT = 1024 * 1024  # stored response text is cut here
INTERRUPTED = "the sidecar stopped (killed or crashed) before the request ended"


@dataclass(slots=True)
class RequestFacts:
    request_id: str  # what the client knows the request by (X-Request-Id)
    endpoint: str
    received_at: float  # epoch seconds
    client: str = "unknown"
    ip: str | None = None
    model: str | None = None
    cls: str | None = None
    policy_name: str | None = None
    policy_version: str | None = None
    dispatched_at: float | None = None
    queue_wait_ms: float | None = None  # measured once, on the scheduler's clock
    first_byte_at: float | None = None
    score: float | None = None
    score_terms: dict[str, float] = field(default_factory=dict)
    queue_depth: int | None = None
    resident: bool | None = None
    num_ctx: int | None = None  # options.num_ctx as the client asked
    num_ctx_forwarded: int | None = None  # set when normalisation rewrote it
    prompt: str | None = None
    counters: dict[str, int] = field(default_factory=dict)
    response: str | None = None
    journal_id: str | None = None  # the journal's unique key; None: request_id is unique
    backend: str | None = None  # the backend it was sent to (the last, if it was sent again)

    def granted(self, grant: Grant) -> list[tuple[bytes, bytes]]:
        """What its dispatch decided (the wait on the scheduler's clock, the one that ordered the
        queue), and the response headers that say so."""
        wait_ms = max(0.0, (grant.granted_at - grant.ticket.arrival) * 1000)
        self.queue_wait_ms = wait_ms
        self.dispatched_at = self.received_at + wait_ms / 1000
        self.policy_name, self.policy_version = grant.policy_name, grant.policy_version
        self.score, self.score_terms = grant.score.total, grant.score.breakdown()
        self.queue_depth, self.resident = grant.queue_depth, grant.resident
        return [
            (b"x-queue-wait-ms", f"{wait_ms:.0f}".encode()),
            (b"x-dispatch-score", f"{grant.score.total:g}".encode()),
            (b"x-dispatch-policy", f"{grant.policy_name}@{grant.policy_version}".encode()),
        ]

    def ungranted(self) -> None:
        """Its grant came to nothing (the backend refused the connection): it waits again, and a
        timeout now is a wait in the queue, not a dispatch."""
        self.backend = self.dispatched_at = self.queue_wait_ms = self.score = None
        self.queue_depth = self.resident = self.num_ctx_forwarded = None
        self.score_terms = {}

    def admission(self) -> JournalRecord:
        """The record a crash would leave: written as the request is accepted, at revision 0, so
        the request's real record (a wall-clock revision) always replaces it. No prompt: nothing
        the policy's store_prompts setting has not decided on reaches the disk."""
        own = self.journal_id or self.request_id
        return JournalRecord(
            request_id=own,
            client_request_id=self.request_id if own != self.request_id else None,
            client=self.client, endpoint=self.endpoint, received_at=self.received_at,
            status="interrupted", ip=self.ip, model=self.model, request_class=self.cls, num_ctx=self.num_ctx,
            policy_name=self.policy_name, policy_version=self.policy_version,
            error=INTERRUPTED, revision=0,
        )

    def finish(self, status: Status, http_status: int | None, error: str | None) -> JournalRecord:
        done = time.time()
        counters: dict[str, Any] = self.counters  # Ollama's counter names, all int fields
        own = self.journal_id or self.request_id
        return JournalRecord(
            request_id=own,
            client_request_id=self.request_id if own != self.request_id else None,
            client=self.client,
            endpoint=self.endpoint,
            received_at=self.received_at,
            status=status,
            ip=self.ip,
            model=self.model,
            request_class=self.cls,
            policy_name=self.policy_name,
            policy_version=self.policy_version,
            dispatched_at=self.dispatched_at,
            first_byte_at=self.first_byte_at,
            completed_at=done,
            queue_wait_ms=self.queue_wait_ms,
            duration_ms=max(0.0, (done - self.received_at) * 1000),
            http_status=http_status,
            error=error,
            score=self.score,
            score_terms=self.score_terms,
            queue_depth=self.queue_depth,
            resident=self.resident,
            num_ctx=self.num_ctx,
            num_ctx_forwarded=self.num_ctx_forwarded,
            prompt=self.prompt,
            response=self.response,
            backend=self.backend,
            **counters,
        )


class StreamTap:
    """Fed every chunk of the answer; reads the counters from the last complete JSON line."""

    def __init__(self, *, keep_text: bool) -> None:
        self._tail: deque[bytes] = deque()
        self._tail_len = 0
        # The stream's first bytes: Anthropic's input_tokens come in its first event only, long
        # gone from the tail after a long answer.
        self._head: list[bytes] = []
        self._head_len = 0
        self._keep_text = keep_text
        self._text: list[bytes] = []
        self._text_len = 0

    def __call__(self, chunk: bytes) -> None:
        if self._head_len < _HEAD_BYTES:
            self._head.append(chunk[: _HEAD_BYTES - self._head_len])
            self._head_len += len(self._head[-1])
        self._tail.append(chunk)
        self._tail_len += len(chunk)
        while self._tail_len - len(self._tail[0]) >= _TAIL_BYTES:
            self._tail_len -= len(self._tail.popleft())
        if self._keep_text and self._text_len < _TEXT_LIMIT:
            self._text.append(chunk)
            self._text_len += len(chunk)

    @staticmethod
    def _decode(line: bytes) -> dict[str, Any] | None:
        line = line.strip()
        if line.startswith(b"data:"):
            line = line[5:].strip()
        if not line.startswith(b"{"):
            return None
        try:
            obj = msgspec.json.decode(line)
        except (msgspec.DecodeError, RecursionError):  # not a counters chunk; the bytes still go out
            return None
        return obj if isinstance(obj, dict) else None

    def _objects(self, data: bytes) -> list[dict[str, Any]]:
        return [obj for line in data.split(b"\n") if (obj := self._decode(line)) is not None]

    def _last_objects(self, data: bytes) -> Iterator[dict[str, Any]]:
        """JSON objects from the last line backwards: the counters are in the last few."""
        for line in reversed(data.split(b"\n")):
            obj = self._decode(line)
            if obj is not None:
                yield obj

    def counters(self) -> dict[str, int]:
        """Ollama's native counters, or a usage block mapped onto them: OpenAI's
        (`prompt_tokens`, `completion_tokens`), the Responses and Messages APIs'
        (`input_tokens`, `output_tokens`, possibly inside `response` or `message`). Read from the
        end; a stream that reports the two counts in different events (Anthropic's
        `message_start` and `message_delta`) gives each from the latest event that has it."""
        found: dict[str, int] = {}
        for obj in self._last_objects(b"".join(self._tail)):
            native = {k: v for k in _COUNTERS if isinstance(v := obj.get(k), int) and v >= 0}
            if native:
                return native | found
            for usage in _usages(obj):
                for ours, names in _USAGE_NAMES:
                    value = next((usage[n] for n in names if isinstance(usage.get(n), int)), None)
                    if value is not None and value >= 0:
                        found.setdefault(ours, value)
            if len(found) == len(_USAGE_NAMES):
                return found
        if found and "prompt_eval_count" not in found:  # an Anthropic stream's message_start
            for obj in self._objects(b"".join(self._head)):
                for usage in _usages(obj):
                    if isinstance(value := usage.get("input_tokens"), int) and value >= 0:
                        found["prompt_eval_count"] = value
                        return found
        return found

    def finish_reason(self) -> str | None:
        """Why the answer ended, as its last chunks say: Ollama's `done_reason`, OpenAI's
        `finish_reason`, Anthropic's `stop_reason`, the Responses API's `status`."""
        for obj in self._last_objects(b"".join(self._tail)):
            for holder in (obj, obj.get("delta"), obj.get("response"), *(obj.get("choices") or ())):
                if not isinstance(holder, dict):
                    continue
                for key in ("done_reason", "finish_reason", "stop_reason"):
                    if isinstance(reason := holder.get(key), str):
                        return reason
                if holder.get("object") == "response" and isinstance(holder.get("status"), str):
                    return str(holder["status"])
        return None

    def text(self) -> str | None:
        """The generated text, joined from every chunk (native or OpenAI, streamed or not)."""
        if not self._keep_text:
            return None
        parts: list[str] = []
        for obj in self._objects(b"".join(self._text)):
            parts.append(_piece(obj))
        return "".join(parts)


_HEAD_BYTES = 8192

_USAGE_NAMES = (
    ("prompt_eval_count", ("prompt_tokens", "input_tokens")),
    ("eval_count", ("completion_tokens", "output_tokens")),
)


def _usages(obj: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for holder in (obj, obj.get("response"), obj.get("message")):
        if isinstance(holder, dict) and isinstance(usage := holder.get("usage"), dict):
            yield usage


def _blocks(content: Any) -> str:
    """Text of a list of content blocks (Anthropic's `text`, the Responses API's `output_text`)."""
    if not isinstance(content, list):
        return ""
    return "".join(b["text"] for b in content if isinstance(b, dict) and isinstance(b.get("text"), str))


def _piece(obj: dict[str, Any]) -> str:
    kind = obj.get("type")
    if kind == "response.output_text.delta" and isinstance(obj.get("delta"), str):
        return str(obj["delta"])  # the Responses API, streamed
    if kind == "content_block_delta" and isinstance(delta := obj.get("delta"), dict):
        return str(delta.get("text") or "")  # the Messages API, streamed
    if isinstance(kind, str) and kind.startswith(("response.", "message_", "content_block_")):
        return ""  # the other stream events repeat text already counted (or carry none)
    if kind == "message" and isinstance(obj.get("content"), list):
        return _blocks(obj["content"])  # the Messages API, whole
    if obj.get("object") == "response" and isinstance(obj.get("output"), list):
        return "".join(_blocks(item.get("content")) for item in obj["output"] if isinstance(item, dict))
    if isinstance(obj.get("text"), str) and "choices" not in obj:
        return str(obj["text"])  # an audio transcription
    if isinstance(obj.get("response"), str):
        return str(obj["response"])
    message = obj.get("message")
    if isinstance(message, dict) and isinstance(message.get("content"), str):
        return str(message["content"])
    out = []
    for choice in obj.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        holder = choice.get("delta") or choice.get("message") or {}
        if isinstance(holder, dict) and isinstance(holder.get("content"), str):
            out.append(holder["content"])
        elif isinstance(choice.get("text"), str):
            out.append(choice["text"])
    return "".join(out)


def prompt_text(body: Any) -> str | None:
    """The prompt as text for the journal: prompt, messages' contents, or embedding input."""
    if not isinstance(body, dict):
        return None
    for key in ("prompt", "input"):
        value = body.get(key)
        if isinstance(value, str):
            return value
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return "\n".join(value)
    messages = body.get("messages")
    if isinstance(messages, list):
        return "\n".join(
            str(m.get("content")) for m in messages if isinstance(m, dict) and m.get("content")
        )
    return None
