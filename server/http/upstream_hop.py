"""The forwarded request's hop to Ollama, on aiohttp's client.

Why aiohttp here and httpx elsewhere: measured side by side in one run (bench/upstream_hop.py,
docs/performance.md), a minimal pass-through on aiohttp's client adds about 60 % of what the same
pass-through on httpx adds per small request and serves 2.5 times the requests a second at 16
concurrent — httpx's connection pool and its request/response objects were the largest single
cost of the sidecar. The poller, the command-line tools and the tests keep httpx, where a few
requests a second make the difference moot.

This module is the only one that knows aiohttp: what it hands out is an `UpstreamAnswer` (status,
raw headers, raw body chunks) and its errors are `ProxyError` (before Ollama's status line) and
`UpstreamBroken` (after it), or `UploadBroken` when the client's own streamed body broke off.
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import AsyncIterator

import aiohttp
from yarl import URL

from server.http.dialects import ProxyError

# aiohttp would add these when the client did not send them (and a Content-Type to a body): the
# request goes to Ollama as the client sent it, so none is added.
_NO_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
CONNECT_TIMEOUT_S = 10.0
# aiohttp stops reading a connection once twice this much of its answer waits unread: how far
# the sidecar reads ahead of a slow client, per request (server/http/forward.py's relay).
READ_AHEAD = 128 * 1024
WHOLE_BODY_LIMIT = 1024 * 1024  # a request body above this is written in slices


class Unreachable(ProxyError):
    """No connection to Ollama could be made, so nothing of the request reached it (it may be
    sent to another backend). `reason`: why, without the URL (health and events are public)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(502, message)
        self.reason = reason


class UpstreamBroken(Exception):
    """Ollama's answer broke off after its status line: reset, closed early, or no byte within
    the upstream timeout. The message says which."""


class UploadBroken(Exception):
    """The client's streamed body ended early (it disconnected, or stalled past the body
    timeout) while it was being sent to Ollama: nobody is left to answer."""


class UpstreamAnswer:
    """Ollama's status line and headers; the body is read with `chunks()`, raw (no decoding of
    the transfer or content encoding beyond the chunked framing)."""

    __slots__ = ("_done", "_response", "has_length", "raw_headers", "status_code")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status_code = response.status
        self.raw_headers: tuple[tuple[bytes, bytes], ...] = response.raw_headers
        self.has_length = response.content_length is not None
        self._done = False

    async def chunks(self) -> AsyncIterator[bytes]:
        """Everything received since the last chunk, joined (at least one byte, as it arrives)."""
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:  # sock_read: no byte within the timeout
            raise UpstreamBroken(describe(exc)) from None
        self._done = True

    async def aclose(self) -> None:
        """Give the connection back to the pool when the answer was read to its end; otherwise
        close it, which is how Ollama learns the request was abandoned (it stops generating)."""
        if self._done:
            self._response.release()
        else:
            self._response.close()


