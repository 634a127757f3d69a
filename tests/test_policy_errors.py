"""Bad policy files: one fixture per failure mode under policy_files/bad/, each with its exact message.

Every line names the file, the path, the value as written and the rule; all problems of a file are
reported at once. The tests load from inside the fixture directory, so the file name in each message
is just the fixture's name.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from policy.errors import PolicyError
from policy.load import load_policy_file, load_policy_text

BAD = Path(__file__).parent / "policy_files" / "bad"

DURATION_RULE = (
    'is not a duration; write seconds as a number or a string like "500ms", "30s", "5m", '
    '"1h30m", "7d"'
)
KNOWN_TERM_TYPES = "known types: aging, backend_load, class_offset, fair_share, fairness, rate_penalty, swap_cost, vram"
DEFAULT_CLASSES = "defined: interactive, batch"
INLINE_SECRET = (
    "holds a secret written inline; never put a secret in the policy file — set it in an "
    "environment variable and name that variable in admin.key_env"
)

SHARED = "it belongs to the sidecar as a whole (one queue, one poller), so give every backend the same value"

CASES = [
    # ---- the file itself: unreadable, not text, not TOML ------------------------------------
    pytest.param(
        "does_not_exist.toml",
        ["does_not_exist.toml: cannot read the policy file: No such file or directory"],
        id="missing-file",
    ),
    pytest.param(
        "not_utf8.toml",
        ["not_utf8.toml: is not UTF-8 text (invalid continuation byte)"],
        id="not-utf8",
    ),
    pytest.param(
        "toml_syntax_error.toml",
        [
            "toml_syntax_error.toml: line 3, column 15: is not valid TOML: "
            "expected ']' at the end of a table declaration"
        ],
        id="toml-syntax-line-and-column",
    ),
    # ---- keys: misspelt or unknown ----------------------------------------------------------
    pytest.param(
        "unknown_key_close_match.toml",
        [
            "unknown_key_close_match.toml: backend.max_paralel: unknown key in [backend]; "
            "did you mean 'max_parallel'?"
        ],
        id="unknown-key-did-you-mean",
    ),
    pytest.param(
        "unknown_key_no_match.toml",
        [
            "unknown_key_no_match.toml: backend.gpu: unknown key in [backend]; known keys: url, "
            "max_parallel, num_parallel, vram_gb, max_loaded_models, poll_interval, "
            "request_timeout, queue_timeout, resident_factor"
        ],
        id="unknown-key-lists-known-keys",
    ),
    # ---- values: type and bounds ------------------------------------------------------------
    pytest.param(
        "wrong_type.toml",
        [
            'wrong_type.toml: backend.max_parallel: "4" has the wrong type: '
            "expected an integer, got a string"
        ],
        id="wrong-type",
    ),
    pytest.param(
        "out_of_range.toml",
        ["out_of_range.toml: backend.vram_gb: 0 is out of range: must be > 0.0"],
        id="out-of-range",
    ),
    pytest.param(
        "number_too_large.toml",
        [
            "number_too_large.toml: backend.max_parallel: 99999999999999999999999 is out of "
            "range: must be <= 2147483647"
        ],
        id="number-too-large",
    ),
    pytest.param(
        "url_not_http.toml",
        [
            'url_not_http.toml: backend.url: "localhost:11434" is not a usable URL: it must '
            "start with http:// or https://"
        ],
        id="url-not-http",
    ),
    pytest.param(
        "backends_beside_backend.toml",
        [
            "backends_beside_backend.toml: backends: is set beside [backend]; keep one: [backend] "
            "for one Ollama server, or a [backends.NAME] table for each of several"
        ],
        id="backends-beside-backend",
    ),
    pytest.param(
        "backends_disagree.toml",
        [
            'backends_disagree.toml: backends.bad name: "bad name" is not a backend name: letters, '
            "digits and . _ -, starting with a letter or digit, at most 63 (it goes in a header, "
            "metric labels and the journal)",
            'backends_disagree.toml: backends.gpu1.url: "http://127.0.0.1:11434/" is also '
            "backends.gpu0's url; each backend is its own server",
            'backends_disagree.toml: backends.gpu1.queue_timeout: "10m" differs from '
            f"backends.gpu0.queue_timeout ('5m'); {SHARED}",
            'backends_disagree.toml: backends.bad name.queue_timeout: "10m" differs from '
            f"backends.gpu0.queue_timeout ('5m'); {SHARED}",
        ],
        id="backends-disagree",
    ),
    pytest.param(
        "url_port_out_of_range.toml",
        [
            'url_port_out_of_range.toml: backend.url: "http://127.0.0.1:99999" is not a usable '
            "URL: Port out of range 0-65535"
        ],
        id="url-port-out-of-range",
    ),
    pytest.param(
        "nested_too_deeply.toml",
        ["nested_too_deeply.toml: is nested too deeply to read as a policy file"],
        id="nested-too-deeply",
    ),
    pytest.param(
        "number_not_finite.toml",
        ["number_not_finite.toml: policies.main.terms.vram.swap_above: inf is not a finite number"],
        id="inf-or-nan",
    ),
    # ---- semantic strings: durations, networks ----------------------------------------------
    pytest.param(
        "duration_invalid.toml",
        [f'duration_invalid.toml: backend.queue_timeout: "5 minutes" {DURATION_RULE}'],
        id="invalid-duration",
    ),
    pytest.param(
        "cidr_host_bits_set.toml",
        [
            'cidr_host_bits_set.toml: admin.networks[0]: "10.0.0.1/8" is not an IP network in '
            "CIDR notation (10.0.0.1/8 has host bits set)"
        ],
        id="cidr-host-bits-set",
    ),
    pytest.param(
        "cidr_garbage.toml",
        [
            'cidr_garbage.toml: clients.trusted_proxies[0]: "localhost" is not an IP network in '
            "CIDR notation ('localhost' does not appear to be an IPv4 or IPv6 network)"
        ],
        id="cidr-garbage",
    ),
    # ---- secrets never belong in the file ---------------------------------------------------
    pytest.param(
        "admin_key_inline.toml",
        [f"admin_key_inline.toml: admin.key: {INLINE_SECRET}"],
        id="admin-key-inline",
    ),
    pytest.param(
        "key_env_not_env_name.toml",
        [
            "key_env_not_env_name.toml: admin.key_env: does not name an environment variable; "
            "never write a secret in the policy file — put it in an environment variable and "
            "give that variable's name here (e.g. PROXY_ADMIN_KEY)"
        ],
        id="key-env-not-a-variable-name",
    ),
    # ---- terms ------------------------------------------------------------------------------
    pytest.param(
        "tiers_not_ascending.toml",
        [
            "tiers_not_ascending.toml: policies.main.terms.vram.swap[1].up_to_gb: 16.0 is not "
            "above swap[0].up_to_gb (40); tiers must ascend"
        ],
        id="tiers-not-ascending",
    ),
    pytest.param(
        "unknown_term_type.toml",
        [
            'unknown_term_type.toml: policies.main.terms.affinity.type: "vramm" is not a known '
            f"term type; {KNOWN_TERM_TYPES}"
        ],
        id="unknown-term-type",
    ),
    pytest.param(
        "unknown_term_name.toml",
        [
            'unknown_term_name.toml: policies.main.terms.priority: "priority" is not a known '
            f"term type; {KNOWN_TERM_TYPES}"
        ],
        id="unknown-term-name-without-type",
    ),
    # ---- cross-references: active policy, classes, limits -----------------------------------
    pytest.param(
        "active_missing.toml",
        ["active_missing.toml: active: is missing; it names the policy that orders the queue"],
        id="active-missing",
    ),
    pytest.param(
        "active_names_missing_policy.toml",
        [
            'active_names_missing_policy.toml: active: "balancd" names no policy in this file; '
            "defined: balanced, fifo"
        ],
        id="active-names-missing-policy",
    ),
    pytest.param(
        "policies_empty.toml",
        ["policies_empty.toml: policies: is empty; define at least one [policies.NAME] table"],
        id="policies-empty",
    ),
    pytest.param(
        "policies_absent.toml",
        ["policies_absent.toml: policies: is empty; define at least one [policies.NAME] table"],
        id="policies-absent",
    ),
    pytest.param(
        "class_undefined_in_offsets.toml",
        [
            "class_undefined_in_offsets.toml: policies.main.terms.class_offset.offsets.bulk: "
            f"\"bulk\" is not a class defined under [clients.classes] (policy 'main'); "
            f"{DEFAULT_CLASSES}"
        ],
        id="class-offset-undefined-class",
    ),
    pytest.param(
        "class_undefined_default.toml",
        [
            'class_undefined_default.toml: clients.default_class: "web" is not a class defined '
            f"under [clients.classes]; {DEFAULT_CLASSES}"
        ],
        id="default-class-undefined",
    ),
    pytest.param(
        "queued_per_client_above_max_queue.toml",
        [
            "queued_per_client_above_max_queue.toml: limits.max_queued_per_client: 100 is above "
            "limits.max_queue (50); one client could never reach it"
        ],
        id="per-client-queue-above-total",
    ),
    # ---- all at once: decode problems in file order of sections, then cross-field rules -----
    pytest.param(
        "many_errors.toml",
        [
            "many_errors.toml: favourite_colour: unknown key in the top level; known keys: active, "
            "backend, backends, models, clients, limits, admin, journal, cloud, queue_status, policies",
            "many_errors.toml: backend.max_parallel: 0 is out of range: must be >= 1",
            f'many_errors.toml: backend.poll_interval: "soon" {DURATION_RULE}',
            f"many_errors.toml: admin.key: {INLINE_SECRET}",
            'many_errors.toml: admin.networks[0]: "10.0.0.1/8" is not an IP network in CIDR '
            "notation (10.0.0.1/8 has host bits set)",
            'many_errors.toml: journal.store_prompts: "all" is not one of "full", "hash", "none"',
            "many_errors.toml: policies.balanced.terms.aging.per_second: -1 is out of range: "
            "must be >= 0.0",
            'many_errors.toml: active: "balancd" names no policy in this file; defined: balanced',
            'many_errors.toml: clients.default_class: "web" is not a class defined under '
            f"[clients.classes]; {DEFAULT_CLASSES}",
            'many_errors.toml: policies.balanced.terms.class_offset.offsets.bulk: "bulk" is '
            f"not a class defined under [clients.classes] (policy 'balanced'); {DEFAULT_CLASSES}",
            "many_errors.toml: policies.balanced.terms.vram.swap[1].up_to_gb: 16.0 is not above "
            "swap[0].up_to_gb (40); tiers must ascend",
            "many_errors.toml: limits.max_queued_per_client: 20 is above limits.max_queue (10); "
            "one client could never reach it",
        ],
        id="many-errors-all-reported",
    ),
]


@pytest.fixture
def in_bad_dir(monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run from the fixture directory so messages carry bare fixture names."""
    monkeypatch.chdir(BAD)
    return BAD


