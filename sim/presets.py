"""Ready-made set-ups, written in the same TOML format an operator would use (docs/emulator.md)."""

from __future__ import annotations

PRESETS: dict[str, str] = {
    # A 24 GB card (RTX 4090 class): small models sit side by side, the 27B and 32B ones need the
    # whole card, so mixed traffic forces swaps.
    "workstation-24gb": """
[node]
vram_gb = 24
num_parallel = 2
max_loaded_models = 3
keep_alive = "5m"

[[models]]
name = "llama3.2:1b"
[[models]]
name = "llama3.2:3b"
[[models]]
name = "mistral:7b"
[[models]]
name = "llama3.1:8b"
[[models]]
name = "gemma3:12b"
[[models]]
name = "phi4:14b"
[[models]]
name = "gemma3:27b"
[[models]]
name = "qwq:32b"
[[models]]
name = "nomic-embed-text"
""",
    # An 80 GB card (A100/H100 class): the 70B model (~52 GB resident) leaves room for one
    # mid-size model beside it, so every other mix evicts it. Its operator sets
    # OLLAMA_CONTEXT_LENGTH=4096: left to choose by VRAM, Ollama would give every model a 128k
    # context here and the 70B would fill the card alone.
    "server-80gb": """
[node]
vram_gb = 80
context_length = 4096
num_parallel = 4
max_loaded_models = 3
keep_alive = "5m"

[[models]]
name = "llama3.3:70b"
[[models]]
name = "llama3.1:8b"
[[models]]
name = "gemma3:12b"
[[models]]
name = "phi4:14b"
[[models]]
name = "gemma3:27b"
[[models]]
name = "qwq:32b"
[[models]]
name = "nomic-embed-text"
""",
    # Tiny and fast to reason about in tests: 8 GB, two small models and an embedder.
    "tiny-8gb": """
[node]
vram_gb = 8
num_parallel = 1
max_loaded_models = 2
keep_alive = "5m"

[[models]]
name = "llama3.2:1b"
[[models]]
name = "llama3.2:3b"
[[models]]
name = "llama3.1:8b"
[[models]]
name = "nomic-embed-text"
""",
}

DEFAULT_PRESET = "workstation-24gb"
