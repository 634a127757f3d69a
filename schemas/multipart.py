"""The one thing the sidecar and the emulator read from a `multipart/form-data` body: a text
field (the `model` of an audio transcription). A scan over bytes already in memory — no parser
that spools file parts to disk on the event loop, and nothing decoded but the field asked for."""

from __future__ import annotations

import re

_BOUNDARY = re.compile(r'boundary="?([^";]{1,200})"?', re.IGNORECASE)
MAX_FIELD = 1024  # a form field longer than this is not a model name
MAX_HEADERS = 8192  # bytes of one part's header block; more is not a form a client would send


class FormError(ValueError):
    """The body is not the multipart form its Content-Type says."""


def boundary_of(content_type: str) -> bytes:
    if not content_type.lower().startswith("multipart/form-data"):
        raise FormError("expected a multipart/form-data body")
    match = _BOUNDARY.search(content_type)
    if match is None:
        raise FormError("multipart/form-data without a boundary")
    return match.group(1).encode("latin-1")


def _part_name(body: bytes, start: int, end: int) -> bytes | None:
    """The `name` parameter of the Content-Disposition among the part's headers, read line by
    line (no backtracking pattern: a hostile header costs time linear in its length)."""
    if end - start > MAX_HEADERS:
        raise FormError(f"a multipart part's headers are longer than {MAX_HEADERS} bytes")
    for line in body[start:end].split(b"\r\n"):
        key, sep, value = line.partition(b":")
        if not sep or key.strip().lower() != b"content-disposition":
            continue
        for param in value.split(b";")[1:]:
            pkey, psep, pvalue = param.strip().partition(b"=")
            if psep and pkey.strip().lower() == b"name":
                return pvalue.strip().strip(b'"')
    return None


def form_field(body: bytes, content_type: str, name: str) -> str | None:
    """The text of field `name` (the first one), None when the form has no such field."""
    delimiter = b"--" + boundary_of(content_type)
    start = body.find(delimiter)
    if start < 0:
        raise FormError("the body does not contain its multipart boundary")
    wanted = name.encode()
    while True:
        start += len(delimiter)
        if body[start:start + 2] == b"--":
            return None  # the closing delimiter
        end = body.find(b"\r\n" + delimiter, start)
        if end < 0:
            raise FormError("the multipart body ends before its closing boundary")
        head_end = body.find(b"\r\n\r\n", start, end)
        if head_end < 0:
            raise FormError("a multipart part has no header block")
        if _part_name(body, start, head_end) == wanted:
            value = body[head_end + 4:end]
            if len(value) > MAX_FIELD:
                raise FormError(f"the form field {name!r} is longer than {MAX_FIELD} bytes")
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError:
                raise FormError(f"the form field {name!r} is not UTF-8") from None
        start = end + 2


def part_size(body: bytes, content_type: str, name: str) -> int | None:
    """The size in bytes of part `name` (a file's length), None when there is none."""
    delimiter = b"--" + boundary_of(content_type)
    start = body.find(delimiter)
    wanted = name.encode()
    while start >= 0:
        start += len(delimiter)
        if body[start:start + 2] == b"--":
            return None
        end = body.find(b"\r\n" + delimiter, start)
        head_end = body.find(b"\r\n\r\n", start, end)
        if end < 0 or head_end < 0:
            return None
        if _part_name(body, start, head_end) == wanted:
            return end - head_end - 4
        start = end + 2
    return None
