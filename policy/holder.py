"""Hot reload: build the new policy file completely aside, then swap one reference.

Two steps, so a server can run the slow one (read and compile: `prepare`) in a worker thread and
the swap (`commit`) on its event loop, together with everything else that follows the file.
On any error the old compiled file stays active and the error is kept for /proxy/health; nothing
else changes. Readers take `holder.current` once per decision and use that object throughout.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from policy.errors import MISSING, PolicyError, Problem
from policy.load import CompiledFile, load_policy_text


@dataclass(frozen=True, slots=True)
class ReloadResult:
    ok: bool
    changed: bool  # False when the file's content was the same as the active one
    version: str  # the active version after the attempt
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Candidate:
    """A new file, read and compiled, not yet in force."""

    compiled: CompiledFile
    digest: str


# What a user of the file refuses in it beyond the file's own rules (the sidecar: the backends
# it cannot serve yet); the problems are reported as the file's, at start-up and on reload.
Accept = Callable[[CompiledFile], list[Problem]]


class PolicyHolder:
    def __init__(self, path: str | Path, accept: Accept | None = None) -> None:
        self.path = Path(path)
        self._accept = accept
        self._lock = threading.Lock()  # SIGHUP, the watcher and the endpoint may race
        # A bad file at start-up is fatal: raise its PolicyError to the caller.
        # Read once: the digest must be that of the bytes compiled, or an edit saved in between
        # would pass for the active content and never be loaded.
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise PolicyError(
                str(self.path), [Problem("", MISSING, f"cannot read the policy file: {reason}")]
            ) from None
        self._current = self._load(data)
        self._digest = hashlib.sha256(data).hexdigest()
        self.last_error: str | None = None
        self.reloads_ok = 0
        self.reloads_failed = 0

    @property
    def current(self) -> CompiledFile:
        return self._current

    def prepare(self, *, only_if_changed: bool = False) -> Candidate | ReloadResult:
        """Read and compile the file (blocking: run it off the event loop). A `Candidate` to
        `commit`, or the result when there is nothing to swap (unchanged, or refused)."""
        with self._lock:
            try:
                data = self.path.read_bytes()
            except OSError as exc:
                return self._failed(f"{self.path}: cannot read the policy file: {exc.strerror}")
            digest = hashlib.sha256(data).hexdigest()
            if digest == self._digest and (only_if_changed or self.last_error is None):
                return ReloadResult(ok=True, changed=False, version=self._current.version)
            try:
                compiled = self._load(data)
            except PolicyError as exc:
                self._digest = digest  # do not re-report the same broken content every second
                return self._failed(str(exc))
            return Candidate(compiled, digest)

    def _load(self, data: bytes) -> CompiledFile:
        compiled = load_policy_text(data, str(self.path))
        if self._accept is not None and (problems := self._accept(compiled)):
            raise PolicyError(str(self.path), problems)
        return compiled

    def commit(self, candidate: Candidate) -> ReloadResult:
        """Put a prepared file in force: one reference swap."""
        with self._lock:
            self._current, self._digest, self.last_error = candidate.compiled, candidate.digest, None
            self.reloads_ok += 1
            return ReloadResult(ok=True, changed=True, version=candidate.compiled.version)

    def applied_partly(self, error: str) -> ReloadResult:
        """The file is in force but what follows it (the scheduler, the journal) failed to take
        it: forget its digest so the watcher tries the whole step again, and report the error."""
        with self._lock:
            self._digest = ""
            self.reloads_ok -= 1
            return self._failed(error)

    def reload(self, *, only_if_changed: bool = False) -> ReloadResult:
        """`prepare` and `commit` in one call, for callers with no event loop to swap on."""
        prepared = self.prepare(only_if_changed=only_if_changed)
        return self.commit(prepared) if isinstance(prepared, Candidate) else prepared

    def check_changed(self) -> ReloadResult:
        """Reload if the file's content hash changed since the last attempt (the file watcher)."""
        return self.reload(only_if_changed=True)

    def _failed(self, error: str) -> ReloadResult:
        self.last_error = error
        self.reloads_failed += 1
        return ReloadResult(ok=False, changed=False, version=self._current.version, error=error)