class UpstreamHop:
    """One connection pool to Ollama, shared by every forwarded request. Made on the running
    loop (aiohttp's session belongs to one) and closed by the sidecar's shutdown."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def _open_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                # Idle connections close after 10 s: a burst of a thousand streams must not
                # leave a thousand sockets (and their buffers) open for long after it.
                connector=aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=10.0),
                auto_decompress=False,  # byte for byte: a gzip answer stays gzip
                cookie_jar=aiohttp.DummyCookieJar(),  # one pool serves every client: keep none
                skip_auto_headers=_NO_AUTO_HEADERS,
                trust_env=False,  # the upstream is named explicitly; no proxy env detours
                timeout=aiohttp.ClientTimeout(total=None),
                read_bufsize=READ_AHEAD,
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def open(
        self,
        *,
        method: str,
        url: str,
        headers: list[tuple[bytes, bytes]],
        content: bytes | AsyncIterator[bytes],
        upstream_timeout: float,
    ) -> UpstreamAnswer:
        """Send the request and wait for Ollama's status line and headers (its first byte).

        Refused/unreachable or an unusable upstream URL -> ProxyError 502; no answer within
        `upstream_timeout` -> 504. `upstream_timeout` is also the longest silence allowed between
        two chunks of the answer afterwards (UpstreamBroken).
        """
        try:
            target = URL(url, encoded=True)  # the path and query exactly as the client sent them
            if target.scheme not in ("http", "https"):  # never the URL itself: it may hold a password
                raise ValueError(f"the scheme is {target.scheme or 'missing'}, not http or https")
            if not target.host:
                raise ValueError("it names no host")
            where = target.origin()
            target.port  # noqa: B018 — a port out of range raises here, not inside the pool
        except ValueError as exc:
            raise ProxyError(502, f"Ollama's URL is unusable: {exc}") from None
        sent = _as_str(headers)
        if target.user is not None or target.password is not None:
            # user:password in backend.url (Ollama behind a gateway with basic auth) is the
            # request's Authorization, in place of the client's, as a browser or curl would do
            # it (aiohttp refuses a request that has both).
            pair = f"{target.user or ''}:{target.password or ''}".encode()
            sent = [(k, v) for k, v in sent if k.lower() != "authorization"]
            sent.append(("Authorization", "Basic " + base64.b64encode(pair).decode("ascii")))
            target = target.with_user(None)
        upload: list[BaseException] = []  # what broke the client's streamed body, if anything
        connect = min(upstream_timeout, CONNECT_TIMEOUT_S)
        # `connect` covers the name lookup and the pool too; `sock_read` the silence between
        # reads of the answer. aiohttp times no body write of its own, so sending the body and
        # waiting for the status line is bounded here: in all by `upstream_timeout` (after the
        # connect time, so an unreachable Ollama is reported as such) for a body in hand; for a
        # streamed upload by its progress — Ollama must take each piece, and then answer,
        # within `upstream_timeout`, however long the whole takes (a multi-gigabyte blob).
        timeout = aiohttp.ClientTimeout(total=None, connect=connect, sock_connect=connect,
                                        sock_read=upstream_timeout)
        pace: _Pace | None = None
        try:
            async with asyncio.timeout(upstream_timeout + connect) as expiry:
                data: bytes | AsyncIterator[bytes] | None
                if not isinstance(content, bytes):
                    pace = _Pace(expiry, upstream_timeout)
                    data = _watched(content, upload, pace)
                elif len(content) > WHOLE_BODY_LIMIT:
                    # A large body (images in a chat) goes in slices, so that no single write
                    # holds the loop; its length is known, so it is still not chunked.
                    sent.append(("Content-Length", str(len(content))))
                    data = _slices(content)
                else:
                    data = content or None
                try:
                    response = await self._open_session().request(
                        method, target, headers=sent, data=data, timeout=timeout, allow_redirects=False,
                    )
                finally:
                    if pace is not None:
                        pace.live = False  # the upload may go on in aiohttp's task; the deadline ends here
        except aiohttp.ConnectionTimeoutError as exc:  # no connection at all: unreachable, not slow
            raise Unreachable(f"Ollama is unreachable at {where}: {describe(exc)}", type(exc).__name__) from None
        except (aiohttp.ServerTimeoutError, TimeoutError) as exc:
            if upload:
                raise UploadBroken(describe(upload[0])) from None
            raise ProxyError(504, f"Ollama did not answer in time ({type(exc).__name__})") from None
        except aiohttp.InvalidURL as exc:
            raise ProxyError(502, f"Ollama's URL is unusable: {exc}") from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            if upload:  # the client's body broke off, not the connection to Ollama
                raise UploadBroken(describe(upload[0])) from None
            # Refused or not found before a connection existed: not one byte of it was sent.
            message = f"Ollama is unreachable at {where}: {describe(exc)}"
            if isinstance(exc, aiohttp.ClientConnectorError):  # its texts name the host and port
                raise Unreachable(message, _no_address(exc.os_error)) from None
            raise ProxyError(502, message) from None
        return UpstreamAnswer(response)


async def _slices(body: bytes, size: int = 256 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start:start + size]


class _Pace:
    """A streamed upload's deadline, moved by its progress: none while the client's next piece
    is awaited (the body timeout governs the client), `seconds` from each piece handed over."""

    def __init__(self, deadline: asyncio.Timeout, seconds: float) -> None:
        self.deadline, self.seconds, self.live = deadline, seconds, True
        self.loop = asyncio.get_running_loop()

    def _move(self, when: float | None) -> None:
        # The upload runs in aiohttp's own task: once open() has left its deadline (Ollama
        # answered early) or the deadline fired, there is nothing left to move.
        if self.live and not self.deadline.expired():
            self.deadline.reschedule(when)

    def waiting_for_client(self) -> None:
        self._move(None)

    def waiting_for_ollama(self) -> None:
        self._move(self.loop.time() + self.seconds)


async def _watched(chunks: AsyncIterator[bytes], broke: list[BaseException], pace: _Pace) -> AsyncIterator[bytes]:
    """The client's streamed body, moving the deadline as it goes and noting what ended it early
    (a disconnect, a body timeout)."""
    pieces = aiter(chunks)
    try:
        while True:
            pace.waiting_for_client()
            try:
                chunk = await anext(pieces)
            except StopAsyncIteration:
                break
            pace.waiting_for_ollama()
            yield chunk
        pace.waiting_for_ollama()  # for the status line
    except Exception as exc:
        broke.append(exc)
        raise


def _as_str(headers: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    """aiohttp writes header values as UTF-8 text. A value that is UTF-8 (a name, a user agent
    with an accent) therefore leaves byte for byte; any other byte above 0x7f is read as
    Latin-1, which is what HTTP said such bytes meant, and leaves as its UTF-8 form."""
    out = []
    for key, value in headers:
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            text = value.decode("latin-1")
        out.append((key.decode("latin-1"), text))
    return out


def _no_address(error: OSError) -> str:
    """Why a connection failed, without the address asyncio writes into the message."""
    kind = type(error).__name__
    return f"{kind}: {os.strerror(error.errno)}" if error.errno else kind


def describe(exc: BaseException) -> str:
    """An exception in words. Client libraries often raise with an empty message (a bare
    timeout, a disconnect), which alone would read "Ollama is unreachable: " — the class name
    says what."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

