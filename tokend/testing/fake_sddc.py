"""A fake SDDC Manager: the token API and one protected endpoint, served by a real aiohttp server.

It follows the vendor's OpenAPI extract (``tests/data/sddc-manager-tokens.openapi.json``):

- ``POST /v1/tokens`` takes ``{"username", "password"}`` or ``{"apiKey"}`` and answers 201 with a
  ``TokenPair`` whose access token is an HS256 JWT signed with a secret of this process;
- ``PATCH /v1/tokens/access-token/refresh`` takes the refresh token id as a JSON string (or, in a
  configurable mode, the bare id) and answers 200 with the new access token as a JSON string;
- ``DELETE /v1/tokens/refresh-token`` revokes a refresh token and answers 204;
- ``GET /v1/domains`` answers a one-domain ``PageOfDomain`` to a valid bearer token, else 401.

Failures are ``Error`` objects shaped like the vendor's. :attr:`FakeSddc.faults` (a
:class:`~tokend.testing.faults.Faults`) makes the fake misbehave on demand (errors, outages, delays,
dropped connections, redirects, malformed answers, odd claims and TokenPair shapes, clock skew) so
tests can drive a client through every path. Not safe across threads: one event loop owns it.
"""

from __future__ import annotations

import email.utils
import json
import math
import secrets
import ssl
import time
import uuid
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tokend.names import BodyForm
from tokend.testing.claims import ODD_CLAIM_KINDS, access_claims, sign
from tokend.testing.faulted import Handler, answer_with_faults
from tokend.testing.faults import Faults, MalformedKind, Route
from tokend.testing.proxy_routes import add_proxy_routes
from tokend.testing.wire import (
    UNAUTHORIZED_MESSAGE,
    body_form,
    echo,
    error_response,
    json_response,
    malformed_other,
    page_of_domain,
)

DEFAULT_USERS: Mapping[str, str] = {"administrator@vsphere.local": "VMware1!"}
API_KEY_USER = "automation@vsphere.local"
# How many calls a long-running fake keeps in its call log (the command line, the demo).
CALLS_KEPT = 10_000


@dataclass
class CallRecord:
    """One request the fake answered (or dropped: ``status`` 0)."""

    operation: Route
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
class _RefreshEntry:
    user: str
    expires_at: float  # on the fake's clock


