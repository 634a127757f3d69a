"""The sidecar's settings from the command line and the environment (connection settings and
secrets), as opposed to the policy file's, which hot reload may change."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_UPSTREAM = "http://127.0.0.1:11434"  # where Ollama listens by default
DEFAULT_HEADER_TIMEOUT = 30.0  # seconds to send a request head; also the keep-alive idle limit
DEFAULT_BODY_TIMEOUT = 60.0  # longest gap between request body bytes before a 408


@dataclass(frozen=True, slots=True)
class Settings:
    """Connection settings and secrets: from the command line and the environment, not the file."""

    policy: Path
    upstream: str | None = None  # overrides the policy's backend.url when set
    env: Mapping[str, str] = field(default_factory=dict)  # where key_env / api_keys_env are read
    shutdown_grace: float = 30.0  # seconds in-flight requests get to finish on SIGTERM
    watch_interval: float = 1.0  # policy file content-hash check
    heartbeat_interval: float = 5.0  # the event stream's heartbeat, and the charts' resolution


# Every environment variable the sidecar reads (the policy can rename the two secret ones).
ENV_VARS: dict[str, str] = {
    "SMART_PROXY_POLICY": "policy file (default ./policies.example.toml)",
    "SMART_PROXY_UPSTREAM": f"Ollama URL; overrides the policy's backend.url (default {DEFAULT_UPSTREAM})",
    "SMART_PROXY_DB": "journal database: a path, sqlite:///path or postgresql://… (default ./db/requests.db)",
    "SMART_PROXY_JOURNAL_FALLBACK": "directory for the journal's outage file (default beside the database)",
    "SMART_PROXY_INSTANCE": "this sidecar's name on its journal records, for a journal several share (default: the host name)",
    "PROXY_ADMIN_KEY": "the admin key (the policy's admin.key_env names this variable); unset: admin networks only",
    "SMART_PROXY_API_KEYS": "client API keys, \"key=name,key=name\" (the policy's clients.api_keys_env)",
    "SMART_PROXY_HOST": "address to listen on (default 0.0.0.0)",
    "SMART_PROXY_PORT": "port to listen on (default 8003)",
    "SMART_PROXY_LOG_FORMAT": "json or human (default human on a terminal, json otherwise)",
    "SMART_PROXY_LOG_LEVEL": "debug, info, warning or error (default info)",
    "SMART_PROXY_SHUTDOWN_GRACE": "seconds in-flight requests get to finish on SIGTERM (default 30)",
    "SMART_PROXY_HEADER_TIMEOUT": f"seconds a connection may take to send a request head, and stay idle between requests (default {DEFAULT_HEADER_TIMEOUT:g})",
    "SMART_PROXY_BODY_TIMEOUT": f"seconds a request body may go without a byte before a 408 (default {DEFAULT_BODY_TIMEOUT:g})",
    "SMART_PROXY_MAX_CONNECTIONS": "open client connections before new ones get 503 (default: from the descriptor limit)",
    "SMART_PROXY_URL": "the sidecar `dashboard` and `load` talk to (default http://127.0.0.1:8003)",
    "OTEL_EXPORTER_OTLP_ENDPOINT": "OpenTelemetry collector (OTLP/HTTP); set: tracing on (the otel extra)",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "the traces URL itself, instead of ENDPOINT + /v1/traces",
    "OTEL_SERVICE_NAME": "service.name of the spans (default smart-proxy)",
    "OTEL_SDK_DISABLED": "true: no tracing whatever the endpoint says",
}
