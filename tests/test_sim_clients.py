"""The official `ollama` and `openai` Python clients talk to the emulator and parse every answer."""

from __future__ import annotations

from collections.abc import Iterator

import ollama
import openai
import pytest

from sim.testing import RunningEmulator, running_emulator


@pytest.fixture(scope="module")
def emulator() -> Iterator[RunningEmulator]:
    with running_emulator(preset="tiny-8gb", time_scale=0.001) as running:
        yield running


@pytest.fixture
def client(emulator: RunningEmulator) -> Iterator[ollama.Client]:
    with ollama.Client(host=emulator.url) as native:
        yield native


@pytest.fixture
def oai(emulator: RunningEmulator) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=emulator.url + "/v1", api_key="unused", max_retries=0) as compat:
        yield compat


# --- ollama client ----------------------------------------------------------------------------


def test_list_names_every_installed_model(client: ollama.Client) -> None:
    """`list` parses and shows the preset's models with sizes and details."""
    models = {m.model: m for m in client.list().models}
    assert {"llama3.2:1b", "llama3.2:3b", "llama3.1:8b", "nomic-embed-text:latest"} <= set(models)
    assert models["llama3.2:1b"].size == 1_300_000_000
    assert models["llama3.2:1b"].details is not None
    assert models["llama3.2:1b"].details.parameter_size == "1.2B"


def test_ps_shows_a_loaded_model_larger_than_on_disk(client: ollama.Client) -> None:
    """After a request the model is in `ps`, resident size above disk size, with an expiry."""
    client.generate(model="llama3.2:1b", prompt="hello", keep_alive="10m")
    loaded = {m.model: m for m in client.ps().models}
    assert "llama3.2:1b" in loaded
    entry = loaded["llama3.2:1b"]
    assert entry.size is not None and entry.size > 1_300_000_000
    assert entry.size_vram == entry.size
    assert entry.expires_at is not None


def test_show_has_model_info_and_details(client: ollama.Client) -> None:
    """`show` parses; model_info is always present."""
    shown = client.show("llama3.2:3b")
    assert shown.modelinfo is not None and shown.modelinfo["general.architecture"] == "llama"
    assert shown.details is not None and shown.details.family == "llama"
    assert shown.capabilities == ["completion"]


@pytest.mark.parametrize("stream", [False, True])
def test_generate(client: ollama.Client, stream: bool) -> None:
    """`generate` streamed and not: text plus counters in the final object."""
    if stream:
        parts = list(client.generate(model="llama3.2:1b", prompt="Why is the sky blue?", stream=True))
        text = "".join(p.response for p in parts)
        final = parts[-1]
        assert all(not p.done for p in parts[:-1])
    else:
        final = client.generate(model="llama3.2:1b", prompt="Why is the sky blue?")
        text = final.response
    assert text and final.done and final.done_reason in ("stop", "length")
    assert final.eval_count is not None and final.eval_count > 0
    assert final.prompt_eval_count is not None and final.prompt_eval_count > 0
    assert final.context


@pytest.mark.parametrize("stream", [False, True])
def test_chat(client: ollama.Client, stream: bool) -> None:
    """`chat` streamed and not: assistant role on every chunk, the same text either way."""
    messages = [{"role": "user", "content": "Tell me about queues."}]
    whole = client.chat(model="llama3.2:3b", messages=messages)
    assert whole.message.role == "assistant" and whole.done
    if stream:
        parts = list(client.chat(model="llama3.2:3b", messages=messages, stream=True))
        assert all(p.message.role == "assistant" for p in parts)
        assert "".join(p.message.content or "" for p in parts) == whole.message.content
        assert parts[-1].eval_count == whole.eval_count


def test_embed_and_legacy_embeddings(client: ollama.Client) -> None:
    """`embed` (batch) and the legacy `embeddings` agree and are deterministic unit vectors."""
    batch = client.embed(model="nomic-embed-text", input=["alpha", "beta"])
    assert len(batch.embeddings) == 2 and len(batch.embeddings[0]) == 768
    legacy = client.embeddings(model="nomic-embed-text", prompt="alpha")
    assert list(legacy.embedding) == pytest.approx(list(batch.embeddings[0]))
    assert sum(v * v for v in batch.embeddings[1]) == pytest.approx(1.0)


