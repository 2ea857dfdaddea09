"""A fake SDDC Manager: the token API and one protected endpoint, served by a real aiohttp server.

It follows the vendor's OpenAPI extract (``shared/sddc-manager-tokens.openapi.json``):

- ``POST /v1/tokens`` takes ``{"username", "password"}`` or ``{"apiKey"}`` and answers 201 with a
  ``TokenPair`` whose access token is an HS256 JWT signed with a secret of this process;
- ``PATCH /v1/tokens/access-token/refresh`` takes the refresh token id as a JSON string (or, in a
  configurable mode, the bare id) and answers 200 with the new access token as a JSON string;
- ``DELETE /v1/tokens/refresh-token`` revokes a refresh token and answers 204;
- ``GET /v1/domains`` answers a one-domain ``PageOfDomain`` to a valid bearer token, else 401.

Failures are ``Error`` objects shaped like the vendor's. :class:`Faults` makes the fake misbehave on
demand (errors, outages, delays, dropped connections, redirects, malformed answers, odd claims and
TokenPair shapes, clock skew) so tests can drive a client through every path. It is used by
``tokend demo``, ``tokend fake-sddc`` and the tests. Not safe across threads: one event loop owns it.
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import ipaddress
import json
import math
import os
import secrets
import ssl
import string
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import jwt
from aiohttp import web

Operation = Literal["login", "refresh", "revoke", "domains"]
FaultTarget = Literal["login", "refresh", "revoke", "domains", "any"]
BodyForm = Literal["json_string", "bare"]
MalformedKind = Literal[
    "not_json", "not_jwt", "no_exp", "expired", "iat_future", "missing_fields", "wrong_types",
    # odd `exp` claims (SPEC §8.1): a lifetime to cap, or a claim that is no number
    "exp_milliseconds", "exp_after_9999", "exp_string", "exp_true", "exp_1e308",
    # TokenPair shapes (SPEC §8.2): the refresh id as a bare string, or none at all (login only)
    "refresh_id_bare", "refresh_id_absent",
    # the access token's text: whitespace around it (fine once trimmed), a newline inside it
    "token_padded", "token_newline",
]
DropWhen = Literal["headers", "no_response"]

DEFAULT_USERS: Mapping[str, str] = {"administrator@vsphere.local": "VMware1!"}
TOKEN_OPERATIONS: frozenset[str] = frozenset({"login", "refresh", "revoke"})
ISSUER = "vcf-auth"
AUDIENCE = "sddc-services"
SCOPE = ["ADMIN", "OPERATOR", "VIEWER"]
API_KEY_USER = "automation@vsphere.local"
UNAUTHORIZED_MESSAGE = "Authorization Header is missing or not in correct format"
# 10000-01-01T00:00:00Z: the first NumericDate past year 9999 (Python's datetime ends before it).
YEAR_10000 = 253402300800
# Kinds whose access token carries a claim tokend must cope with; the fake issues it like any other
# (it is in ``issued_access_tokens``, so leak checks look for it).
ODD_CLAIM_KINDS: frozenset[str] = frozenset(
    {"exp_milliseconds", "exp_after_9999", "exp_string", "exp_true", "exp_1e308"}
)

_REFERENCE_ALPHABET = string.ascii_uppercase + string.digits
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_RouteHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def reference_token() -> str:
    """A random six-character upper-case reference token, like the ones SDDC Manager logs."""
    return "".join(secrets.choice(_REFERENCE_ALPHABET) for _ in range(6))


def error_body(error_code: str, message: str, remediation: str) -> dict[str, str]:
    """An ``Error`` object as SDDC Manager sends it, with a fresh ``referenceToken``."""
    return {
        "errorCode": error_code,
        "message": message,
        "remediationMessage": remediation,
        "referenceToken": reference_token(),
    }


def _json_response(body: object, status: int, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        content_type="application/json",
        headers=headers,
    )


def _error_response(status: int, code: str, message: str, remediation: str) -> web.Response:
    return _json_response(error_body(code, message, remediation), status)


@dataclass
class CallRecord:
    """One request the fake answered (or dropped: ``status`` 0)."""

    operation: Operation
    status: int
    at: float  # time.monotonic() when the request arrived
    body_form: BodyForm | None
    request_body: bytes
    request_headers: dict[str, str]

    @property
    def refresh_id(self) -> str | None:
        """The refresh token id a refresh or revoke call named, in either body form."""
        if self.body_form is None:
            return None
        text = self.request_body.decode(errors="replace")
        return str(json.loads(text)) if self.body_form == "json_string" else text.strip()


@dataclass
class _Fault:
    """One scripted misbehaviour, applied to the next ``remaining`` matching calls."""

    target: FaultTarget
    kind: Literal["fail", "drop", "redirect", "malformed"]
    remaining: int
    status: int = 0
    body: dict[str, Any] | str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    location: str = ""
    malformed: MalformedKind = "not_json"
    drop_when: DropWhen = "headers"

    def matches(self, operation: Operation) -> bool:
        """Whether this fault applies to a call of ``operation`` ("any" means every token endpoint)."""
        if self.target == "any":
            return operation in TOKEN_OPERATIONS
        return self.target == operation


class Faults:
    """The fault-injection knobs of one :class:`FakeSddc`. Tests set them at any time.

    Scripted faults (``fail_next``, ``drop_next``, ``redirect_next``, ``malformed_next``) are kept in
    one queue and consumed in the order they were added, each by the calls it matches (a malformed
    answer only by a call that would have succeeded). The target ``"any"`` matches the three token
    endpoints, not ``GET /v1/domains``; so do ``down`` and ``down_mode``.
    """

    def __init__(self, revoke_all: Callable[[], None]) -> None:
        self._revoke_all = revoke_all
        self.down = False
        self.down_mode: Literal["503", "drop"] = "503"
        self.delay = 0.0
        self.delays: dict[str, float] = {}
        self.clock_skew = 0.0
        self.echo_secrets_in_errors = False
        self.queue: list[_Fault] = []
        self.revoke_access: Callable[[], None] | None = None  # set by FakeSddc

    def reset(self) -> None:
        """Back to a well-behaved server (refresh tokens already revoked stay revoked)."""
        self.down = False
        self.down_mode = "503"
        self.delay = 0.0
        self.delays = {}
        self.clock_skew = 0.0
        self.echo_secrets_in_errors = False
        self.queue.clear()

    def fail_next(
        self,
        operation: FaultTarget,
        status: int,
        body: dict[str, Any] | str | None = None,
        count: int = 1,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Answer the next ``count`` calls of ``operation`` with ``status`` and ``body``.

        ``body`` ``None`` sends an ``Error`` object (errorCode ``INTERNAL_SERVER_ERROR``); a ``str`` is
        sent as ``text/plain``. ``headers`` go on the answer, e.g. ``{"Retry-After": "2"}`` with 429.
        """
        self.queue.append(
            _Fault(operation, "fail", count, status=status, body=body, headers=dict(headers or {}))
        )

    def drop_next(self, operation: FaultTarget, count: int = 1, when: DropWhen = "headers") -> None:
        """Break the connection on the next ``count`` calls of ``operation``.

        ``when="headers"`` sends the status line, headers and part of the body, then closes;
        ``when="no_response"`` closes without answering.
        """
        self.queue.append(_Fault(operation, "drop", count, drop_when=when))

    def redirect_next(
        self, operation: FaultTarget, location: str, status: int = 307, count: int = 1
    ) -> None:
        """Answer the next ``count`` calls of ``operation`` with a redirect to ``location``."""
        self.queue.append(_Fault(operation, "redirect", count, status=status, location=location))

    def malformed_next(self, operation: FaultTarget, kind: MalformedKind, count: int = 1) -> None:
        """Replace the next ``count`` successful answers to ``operation`` with ones broken as ``kind``.

        Calls that fail anyway (wrong credentials, unknown refresh id) fail as usual and leave the
        fault queued.

        ``not_json``: an HTML body; ``not_jwt``: access token ``"not-a-jwt"``; ``no_exp``: a JWT without
        ``exp``; ``expired``: ``exp`` in the past; ``iat_future``: ``iat`` an hour ahead;
        ``missing_fields``: ``{}``; ``wrong_types``: the access token is a number.

        Odd claims, each in an access token the fake issues (recorded in ``issued_access_tokens``):
        ``exp_milliseconds``: ``exp`` is ``iat * 1000``; ``exp_after_9999``: ``exp`` an hour past
        year 9999 (:data:`YEAR_10000` + 3600); ``exp_string``: ``exp`` as a JSON string of the usual
        number; ``exp_true``: ``exp`` is ``true``; ``exp_1e308``: ``exp`` is ``1e308``.

        TokenPair shapes (a refresh answers its usual token for these): ``refresh_id_bare``:
        ``"refreshToken": "<id>"``, a working id; ``refresh_id_absent``: no ``refreshToken``.
        ``token_padded``: a valid token with whitespace around it (``" \\t<jwt>\\r\\n"``);
        ``token_newline``: a valid token with a newline after its first dot.
        """
        self.queue.append(_Fault(operation, "malformed", count, malformed=kind))

    def revoke_all_refresh_tokens(self) -> None:
        """Forget every refresh token, as if an administrator revoked them all."""
        self._revoke_all()

    def revoke_access_tokens(self) -> None:
        """Refuse every access token issued so far: ``GET /v1/domains`` answers them 401
        ``Unauthorized``, as after a forced revocation; refresh tokens keep working."""
        if self.revoke_access is not None:
            self.revoke_access()

    def delay_for(self, operation: Operation) -> float:
        """Seconds to wait before answering a call of ``operation``."""
        return self.delays.get(operation, self.delay)

    def peek(self, operation: Operation) -> _Fault | None:
        """The first queued fault matching ``operation``, left in the queue."""
        return next((fault for fault in self.queue if fault.matches(operation)), None)

    def consume(self, fault: _Fault) -> None:
        """Use ``fault`` once; it leaves the queue when used up."""
        fault.remaining -= 1
        if fault.remaining <= 0 and fault in self.queue:
            self.queue.remove(fault)

    def take_malformed(self, operation: Operation) -> MalformedKind | None:
        """The kind of the malformed answer due for a successful call of ``operation``, if one is."""
        fault = self.peek(operation)
        if fault is None or fault.kind != "malformed":
            return None
        self.consume(fault)
        return fault.malformed


