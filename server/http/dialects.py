"""Errors in the client's own dialect: Anthropic's `{"type": "error", "error": {...}}` on
`/v1/messages`, an OpenAI error object on the rest of `/v1/*`, `{"error": "..."}` on the native API
and on the sidecar's own endpoints — the shapes Ollama itself uses, so a client's error handling
works the same whether the proxy or Ollama refused it."""

from __future__ import annotations

import math
from collections.abc import Mapping

import msgspec
from starlette.responses import Response

# OpenAI's "type" per status, as Ollama's OpenAI layer maps them.
_OPENAI_TYPES = {
    400: "invalid_request_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


# Anthropic's error "type" per status (its Messages API documents these).
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}
ANTHROPIC_PATHS = ("/v1/messages",)
# Routes whose streams are Server-Sent Events with an `event:` line per event: a stream that
# breaks ends with an `error` event rather than a bare `data:` frame.
EVENT_STREAM_PATHS = ("/v1/messages", "/v1/responses")


def is_anthropic(path: str) -> bool:
    return path in ANTHROPIC_PATHS


def is_openai(path: str) -> bool:
    return (path == "/v1" or path.startswith("/v1/")) and not is_anthropic(path)


def error_body(path: str, status: int, message: str) -> bytes:
    if is_anthropic(path):
        kind = _ANTHROPIC_TYPES.get(status, "api_error")
        return msgspec.json.encode({"type": "error", "error": {"type": kind, "message": message}})
    if is_openai(path):
        obj = {
            "error": {
                "message": message,
                "type": _OPENAI_TYPES.get(status, "api_error"),
                "param": None,
                "code": None,
            }
        }
        return msgspec.json.encode(obj)
    return msgspec.json.encode({"error": message})


def error_response(
    path: str,
    status: int,
    message: str,
    *,
    retry_after: float | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """A JSON error. `retry_after` (seconds) becomes a whole-second `Retry-After`, at least 1."""
    out = dict(headers or {})
    if retry_after is not None:
        out["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return Response(
        error_body(path, status, message),
        status_code=status,
        headers=out,
        media_type="application/json",
    )


def stream_error(path: str, message: str, *, tail: bytes = b"\n\n") -> bytes:
    """The last bytes of an answer that broke after it began, in its stream's framing, as Ollama
    ends a broken stream: an error line (native NDJSON), a `data:` frame (OpenAI chat), or an
    `error` event (the Messages and Responses APIs). `tail`: the last bytes already sent, so the
    error starts on a line of its own (NDJSON) or after a blank line ending the cut event (SSE)."""
    if is_openai(path) or is_anthropic(path):
        lead = b"" if tail.endswith(b"\n\n") else b"\n" if tail.endswith(b"\n") else b"\n\n"
    else:
        lead = b"" if tail.endswith(b"\n") else b"\n"
    if path in EVENT_STREAM_PATHS:
        if is_anthropic(path):
            body = error_body(path, 500, message)
        else:
            body = msgspec.json.encode(
                {"type": "error", "code": "server_error", "message": message, "param": None}
            )
        return lead + b"event: error\ndata: " + body + b"\n\n"
    body = error_body(path, 500, message)
    return lead + (b"data: " + body + b"\n\n" if is_openai(path) else body + b"\n")


def ollama_message(body: bytes) -> str | None:
    """The message of an error body in any of the dialects above; None if it is not one."""
    try:
        obj = msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):
        return None
    error = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(error, str):
        return error
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    return None


class ProxyError(Exception):
    """Raised anywhere on the request path; the app turns it into `error_response` for the path."""

    def __init__(self, status: int, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after
