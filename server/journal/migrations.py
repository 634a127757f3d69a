"""Versioned schema migrations, written once for both dialects.

Each migration is frozen once released: a new field means a new migration, never an edit to an old
one. Column types come from a small per-dialect map so the SQL text stays the same otherwise.
`schema_migrations` records what has been applied; applying is idempotent.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

Dialect = Literal["sqlite", "postgresql"]

# Portable type names -> each dialect's spelling. SQLite's REAL and PostgreSQL's DOUBLE PRECISION
# are both IEEE doubles, which is what makes analytics come out identical on both.
_TYPES: dict[Dialect, dict[str, str]] = {
    "sqlite": {"TEXT": "TEXT", "FLOAT": "REAL", "BIGINT": "INTEGER", "BOOL": "INTEGER"},
    "postgresql": {"TEXT": "TEXT", "FLOAT": "DOUBLE PRECISION", "BIGINT": "BIGINT", "BOOL": "SMALLINT"},
}

# {TEXT} etc. are replaced per dialect. Booleans are 0/1 integers on both (one code path).
_V1_REQUESTS = """
CREATE TABLE IF NOT EXISTS requests (
    request_id {TEXT} PRIMARY KEY,
    client {TEXT} NOT NULL,
    endpoint {TEXT} NOT NULL,
    received_at {FLOAT} NOT NULL,
    status {TEXT} NOT NULL,
    ip {TEXT},
    model {TEXT},
    request_class {TEXT},
    policy_name {TEXT},
    policy_version {TEXT},
    dispatched_at {FLOAT},
    first_byte_at {FLOAT},
    completed_at {FLOAT},
    queue_wait_ms {FLOAT},
    duration_ms {FLOAT},
    http_status {BIGINT},
    error {TEXT},
    score {FLOAT},
    score_terms {TEXT} NOT NULL DEFAULT '{{}}',
    rank {BIGINT},
    queue_depth {BIGINT},
    resident {BOOL},
    prompt_eval_count {BIGINT},
    eval_count {BIGINT},
    total_duration {BIGINT},
    load_duration {BIGINT},
    prompt_eval_duration {BIGINT},
    eval_duration {BIGINT},
    prompt {TEXT},
    response {TEXT},
    revision {BIGINT} NOT NULL DEFAULT 0
)
"""

# Analytics and retention read a time window on received_at; run lengths order by dispatched_at;
# the per-model view filters by model within the window.
_V2_INDEXES = (
    "CREATE INDEX IF NOT EXISTS ix_requests_received_at ON requests (received_at)",
    "CREATE INDEX IF NOT EXISTS ix_requests_dispatched_at ON requests (dispatched_at)",
    "CREATE INDEX IF NOT EXISTS ix_requests_model_received ON requests (model, received_at)",
    "CREATE INDEX IF NOT EXISTS ix_requests_client_received ON requests (client, received_at)",
)


# Clients may reuse X-Request-Id values: the journal keys on the sidecar's own id and keeps the
# client's here, indexed so an operator can find a request by the id the client reported.
_V3_CLIENT_REQUEST_ID = (
    "ALTER TABLE requests ADD COLUMN client_request_id {TEXT}",
    "CREATE INDEX IF NOT EXISTS ix_requests_client_request_id ON requests (client_request_id)",
)


# num_ctx normalisation: what the client asked, and what went to Ollama when it was rewritten.
_V4_NUM_CTX = (
    "ALTER TABLE requests ADD COLUMN num_ctx {BIGINT}",
    "ALTER TABLE requests ADD COLUMN num_ctx_forwarded {BIGINT}",
)


# Several sidecars may share one journal (one per GPU server): which one wrote each record.
_V5_INSTANCE = (
    "ALTER TABLE requests ADD COLUMN instance {TEXT}",
    "CREATE INDEX IF NOT EXISTS ix_requests_instance_received ON requests (instance, received_at)",
)


# One sidecar may feed several Ollama servers ([backends.NAME]): which one served each request.
_V6_BACKEND = (
    "ALTER TABLE requests ADD COLUMN backend {TEXT}",
    "CREATE INDEX IF NOT EXISTS ix_requests_backend_received ON requests (backend, received_at)",
)


class Migration(NamedTuple):
    version: int
    name: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "requests table", (_V1_REQUESTS,)),
    Migration(2, "indexes for analytics and retention", _V2_INDEXES),
    Migration(3, "the client's own request id", _V3_CLIENT_REQUEST_ID),
    Migration(4, "num_ctx asked and forwarded", _V4_NUM_CTX),
    Migration(5, "the sidecar instance that wrote the record", _V5_INSTANCE),
    Migration(6, "the backend that served the request", _V6_BACKEND),
)
LATEST = MIGRATIONS[-1].version

MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version {BIGINT} PRIMARY KEY,
    name {TEXT} NOT NULL,
    applied_at {FLOAT} NOT NULL
)
"""


def render(statement: str, dialect: Dialect) -> str:
    return statement.format(**_TYPES[dialect]).strip()


def pending(applied: set[int]) -> list[Migration]:
    return [m for m in MIGRATIONS if m.version not in applied]


__all__ = ["LATEST", "MIGRATIONS", "MIGRATIONS_TABLE", "Dialect", "Migration", "pending", "render"]
