"""Which models are cloud models: run on Ollama's hosted service, so no local VRAM, no local slot
and no load. Ollama's /api/tags says so (`remote_host`); before it has, the name does (`:cloud`,
`-cloud`). Asked per group head on every pick, so the answers are cached (names come from
clients: the caches are bounded).

The same lists say which backend has which model pulled (`listed_on`): with several backends a
request goes only to one whose /api/tags list its model, while any does (another would answer
404, "model not found")."""

from __future__ import annotations

import functools
from typing import Any

from schemas.model_name import canonical_model, is_cloud

cloud_by_name = functools.lru_cache(maxsize=4096)(is_cloud)
MAX_CACHED = 4096


class CloudModels:
    def __init__(self) -> None:
        self._listed: dict[str, bool] = {}  # from /api/tags: name -> remote
        self._per_backend: dict[str, dict[str, bool]] = {}  # each backend's /api/tags
        self._of: dict[str, bool] = {}  # the answers given
        self._on: dict[str, frozenset[str]] = {}  # listed_on's answers, until a list changes

    def listed_on(self, model: str) -> frozenset[str]:
        """The backends whose /api/tags list the model (pulled there; a cloud model is signed in
        per server). "" stands for every backend: lists learned with no backend named."""
        found = self._on.get(model)
        if found is None:
            if len(self._on) > MAX_CACHED:
                self._on.clear()
            found = self._on[model] = frozenset(b for b, listed in self._per_backend.items() if model in listed)
        return found

    def keep(self, backends: set[str]) -> None:
        """After a reload: forget the lists of backends no longer there (at their next answer
        the merged list is rebuilt without them)."""
        for name in set(self._per_backend) - backends - {""}:
            del self._per_backend[name]
            self._on.clear()

    def __call__(self, model: str) -> bool:
        known = self._of.get(model)
        if known is None:
            if len(self._of) > MAX_CACHED:
                self._of.clear()
            listed = self._listed.get(model)
            known = self._of[model] = cloud_by_name(model) if listed is None else listed
        return known

    def learn(self, tags_payload: dict[str, Any], backend: str = "") -> bool:
        """A backend's /api/tags answer; whether it changed what is known to be a cloud model.
        Several backends' lists are merged: each answer replaces only its own backend's."""
        mine: dict[str, bool] = {}
        for entry in tags_payload.get("models") or ():
            if isinstance(entry, dict) and isinstance(name := entry.get("name") or entry.get("model"), str):
                mine[canonical_model(name)] = bool(entry.get("remote_host") or entry.get("remote_model"))
        if self._per_backend.get(backend) != mine:
            self._on.clear()
        self._per_backend[backend] = mine
        listed = {k: v for lists in self._per_backend.values() for k, v in lists.items()}
        if listed == self._listed:
            return False
        self._listed = listed
        self._of.clear()
        return True
