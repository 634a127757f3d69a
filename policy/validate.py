"""Validate: rules that span fields (the decoder has already checked each value on its own)."""

from __future__ import annotations

import re
from typing import Any

from policy.compile import DecodedTerm
from policy.durations import parse_duration
from policy.errors import MISSING, Problem, join_path, show_value
from schemas.model_name import canonical_model, is_pattern
from schemas.policy_file import BACKEND_NAME

# Settings of [backend] that hold for the whole sidecar, not one server.
SHARED_BACKEND_FIELDS = ("poll_interval", "request_timeout", "queue_timeout", "resident_factor")


def validate(sections: dict[str, Any], terms: dict[str, list[DecodedTerm]]) -> list[Problem]:
    """Check what decoded; sections that failed to decode are simply absent here."""
    problems: list[Problem] = []
    if sections.get("backends"):
        problems.extend(_backend_problems(sections["backends"]))
    policies = sections.get("policies")
    if policies is not None and not policies:
        problems.append(
            Problem("policies", MISSING, "is empty; define at least one [policies.NAME] table")
        )
    active = sections.get("active")
    if active is not None and policies and active not in policies:
        problems.append(
            Problem(
                "active",
                active,
                f"names no policy in this file; defined: {', '.join(sorted(policies))}",
            )
        )

    clients = sections.get("clients")
    if clients is not None:
        if clients.default_class not in clients.classes:
            problems.append(
                Problem(
                    "clients.default_class",
                    clients.default_class,
                    f"is not a class defined under [clients.classes]; defined: "
                    f"{', '.join(clients.classes) or '(none)'}",
                )
            )
        for name, table in terms.items():
            for term in table:
                for cls in term.type.classes(term.params):
                    if cls not in clients.classes:
                        problems.append(
                            Problem(
                                join_path(join_path(term.path, term.type.classes_key), cls),
                                cls,
                                f"is not a class defined under [clients.classes] (policy "
                                f"{name!r}); defined: {', '.join(clients.classes)}",
                            )
                        )

    for table in terms.values():
        for term in table:
            problems.extend(term.type.validate(term.params, term.path))

    models = sections.get("models")
    if models:
        # Requests and /api/ps are matched by canonical name, so two spellings of one model
        # would give it two sizes and one would silently win.
        seen: dict[str, str] = {}
        for written, info in models.items():
            if info.vram_gb is None and info.num_parallel is None:
                problems.append(Problem(
                    join_path("models", written), {}, "sets nothing; give vram_gb, num_parallel or both",
                ))
            if is_pattern(written):
                if info.vram_gb is not None:
                    problems.append(Problem(
                        join_path(join_path("models", written), "vram_gb"), info.vram_gb,
                        "is a size for a glob; a size names one model (num_parallel may use a glob)",
                    ))
                continue
            name = canonical_model(written)
            if name in seen:
                problems.append(
                    Problem(
                        "models", written,
                        f"is the same model as {show_value(seen[name])} (both mean {name}); "
                        "keep one of them",
                    )
                )
            else:
                seen[name] = written

    status = sections.get("queue_status")
    if status is not None and status.enabled:
        try:
            every = parse_duration(status.every)
        except ValueError:
            every = None  # the decoder has said what is wrong with it
        if every is not None and every < 0.1:
            problems.append(Problem(
                "queue_status.every", status.every,
                "is below 0.1 s; a status line that often is noise, not news",
            ))

    backend = sections.get("backend")
    slots, slots_name = (backend.max_parallel if backend is not None else 0), "backend.max_parallel"
    if sections.get("backends"):  # several servers: the first holds the shared settings
        backend = next(iter(sections["backends"].values()))
        slots = sum(b.max_parallel for b in sections["backends"].values())
        slots_name = "every backend's max_parallel together"
    for name, spec in (policies or {}).items():
        for cls in spec.reserve:
            where = join_path(join_path(join_path("policies", name), "reserve"), cls)
            if clients is not None and cls not in clients.classes:
                problems.append(Problem(where, cls, f"is not a class defined under [clients.classes]; "
                                        f"defined: {', '.join(clients.classes)}"))
        total = sum(spec.reserve.values())
        if backend is not None and spec.reserve and total >= slots:
            problems.append(Problem(
                join_path(join_path("policies", name), "reserve"), dict(spec.reserve),
                f"keeps {total} of {slots_name} ({slots}) slots; leave at least one that every "
                "class may take",
            ))

    problems.extend(_hold_problems(policies or {}, backend, sections.get("limits")))

    limits = sections.get("limits")
    if limits is not None:
        defined = clients.classes if clients is not None else None
        for name, limit in limits.classes.items():
            where = join_path(join_path("limits", "classes"), name)
            if defined is not None and name not in defined:
                problems.append(Problem(
                    where, name, f"is not a class defined under [clients.classes]; defined: "
                    f"{', '.join(defined) or '(none)'}",
                ))
            if limit.max_queue is not None and limit.max_queue > limits.max_queue:
                problems.append(Problem(
                    join_path(where, "max_queue"), limit.max_queue,
                    f"is above limits.max_queue ({limits.max_queue}); the class could never reach it",
                ))
            if limit.max_queue is None and limit.queue_timeout is None:
                problems.append(Problem(where, {}, "sets nothing; give max_queue, queue_timeout or both"))
    if limits is not None and limits.max_queued_per_client > limits.max_queue:
        problems.append(
            Problem(
                "limits.max_queued_per_client",
                limits.max_queued_per_client,
                f"is above limits.max_queue ({limits.max_queue}); one client could never reach it",
            )
        )
    return problems


