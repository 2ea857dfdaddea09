"""The forwarder: a proxy's requests to its target, with tokend's bearer token (SPEC §9.1, §9.2).

One :class:`Forwarder` per proxy (a new one when its target's connection or its pool settings
change): its own aiohttp session and connection pool (``max_upstream_connections``, never the
keeper's), the target's TLS settings exactly (:func:`tokend.upstream_tls.tls_setting`), no redirect
followed, no cookie kept, no environment proxy, bodies never decoded.

:meth:`Forwarder.forward` always ends in an answer to the consumer, and says how it ended:

- no valid token: 503 ``TOKEN_UNAVAILABLE`` with ``Retry-After``; nothing is sent upstream;
- no pool slot within ``request_timeout``: 503 ``UPSTREAM_BUSY``;
- the upstream unreachable (network, TLS): 502 ``UPSTREAM_UNREACHABLE``; no response headers
  within ``response_timeout`` of the request body's end: 504 ``UPSTREAM_TIMEOUT``;
- otherwise the upstream's answer, streamed with backpressure in chunks of at most 64 KiB, except
  error answers (status >= 400), which are read whole (at most 64 KiB), redacted
  (:data:`tokend.logs.REDACTOR`) and passed on. An error answer tokend cannot check (larger, or in
  a coding it cannot decode) keeps its status and gets an Error body of tokend's instead
  (``UPSTREAM_ERROR_WITHHELD``): a secret must not pass because it was big or compressed.

A transfer that stops moving in either direction for ``request_timeout`` is cut: before the answer
has begun, with 408 (the consumer stopped sending) or 504; after, by closing the connection, so a
cut answer never looks complete.

A 401 whose ``errorCode`` is ``Unauthorized`` or ``Unauthenticated`` is the upstream refusing
tokend's token: it is reported to the keeper (``invalidate``: one refresh however many requests
report it, the deferred rate limits of SPEC §8.5) and, when the request body was kept (none, or a
``Content-Length`` of at most 64 KiB), the request is sent once more with the new token. A larger
or chunked body is streamed and not kept: its 401 is passed on while the keeper refreshes.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import ssl
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from tokend.config import ProxyConfig, TargetConfig
from tokend.logs import REDACTOR, get_logger
from tokend.metrics import ProxyMetrics
from tokend.proxy.answers import Forwarded, error_answer, local_answer, read_error
from tokend.proxy.canon import Refused, RequestTarget, upstream_url
from tokend.proxy.headers import request_headers, response_header_pairs
from tokend.proxy.transfer import Transfer
from tokend.serving import ServedToken, ServeError
from tokend.upstream_answers import parse_detail
from tokend.upstream_tls import tls_setting
from tokend.values import format_duration, format_pin

CHUNK = 64 * 1024  # the most either direction holds at once
MAX_KEPT_BODY = 64 * 1024  # a request body kept for a retry after 401
REFUSED_TOKEN_CODES = frozenset({"Unauthorized", "Unauthenticated"})
FAILURE_LOG_INTERVAL = 60.0
# aiohttp adds these unless told not to; the upstream gets what the consumer sent, nothing more
# (an Accept-Encoding the consumer did not send would bring it a body it cannot read).
_SKIP_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
_NO_AUTO_HEADERS: CIMultiDict[None] = CIMultiDict((name, None) for name in _SKIP_AUTO_HEADERS)


class _AsSent(aiohttp.ClientRequest):
    """A request that gets none of aiohttp's own headers, like ``skip_auto_headers`` of all four,
    without building that set anew for every request (measured: the most costly step of aiohttp's
    request set-up in ``bench/proxy.py``). ``tests/test_proxy_forward.py`` pins the attribute,
    which aiohttp has from 3.11.8."""

    def update_auto_headers(self, skip_auto_headers: Iterable[str] | None) -> None:
        self._skip_auto_headers = _NO_AUTO_HEADERS  # read back for Content-Type
log = get_logger()


class TokenKeeper(Protocol):
    """What the forwarder needs from a target's keeper (:class:`tokend.keeper.Keeper`)."""

    def current(self, now: float) -> ServedToken | None:
        """The token to use at ``now``, or None."""

    def unavailable(self, now: float) -> ServeError:
        """The 503 for a request that finds no valid token."""

    async def invalidate(self, token_fingerprint: str) -> ServedToken:
        """The upstream refused ``token_fingerprint``: a newer token (one refresh); ServeError."""