@pytest.mark.parametrize(("fixture", "expected"), CASES)
def test_bad_file_reports_exact_message(
    in_bad_dir: Path, fixture: str, expected: list[str]
) -> None:
    """A bad policy file raises PolicyError whose lines are exactly the expected ones, in order."""
    with pytest.raises(PolicyError) as caught:
        load_policy_file(fixture)
    assert caught.value.lines == expected
    assert str(caught.value) == "\n".join(expected)


def test_every_bad_fixture_has_an_expected_message() -> None:
    """No fixture in policy_files/bad/ goes untested, and no expected case lacks its fixture."""
    on_disk = {p.name for p in BAD.glob("*.toml")}
    listed = {case.values[0] for case in CASES} - {"does_not_exist.toml"}
    assert on_disk == listed


# ---- secrets are never echoed ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fixture", "secret"),
    [
        ("admin_key_inline.toml", "hunter2-inline-secret"),
        ("key_env_not_env_name.toml", "hunter2"),
        ("many_errors.toml", "hunter2-inline-secret"),
    ],
)
def test_secret_written_in_the_file_is_never_echoed(
    in_bad_dir: Path, fixture: str, secret: str
) -> None:
    """A value that may be a secret appears in no line of the error."""
    assert secret in (BAD / fixture).read_text()
    with pytest.raises(PolicyError) as caught:
        load_policy_file(fixture)
    assert secret not in str(caught.value)


