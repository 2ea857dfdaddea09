"""What the synchronous and the asynchronous client share: the socket they ask, tokend's answers
(:class:`Token`, :class:`Answer`), the errors, the socket API's paths, and :class:`ClientBase`.

Standard library only, like :mod:`tokend.client`, which re-exports the public names: import them from
there. Every failure is a :class:`TokendError`.
"""

from __future__ import annotations

import json
import os
import time
import urllib.parse
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

from tokend import DEFAULT_SOCKET

DEFAULT_TIMEOUT = 5.0
DEFAULT_WAIT = 60.0
MAX_ANSWER = 1 << 20


def socket_path(explicit: str | os.PathLike[str] | None = None) -> str:
    """``socket``/``--socket``, else ``$TOKEND_SOCKET``, else ``/run/tokend/tokend.sock``."""
    return os.fspath(explicit) if explicit else os.environ.get("TOKEND_SOCKET") or DEFAULT_SOCKET


# -- what tokend answers --------------------------------------------------------------------------


@dataclass(frozen=True)
class Token:
    """A token as tokend served it (the token JSON of SPEC §4). Its repr leaves the token out.

    ``expires_in`` is the whole seconds tokend would still serve it when it answered;
    :meth:`remaining` counts down from there on this process's monotonic clock.
    """

    target: str
    access_token: str = field(repr=False)
    fingerprint: str
    expires_at: str  # ISO 8601 UTC, when tokend stops serving it (local clock)
    expires_in: int  # seconds, when tokend answered
    upstream_exp: int | float  # the JWT's exp as issued
    token_type: str = "Bearer"
    received_at: float = field(default_factory=time.monotonic, compare=False)

    @classmethod
    def from_json(cls, data: Any) -> Token:
        """A Token from the token JSON; raises TokendError for anything else."""
        try:
            return cls(target=str(data["target"]), access_token=str(data["accessToken"]),
                       fingerprint=str(data["fingerprint"]), expires_at=str(data["expiresAt"]),
                       expires_in=int(data["expiresIn"]), upstream_exp=data["upstreamExp"],
                       token_type=str(data.get("tokenType", "Bearer")))
        except (KeyError, TypeError, ValueError):
            raise TokendError("tokend answered 200 without a token JSON", status=200,
                              error_code="INVALID_ANSWER") from None

    @property
    def header(self) -> dict[str, str]:
        """``{"Authorization": "Bearer <token>"}``."""
        return {"Authorization": f"{self.token_type} {self.access_token}"}

    def remaining(self, now: float | None = None) -> float:
        """Seconds tokend will still serve it, from ``now`` (``time.monotonic()`` by default)."""
        now = time.monotonic() if now is None else now
        return self.expires_in - (now - self.received_at)


@dataclass(frozen=True)
class Answer:
    """An HTTP answer from tokend."""

    status: int
    body: bytes
    headers: dict[str, str]  # names in lower case

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)

    @property
    def error(self) -> str:
        """A one-line description of an Error body (or the raw body)."""
        return str(error_from(self))


# -- errors ---------------------------------------------------------------------------------------


@dataclass(eq=False, repr=False)
class TokendError(Exception):
    """Every failure of the client. Carries the Error fields of SPEC §4.

    ``error_code``, ``message``, ``remediation_message`` and ``reference_token`` are the body's
    ``errorCode``, ``message``, ``remediationMessage`` and ``referenceToken``; ``status`` is the HTTP
    status (None when tokend could not be asked); ``retry_after`` is the ``Retry-After`` header in
    seconds, or None.
    """

    message: str
    _: KW_ONLY
    status: int | None = None
    error_code: str = "ERROR"
    remediation_message: str = ""
    reference_token: str | None = None
    retry_after: float | None = None

    def __post_init__(self) -> None:
        text = f"{self.error_code}: {self.message}" if self.status is not None else self.message
        if self.remediation_message:
            text += f" ({self.remediation_message})"
        if self.reference_token:
            text += f" [referenceToken {self.reference_token}]"
        super().__init__(text)


class Unreachable(TokendError):
    """The socket is absent, refuses connections, did not answer in time, or sent no HTTP."""


class TokenRefused(TokendError):
    """tokend answered, without a token: the base of the errors below."""


class TokenUnavailable(TokenRefused):
    """503: no valid token now (``TOKEN_UNAVAILABLE``, ``TOKEN_BELOW_MIN_TTL``, tokend stopping,
    ``TOO_MANY_CONNECTIONS``); ask again after ``retry_after`` seconds."""


class TargetNotFound(TokenRefused):
    """404 ``TARGET_NOT_FOUND``: no such target (or, on a held watch, it was removed or replaced)."""


class Forbidden(TokenRefused):
    """403 ``FORBIDDEN``: this process's uid and groups are not in tokend's allow-lists."""


class BadRequest(TokenRefused):
    """400 (or another 4xx): the request was malformed, e.g. a bad ``after`` or ``min_ttl``."""