@dataclass
class _TokenRefused:
    """The upstream's 401 to the injected token, read whole: retried, or passed on."""

    status: int
    reason: str
    headers: CIMultiDictProxy[str]
    body: bytes


class _Cut(Exception):
    """The answer had begun when the transfer failed: the consumer's connection is closed."""


class Forwarder:
    """One proxy's connection pool to its target, and the forwarding of one request at a time."""

    def __init__(self, target: TargetConfig, proxy: ProxyConfig, metrics: ProxyMetrics,
                 ca_pem: bytes | None = None) -> None:
        """Raises ConfigError (naming the target's ``ca_file``) if the TLS settings cannot load."""
        self.target = target
        self.proxy = proxy
        self.metrics = metrics
        self.ca_pem = ca_pem
        self._ssl = tls_setting(target, ca_pem)
        self._host = urlsplit(target.url).netloc
        self._slots = asyncio.Semaphore(proxy.max_upstream_connections)
        self._session: aiohttp.ClientSession | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._refused_logged: str | None = None
        self._failure_logged_at = -math.inf
        self._failures_suppressed = 0
        self.in_flight = 0

    @staticmethod
    def key_for(target: TargetConfig, proxy: ProxyConfig) -> tuple[object, ...]:
        """What must stay equal on reload for a forwarder to stay in use."""
        return (target.connection_key(), target.request_timeout, proxy.max_upstream_connections,
                proxy.response_timeout)

    def settings_key(self) -> tuple[object, ...]:
        """:meth:`key_for` this forwarder's settings."""
        return self.key_for(self.target, self.proxy)

    async def close(self) -> None:
        """Close the connection pool (answers in flight on it fail) and end background reports."""
        for task in list(self._background):
            task.cancel()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=self.proxy.max_upstream_connections,
                                               limit_per_host=0),
                # Connecting counts against request_timeout; the rest is bounded by Transfer.
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.target.request_timeout),
                auto_decompress=False,
                trust_env=False,
                cookie_jar=aiohttp.DummyCookieJar(),  # one consumer's cookies are not another's
                request_class=_AsSent,
                read_bufsize=CHUNK,
            )
        return self._session

    # -- one request ----------------------------------------------------------------------------

    async def forward(self, request: web.BaseRequest, route: RequestTarget,
                      keeper: TokenKeeper | None) -> Forwarded:
        """Send ``request`` (already checked, its target canonical) to the target; answer it."""
        self.in_flight += 1
        try:
            return await self._forward(request, route, keeper)
        finally:
            self.in_flight -= 1

    async def _forward(self, request: web.BaseRequest, route: RequestTarget,
                       keeper: TokenKeeper | None) -> Forwarded:
        now = time.monotonic()
        served = keeper.current(now) if keeper is not None else None
        if served is None:
            return self._no_token(keeper, now)
        try:
            url = upstream_url(self.target.url, route)
        except Refused as exc:
            return local_answer(400, "BAD_REQUEST", str(exc), "refused")
        body: bytes | None = None
        streamed = request.body_exists and not (
            request.content_length is not None and request.content_length <= MAX_KEPT_BODY)
        if request.body_exists and not streamed:
            await _send_continue(request)
            try:
                async with asyncio.timeout(self.target.request_timeout):
                    body = await request.content.read()
            except TimeoutError:
                return local_answer(408, "BAD_REQUEST", "the request body did not arrive within"
                              f" {self.target.request_timeout:g} s", "refused")
        first = await self._exchange(request, url, served, body, streamed)
        if not isinstance(first, _TokenRefused):
            return first
        kept = not streamed
        self._log_refused(served, retry=kept and keeper is not None)
        if keeper is None:
            return error_answer(self.target.name, first.status, first.reason, first.headers,
                                          first.body)
        if not kept:
            self._report_in_background(keeper, served.fingerprint)
            return error_answer(self.target.name, first.status, first.reason, first.headers,
                                          first.body)
        try:
            fresh = await keeper.invalidate(served.fingerprint)
        except ServeError:
            return error_answer(self.target.name, first.status, first.reason, first.headers,
                                          first.body)
        second = await self._exchange(request, url, fresh, body, False, retry=True)
        if isinstance(second, _TokenRefused):  # refused again: passed on, never a loop
            return error_answer(self.target.name, second.status, second.reason, second.headers,
                                          second.body, outcome="retried_after_401")
        if second.outcome == "forwarded":
            second.outcome = "retried_after_401"
        return second

    def _no_token(self, keeper: TokenKeeper | None, now: float) -> Forwarded:
        if keeper is None:
            return local_answer(503, "TOKEN_UNAVAILABLE", f"target '{self.target.name}' is not running"
                          " (it is being reconfigured)", "unavailable",
                          remediation="Retry after the Retry-After interval", retry_after=5)
        err = keeper.unavailable(now)
        return local_answer(503, "TOKEN_UNAVAILABLE", err.message, "unavailable",
                      remediation=err.remediation, retry_after=err.retry_after,
                      reference_token=err.reference_token)

    async def _exchange(self, request: web.BaseRequest, url: str, served: ServedToken,
                        body: bytes | None, streamed: bool,
                        retry: bool = False) -> Forwarded | _TokenRefused:
        """One request upstream and its answer; a refused token on a first try is returned."""
        try:
            headers = request_headers(request.headers.items(), self._host, served.access_token)
        except Refused as exc:
            return local_answer(400, "BAD_REQUEST", str(exc), "refused")
        if streamed and request.content_length is not None:
            headers["Content-Length"] = str(request.content_length)
        try:
            if self._slots.locked():  # wait for a slot; a free one is taken without a timer
                async with asyncio.timeout(self.target.request_timeout):
                    await self._slots.acquire()
            else:
                await self._slots.acquire()
        except TimeoutError:
            return local_answer(503, "UPSTREAM_BUSY", f"all {self.proxy.max_upstream_connections}"
                          f" connections to target '{self.target.name}' stayed busy for"
                          f" {self.target.request_timeout:g} s", "unavailable",
                          remediation="Retry later, or raise max_upstream_connections",
                          retry_after=1)
        transfer = Transfer(self.target.request_timeout, self.proxy.response_timeout)
        try:
            return await self._send(request, url, headers, body, streamed, transfer, retry)
        except _Cut as exc:
            _cut(request)
            assert transfer.answer is not None
            return Forwarded(transfer.answer, transfer.answer.status, "upstream_error", str(exc))
        finally:
            self._slots.release()

    async def _send(self, request: web.BaseRequest, url: str, headers: CIMultiDict[str],
                    body: bytes | None, streamed: bool, transfer: Transfer,
                    retry: bool) -> Forwarded | _TokenRefused:
        loop = asyncio.get_running_loop()
        data: Any = self._upload(request, transfer) if streamed else body
        first_wait = self.target.request_timeout if streamed else self.proxy.response_timeout
        started = loop.time()
        try:
            async with transfer.start(first_wait), self._get_session().request(
                    request.method, URL(url, encoded=True), headers=headers, data=data,
                    allow_redirects=False) as resp:
                self.metrics.upstream_answered(loop.time() - started)
                transfer.moved()
                if resp.status >= 400 and _has_body(request.method, resp.status):
                    kept = await read_error(resp, transfer)
                    if (resp.status == 401 and not retry and kept is not None
                            and parse_detail(kept).error_code in REFUSED_TOKEN_CODES):
                        return _TokenRefused(resp.status, resp.reason or "", resp.headers,
                                             kept)
                    return error_answer(self.target.name, resp.status, resp.reason or "",
                                                  resp.headers, kept)
                return await self._stream_answer(request, resp, transfer)
        except TimeoutError as exc:
            if transfer.answer is not None:
                raise _Cut(f"the answer stopped moving for {self.target.request_timeout:g} s") \
                    from None
            if isinstance(exc, aiohttp.ServerTimeoutError):  # connecting took too long
                return self._failed(504, "UPSTREAM_TIMEOUT", "could not connect within"
                                    f" {self.target.request_timeout:g} s")
            if transfer.waiting_on_consumer:
                return local_answer(408, "BAD_REQUEST", "the request body stopped arriving for"
                              f" {self.target.request_timeout:g} s", "refused")
            if streamed and transfer.answer is None and not transfer.body_sent:
                return self._failed(504, "UPSTREAM_TIMEOUT", "the upstream stopped reading the"
                                    f" request body for {self.target.request_timeout:g} s")
            return self._failed(504, "UPSTREAM_TIMEOUT", "no answer within"
                                f" {format_duration(self.proxy.response_timeout)}")
        except aiohttp.ServerFingerprintMismatch as exc:
            return self._failed(502, "UPSTREAM_UNREACHABLE", f"TLS certificate {format_pin(exc.got)}"
                                " matches no tls_fingerprint pin of the target")
        except (aiohttp.ClientSSLError, ssl.SSLError) as exc:
            return self._failed(502, "UPSTREAM_UNREACHABLE",
                                f"TLS handshake failed ({_one_line(str(exc))})")
        except (aiohttp.ClientError, OSError) as exc:
            if transfer.answer is not None:
                raise _Cut(f"the answer was cut short: {type(exc).__name__}") from None
            return self._failed(502, "UPSTREAM_UNREACHABLE",
                                f"{type(exc).__name__}: {_one_line(str(exc))}")

    async def _upload(self, request: web.BaseRequest,
                      transfer: Transfer) -> AsyncIterator[bytes]:
        """The consumer's body, chunk by chunk: aiohttp asks for the next once it sent this one."""
        await _send_continue(request)
        while True:
            transfer.waiting_on_consumer = True
            chunk = await request.content.read(CHUNK)
            transfer.waiting_on_consumer = False
            if not chunk:
                break
            transfer.moved()
            yield chunk
            transfer.moved()
        transfer.sent()

    async def _stream_answer(self, request: web.BaseRequest, resp: aiohttp.ClientResponse,
                             transfer: Transfer) -> Forwarded:
        """The upstream's status, headers and body, unchanged; the body as it arrives."""
        answer = web.StreamResponse(status=resp.status, reason=resp.reason,
                                    headers=response_header_pairs(resp.headers.items()))
        # Consumer-side failures are the consumer leaving: not the upstream's fault.
        try:
            await answer.prepare(request)
        except (ConnectionError, aiohttp.ClientConnectionResetError):
            return Forwarded(answer, resp.status, "forwarded", "the consumer went away")
        transfer.answer = answer
        async for chunk in resp.content.iter_chunked(CHUNK):
            try:
                await answer.write(chunk)
            except (ConnectionError, aiohttp.ClientConnectionResetError):
                return Forwarded(answer, resp.status, "forwarded", "the consumer went away")
            transfer.moved()
        with contextlib.suppress(ConnectionError, aiohttp.ClientConnectionResetError):
            await answer.write_eof()
        return Forwarded(answer, resp.status, "forwarded")

    def _failed(self, status: int, code: str, message: str) -> Forwarded:
        """A 502 or 504 of tokend's, logged at most once a minute per proxy."""
        now = time.monotonic()
        if now - self._failure_logged_at >= FAILURE_LOG_INTERVAL:
            log.warning("proxy.upstream_failed", target=self.target.name, outcome=code,
                        error=message, suppressed=self._failures_suppressed)
            self._failure_logged_at = now
            self._failures_suppressed = 0
        else:
            self._failures_suppressed += 1
        remediation = ("Check that the SDDC Manager is reachable from tokend (tokend status shows"
                       " the keeper's view)")
        return local_answer(status, code, f"target '{self.target.name}': {message}", "upstream_error",
                      remediation=remediation)

    def _log_refused(self, served: ServedToken, retry: bool) -> None:
        if self._refused_logged != served.fingerprint:  # once per token, however many saw it
            self._refused_logged = served.fingerprint
            log.info("proxy.token_refused", target=self.target.name,
                     fingerprint=served.fingerprint, retry=retry)

    def _report_in_background(self, keeper: TokenKeeper, token_fingerprint: str) -> None:
        """Report a refused token without holding the consumer's answer back."""
        async def report() -> None:
            with contextlib.suppress(ServeError):
                await keeper.invalidate(token_fingerprint)

        task = asyncio.get_running_loop().create_task(report())
        self._background.add(task)
        task.add_done_callback(self._background.discard)


# -- helpers without state -----------------------------------------------------------------------


async def _send_continue(request: web.BaseRequest) -> None:
    """``100 Continue`` for a client that waits for it before sending its body (curl does)."""
    if request.version >= (1, 1) and request.headers.get("Expect", "").lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")


def _has_body(method: str, status: int) -> bool:
    return method != "HEAD" and status not in (204, 304)


def _cut(request: web.BaseRequest) -> None:
    """Close the consumer's connection without ending the answer: it must not look complete."""
    transport = request.transport
    if transport is not None:
        transport.abort()


def _one_line(text: str) -> str:
    return " ".join(REDACTOR.text(text).split())[:300]
