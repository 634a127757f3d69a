"""`policy from-env`: turn the earlier proxy's `.env` settings into a policy file, plus the
environment variables that replace the rest.

The earlier proxy (v3.6) scored `tier + min(rate × queued + rate × recent, 100) − whole seconds
waited`, clamped at 0 — exactly what this project's `seed` policy reproduces — with the tiers and
multipliers read from `PRIORITY_*` variables. The migration writes that policy with the file's
numbers, its backend and admin settings in their tables, and lists what belongs in the
environment instead (the database, logging, the listening address, the admin key: secrets are
never copied into the policy file). Unknown variables are reported, never dropped silently.
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

# The earlier proxy's defaults (its README's example values), used for what a .env leaves out, so
# the converted file behaves as the earlier proxy did with the same .env.
LARGE_SWAP_GB = 40  # a model above this many GiB counts as a large swap
DEFAULTS = {"OLLAMA_API_BASE": "http://localhost:11434", "TOTAL_VRAM_MB": "80000",
            "OLLAMA_MAX_PARALLEL": "3", "VRAM_POLL_INTERVAL": "5"}
LOG_LEVELS = {"debug": "debug", "info": "info", "warning": "warning", "warn": "warning",
              "error": "error", "critical": "error", "fatal": "error"}


class EnvFileError(ValueError):
    """Lines that cannot be read or values that cannot be converted; one problem per line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass
class Migration:
    document: dict[str, Any]  # the policy file, for tomli-w
    environment: list[tuple[str, str, str]] = field(default_factory=list)  # (variable, value, why)
    notes: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)


def parse_env(text: str, file: str) -> dict[str, str]:
    """KEY=VALUE lines as docker and python-dotenv read them: `#` comments (also after an
    unquoted value), blank lines, an optional `export `, single or double quotes."""
    values: dict[str, str] = {}
    problems: list[str] = []
    text = text.removeprefix("\ufeff")  # a byte-order mark some editors write
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        key, eq, value = line.partition("=")
        key = key.strip()
        if not eq or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            problems.append(f"{file}:{number}: not a KEY=VALUE line: {raw.strip()[:60]!r}")
            continue
        value = value.strip()
        if value[:1] in ("'", '"'):
            quote_char = value[0]
            end = value.find(quote_char, 1)
            if end < 0:
                problems.append(f"{file}:{number}: {key}: the quote is not closed")
                continue
            rest = value[end + 1:].strip()
            if rest and not rest.startswith("#"):
                problems.append(f"{file}:{number}: {key}: text after the closing quote: {rest[:30]!r}")
                continue
            value = value[1:end]
        else:
            value = re.split(r"\s+#", value, maxsplit=1)[0].strip()
        values[key] = value
    if problems:
        raise EnvFileError(problems)
    return values


def _number(env: dict[str, str], key: str, problems: list[str], *, integer: bool = False,
            minimum: float | None = None) -> float | None:
    if key not in env:
        return None
    text = env[key]
    try:
        value = float(int(text)) if integer else float(text)
    except ValueError:
        problems.append(f"{key}: {text!r} is not {'a whole number' if integer else 'a number'}")
        return None
    if not math.isfinite(value) or (minimum is not None and value < minimum):
        problems.append(f"{key}: {text!r} must be {'at least ' + format(minimum, 'g') if minimum is not None else 'finite'}")
        return None
    return value


def _networks(text: str, problems: list[str]) -> list[str]:
    out = []
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        try:
            out.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            problems.append(f"ADMIN_IPS: {item!r} is not an IP address or network")
    return out


