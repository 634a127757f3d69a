"""One name per model, by Ollama's own rules, so `Llama3`, `llama3:latest` and
`registry.ollama.ai/library/llama3` are counted, scheduled and labelled as the same model.

Ollama reads a name as [host/][namespace/]model[:tag][@digest]: the host defaults to
`registry.ollama.ai`, the namespace to `library`, the tag to `latest`, and names compare without
regard to case. The canonical form written here is the one `ollama list` shows: lower case, the
tag always present, and host and namespace left out while they are the defaults
(`llama3:latest`, `user/model:latest`, `hf.co/user/model:q4_k_m`).

Used once where a name enters (a request body, an /api/ps or /api/tags answer, the policy file);
a request's body is still forwarded to Ollama exactly as the client sent it.
"""

from __future__ import annotations

import functools

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"


# Bounded: names come from clients. Hot in the scheduler and in trace replay (a name per event).
@functools.lru_cache(maxsize=2048)
def canonical_model(name: str) -> str:
    """The canonical form of a model name (see the module docstring); never raises.

    A name Ollama would refuse (too many parts, stray characters) is only lower-cased and given
    the default tag: Ollama answers it with its own error, and it is still one name here."""
    name = name.lower()
    rest, at, digest = name.partition("@")
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    # A colon before the last slash belongs to a host's port (`localhost:5000/m`), not a tag.
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1 :] or DEFAULT_TAG
    else:
        tag = DEFAULT_TAG
    parts = rest.split("/")
    if len(parts) == 1:
        host, namespace = DEFAULT_HOST, DEFAULT_NAMESPACE
    elif len(parts) == 2:
        host, namespace = DEFAULT_HOST, parts[0]
    elif len(parts) == 3:
        host, namespace = parts[0], parts[1]
    else:
        return f"{rest}:{tag}{at}{digest}"
    model = parts[-1]
    if host != DEFAULT_HOST:
        prefix = f"{host}/{namespace}/"
    elif namespace != DEFAULT_NAMESPACE:
        prefix = f"{namespace}/"
    else:
        prefix = ""
    return f"{prefix}{model}:{tag}{at}{digest}"


def is_cloud(model: str) -> bool:
    """A cloud model by its name (a canonical one): Ollama forwards it to its hosted service, so it
    takes no local VRAM and no local slot. Named `NAME:cloud`, or with `-cloud` ending its name or
    tag (`gpt-oss:120b-cloud`, `deepseek-v3.1:671b-cloud`). The name is the convention only: the
    engine believes Ollama's /api/tags over it (a listed model with a `remote_host` is cloud,
    one without is local)."""
    name, _, tag = model.split("@", 1)[0].rpartition(":")  # a pinned digest is not the tag
    if not name:
        name, tag = tag, ""
    return tag == "cloud" or tag.endswith("-cloud") or name.endswith("-cloud")


def is_pattern(text: str) -> bool:
    """A glob (`*`, `?` or `[`) rather than one model's name."""
    return any(c in text for c in "*?[")


def canonical_pattern(pattern: str) -> str:
    """A policy file's model glob, made to match canonical names: a plain name is made canonical
    (`llama3` matches `llama3:latest`); a glob is lower-cased and loses the default host and
    namespace (`library/llama3*` matches `llama3:8b`), but is otherwise left as written."""
    if not is_pattern(pattern):
        return canonical_model(pattern)
    pattern = pattern.lower()
    for prefix in (f"{DEFAULT_HOST}/{DEFAULT_NAMESPACE}/", f"{DEFAULT_HOST}/", f"{DEFAULT_NAMESPACE}/"):
        if pattern.startswith(prefix):
            return pattern[len(prefix) :]
    return pattern


__all__ = [
    "DEFAULT_HOST", "DEFAULT_NAMESPACE", "DEFAULT_TAG", "canonical_model", "canonical_pattern",
    "is_cloud", "is_pattern",
]