@dataclass(kw_only=True, eq=False, repr=False)
class FakeSddc:
    """A fake SDDC Manager with its users, tokens, call log and :attr:`faults`.

    Keyword arguments: ``access_ttl`` and ``refresh_ttl`` (seconds) the lifetimes of what it issues;
    ``users`` (user to password; default :data:`DEFAULT_USERS`) and ``api_keys`` who may log in
    (each copied: a dict and a set the test may change);
    ``clock`` its wall clock (epoch seconds); ``reject_status``, ``gone_status`` and
    ``wrong_content_type_status`` the statuses of a refused login, an unknown refresh token and a
    body that is not JSON; ``accept_json_refresh`` and ``accept_bare_refresh`` the refresh body
    forms it takes; ``calls_kept`` how many of the latest calls :attr:`calls` keeps (None: every
    one, as a test wants; a long-running fake, ``tokend fake-sddc`` and ``tokend demo``, keeps a
    bounded number, so its memory does not grow with every request it answers).
    """

    access_ttl: float = 3600
    refresh_ttl: float = 86400
    users: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_USERS))  # a dict, copied
    api_keys: Collection[str] = field(default_factory=set)  # a set, copied
    clock: Callable[[], float] = time.time
    reject_status: int = 401
    gone_status: int = 404
    wrong_content_type_status: int = 415
    accept_json_refresh: bool = True
    accept_bare_refresh: bool = False
    calls_kept: int | None = None

    def __post_init__(self) -> None:
        # Copies the fake and its tests may change; None, as the arguments once defaulted to, is
        # the default users and no API key.
        self.users = dict(DEFAULT_USERS if self.users is None else self.users)
        self.api_keys = set(self.api_keys or ())
        self.faults = Faults(self.revoke_all_refresh_tokens)
        self.calls: list[CallRecord] = []
        self.issued_access_tokens: list[str] = []
        self.issued_refresh_ids: list[str] = []
        self.sink_digests: list[tuple[int, str]] = []  # (bytes, sha256 hex) of each PUT /v1/sink
        self._secret = secrets.token_bytes(32)
        self._refresh: dict[str, _RefreshEntry] = {}
        self._access_exp: dict[str, float] = {}

    # -- state a test looks at ------------------------------------------------------------------

    def now(self) -> float:
        """The fake's wall clock: the injected clock plus ``faults.clock_skew``."""
        return self.clock() + self.faults.clock_skew

    def count(self, operation: Route, status: int | None = None) -> int:
        """How many calls of ``operation`` were answered (with ``status``, if given)."""
        return sum(
            1 for c in self.calls if c.operation == operation and (status is None or c.status == status)
        )

    def calls_of(self, operation: Route, status: int | None = None) -> list[CallRecord]:
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
        """Refuse every access token issued so far (401 ``Unauthorized``), as after a restart of
        the SDDC Manager's token service; refresh tokens stay valid."""
        self._access_exp.clear()

    def app(self) -> web.Application:
        """The aiohttp application serving the token API and ``GET /v1/domains``."""
        app = web.Application()
        app.on_response_prepare.append(self._set_date)
        app.router.add_post("/v1/tokens", self._wrap("login", self._login))
        app.router.add_patch("/v1/tokens/access-token/refresh", self._wrap("refresh", self._refresh_access))
        app.router.add_delete("/v1/tokens/refresh-token", self._wrap("revoke", self._revoke))
        app.router.add_get("/v1/domains", self._wrap("domains", self._domains))
        add_proxy_routes(app, self)  # for tests of tokend's proxy; last: it ends in a catch-all
        return app

    # -- tokens -----------------------------------------------------------------------------------

    def _issue_access_token(self, user: str, kind: MalformedKind | None = None) -> str:
        """A new access token for ``user`` (with the odd claim of ``kind``, if given), remembered.

        ``GET /v1/domains`` accepts it until its ``exp``, when that is a finite number.
        """
        claims = access_claims(user, self.now(), self.access_ttl, kind)
        token = sign(claims, self._secret)
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
        return sign(access_claims(user, self.now(), self.access_ttl, kind), self._secret)

    # -- request plumbing -----------------------------------------------------------------------

    async def _set_date(self, request: web.Request, response: web.StreamResponse) -> None:
        """Date from the fake's clock, so injected skew shows where clients measure it."""
        response.headers["Date"] = email.utils.formatdate(self.now(), usegmt=True)

    def _wrap(self, operation: Route, handler: Handler, read_body: bool = True) -> Handler:
        """Record the call and apply delays, outages and queued faults around ``handler``.

        ``read_body`` False leaves the body to the handler (recorded as empty).
        """

        async def run(request: web.Request) -> web.StreamResponse:
            body = await request.read() if read_body else b""
            record = CallRecord(
                operation=operation,
                status=0,
                at=time.monotonic(),
                body_form=body_form(body) if operation in ("refresh", "revoke") else None,
                request_body=body,
                request_headers=dict(request.headers),
            )
            self.calls.append(record)
            if self.calls_kept is not None and len(self.calls) >= 2 * self.calls_kept:
                del self.calls[:-self.calls_kept]  # now and then: amortised O(1) a call
            response = await answer_with_faults(self.faults, request, operation, handler)
            transport = request.transport
            record.status = 0 if transport is None or transport.is_closing() else response.status
            return response

        return run

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
        return json_response(pair, 201)

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
        return error_response(self.reject_status, "INVALID_CREDENTIALS", message, remediation)

    def _malformed_login(self, user: str, kind: MalformedKind) -> web.Response:
        if kind == "not_json":
            return web.Response(status=201, text="<html>oops", content_type="text/html")
        if kind == "missing_fields":
            return json_response({}, 201)
        pair: dict[str, Any] = {"accessToken": self._malformed_token(user, kind)}
        if kind == "refresh_id_bare":
            pair["refreshToken"] = self._issue_refresh_id(user)
        elif kind != "refresh_id_absent":
            pair["refreshToken"] = {"id": self._issue_refresh_id(user)}
        return json_response(pair, 201)

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
            return error_response(self.gone_status, "REFRESH_TOKEN_NOT_FOUND", message, "Log in again.")
        malformed = self.faults.take_malformed("refresh")
        if malformed is not None:
            return self._malformed_refresh(entry.user, malformed)
        return json_response(self._issue_access_token(entry.user), 200)

    def _malformed_refresh(self, user: str, kind: MalformedKind) -> web.Response:
        if kind == "not_json":
            return web.Response(status=200, text="<html>oops", content_type="text/html")
        if kind == "missing_fields":
            return json_response({}, 200)
        return json_response(self._malformed_token(user, kind), 200)

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
            return malformed_other(malformed)
        return web.Response(status=204)

    async def _refresh_id(self, request: web.Request) -> str | web.Response:
        """The refresh token id in a refresh or revoke body, or the error answer to send."""
        if request.content_type != "application/json":
            return error_response(
                self.wrong_content_type_status,
                "UNSUPPORTED_MEDIA_TYPE",
                f"Content type '{request.content_type}' not supported",
                "Send the body with Content-Type: application/json.",
            )
        body = await request.read()
        form = body_form(body)
        accepted = {"json_string": self.accept_json_refresh, "bare": self.accept_bare_refresh}
        if form is None or not accepted[form]:
            return await self._bad_request(request, "JSON parse error: cannot read the refresh token id")
        text = body.decode()
        return str(json.loads(text)) if form == "json_string" else text.strip()

    async def _bad_request(self, request: web.Request, message: str) -> web.Response:
        if self.faults.echo_secrets_in_errors:
            message = f"{message}: {await echo(request)}"
        remediation = "Check the request body against the API reference."
        return error_response(400, "BAD_REQUEST", message, remediation)

    async def _domains(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/domains``: one management domain for a valid bearer token."""
        refused = self.unauthorized(request)
        if refused is not None:
            return refused
        malformed = self.faults.take_malformed("domains")
        if malformed is not None:
            return malformed_other(malformed)
        return json_response(page_of_domain(), 200)


    def unauthorized(self, request: web.Request) -> web.Response | None:
        """The 401 of a protected endpoint without a valid bearer token, or None."""
        auth = request.headers.get("Authorization", "")
        if self._bearer_valid(auth):
            return None
        message = UNAUTHORIZED_MESSAGE
        if self.faults.echo_secrets_in_errors and auth:
            message = f"{message}: {auth}"
        return json_response({"errorCode": "Unauthorized", "message": message}, 401)


async def start_fake(
    fake: FakeSddc, host: str = "127.0.0.1", port: int = 0, ssl_context: ssl.SSLContext | None = None
) -> tuple[web.AppRunner, str]:
    """Serve ``fake`` on ``host:port`` (0: a free port); the runner (to clean up) and the base URL.

    ``ssl_context`` (a server context, e.g. from :func:`tokend.testing.tls.ensure_tls_dir`) makes it
    HTTPS. Raises ``OSError`` if the address cannot be bound (nothing is left running then).
    """
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