# ---- input tomllib itself cannot read ----------------------------------------------------------


def test_integer_too_long_to_read_is_a_policy_error() -> None:
    """tomllib raises a bare ValueError (not TOMLDecodeError) for an integer past Python's
    4300-digit limit: it must still be a PolicyError, never a traceback (or a dead reload)."""
    text = 'active = "p"\n[backend]\nvram_gb = ' + "9" * 5000 + "\n[policies.p]\n"
    with pytest.raises(PolicyError) as caught:
        load_policy_text(text.encode(), "long.toml")
    assert caught.value.lines == [
        "long.toml: (syntax): is not valid TOML: exceeds the limit (4300 digits) for integer "
        "string conversion"
    ]


def test_weights_that_would_overflow_a_score_are_rejected() -> None:
    """Finite but huge weights made scores infinite or NaN (1e308 × 2 queued = inf, and
    inf - inf = nan), which leaves the queue's order undefined: weights are bounded."""
    text = """
active = "p"
[policies.p.terms.fairness]
per_queued = 1e308
per_recent = -1e308
[policies.p.terms.aging]
per_second = 1e308
"""
    with pytest.raises(PolicyError) as caught:
        load_policy_text(text.encode(), "huge.toml")
    assert caught.value.lines == [
        "huge.toml: policies.p.terms.fairness.per_queued: 1e+308 is out of range: "
        "must be <= 1000000000.0",
        "huge.toml: policies.p.terms.fairness.per_recent: -1e+308 is out of range: "
        "must be >= -1000000000.0",
        "huge.toml: policies.p.terms.aging.per_second: 1e+308 is out of range: "
        "must be <= 1000000000.0",
    ]
