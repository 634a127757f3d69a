"""The stream tap reads Ollama's final-chunk counters without ever failing the request."""

import pytest

from server.proxy.facts import StreamTap


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b'{"done": true, "eval_count": 5}\n', {"done": True, "eval_count": 5}),
        (b'data: {"usage": {"total_tokens": 3}}\n', {"usage": {"total_tokens": 3}}),
        (b"data: [DONE]\n", None),
        (b"{not json", None),
        (b"[1, 2]", None),
        (b'{"a":' * 3000 + b"1" + b"}" * 3000, None),  # nested past the decoder's depth
    ],
)
def test_decode_takes_objects_and_passes_over_anything_else(line, expected):
    """Counters come from JSON objects; other lines (and absurdly nested ones) are skipped."""
    assert StreamTap._decode(line) == expected
