"""Errors in the client's own dialect: an OpenAI error object on `/v1/*`, `{"error": "..."}` on the
native API and on the sidecar's own endpoints — the shapes Ollama itself uses, so a client's error
handling works the same whether the proxy or Ollama refused it."""

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


def is_openai(path: str) -> bool:
    return path == "/v1" or path.startswith("/v1/")


def error_body(path: str, status: int, message: str) -> bytes:
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


class ProxyError(Exception):
    """Raised anywhere on the request path; the app turns it into `error_response` for the path."""

    def __init__(self, status: int, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after
