"""Read a policy file and run the three phases: decode -> validate -> compile.

`load_policy_text` does no I/O at all; `load_policy_file` only reads the file it is handed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from policy.classify import Classifier
from policy.compile import DecodedTerm, Policy, compile_policy
from policy.decode import convert, is_fail, parse_toml, unknown_key_rule
from policy.durations import parse_duration
from policy.errors import MISSING, PolicyError, Problem, join_path
from policy.terms import REGISTRY, UnknownTermType
from policy.validate import validate
from schemas.model_name import canonical_pattern
from schemas.policy_file import IdentifyBy, PolicyFile, StorePrompts

DEFAULT_BACKEND = "default"  # the name [backend] (the one-server shorthand) goes by

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class BackendSettings:
    url: str
    max_parallel: int
    num_parallel: int
    vram_gb: float
    max_loaded_models: int
    poll_interval: float
    request_timeout: float
    queue_timeout: float
    resident_factor: float


@dataclass(frozen=True, slots=True)
class NodeSettings:
    """One Ollama server the sidecar dispatches to: [backends.NAME], or [backend] as "default"."""

    name: str
    url: str
    max_parallel: int
    num_parallel: int
    vram_gb: float
    max_loaded_models: int
    models: tuple[str, ...] = ()  # globs of the models it may serve; empty: all
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class ClassLimitSettings:
    max_queue: int | None  # waiting requests of the class at most
    queue_timeout: float  # seconds; the class's own, or backend.queue_timeout


@dataclass(frozen=True, slots=True)
class LimitSettings:
    max_queue: int
    max_queued_per_client: int
    max_body: int  # bytes
    rate_windows: tuple[tuple[str, float, int], ...]  # (name, seconds, max_requests)
    classes: dict[str, ClassLimitSettings] = field(default_factory=dict)
    default_queue_timeout: float = 300.0  # backend.queue_timeout, for classes not listed

    def queue_timeout(self, cls: str) -> float:
        limit = self.classes.get(cls)
        return limit.queue_timeout if limit is not None else self.default_queue_timeout


@dataclass(frozen=True, slots=True)
class ClientSettings:
    identify_by: tuple[IdentifyBy, ...]
    header: str
    api_keys_env: str
    trusted_proxies: tuple[IPNetwork, ...]
    class_header: str
    default_class: str


@dataclass(frozen=True, slots=True)
class AdminSettings:
    networks: tuple[IPNetwork, ...]
    key_env: str
    session_lifetime: float  # seconds
    auth_attempts_per_minute: int


@dataclass(frozen=True, slots=True)
class JournalSettings:
    store_prompts: StorePrompts
    retention: float  # seconds; 0 keeps records forever


@dataclass(frozen=True, slots=True)
class CompiledFile:
    """A whole policy file, compiled. Immutable: a reload builds a new one and swaps it in."""

    path: str
    version: str  # short hash of the file's bytes
    raw: PolicyFile
    policies: dict[str, Policy]
    active: Policy
    # Every section the server reads, compiled and typed: nothing outside policy/ reads `raw`.
    # `backend`: the one Ollama server, or with several the first's (the timeouts, poll interval
    # and resident factor, which every backend shares); `backends`: each server, in file order.
    backend: BackendSettings
    limits: LimitSettings
    clients: ClientSettings
    admin: AdminSettings
    journal: JournalSettings
    model_sizes: dict[str, float]  # [models] overrides, GiB
    classifier: Classifier
    windows: frozenset[float]  # every client window any policy or rate limit counts
    terms: dict[str, tuple[DecodedTerm, ...]]  # per policy, the decoded terms (for `show`)
    # [models] num_parallel, in file order: (canonical name or glob, slots); engine/residency.py
    model_parallel: tuple[tuple[str, int], ...] = ()
    cloud_max_parallel: int = 4  # [cloud] max_parallel: cloud requests in flight at once
    queue_status_every: float | None = None  # [queue_status]: seconds between lines; None: off
    backends: tuple[NodeSettings, ...] = ()

    @property
    def nodes(self) -> tuple[NodeSettings, ...]:
        """Every backend. One is read from `backend` (so a copy with another `backend`, as
        scenarios and benchmarks make, changes it), keeping its name, allow-list and weight."""
        if len(self.backends) > 1:
            return self.backends
        one = self.backends[0] if self.backends else NodeSettings(DEFAULT_BACKEND, "", 0, 0, 0.0, 0)
        b = self.backend
        return (NodeSettings(one.name, b.url, b.max_parallel, b.num_parallel, b.vram_gb,
                             b.max_loaded_models, one.models, one.weight),)

    def with_backend(self, **changes: Any) -> CompiledFile:
        """The file with `changes` (max_parallel, vram_gb, num_parallel, max_loaded_models) made
        to `backend` and to every one of several backends: what scenarios, the simulator and the
        benchmarks use to set the hardware."""
        node_fields = {k: v for k, v in changes.items() if k in NodeSettings.__dataclass_fields__}
        return dataclasses.replace(
            self, backend=dataclasses.replace(self.backend, **changes),
            backends=tuple(dataclasses.replace(n, **node_fields) for n in self.backends),
        )

    def classify(self, client: str, model: str, endpoint: str, requested: str | None) -> str:
        return self.classifier.classify(client, model, endpoint, requested)

    def with_active(self, name: str) -> CompiledFile:
        """The same file with another of its policies active (for explain/snapshot)."""
        return dataclasses.replace(self, active=self.policies[name])


def load_policy_file(path: str | Path) -> CompiledFile:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise PolicyError(
            str(path), [Problem("", MISSING, f"cannot read the policy file: {reason}")]
        ) from None
    return load_policy_text(data, str(path))


def load_policy_text(data: bytes, file: str) -> CompiledFile:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError(
            file, [Problem("", MISSING, f"is not UTF-8 text ({exc.reason})")]
        ) from None
    raw, syntax = parse_toml(text)
    if syntax is not None or raw is None:
        raise PolicyError(file, [syntax] if syntax else [])
    problems: list[Problem] = []
    try:
        sections, terms = decode_sections(raw, problems)
    except RecursionError:
        raise PolicyError(
            file, [Problem("", MISSING, "is nested too deeply to read as a policy file")]
        ) from None
    problems.extend(validate(sections, terms))
    if problems:
        raise PolicyError(file, problems)
    version = hashlib.sha256(data).hexdigest()[:12]
    return compile_file(PolicyFile(**sections), terms, file, version)


def decode_sections(
    raw: dict[str, Any], problems: list[Problem]
) -> tuple[dict[str, Any], dict[str, list[DecodedTerm]]]:
    """Decode each top-level section on its own, so one bad section hides no other's errors."""
    fields = {f.encode_name: f for f in msgspec.structs.fields(PolicyFile)}
    sections: dict[str, Any] = {}
    for key in raw:
        if key not in fields:
            problems.append(
                Problem(key, MISSING, unknown_key_rule(key, list(fields), "the top level"))
            )
    if "backend" in raw and raw.get("backends"):
        problems.append(Problem("backends", MISSING, "is set beside [backend]; keep one: [backend] "
                                "for one Ollama server, or a [backends.NAME] table for each of several"))
    for name, info in fields.items():
        if name not in raw:
            if info.required:
                problems.append(
                    Problem(name, MISSING, "is missing; it names the policy that orders the queue")
                )
            else:
                # Validate the defaults too: a file with no [policies] is an empty set, and a
                # class offset is checked against the default classes when [clients] is absent.
                default = info.default
                sections[name] = info.default_factory() if default is msgspec.NODEFAULT else default
            continue
        value = convert(raw[name], info.type, name, problems)
        if not is_fail(value):
            sections[name] = value
    terms: dict[str, list[DecodedTerm]] = {}
    for pname, spec in (sections.get("policies") or {}).items():
        terms[pname] = _decode_terms(pname, spec.terms, problems)
    return sections, terms