@dataclass
class _RefreshEntry:
    user: str
    expires_at: float  # on the fake's clock


class FakeSddc:
    """A fake SDDC Manager with its users, tokens, call log and :attr:`faults`."""

    def __init__(
        self,
        *,
        access_ttl: float = 3600,
        refresh_ttl: float = 86400,
        users: Mapping[str, str] | None = None,
        api_keys: Iterable[str] | None = None,
        clock: Callable[[], float] = time.time,
        reject_status: int = 401,
        gone_status: int = 404,
        wrong_content_type_status: int = 415,
        accept_json_refresh: bool = True,
        accept_bare_refresh: bool = False,
    ) -> None:
        self.access_ttl = access_ttl
        self.refresh_ttl = refresh_ttl
        self.users: dict[str, str] = dict(DEFAULT_USERS if users is None else users)
        self.api_keys: set[str] = set(api_keys or ())
        self.clock = clock
        self.reject_status = reject_status
        self.gone_status = gone_status
        self.wrong_content_type_status = wrong_content_type_status
        self.accept_json_refresh = accept_json_refresh
        self.accept_bare_refresh = accept_bare_refresh
        self.faults = Faults(self.revoke_all_refresh_tokens)
        self.faults.revoke_access = self.revoke_access_tokens
        self.calls: list[CallRecord] = []
        self.issued_access_tokens: list[str] = []
        self.issued_refresh_ids: list[str] = []
        self._secret = secrets.token_bytes(32)
        self._refresh: dict[str, _RefreshEntry] = {}
        self._access_exp: dict[str, float] = {}

    # -- state a test looks at ------------------------------------------------------------------

    def now(self) -> float:
        """The fake's wall clock: the injected clock plus ``faults.clock_skew``."""
        return self.clock() + self.faults.clock_skew

    def count(self, operation: Operation, status: int | None = None) -> int:
        """How many calls of ``operation`` were answered (with ``status``, if given)."""
        return sum(
            1 for c in self.calls if c.operation == operation and (status is None or c.status == status)
        )

    def calls_of(self, operation: Operation, status: int | None = None) -> list[CallRecord]:
        """The calls of ``operation`` (answered with ``status``, if given), oldest first."""
        return [c for c in self.calls if c.operation == operation and (status is None or c.status == status)]

    @property
    def refresh_ids(self) -> set[str]:
        """The refresh token ids that are currently valid (issued, unexpired, not revoked)."""
        now = self.now()
        return {rid for rid, entry in self._refresh.items() if entry.expires_at > now}

    def revoke_all_refresh_tokens(self) -> None:
        """Forget every refresh token, as if an administrator revoked them all."""
        self._refresh.clear()

    def revoke_access_tokens(self) -> None:
        """Refuse every access token issued so far (401 on ``GET /v1/domains``); new ones work."""
        self._access_exp.clear()

    def app(self) -> web.Application:
        """The aiohttp application serving the token API and ``GET /v1/domains``."""
        app = web.Application()
        app.on_response_prepare.append(self._set_date)
        app.router.add_post("/v1/tokens", self._wrap("login", self._login))
        app.router.add_patch("/v1/tokens/access-token/refresh", self._wrap("refresh", self._refresh_access))
        app.router.add_delete("/v1/tokens/refresh-token", self._wrap("revoke", self._revoke))
        app.router.add_get("/v1/domains", self._wrap("domains", self._domains))
        return app

    # -- tokens -----------------------------------------------------------------------------------

    def _claims(self, user: str, kind: MalformedKind | None = None) -> dict[str, Any]:
        """JWT claims for ``user``; ``kind`` bends them for the malformed-answer faults."""
        now = self.now()
        ttl: float = self.access_ttl
        iat: float = now
        if float(ttl).is_integer():
            ttl, iat = int(ttl), int(now)
        if kind == "expired":
            iat -= 2 * ttl + 60
        elif kind == "iat_future":
            iat += 3600
        claims: dict[str, Any] = {
            "jti": str(uuid.uuid4()),
            "iat": iat,
            "nbf": iat,
            "exp": iat + ttl,
            "sub": user,
            "iss": ISSUER,
            "aud": AUDIENCE,
            "user": user,
            "name": user,
            "scope": list(SCOPE),
        }
        if kind == "no_exp":
            del claims["exp"]
        elif kind == "exp_milliseconds":
            claims["exp"] = iat * 1000
        elif kind == "exp_after_9999":
            claims["exp"] = YEAR_10000 + 3600
        elif kind == "exp_string":
            claims["exp"] = str(claims["exp"])
        elif kind == "exp_true":
            claims["exp"] = True
        elif kind == "exp_1e308":
            claims["exp"] = 1e308
        return claims

    def _sign(self, claims: Mapping[str, Any]) -> str:
        return jwt.encode(dict(claims), self._secret, algorithm="HS256")

    def _issue_access_token(self, user: str, kind: MalformedKind | None = None) -> str:
        """A new access token for ``user`` (with the odd claim of ``kind``, if given), remembered.

        ``GET /v1/domains`` accepts it until its ``exp``, when that is a finite number.
        """
        claims = self._claims(user, kind)
        token = self._sign(claims)
        exp = claims["exp"]
        if isinstance(exp, int | float) and not isinstance(exp, bool) and math.isfinite(exp):
            self._access_exp[token] = float(exp)
        self.issued_access_tokens.append(token)
        return token

    def _issue_refresh_id(self, user: str) -> str:
        rid = str(uuid.uuid4())
        self._refresh[rid] = _RefreshEntry(user, self.now() + self.refresh_ttl)
        self.issued_refresh_ids.append(rid)
        return rid

    def _refresh_entry(self, rid: str) -> _RefreshEntry | None:
        entry = self._refresh.get(rid)
        if entry is None or entry.expires_at <= self.now():
            return None
        return entry

    def _bearer_valid(self, header: str) -> bool:
        scheme, _, token = header.partition(" ")
        exp = self._access_exp.get(token.strip())
        return scheme.lower() == "bearer" and exp is not None and exp > self.now()

    def _malformed_token(self, user: str, kind: MalformedKind) -> str | int:
        """The access token a malformed answer of ``kind`` carries."""
        if kind == "not_jwt":
            return "not-a-jwt"
        if kind == "wrong_types":
            return 12345
        if kind in ODD_CLAIM_KINDS:
            return self._issue_access_token(user, kind)
        if kind in ("refresh_id_bare", "refresh_id_absent"):
            return self._issue_access_token(user)
        if kind == "token_padded":
            return f" \t{self._issue_access_token(user)}\r\n"
        if kind == "token_newline":
            token = self._issue_access_token(user)
            cut = token.index(".") + 1
            return f"{token[:cut]}\n{token[cut:]}"
        return self._sign(self._claims(user, kind))

    # -- request plumbing -----------------------------------------------------------------------

    async def _set_date(self, request: web.Request, response: web.StreamResponse) -> None:
        """Date from the fake's clock, so injected skew shows where clients measure it."""
        response.headers["Date"] = email.utils.formatdate(self.now(), usegmt=True)

    def _wrap(self, operation: Operation, handler: _Handler) -> _RouteHandler:
        """Record the call and apply delays, outages and queued faults around ``handler``."""

        async def run(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            record = CallRecord(
                operation=operation,
                status=0,
                at=time.monotonic(),
                body_form=_body_form(body) if operation in ("refresh", "revoke") else None,
                request_body=body,
                request_headers=dict(request.headers),
            )
            self.calls.append(record)
            response = await self._answer(request, operation, handler)
            transport = request.transport
            record.status = 0 if transport is None or transport.is_closing() else response.status
            return response

        return run

    async def _answer(
        self, request: web.Request, operation: Operation, handler: _Handler
    ) -> web.StreamResponse:
        """The answer to one call (after a dropped connection, one that cannot be sent)."""
        delay = self.faults.delay_for(operation)
        if delay > 0:
            await asyncio.sleep(delay)
        if self.faults.down and operation in TOKEN_OPERATIONS:
            if self.faults.down_mode == "drop":
                return _drop(request)
            return _error_response(
                503, "SERVICE_UNAVAILABLE", "The service is temporarily unavailable", "Retry later."
            )
        fault = self.faults.peek(operation)
        if fault is None or fault.kind == "malformed":
            return await handler(request)  # a malformed fault is taken on the success path
        self.faults.consume(fault)
        if fault.kind == "drop":
            return await _drop_mid_response(request) if fault.drop_when == "headers" else _drop(request)
        if fault.kind == "redirect":
            return web.Response(status=fault.status, headers={"Location": fault.location})
        return await self._scripted_failure(request, fault)

    async def _scripted_failure(self, request: web.Request, fault: _Fault) -> web.Response:
        headers = fault.headers or None
        if isinstance(fault.body, str):
            return web.Response(status=fault.status, text=fault.body, headers=headers)
        if fault.body is not None:
            return _json_response(fault.body, fault.status, headers)
        message = "An internal error occurred"
        if self.faults.echo_secrets_in_errors:
            message = f"{message} while processing {await _echo(request)}"
        remediation = "Retry the operation; contact support if it persists."
        body = error_body("INTERNAL_SERVER_ERROR", message, remediation)
        return _json_response(body, fault.status, headers)

    # -- endpoints ------------------------------------------------------------------------------

    async def _login(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/tokens``."""
        try:
            spec = json.loads(await request.read())
        except ValueError:
            spec = None
        if not isinstance(spec, dict):
            return await self._bad_request(request, "The request body is not a valid TokenCreationSpec")
        user = self._authenticate(spec)
        if user is None:
            return self._rejected(spec)
        malformed = self.faults.take_malformed("login")
        if malformed is not None:
            return self._malformed_login(user, malformed)
        pair = {
            "accessToken": self._issue_access_token(user),
            "refreshToken": {"id": self._issue_refresh_id(user)},
        }
        return _json_response(pair, 201)

    def _authenticate(self, spec: Mapping[str, Any]) -> str | None:
        """The user a TokenCreationSpec logs in as, or ``None`` if its credentials are wrong."""
        api_key = spec.get("apiKey")
        if isinstance(api_key, str):
            return API_KEY_USER if api_key in self.api_keys else None
        username, password = spec.get("username"), spec.get("password")
        if isinstance(username, str) and isinstance(password, str) and self.users.get(username) == password:
            return username
        return None

    def _rejected(self, spec: Mapping[str, Any]) -> web.Response:
        message = "Failed to authenticate: invalid credentials"
        if self.faults.echo_secrets_in_errors:
            message = f"{message} (password {spec.get('password')!s}, apiKey {spec.get('apiKey')!s})"
        remediation = "Check the username and password or the API key."
        return _error_response(self.reject_status, "INVALID_CREDENTIALS", message, remediation)

    def _malformed_login(self, user: str, kind: MalformedKind) -> web.Response:
        if kind == "not_json":
            return web.Response(status=201, text="<html>oops", content_type="text/html")
        if kind == "missing_fields":
            return _json_response({}, 201)
        pair: dict[str, Any] = {"accessToken": self._malformed_token(user, kind)}
        if kind == "refresh_id_bare":
            pair["refreshToken"] = self._issue_refresh_id(user)
        elif kind != "refresh_id_absent":
            pair["refreshToken"] = {"id": self._issue_refresh_id(user)}
        return _json_response(pair, 201)

    async def _refresh_access(self, request: web.Request) -> web.StreamResponse:
        """``PATCH /v1/tokens/access-token/refresh``."""
        rid_or_error = await self._refresh_id(request)
        if isinstance(rid_or_error, web.Response):
            return rid_or_error
        entry = self._refresh_entry(rid_or_error)
        if entry is None:
            message = "Refresh token not found or expired"
            if self.faults.echo_secrets_in_errors:
                message = f"{message}: {rid_or_error}"
            return _error_response(self.gone_status, "REFRESH_TOKEN_NOT_FOUND", message, "Log in again.")
        malformed = self.faults.take_malformed("refresh")
        if malformed is not None:
            return self._malformed_refresh(entry.user, malformed)
        return _json_response(self._issue_access_token(entry.user), 200)

    def _malformed_refresh(self, user: str, kind: MalformedKind) -> web.Response:
        if kind == "not_json":
            return web.Response(status=200, text="<html>oops", content_type="text/html")
        if kind == "missing_fields":
            return _json_response({}, 200)
        return _json_response(self._malformed_token(user, kind), 200)

    async def _revoke(self, request: web.Request) -> web.StreamResponse:
        """``DELETE /v1/tokens/refresh-token``: revokes, and answers 204 for an unknown id too.

        The body forms accepted are those refresh accepts.
        """
        rid_or_error = await self._refresh_id(request)
        if isinstance(rid_or_error, web.Response):
            return rid_or_error
        self._refresh.pop(rid_or_error, None)
        malformed = self.faults.take_malformed("revoke")
        if malformed is not None:
            return _malformed_other(malformed)
        return web.Response(status=204)

    async def _refresh_id(self, request: web.Request) -> str | web.Response:
        """The refresh token id in a refresh or revoke body, or the error answer to send."""
        if request.content_type != "application/json":
            return _error_response(
                self.wrong_content_type_status,
                "UNSUPPORTED_MEDIA_TYPE",
                f"Content type '{request.content_type}' not supported",
                "Send the body with Content-Type: application/json.",
            )
        body = await request.read()
        form = _body_form(body)
        accepted = {"json_string": self.accept_json_refresh, "bare": self.accept_bare_refresh}
        if form is None or not accepted[form]:
            return await self._bad_request(request, "JSON parse error: cannot read the refresh token id")
        text = body.decode()
        return str(json.loads(text)) if form == "json_string" else text.strip()

    async def _bad_request(self, request: web.Request, message: str) -> web.Response:
        if self.faults.echo_secrets_in_errors:
            message = f"{message}: {await _echo(request)}"
        remediation = "Check the request body against the API reference."
        return _error_response(400, "BAD_REQUEST", message, remediation)

    async def _domains(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/domains``: one management domain for a valid bearer token."""
        auth = request.headers.get("Authorization", "")
        if not self._bearer_valid(auth):
            message = UNAUTHORIZED_MESSAGE
            if self.faults.echo_secrets_in_errors and auth:
                message = f"{message}: {auth}"
            return _json_response({"errorCode": "Unauthorized", "message": message}, 401)
        malformed = self.faults.take_malformed("domains")
        if malformed is not None:
            return _malformed_other(malformed)
        return _json_response(_page_of_domain(), 200)


# -- helpers without state ------------------------------------------------------------------------


def _body_form(body: bytes) -> BodyForm | None:
    """How a refresh or revoke body carries the id: a JSON string, the bare id, or neither."""
    try:
        value = json.loads(body)
    except ValueError:
        text = body.decode(errors="replace").strip()
        return "bare" if text and not any(c in text for c in "\"{}[] \t") else None
    return "json_string" if isinstance(value, str) else None


async def _echo(request: web.Request) -> str:
    """What the client sent that may hold a secret, for the echo-secrets fault."""
    body = (await request.read()).decode(errors="replace")
    auth = request.headers.get("Authorization")
    return f"{body} {auth}" if auth else body


def _malformed_other(kind: MalformedKind) -> web.Response:
    """A broken 200 answer for endpoints that carry no token (revoke, domains)."""
    if kind == "not_json":
        return web.Response(status=200, text="<html>oops", content_type="text/html")
    return _json_response({} if kind == "missing_fields" else 12345, 200)


def _drop(request: web.Request) -> web.StreamResponse:
    """Close the connection without answering.

    The returned response is never sent: aiohttp fails to write it to the closed transport and
    treats that as a client disconnect, quietly.
    """
    if request.transport is not None:
        request.transport.close()
    return web.Response(status=503)


async def _drop_mid_response(request: web.Request) -> web.StreamResponse:
    """Send a 200 status line, headers and part of the promised body, then close the connection."""
    headers = {"Content-Type": "application/json", "Content-Length": "256"}
    response = web.StreamResponse(status=200, headers=headers)
    await response.prepare(request)
    await response.write(b'{"accessToken": "eyJ')
    _drop(request)
    return response


def _page_of_domain() -> dict[str, Any]:
    """A one-domain ``PageOfDomain``, valid against the vendor's schema."""
    domain = {
        "id": "4f8b9a44-9b0e-4d3e-8c6a-2f0b7c1d9e01",
        "name": "sfo-m01",
        "orgName": "Rainpole",
        "status": "ACTIVE",
        "type": "MANAGEMENT",
        "ssoId": "c0a1f0e2-7c1b-4b5e-9f7c-1d2e3f4a5b6c",
        "ssoName": "vsphere.local",
        "isManagementSsoDomain": True,
        "vcenters": [{"id": "b7e4c1a2-3d4e-4f5a-8b6c-7d8e9f0a1b2c", "fqdn": "sfo-m01-vc01.rainpole.io"}],
        "clusters": [{"id": "d1e2f3a4-b5c6-4d7e-8f9a-0b1c2d3e4f5a", "name": "sfo-m01-cl01"}],
    }
    return {
        "elements": [domain],
        "pageMetadata": {"pageNumber": 0, "pageSize": 1, "totalElements": 1, "totalPages": 1},
    }


# -- serving ------------------------------------------------------------------------------------


async def start_fake(
    fake: FakeSddc, host: str = "127.0.0.1", port: int = 0, ssl_context: ssl.SSLContext | None = None
) -> tuple[web.AppRunner, str]:
    """Serve ``fake`` on ``host:port`` (0: a free port); the runner (to clean up) and the base URL."""
    runner = web.AppRunner(fake.app(), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_port = runner.addresses[0][1]
    scheme = "https" if ssl_context is not None else "http"
    return runner, f"{scheme}://{_url_host(host)}:{bound_port}"


def _url_host(host: str) -> str:
    """``host`` as it appears in a URL: IPv6 literals in brackets."""
    return f"[{host}]" if ":" in host else host


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (or ``[IPv6]:PORT``) into its parts; ``ValueError`` naming the expected form."""
    host, sep, port = listen.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, e.g. 127.0.0.1:8443, got {listen!r}")
    return host, int(port)


async def serve_forever(
    listen: str,
    access_ttl: float,
    refresh_ttl: float,
    users: Mapping[str, str] | None,
    api_keys: Iterable[str] | None,
    tls_dir: Path | None,
) -> None:
    """Run a fake SDDC Manager until cancelled. The first stdout line is its base URL."""
    host, port = parse_listen(listen)
    fake = FakeSddc(access_ttl=access_ttl, refresh_ttl=refresh_ttl, users=users, api_keys=api_keys)
    ssl_context = ensure_tls_dir(tls_dir) if tls_dir is not None else None
    runner, url = await start_fake(fake, host, port, ssl_context)
    try:
        print(url, flush=True)
        print(_usage(fake, url, tls_dir), flush=True)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def _usage(fake: FakeSddc, url: str, tls_dir: Path | None) -> str:
    """How to get and use a token from the fake; names users, never their passwords."""
    curl = f"curl --cacert {tls_dir / 'ca.pem'}" if tls_dir is not None else "curl"
    user = next(iter(fake.users), "USER")
    lines = [
        f"fake SDDC Manager: access tokens live {fake.access_ttl:g} s, refresh tokens {fake.refresh_ttl:g} s",
        f"users: {', '.join(fake.users) or '(none)'}; API keys: {len(fake.api_keys)}",
        "get a token pair (put the password in place of PASSWORD):",
        f"  {curl} -X POST {url}/v1/tokens -H 'Content-Type: application/json' \\",
        f"    -d '{{\"username\": \"{user}\", \"password\": \"PASSWORD\"}}'",
        "refresh it:",
        f"  {curl} -X PATCH {url}/v1/tokens/access-token/refresh -H 'Content-Type: application/json' \\",
        "    -d '\"REFRESH_TOKEN_ID\"'",
        "call a protected endpoint:",
        f"  {curl} {url}/v1/domains -H 'Authorization: Bearer ACCESS_TOKEN'",
    ]
    return "\n".join(lines)


# -- TLS material for `tokend fake-sddc --tls-dir` ----------------------------------------------


def ensure_tls_dir(tls_dir: Path) -> ssl.SSLContext:
    """Create ``ca.pem``, ``cert.pem`` and ``key.pem`` in ``tls_dir`` unless all exist; a server context.

    The CA's private key is not kept: to issue a new certificate, delete the three files.
    """
    ca_path, cert_path, key_path = tls_dir / "ca.pem", tls_dir / "cert.pem", tls_dir / "key.pem"
    if not (ca_path.exists() and cert_path.exists() and key_path.exists()):
        tls_dir.mkdir(parents=True, exist_ok=True)
        ca_pem, cert_pem, key_pem = _make_tls_material()
        _write_file(key_path, key_pem, 0o600)
        _write_file(cert_path, cert_pem, 0o644)
        _write_file(ca_path, ca_pem, 0o644)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    return context


def _write_file(path: Path, data: bytes, mode: int) -> None:
    """Write ``path`` atomically, with ``mode`` from creation (no window with wider permissions)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _make_tls_material() -> tuple[bytes, bytes, bytes]:
    """A fresh CA and a server certificate for localhost, 127.0.0.1 and ::1, as PEM bytes."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tokend fake SDDC Manager CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pem = serialization.Encoding.PEM
    return ca_cert.public_bytes(pem), cert.public_bytes(pem), key_pem