def _backend_problems(backends: dict[str, Any]) -> list[Problem]:
    """Several [backends.NAME]: each a distinct server, sharing the sidecar-wide settings."""
    problems: list[Problem] = []
    seen: dict[str, str] = {}
    for name, node in backends.items():
        for i, pattern in enumerate(node.models):
            if not pattern.strip():
                problems.append(Problem(f"backends.{name}.models[{i}]", pattern, "is empty; give a "
                                        "model name or glob, or leave the list empty for every model"))
        if not re.fullmatch(BACKEND_NAME, name):
            problems.append(Problem(f"backends.{name}", name, "is not a backend name: letters, digits "
                                    "and . _ -, starting with a letter or digit, at most 63 (it "
                                    "goes in a header, metric labels and the journal)"))
    for name, node in backends.items():
        other = seen.setdefault(node.url.rstrip("/"), name)
        if other != name:
            problems.append(Problem(f"backends.{name}.url", node.url,
                                    f"is also backends.{other}'s url; each backend is its own server"))
    first_name, first = next(iter(backends.items()))
    for field in SHARED_BACKEND_FIELDS:
        for name, node in backends.items():
            if getattr(node, field) != getattr(first, field):
                problems.append(Problem(
                    f"backends.{name}.{field}", getattr(node, field),
                    f"differs from backends.{first_name}.{field} ({getattr(first, field)!r}); it "
                    "belongs to the sidecar as a whole (one queue, one poller), so give every "
                    "backend the same value"))
    return problems


def _hold_problems(policies: dict[str, Any], backend: Any, limits: Any) -> list[Problem]:
    """A swap_hold must end before the queue timeouts: the hold counts from the longest-waiting
    request for the model, so if that one always timed out first the hold would start again with
    the next, and the model would never be loaded."""
    timeouts: list[tuple[str, Any]] = []
    if backend is not None:
        timeouts.append(("backend.queue_timeout", backend.queue_timeout))
    if limits is not None:
        timeouts += [(f"limits.classes.{n}.queue_timeout", c.queue_timeout)
                     for n, c in limits.classes.items() if c.queue_timeout is not None]
    problems = []
    for name, spec in policies.items():
        if spec.swap_hold is None:
            continue
        try:
            hold = parse_duration(spec.swap_hold)
            shortest = min(((parse_duration(v), where) for where, v in timeouts), default=None)
        except ValueError:
            continue  # the decoder has said what is wrong with it
        if shortest is not None and hold >= shortest[0]:
            problems.append(Problem(
                join_path(join_path("policies", name), "swap_hold"), spec.swap_hold,
                f"is not shorter than {shortest[1]} ({shortest[0]:g}s): the longest-waiting request "
                "would time out before the hold ends, and the hold start again with the next",
            ))
    return problems
