"""What `ollama pull` can fetch in the emulator: real models with the figures from ollama.md."""

from __future__ import annotations

from typing import NamedTuple


class LibraryEntry(NamedTuple):
    size_gb: float
    parameter_size: str
    quantization: str
    family: str
    embedding_length: int
    embedding: bool = False


# Sizes on disk as `ollama list` shows them (docs/ollama.md). Aliases such as
# "llama3.2:latest" are separate entries because Ollama treats them as separate names.
LIBRARY: dict[str, LibraryEntry] = {
    "llama3.2:1b": LibraryEntry(1.3, "1.2B", "Q8_0", "llama", 2048),
    "llama3.2:3b": LibraryEntry(2.0, "3.2B", "Q4_K_M", "llama", 3072),
    "llama3.2:latest": LibraryEntry(2.0, "3.2B", "Q4_K_M", "llama", 3072),
    "mistral:7b": LibraryEntry(4.1, "7.2B", "Q4_0", "llama", 4096),
    "mistral:latest": LibraryEntry(4.1, "7.2B", "Q4_0", "llama", 4096),
    "llama3.1:8b": LibraryEntry(4.9, "8.0B", "Q4_K_M", "llama", 4096),
    "gemma3:12b": LibraryEntry(8.1, "12.2B", "Q4_K_M", "gemma3", 3840),
    # A vision model: Ollama serves it one request at a time (sim/catalog.py).
    "llama3.2-vision:11b": LibraryEntry(7.8, "10.7B", "Q4_K_M", "mllama", 4096),
    "phi4:14b": LibraryEntry(9.1, "14.7B", "Q4_K_M", "phi3", 5120),
    "gemma3:27b": LibraryEntry(17.0, "27.4B", "Q4_K_M", "gemma3", 5376),
    "qwq:32b": LibraryEntry(20.0, "32.8B", "Q4_K_M", "qwen2", 5120),
    "llama3.3:70b": LibraryEntry(43.0, "70.6B", "Q4_K_M", "llama", 8192),
    "nomic-embed-text:latest": LibraryEntry(0.27, "137M", "F16", "nomic-bert", 768, True),
}
