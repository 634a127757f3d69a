"""Admin authentication: the peer's network, an `X-Admin-Key`, or a session token from /proxy/auth.

With no key configured only the admin networks are admin — never everyone (the seed's mistake).
Keys are compared in constant time; tokens are random, bound to nothing but their expiry, stored
only as hashes, and neither is ever forwarded upstream or written to a log.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import deque
from collections.abc import Callable, Mapping, Sequence

from starlette.datastructures import Headers

from server.http.dialects import ProxyError
from server.http.identity import (
    ADMIN_KEY_HEADER,
    ADMIN_TOKEN_HEADER,
    IPAddress,
    IPNetwork,
    in_networks,
    named_by_browser,
)

SESSION_COOKIE = "smart_proxy_session"

_ATTEMPT_WINDOW = 60.0
_SWEEP_AT = 10_000  # tracked addresses before stale ones are swept


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def cookie(headers: Headers, name: str) -> str | None:
    for value in headers.getlist("cookie"):
        for part in value.split(";"):
            key, sep, val = part.strip().partition("=")
            if sep and key == name:
                return val
    return None


class AdminAuth:
    def __init__(self, env: Mapping[str, str], clock: Callable[[], float]) -> None:
        self._env = env
        self._clock = clock
        self._sessions: dict[str, float] = {}  # sha256(token) -> expiry on `clock`
        self._attempts: dict[str, deque[float]] = {}

    def configured_key(self, key_env: str) -> str | None:
        key = self._env.get(key_env, "")
        return key or None

    def is_admin(
        self,
        *,
        address: IPAddress | None,
        networks: Sequence[IPNetwork],
        headers: Headers,
        key_env: str,
    ) -> bool:
        # A browser that named the sidecar by a host name may be another site's page after a DNS
        # rebinding: for it the network is not enough (docs/dashboards.md, Security).
        if in_networks(address, networks) and not named_by_browser(headers):
            return True
        key = self.configured_key(key_env)
        offered = headers.get(ADMIN_KEY_HEADER)
        if key is not None and offered is not None and _same(offered, key):
            return True
        token = headers.get(ADMIN_TOKEN_HEADER) or cookie(headers, SESSION_COOKIE)
        return token is not None and self._valid_token(token)

    def logout(self, headers: Headers) -> None:
        """Forget the session the request names (X-Admin-Token or the cookie), if any."""
        token = headers.get(ADMIN_TOKEN_HEADER) or cookie(headers, SESSION_COOKIE)
        if token is not None:
            self._sessions.pop(_digest(token), None)

    def _valid_token(self, token: str) -> bool:
        digest = _digest(token)
        expiry = self._sessions.get(digest)
        if expiry is None:
            return False
        if self._clock() >= expiry:
            del self._sessions[digest]
            return False
        return True

    def login(
        self, *, address: str, offered: str, key_env: str, lifetime: float, per_minute: int
    ) -> str:
        """A new session token for the right key; ProxyError 429/403/401 otherwise."""
        now = self._clock()
        self._count_attempt(address, now, per_minute)
        key = self.configured_key(key_env)
        if key is None:
            raise ProxyError(403, f"no admin key is configured (set {key_env}); only the admin networks are admin")
        if not _same(offered, key):
            raise ProxyError(401, "wrong admin key")
        token = secrets.token_urlsafe(32)
        self._sessions = {d: e for d, e in self._sessions.items() if e > now}
        self._sessions[_digest(token)] = now + lifetime
        return token

    def _count_attempt(self, address: str, now: float, per_minute: int) -> None:
        if len(self._attempts) > _SWEEP_AT:
            self._attempts = {
                a: q for a, q in self._attempts.items() if q and q[-1] > now - _ATTEMPT_WINDOW
            }
        attempts = self._attempts.setdefault(address, deque())
        while attempts and attempts[0] <= now - _ATTEMPT_WINDOW:
            attempts.popleft()
        if len(attempts) >= per_minute:
            raise ProxyError(
                429,
                "too many authentication attempts from this address",
                retry_after=attempts[0] + _ATTEMPT_WINDOW - now,
            )
        attempts.append(now)


def _same(offered: str, key: str) -> bool:
    return hmac.compare_digest(offered.encode(), key.encode())
