"""Deterministic stand-ins for model output: the same request always gets the same words,
token counts and vectors, so tests can compare runs and a proxy can be checked byte for byte."""

from __future__ import annotations

import hashlib
import math
import random

_WORDS = ["the", "model", "scheduler", "keeps", "every", "request", "in", "order", "while", "the", "GPU", "loads", "weights", "from", "disk", "and", "streams", "tokens", "back", "to", "a", "patient", "client", "who", "waits", "for", "an", "answer", "about", "queues", "fairness", "memory", "latency", "throughput", "and", "the", "quiet", "cost", "of", "swapping", "one", "large", "model", "for", "another", "small", "one", "when", "nobody", "planned", "ahead", "so", "the", "proxy", "decides", "which", "request", "goes", "next"]


def seeded(*parts: object) -> random.Random:
    """A generator seeded from the request's identity (model, prompt, options.seed)."""
    digest = hashlib.sha256("\x00".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def count_tokens(text: str) -> int:
    """Roughly four characters per token, as for English text with a BPE tokenizer."""
    return max(1, math.ceil(len(text) / 4))


def plan_reply(rng: random.Random, num_predict: int | None) -> tuple[int, str]:
    """How many tokens to generate and why it stopped: a natural length, cut by num_predict."""
    natural = rng.randint(12, 120)
    if num_predict is not None and 0 <= num_predict < natural:
        return num_predict, "length"
    return natural, "stop"


def tokens(rng: random.Random, count: int) -> list[str]:
    """`count` text pieces, one per token; sentences end with a full stop now and then."""
    pieces: list[str] = []
    sentence_start = True
    for index in range(count):
        word = rng.choice(_WORDS)
        if sentence_start:
            word = word.capitalize()
        end = index == count - 1 or rng.random() < 0.08
        sentence_start = end
        pieces.append(("" if index == 0 else " ") + word + ("." if end else ""))
    return pieces


def embedding(model: str, text: str, dims: int) -> list[float]:
    """A unit vector that depends only on the model and the text."""
    rng = seeded("embed", model, text)
    vector = [rng.gauss(0.0, 1.0) for _ in range(dims)]
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


def context_ids(rng: random.Random, count: int) -> list[int]:
    """Token ids for /api/generate's `context` (prompt + reply), as Ollama returns them."""
    return [rng.randrange(1, 128_000) for _ in range(count)]
