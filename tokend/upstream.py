"""The SDDC Manager client: login, refresh, revoke. The only place that knows HTTP.

Every failure leaves this module as one of the errors in :mod:`tokend.errors`; nothing from aiohttp,
ssl, json or Unicode escapes. Redirects are never followed: a 3xx on ``POST /v1/tokens`` could carry
the password to another host, so it is an invalid response. Answers are checked at the door
(SPEC §8.2, :mod:`tokend.upstream_answers`); how the server is trusted is :mod:`tokend.upstream_tls`.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from tokend.config import TargetConfig
from tokend.errors import (
    ConfigError,
    CredentialsRejected,
    InvalidResponse,
    RefreshTokenGone,
    TransientError,
    UpstreamError,
)
from tokend.jwtinfo import Claims, decode_claims
from tokend.names import BodyForm, Operation
from tokend.secrets import Secret
from tokend.trust import read_ca_file
from tokend.upstream_answers import (
    checked_access_token,
    encodable,
    parse_date,
    parse_detail,
    parse_retry_after,
    refresh_token_id,
)
from tokend.upstream_tls import one_line, presented_fingerprint, tls_detail, tls_reason, tls_setting
from tokend.values import format_pin

LOGIN_PATH = "/v1/tokens"
REFRESH_PATH = "/v1/tokens/access-token/refresh"
REVOKE_PATH = "/v1/tokens/refresh-token"
MAX_BODY = 1 << 20  # an access token is a few KiB; anything near this is not an SDDC Manager
MAX_ERROR_BODY = 64 << 10  # what is read of an error answer: enough for any Error object
JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}


@dataclass(frozen=True)
class Issued:
    """A token the upstream just issued, with the timing facts expiry tracking needs."""

    access_token: str
    refresh_id: str | None  # from a login that issued one; None after a refresh, or a login without
    claims: Claims
    sent_mono: float
    sent_wall: float
    server_date: float | None
    received_wall: float
    duration: float

    @property
    def clock_skew(self) -> float | None:
        """Upstream clock minus local clock, from the ``Date`` header (±0.5 s resolution)."""
        if self.server_date is None:
            return None
        return self.server_date - (self.sent_wall + self.received_wall) / 2


@dataclass(frozen=True)
class _Response:
    status: int
    headers: Mapping[str, str]
    body: bytes
    sent_mono: float
    sent_wall: float
    received_wall: float
    duration: float


@dataclass(eq=False)
class _Pool:
    """An HTTP session and the calls using it: a retired one is closed only once they are done."""

    session: aiohttp.ClientSession
    in_flight: int = 0


class UpstreamClient:
    """One target's SDDC Manager. One HTTP session, and the refresh body form once it is known."""

    def __init__(self, target: TargetConfig) -> None:
        self.target = target
        self.refresh_form: BodyForm | None = None
        self._ca_pem: bytes | None = None  # the ca_file content self._ssl was built from
        self._ssl = self._first_tls_setting()
        self._pool: _Pool | None = None
        self._retired: list[_Pool] = []
        self._closing: set[asyncio.Task[None]] = set()

    def reconfigure(self, target: TargetConfig) -> None:
        """Take ``target``'s settings (a reload that kept the connection: same url, TLS, user)."""
        assert target.connection_key() == self.target.connection_key()
        self.target = target

    def check_trust(self) -> bool:
        """Re-read ``ca_file``; if its content changed, the next call uses a new trust store.

        SPEC §8.8. Returns True when a new SSL context was built (the next call opens a new
        session; a call in flight finishes on the old one, which is then closed), False when the
        content is unchanged or no ``ca_file`` is in use (pins, ``verify_tls = false``). Raises
        ConfigError naming the target's ``ca_file`` key when the file cannot be read or holds no
        loadable certificate; the current trust store is then kept.
        """
        ca_file = self._ca_file_in_use()
        if ca_file is None:
            return False
        key = self.target.key("ca_file")
        # One read for both the comparison and the context: a rewrite in between cannot slip in.
        pem = read_ca_file(ca_file, key)
        if pem == self._ca_pem:
            return False
        self._ssl = tls_setting(self.target, pem)
        self._ca_pem = pem
        self._retire_session()
        return True

    async def close(self) -> None:
        """Close the HTTP session, and any retired one still waiting for its calls to finish."""
        pools = [*self._retired, *([self._pool] if self._pool is not None else [])]
        self._pool = None
        self._retired = []
        for pool in pools:
            await pool.session.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    def _ca_file_in_use(self) -> Path | None:
        """``ca_file``, unless pins or ``verify_tls = false`` make it irrelevant."""
        if self.target.tls_fingerprint or not self.target.verify_tls:
            return None
        return self.target.ca_file

    def _first_tls_setting(self) -> ssl.SSLContext | aiohttp.Fingerprint | bool:
        ca_file = self._ca_file_in_use()
        if ca_file is None:
            return tls_setting(self.target)
        try:
            pem = read_ca_file(ca_file, self.target.key("ca_file"))
            setting = tls_setting(self.target, pem)
        except ConfigError:
            # The file broke since the config was checked. Fail closed (the system CAs only) rather
            # than crash the keeper; check_trust() reports it and loads the file once it is fixed.
            return ssl.create_default_context()
        self._ca_pem = pem
        return setting

    def _get_pool(self) -> _Pool:
        if self._pool is None or self._pool.session.closed:
            self._pool = _Pool(aiohttp.ClientSession(
                base_url=self.target.url + "/",
                timeout=aiohttp.ClientTimeout(total=self.target.request_timeout),
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=2),
                trust_env=False,
                skip_auto_headers=("User-Agent",),
                headers={"User-Agent": "tokend"},
            ))
        return self._pool

    def _retire_session(self) -> None:
        if self._pool is not None:
            self._retired.append(self._pool)
            self._pool = None
        self._close_idle()

    def _close_idle(self) -> None:
        """Close, in the background, each retired session no call is using any more."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a synchronous caller): close() closes them
            return
        for pool in [p for p in self._retired if p.in_flight == 0]:
            self._retired.remove(pool)
            task = loop.create_task(pool.session.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def login(self, username: str | None, secret: Secret) -> Issued:
        """``POST /v1/tokens`` with a username and password, or an API key."""
        spec = ({"username": username, "password": secret.reveal()} if username is not None
                else {"apiKey": secret.reveal()})
        response = await self._call("login", "POST", LOGIN_PATH, json.dumps(spec).encode())
        if 200 <= response.status < 300:
            return self._issued_from_login(response)
        if response.status in (400, 401, 403):
            raise self._error(CredentialsRejected, response, "login was rejected")
        raise self._http_failure(response, "login")

    async def refresh(self, refresh_id: str) -> Issued:
        """``PATCH /v1/tokens/access-token/refresh``, discovering the body form on first use."""
        form: BodyForm = self.refresh_form or "json_string"
        response = await self._call("refresh", "PATCH", REFRESH_PATH, _refresh_body(form, refresh_id))
        if response.status == 400 and self.refresh_form is None:
            # No form has worked yet: the server may want the bare id (the PowerShell module's form).
            form = "bare"
            response = await self._call("refresh", "PATCH", REFRESH_PATH,
                                        _refresh_body(form, refresh_id))
        if 200 <= response.status < 300:
            issued = self._issued_from_refresh(response)
            self.refresh_form = form
            return issued
        if response.status in (400, 401, 403, 404):
            raise self._error(RefreshTokenGone, response, "the refresh token was refused")
        raise self._http_failure(response, "refresh")

    async def revoke(self, refresh_id: str) -> None:
        """``DELETE /v1/tokens/refresh-token``."""
        form: BodyForm = self.refresh_form or "json_string"
        response = await self._call("revoke", "DELETE", REVOKE_PATH, _refresh_body(form, refresh_id))
        if not 200 <= response.status < 300:
            raise self._http_failure(response, "revoke")

    # -- internals ------------------------------------------------------------------------------

    async def _call(self, operation: Operation, method: str, path: str, body: bytes) -> _Response:
        pool = self._get_pool()
        pool.in_flight += 1
        try:
            return await self._send(pool.session, operation, method, path, body)
        finally:
            pool.in_flight -= 1
            if self._retired:
                self._close_idle()

    async def _send(self, session: aiohttp.ClientSession, operation: Operation, method: str,
                    path: str, body: bytes) -> _Response:
        sent_wall = time.time()
        sent_mono = time.monotonic()
        try:
            # The timeout per call, not per session: a reload may change it and keep the session.
            async with session.request(method, path.lstrip("/"), data=body, headers=JSON_HEADERS,
                                       allow_redirects=False,
                                       timeout=aiohttp.ClientTimeout(
                                           total=self.target.request_timeout)) as resp:
                if 200 <= resp.status < 300:
                    data = await _read_body(resp, operation)
                else:  # the status decides; a long or slow error body must not change its class
                    data = await _read_error_body(resp, sent_mono + self.target.request_timeout / 2)
                return _Response(resp.status, resp.headers, data, sent_mono, sent_wall,
                                 time.time(), time.monotonic() - sent_mono)
        except aiohttp.ServerFingerprintMismatch as exc:
            presented = format_pin(exc.got)
            raise TransientError(
                f"{operation}: TLS certificate {presented} matches no tls_fingerprint pin",
                outcome="tls_error", detail=tls_detail(presented)) from None
        except (aiohttp.ClientSSLError, ssl.SSLError) as exc:
            pin = await presented_fingerprint(self.target.url, self.target.request_timeout)
            raise TransientError(
                f"{operation}: TLS handshake failed ({one_line(tls_reason(exc))}); the server presented"
                f" certificate {pin or 'unknown'}",
                outcome="tls_error", detail=tls_detail(pin)) from None
        except TimeoutError:
            raise TransientError(
                f"{operation}: no answer within {self.target.request_timeout:g}s",
                outcome="timeout") from None
        except aiohttp.ClientError as exc:
            raise TransientError(f"{operation}: {type(exc).__name__}: {one_line(str(exc))}",
                                 outcome="network_error") from None
        except OSError as exc:
            raise TransientError(f"{operation}: {type(exc).__name__}: {exc.strerror or exc}",
                                 outcome="network_error") from None

    def _issued_from_login(self, response: _Response) -> Issued:
        """The TokenPair of a 2xx login (SPEC §8.2).

        A refused answer whose refresh id was usable carries it as ``issued_refresh_id``: the
        upstream accepted the credentials and opened a session the caller should revoke.
        """
        data = _json(response, "login")
        if not isinstance(data, dict):
            raise InvalidResponse("login: the answer is not a TokenPair object")
        refresh_id = refresh_token_id(data.get("refreshToken"))
        try:
            access = checked_access_token(data.get("accessToken"), "login", "accessToken")
            return self._issued(response, access, refresh_id)
        except InvalidResponse as exc:
            if refresh_id is None:
                raise
            raise InvalidResponse(exc.message, status=exc.status,
                                  issued_refresh_id=refresh_id) from None

    def _issued_from_refresh(self, response: _Response) -> Issued:
        data = _json(response, "refresh")
        if not isinstance(data, str):
            raise InvalidResponse("refresh: the answer is not the access token as a JSON string")
        return self._issued(response, checked_access_token(data, "refresh", "access token"), None)

    def _issued(self, response: _Response, access: str, refresh_id: str | None) -> Issued:
        return Issued(
            access_token=access,
            refresh_id=refresh_id,
            claims=decode_claims(access),
            sent_mono=response.sent_mono,
            sent_wall=response.sent_wall,
            server_date=parse_date(response.headers.get("Date")),
            received_wall=response.received_wall,
            duration=response.duration,
        )

    def _error(self, cls: type[UpstreamError], response: _Response, what: str) -> UpstreamError:
        return cls(f"{what} (HTTP {response.status})", status=response.status,
                   detail=parse_detail(response.body),
                   retry_after=parse_retry_after(response.headers.get("Retry-After"),
                                                 response.received_wall))

    def _http_failure(self, response: _Response, operation: Operation) -> UpstreamError:
        if 300 <= response.status < 400:
            return InvalidResponse(
                f"{operation}: HTTP {response.status} redirect not followed (the url must point at"
                " the SDDC Manager itself)", status=response.status)
        return self._error(TransientError, response, f"{operation} failed")


async def _read_body(resp: aiohttp.ClientResponse, operation: str) -> bytes:
    """The whole body, up to MAX_BODY. ``read(n)`` returns what has arrived so far, not n bytes."""
    data = bytearray()
    while chunk := await resp.content.read(MAX_BODY + 1 - len(data)):
        data += chunk
        if len(data) > MAX_BODY:
            raise InvalidResponse(f"{operation}: response body larger than {MAX_BODY} bytes")
    return bytes(data)


async def _read_error_body(resp: aiohttp.ClientResponse, deadline: float) -> bytes:
    """At most MAX_ERROR_BODY bytes of an error answer, whatever arrives by ``deadline`` (monotonic).

    A rejected login must count as a rejection (SPEC §5.5) even when its body is huge, slow or cut
    off: the body only feeds the operator's message, so it is truncated, never an error.
    """
    data = bytearray()
    while len(data) < MAX_ERROR_BODY:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            chunk = await asyncio.wait_for(resp.content.read(MAX_ERROR_BODY - len(data)), left)
        except (TimeoutError, aiohttp.ClientError):
            break
        if not chunk:
            break
        data += chunk
    return bytes(data)


def _refresh_body(form: BodyForm, refresh_id: str) -> bytes:
    if not encodable(refresh_id):  # login refuses such an id; this keeps UnicodeError inside
        raise RefreshTokenGone("the refresh token id is not valid Unicode text and cannot be sent")
    return (json.dumps(refresh_id) if form == "json_string" else refresh_id).encode()


def _json(response: _Response, operation: str) -> Any:
    try:
        return json.loads(response.body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: deep nesting
        raise InvalidResponse(f"{operation}: the answer is not JSON") from None