@pytest.mark.parametrize("stream", [False, True])
def test_pull_adds_the_model(client: ollama.Client, stream: bool) -> None:
    """`pull` of a library model reports progress and then lists it."""
    name = "mistral:7b" if stream else "gemma3:12b"
    if stream:
        statuses = [p.status for p in client.pull(name, stream=True)]
        assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    else:
        assert client.pull(name).status == "success"
    assert name in {m.model for m in client.list().models}


def test_pull_unknown_raises_from_the_error_line(client: ollama.Client) -> None:
    """An error after streaming began arrives as an error line, which the client raises."""
    with pytest.raises(ollama.ResponseError, match="file does not exist"):
        list(client.pull("no-such-model:1b", stream=True))


def test_copy_then_delete(client: ollama.Client) -> None:
    """`copy` makes a usable alias; `delete` removes it; deleting again is a 404."""
    client.copy("llama3.2:1b", "my-alias:latest")
    assert client.generate(model="my-alias", prompt="hi").done
    client.delete("my-alias")
    assert "my-alias:latest" not in {m.model for m in client.list().models}
    with pytest.raises(ollama.ResponseError) as info:
        client.delete("my-alias")
    assert info.value.status_code == 404


def test_create_from_existing_model(client: ollama.Client) -> None:
    """`create` from an existing model streams status lines and installs the new name."""
    statuses = [p.status for p in client.create(model="custom:v1", from_="llama3.2:3b", stream=True)]
    assert statuses[-1] == "success"
    assert "custom:v1" in {m.model for m in client.list().models}


# --- openai client ----------------------------------------------------------------------------


def test_openai_chat_with_usage(oai: openai.OpenAI) -> None:
    """Non-streamed chat completion parses, with usage that adds up."""
    done = oai.chat.completions.create(
        model="llama3.2:1b", messages=[{"role": "user", "content": "hi"}]
    )
    assert done.object == "chat.completion" and done.choices[0].message.content
    assert done.usage is not None
    assert done.usage.total_tokens == done.usage.prompt_tokens + done.usage.completion_tokens


def test_openai_chat_streamed_with_include_usage(oai: openai.OpenAI) -> None:
    """Streamed chat: deltas, a finish_reason, then one usage chunk with no choices."""
    chunks = list(
        oai.chat.completions.create(
            model="llama3.2:1b", messages=[{"role": "user", "content": "hi"}], stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-2].choices[0].finish_reason == "stop"
    text = "".join(c.choices[0].delta.content or "" for c in chunks[:-1])
    assert chunks[-1].usage.completion_tokens == len(chunks) - 2 and text


@pytest.mark.parametrize("stream", [False, True])
def test_openai_completions(oai: openai.OpenAI, stream: bool) -> None:
    """Legacy completions, streamed and not; max_tokens cuts the text with "length"."""
    if stream:
        chunks = list(oai.completions.create(model="llama3.2:1b", prompt="Once", max_tokens=5, stream=True))
        assert [c.choices[0].finish_reason for c in chunks][-1] == "length"
        assert len(chunks) == 6
    else:
        done = oai.completions.create(model="llama3.2:1b", prompt="Once", max_tokens=5)
        assert done.choices[0].finish_reason == "length"
        assert done.usage is not None and done.usage.completion_tokens == 5


@pytest.mark.parametrize("encoding", ["float", None])  # None: the client's default, base64
def test_openai_embeddings(oai: openai.OpenAI, encoding: str | None) -> None:
    """Embeddings parse in both encodings and match the native endpoint's vectors."""
    extra = {"encoding_format": encoding} if encoding else {}
    result = oai.embeddings.create(model="nomic-embed-text", input=["alpha", "beta"], **extra)  # type: ignore[call-overload]
    assert [d.index for d in result.data] == [0, 1]
    assert len(result.data[0].embedding) == 768


def test_openai_models_list_and_retrieve(oai: openai.OpenAI) -> None:
    """/v1/models lists installed models; retrieving one returns it; an unknown one is a 404."""
    ids = {m.id for m in oai.models.list()}
    assert "llama3.2:3b" in ids
    assert oai.models.retrieve("llama3.2:3b").id == "llama3.2:3b"
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("nope:1b")