KNOWN = {
    "OLLAMA_API_BASE", "TOTAL_VRAM_MB", "OLLAMA_MAX_PARALLEL", "VRAM_POLL_INTERVAL",
    "REQUEST_TIMEOUT", "RATE_LIMIT_WINDOW", "ADMIN_IPS", "PROXY_ADMIN_KEY", "DB_TYPE", "DB_HOST",
    "DB_PORT", "DB_NAME", "DB_USER", "DB_PASSWORD", "DB_PATH", "SQLITE_DB_PATH", "LOG_FORMAT",
    "LOG_LEVEL", "PROXY_HOST", "PROXY_PORT",
    "PRIORITY_BASE_LOADED", "PRIORITY_BASE_PARALLEL", "PRIORITY_BASE_SMALL_SWAP",
    "PRIORITY_BASE_LARGE_SWAP", "PRIORITY_WAIT_TIME_MULTIPLIER", "PRIORITY_RATE_LIMIT_MULTIPLIER",
    "PRIORITY_BASE_LARGE_SWAP_THRESHOLD_GB", "OLLAMA_HOST",
}


def migrate(env: dict[str, str], file: str) -> Migration:
    """EnvFileError listing every value that cannot be converted."""
    problems: list[str] = []

    def num(key: str, **kw: Any) -> float | None:
        return _number(env, key, problems, **kw)

    given = env
    env = {**DEFAULTS, **env}
    if "OLLAMA_API_BASE" not in given and "OLLAMA_HOST" in given:  # the earlier proxy's fallback
        host = given["OLLAMA_HOST"].strip()
        env["OLLAMA_API_BASE"] = host if "://" in host else f"http://{host}"
    backend: dict[str, Any] = {}
    url = env["OLLAMA_API_BASE"].rstrip("/")
    if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", url):
        problems.append(f"OLLAMA_API_BASE: {env['OLLAMA_API_BASE']!r} is not an http(s) URL")
    backend["url"] = url
    if (mb := num("TOTAL_VRAM_MB", minimum=1)) is not None:
        backend["vram_gb"] = round(mb / 1024, 3)  # MiB, as nvidia-smi prints them, to GiB
    if (parallel := num("OLLAMA_MAX_PARALLEL", integer=True, minimum=1)) is not None:
        backend["max_parallel"] = int(parallel)
    if (poll := num("VRAM_POLL_INTERVAL", minimum=0.1)) is not None:
        backend["poll_interval"] = poll
    if (timeout := num("REQUEST_TIMEOUT", minimum=1)) is not None:
        backend["request_timeout"] = timeout

    loaded = num("PRIORITY_BASE_LOADED")
    fits = num("PRIORITY_BASE_PARALLEL")
    small = num("PRIORITY_BASE_SMALL_SWAP")
    large = num("PRIORITY_BASE_LARGE_SWAP")
    wait = num("PRIORITY_WAIT_TIME_MULTIPLIER")
    rate = num("PRIORITY_RATE_LIMIT_MULTIPLIER", minimum=0)
    window = num("RATE_LIMIT_WINDOW", minimum=1)
    threshold = num("PRIORITY_BASE_LARGE_SWAP_THRESHOLD_GB", minimum=0.001)
    if wait is not None and wait > 0:
        problems.append(f"PRIORITY_WAIT_TIME_MULTIPLIER: {env['PRIORITY_WAIT_TIME_MULTIPLIER']!r} "
                        "must be zero or negative (waiting lowers the score)")
    small_points = 400.0 if small is None else small
    terms = {
        "vram": {
            "loaded": 100.0 if loaded is None else loaded,
            "fits": 200.0 if fits is None else fits,
            "fits_when_empty": False,  # the seed gave the parallel tier only beside a loaded model
            "fits_check": "vram_only",
            "unknown_size": small_points,  # the seed's bug, kept: unknown counted as a small swap
            "swap": [{"up_to_gb": LARGE_SWAP_GB if threshold is None else threshold,
                      "points": small_points}],
            "swap_above": 800.0 if large is None else large,
        },
        "fairness": {
            "per_queued": 5.0 if rate is None else rate,
            "per_recent": 5.0 if rate is None else rate,
            "window": 600.0 if window is None else window,
            "cap": 100.0,
        },
        "aging": {"per_second": 1.0 if wait is None or wait > 0 else abs(wait), "whole_seconds": True},
    }
    document: dict[str, Any] = {"active": "seed"}
    if backend:
        document["backend"] = backend
    # The earlier proxy knew clients by address only.
    document["clients"] = {"identify_by": ["ip"]}
    admin: dict[str, Any] = {"key_env": "PROXY_ADMIN_KEY"}
    if "ADMIN_IPS" in env:
        admin["networks"] = _networks(env["ADMIN_IPS"], problems)
    document["admin"] = admin
    document["policies"] = {"seed": {
        "description": f"The earlier proxy's scoring, with the numbers of {file}.",
        "clamp_min": 0.0,
        "terms": terms,
    }}
    result = Migration(document)
    for key in sorted(DEFAULTS.keys() - given.keys()):
        result.notes.append(f"{key} was not set: the earlier proxy's default {DEFAULTS[key]} is used")
    _environment(given, result, problems)
    result.unknown = sorted(k for k in given if k not in KNOWN)
    if problems:
        raise EnvFileError([f"{file}: {p}" for p in problems])
    return result