def error_from(answer: Answer) -> TokenRefused:
    """The error for a non-200 answer, with the Error fields of its body."""
    try:
        data = answer.json()
    except ValueError:
        data = None
    if not isinstance(data, dict):
        data = {"message": answer.body.decode(errors="replace").strip()[:300] or "no body"}
    kind: type[TokenRefused] = {503: TokenUnavailable, 404: TargetNotFound,
                                403: Forbidden}.get(answer.status, TokenRefused)
    if kind is TokenRefused and 400 <= answer.status < 500:
        kind = BadRequest
    retry_after: float | None = None
    header = answer.headers.get("retry-after", "")
    if header.isdigit():
        retry_after = float(header)
    return kind(str(data.get("message", "")), status=answer.status,
                error_code=str(data.get("errorCode", f"HTTP_{answer.status}")),
                remediation_message=str(data.get("remediationMessage") or ""),
                reference_token=data.get("referenceToken"), retry_after=retry_after)


def token_from(answer: Answer) -> Token:
    """The Token of a 200 answer; raises the error of any other."""
    if answer.status != 200:
        raise error_from(answer)
    try:
        data = answer.json()
    except ValueError:
        data = None
    return Token.from_json(data)


# -- paths ----------------------------------------------------------------------------------------


def token_path(target: str | None, min_ttl: float | None = None, raw: bool = False,
               after: str | None = None, wait: float | None = None) -> str:
    """The socket API path for a token request (SPEC §4, §10.1)."""
    path = f"/v1/targets/{urllib.parse.quote(target, safe='')}/token" if target else "/v1/token"
    query = {}
    if min_ttl is not None:
        query["min_ttl"] = f"{min_ttl:g}"
    if after is not None:
        query["after"] = after
        if wait is not None:
            query["wait"] = f"{wait:g}"
    if raw:
        query["format"] = "raw"
    return path + ("?" + urllib.parse.urlencode(query, safe=":") if query else "")


def invalidate_path(target: str) -> str:
    """The socket API path of ``invalidate`` for ``target``."""
    return f"/v1/targets/{urllib.parse.quote(target, safe='')}/invalidate"


def invalidate_body(fingerprint: str) -> bytes:
    """The body of ``invalidate``."""
    return json.dumps({"fingerprint": fingerprint}).encode()


def target_url(status: Any, target: str) -> str:
    """The ``url`` of ``target`` in a ``/v1/status`` document; raises TargetNotFound."""
    for entry in status.get("targets", []) if isinstance(status, dict) else []:
        if isinstance(entry, dict) and entry.get("name") == target and entry.get("url"):
            return str(entry["url"])
    raise TargetNotFound(f"tokend's status lists no url for target '{target}'", status=404,
                         error_code="TARGET_NOT_FOUND",
                         remediation_message="Check the target name (tokend status)")


# -- what both clients keep -------------------------------------------------------------------------


class ClientBase:
    """The settings of a client and the target it learned (Client and AsyncClient build on it).

    ``socket``: tokend's socket (default ``$TOKEND_SOCKET``, else ``/run/tokend/tokend.sock``);
    ``target``: the target's name (default: tokend's default target); ``timeout``: seconds for the
    connect and each read of one call.
    """

    def __init__(self, socket: str | os.PathLike[str] | None = None, target: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self.socket = socket_path(socket)
        self.target = target
        self.timeout = timeout
        self._learned_target: str | None = target

    def _token(self, answer: Answer) -> Token:
        """The Token of ``answer`` (raises its error otherwise); its target is learned if unnamed."""
        token = token_from(answer)
        self._learned_target = self._learned_target or token.target
        return token

    @staticmethod
    def _status_of(answer: Answer) -> dict[str, Any]:
        """The ``/v1/status`` document of ``answer``; raises its error unless it is a 200."""
        if answer.status != 200:
            raise error_from(answer)
        data: dict[str, Any] = answer.json()
        return data

    @staticmethod
    def _invalidation(target: str, fingerprint: str) -> tuple[str, str, bytes]:
        """(path, method, body) of the request reporting ``fingerprint`` of ``target`` as refused."""
        return invalidate_path(target), "POST", invalidate_body(fingerprint)


def describe_os_error(exc: BaseException, socket_hint: str, cause: BaseException | None = None) -> str:
    """Why tokend could not be asked, for Unreachable: ``cause`` (the OS error under ``exc``; default
    ``exc`` itself) in words, naming ``socket_hint`` (where the socket path came from) when absent."""
    cause = exc if cause is None else cause
    if isinstance(cause, FileNotFoundError):
        return f"no socket there (is tokend running? is {socket_hint} right?)"
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused (tokend is not running)"
    if isinstance(cause, PermissionError):
        return "permission denied (ask for a group that may open the socket)"
    if isinstance(cause, TimeoutError):
        return "no answer in time"
    return f"{type(exc).__name__}: {exc}"