def _decode_terms(
    policy: str, tables: dict[str, dict[str, Any]], problems: list[Problem]
) -> list[DecodedTerm]:
    out = []
    for term_name, table in tables.items():
        path = join_path(join_path(join_path("policies", policy), "terms"), term_name)
        if not isinstance(table, dict):
            problems.append(Problem(path, table, "has the wrong type: expected a table"))
            continue
        type_name = table.get("type", term_name)
        try:
            term_type = REGISTRY.get(type_name) if isinstance(type_name, str) else None
        except UnknownTermType as exc:
            where = join_path(path, "type") if "type" in table else path
            problems.append(Problem(where, type_name, exc.args[0]))
            continue
        if term_type is None:
            problems.append(Problem(join_path(path, "type"), type_name, "must be a string"))
            continue
        params = convert(
            {k: v for k, v in table.items() if k != "type"}, term_type.params, path, problems
        )
        if not is_fail(params):
            out.append(DecodedTerm(term_name, term_type, params, path))
    return out


def _networks(values: list[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(v, strict=True) for v in values)


def compile_file(
    file: PolicyFile, terms: dict[str, list[DecodedTerm]], path: str, version: str
) -> CompiledFile:
    policies = {
        name: dataclasses.replace(
            compile_policy(name, version, spec.description, spec.clamp_min, terms[name]),
            reserve=dict(spec.reserve),
            num_ctx_tolerance=spec.num_ctx.tolerance if spec.num_ctx.normalise else None,
            swap_hold=None if spec.swap_hold is None else parse_duration(spec.swap_hold),
        )
        for name, spec in file.policies.items()
    }
    named: dict[str, Any] = dict(file.backends) or {DEFAULT_BACKEND: file.backend}
    b = next(iter(named.values()))
    nodes = tuple(
        NodeSettings(name, n.url, n.max_parallel, n.num_parallel, n.vram_gb, n.max_loaded_models,
                     tuple(getattr(n, "models", ())), getattr(n, "weight", 1.0))
        for name, n in named.items()
    )
    backend = BackendSettings(
        url=b.url,
        max_parallel=b.max_parallel,
        num_parallel=b.num_parallel,
        vram_gb=b.vram_gb,
        max_loaded_models=b.max_loaded_models,
        poll_interval=parse_duration(b.poll_interval),
        request_timeout=parse_duration(b.request_timeout),
        queue_timeout=parse_duration(b.queue_timeout),
        resident_factor=b.resident_factor,
    )
    rate_windows = tuple(
        (name, parse_duration(r.window), r.max_requests) for name, r in file.limits.rate.items()
    )
    c, a = file.clients, file.admin
    windows = frozenset(w for p in policies.values() for w in p.windows) | {
        w for _, w, _ in rate_windows
    }
    return CompiledFile(
        path=path,
        version=version,
        raw=file,
        policies=policies,
        active=policies[file.active],
        backend=backend,
        backends=nodes,
        limits=LimitSettings(
            max_queue=file.limits.max_queue,
            max_queued_per_client=file.limits.max_queued_per_client,
            max_body=file.limits.max_body,
            rate_windows=rate_windows,
            classes={
                name: ClassLimitSettings(
                    max_queue=cl.max_queue,
                    queue_timeout=(parse_duration(cl.queue_timeout) if cl.queue_timeout is not None
                                   else backend.queue_timeout),
                )
                for name, cl in file.limits.classes.items()
            },
            default_queue_timeout=backend.queue_timeout,
        ),
        clients=ClientSettings(
            identify_by=tuple(c.identify_by), header=c.header, api_keys_env=c.api_keys_env,
            trusted_proxies=_networks(c.trusted_proxies), class_header=c.class_header,
            default_class=c.default_class,
        ),
        admin=AdminSettings(
            networks=_networks(a.networks), key_env=a.key_env,
            session_lifetime=parse_duration(a.session_lifetime),
            auth_attempts_per_minute=a.auth_attempts_per_minute,
        ),
        journal=JournalSettings(
            store_prompts=file.journal.store_prompts,
            retention=parse_duration(file.journal.retention),
        ),
        model_sizes={n: m.vram_gb for n, m in file.models.items() if m.vram_gb is not None},
        cloud_max_parallel=file.cloud.max_parallel,
        queue_status_every=(
            parse_duration(file.queue_status.every) if file.queue_status.enabled else None
        ),
        model_parallel=tuple(
            (canonical_pattern(n), m.num_parallel) for n, m in file.models.items()
            if m.num_parallel is not None
        ),
        classifier=Classifier.from_settings(file.clients),
        windows=windows,
        terms={name: tuple(table) for name, table in terms.items()},
    )