def _environment(env: dict[str, str], out: Migration, problems: list[str]) -> None:
    add = out.environment.append
    if "PROXY_ADMIN_KEY" in env:
        add(("PROXY_ADMIN_KEY", "<unchanged, from your secret store>",
             "the admin key; [admin] key_env names it, the file never holds it"))
    kind = env.get("DB_TYPE", "").strip().lower()
    if kind in ("postgres", "postgresql"):
        user = quote(env.get("DB_USER", ""), safe="")
        host = env.get("DB_HOST", "localhost").strip()
        port = env.get("DB_PORT", "5432").strip()
        name = quote(env.get("DB_NAME", ""), safe="")
        who = f"{user}@" if user else ""
        if not port.isdigit() or not 0 < int(port) < 65536:
            problems.append(f"DB_PORT: {port!r} is not a port number")
        if host.startswith("/"):  # a Unix socket directory: libpq takes it as a parameter
            dsn = f"postgresql://{who}/{name}?host={quote(host, safe='/')}&port={port}"
        else:
            dsn = f"postgresql://{who}{f'[{host}]' if ':' in host else host}:{port}/{name}"
        add(("SMART_PROXY_DB", dsn,
             "the journal's database (add the password to this URL, or set PGPASSWORD)"))
        if "DB_PASSWORD" in env:
            out.notes.append("DB_PASSWORD was not copied anywhere: put it in SMART_PROXY_DB or PGPASSWORD")
    elif kind in ("", "sqlite"):
        path = env.get("SQLITE_DB_PATH") or env.get("DB_PATH")
        if path:
            add(("SMART_PROXY_DB", path, "the journal's SQLite file (the schema is new: start a "
                 "fresh file, the earlier proxy's tables are not read)"))
    else:
        problems.append(f"DB_TYPE: {env['DB_TYPE']!r} is not sqlite or postgres")
    if "LOG_FORMAT" in env:
        fmt = env["LOG_FORMAT"].strip().lower()
        if fmt not in ("json", "human", "text"):
            problems.append(f"LOG_FORMAT: {env['LOG_FORMAT']!r} is not json or human")
        add(("SMART_PROXY_LOG_FORMAT", "json" if fmt == "json" else "human", "log format"))
    if "LOG_LEVEL" in env:
        level = LOG_LEVELS.get(env["LOG_LEVEL"].strip().lower())
        if level is None:
            problems.append(f"LOG_LEVEL: {env['LOG_LEVEL']!r} is not debug, info, warning or error")
        else:
            add(("SMART_PROXY_LOG_LEVEL", level, "log level"))
    if "PROXY_HOST" in env:
        add(("SMART_PROXY_HOST", env["PROXY_HOST"], "listening address"))
    if "PROXY_PORT" in env:
        port_text = env["PROXY_PORT"].strip()
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            problems.append(f"PROXY_PORT: {port_text!r} is not a port number")
        add(("SMART_PROXY_PORT", port_text, "listening port"))
    if "OLLAMA_API_BASE" in env:
        out.notes.append("OLLAMA_API_BASE went to [backend] url; SMART_PROXY_UPSTREAM overrides it per deployment")
