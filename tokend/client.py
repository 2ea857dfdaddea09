"""The library consumers import to get tokend's token (SPEC §10.2), and the CLI's socket client.

Standard library only at import, so ``tokend token`` and a consumer start fast:

- :class:`Client`: ``token()``, ``invalidate()``, ``watch()`` and ``status()`` over the Unix socket,
  one short connection per call;
- :class:`AsyncClient` (imports ``aiohttp`` when first used): the same, async, on a kept-alive
  connection, plus :meth:`AsyncClient.tokens`, each new token as soon as tokend has it;
- :class:`TokendAuth` for ``requests`` and :class:`TokendHttpxAuth` for ``httpx`` (each imports its
  library when first used): the ``Authorization`` header on requests to the target's origin only, and
  one retry with a new token after a 401.

The socket is found as the CLI finds it (SPEC §2): the ``socket`` argument, else ``$TOKEND_SOCKET``,
else ``/run/tokend/tokend.sock``. Every failure is a :class:`TokendError`: :class:`Unreachable`
when tokend cannot be asked, else a :class:`TokenRefused` subclass carrying the Error fields of
SPEC §4 that tokend answered with.
"""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tokend import DEFAULT_SOCKET

if TYPE_CHECKING:  # imported on first use (module __getattr__ below), never by the CLI
    from tokend._aclient import AsyncClient
    from tokend._httpx_auth import TokendHttpxAuth
    from tokend._requests_auth import TokendAuth

__all__ = [
    "AsyncClient", "BadRequest", "Client", "Forbidden", "TargetNotFound", "Token", "TokenRefused",
    "TokenUnavailable", "TokendAuth", "TokendError", "TokendHttpxAuth", "Unreachable",
    "fingerprint_of", "get_token", "socket_path",
]

DEFAULT_TIMEOUT = 5.0
DEFAULT_WAIT = 60.0
MAX_ANSWER = 1 << 20
# name -> (its module, the library it imports, the extra that installs that library)
_LAZY = {"AsyncClient": ("tokend._aclient", "aiohttp", ""),
         "TokendAuth": ("tokend._requests_auth", "requests", "requests"),
         "TokendHttpxAuth": ("tokend._httpx_auth", "httpx", "httpx")}


def __getattr__(name: str) -> Any:
    """``AsyncClient``, ``TokendAuth``, ``TokendHttpxAuth``: imported when first asked for."""
    lazy = _LAZY.get(name)
    if lazy is None:
        raise AttributeError(f"module 'tokend.client' has no attribute {name!r}")
    import importlib

    module, library, extra = lazy
    try:
        value = getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as exc:
        if exc.name != library:
            raise
        install = f"'tokend[{extra}]'" if extra else library
        raise ModuleNotFoundError(f"tokend.client.{name} needs {library}: pip install {install}",
                                  name=library) from None
    globals()[name] = value
    return value


def socket_path(explicit: str | os.PathLike[str] | None = None) -> str:
    """``socket``/``--socket``, else ``$TOKEND_SOCKET``, else ``/run/tokend/tokend.sock``."""
    return os.fspath(explicit) if explicit else os.environ.get("TOKEND_SOCKET") or DEFAULT_SOCKET


def fingerprint_of(access_token: str) -> str:
    """``sha256:<hex>`` of an access token, as tokend's token JSON gives it (SPEC §4)."""
    import hashlib  # here: it loads OpenSSL, a few ms that `tokend token` does not need

    return "sha256:" + hashlib.sha256(access_token.encode()).hexdigest()


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


class TokendError(Exception):
    """Every failure of this module. Carries the Error fields of SPEC §4.

    ``error_code``, ``message``, ``remediation_message`` and ``reference_token`` are the body's
    ``errorCode``, ``message``, ``remediationMessage`` and ``referenceToken``; ``status`` is the HTTP
    status (None when tokend could not be asked); ``retry_after`` is the ``Retry-After`` header in
    seconds, or None.
    """

    def __init__(self, message: str, *, status: int | None = None, error_code: str = "ERROR",
                 remediation_message: str = "", reference_token: str | None = None,
                 retry_after: float | None = None) -> None:
        self.message = message
        self.status = status
        self.error_code = error_code
        self.remediation_message = remediation_message
        self.reference_token = reference_token
        self.retry_after = retry_after
        text = f"{error_code}: {message}" if status is not None else message
        if remediation_message:
            text += f" ({remediation_message})"
        if reference_token:
            text += f" [referenceToken {reference_token}]"
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


# -- the synchronous client -----------------------------------------------------------------------


def request(path: str, method: str = "GET", body: bytes | None = None,
            sock: str | os.PathLike[str] | None = None, timeout: float = DEFAULT_TIMEOUT) -> Answer:
    """One request to tokend over a fresh connection; raises Unreachable when it cannot be made.

    ``timeout`` (seconds) bounds the connect and each read. A few lines of HTTP/1.1 over the socket
    rather than http.client, which imports ssl and the email package: ``tokend token`` starts fast.
    """
    path_ = socket_path(sock)
    head = f"{method} {path} HTTP/1.1\r\nHost: tokend\r\nConnection: close\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    data = bytearray()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(path_)
            try:
                conn.sendall(head.encode("latin-1") + b"\r\n" + (body or b""))
            except (BrokenPipeError, ConnectionResetError):
                pass  # a refused peer is answered at accept, before its request is read
            while chunk := conn.recv(65536):
                data += chunk
                if len(data) > MAX_ANSWER:
                    raise Unreachable(f"tokend at {path_} sent an answer larger than 1 MiB")
    except ConnectionResetError:
        pass  # the answer, if any, arrived before the reset
    except OSError as exc:
        raise Unreachable(f"cannot reach tokend at {path_}: {_describe(exc)}") from None
    return _parse_answer(bytes(data), path_)


def _parse_answer(data: bytes, path: str) -> Answer:
    head, sep, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if not sep or len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise Unreachable(f"tokend at {path} sent no HTTP answer")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Answer(int(parts[1]), body, headers)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "no socket there (is tokend running? is --socket / TOKEND_SOCKET right?)"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (tokend is not running)"
    if isinstance(exc, PermissionError):
        return "permission denied (ask for a group that may open the socket)"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "no answer in time"
    return f"{type(exc).__name__}: {exc}"


class Client:
    """tokend's socket API, synchronously (SPEC §4, §10): one short connection per call.

    ``socket``: tokend's socket (default ``$TOKEND_SOCKET``, else ``/run/tokend/tokend.sock``);
    ``target``: the target's name (default: tokend's default target); ``timeout``: seconds for the
    connect and each read of one call. Every method raises :class:`TokendError` subclasses only.
    Safe to share between threads.
    """

    def __init__(self, socket: str | os.PathLike[str] | None = None, target: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self.socket = socket_path(socket)
        self.target = target
        self.timeout = timeout
        self._learned_target: str | None = target

    def token(self, min_ttl: float | None = None) -> Token:
        """The current token (``GET .../token``); with ``min_ttl`` (seconds), one tokend will
        serve for at least that long (SPEC §4). Raises TokenUnavailable (503), TargetNotFound,
        BadRequest, Forbidden, Unreachable."""
        return self._token(self._call(token_path(self.target, min_ttl)))

    def invalidate(self, fingerprint: str) -> Token:
        """Report that the token with ``fingerprint`` got a 401; returns a newer token (SPEC §4).

        tokend makes one refresh however many consumers report the same token, and answers at once
        if it already holds a newer one. Raises TokenUnavailable when no new token came within
        tokend's ``request_timeout``, and the errors of :meth:`token`.
        """
        answer = self._call(invalidate_path(self._target_name()), "POST",
                            invalidate_body(fingerprint), self.timeout + 30.0)
        return self._token(answer)

    def watch(self, after: str, wait: float = DEFAULT_WAIT) -> Token:
        """The token once its fingerprint is not ``after``, or the current one after ``wait``
        seconds (at most 300), whichever is first (SPEC §10.1). The read timeout is ``wait`` plus
        ``timeout``. Raises TokenUnavailable when the token is withdrawn or tokend stops,
        TargetNotFound when the target is removed or replaced, BadRequest for a malformed ``after``.
        """
        return self._token(self._call(token_path(self.target, after=after, wait=wait),
                                      timeout=wait + self.timeout))

    def status(self) -> dict[str, Any]:
        """The ``GET /v1/status`` document (SPEC §4), each target's entry with its ``url``."""
        answer = self._call("/v1/status")
        if answer.status != 200:
            raise error_from(answer)
        data: dict[str, Any] = answer.json()
        return data

    def url(self) -> str:
        """The target's ``url`` as configured in tokend (from ``/v1/status``)."""
        return target_url(self.status(), self._target_name())

    def _call(self, path: str, method: str = "GET", body: bytes | None = None,
              timeout: float | None = None) -> Answer:
        return request(path, method, body, self.socket, self.timeout if timeout is None else timeout)

    def _token(self, answer: Answer) -> Token:
        token = token_from(answer)
        self._learned_target = self._learned_target or token.target
        return token

    def _target_name(self) -> str:
        """``target``, or the default target's name (learned from a token answer)."""
        if self._learned_target is None:
            self.token()
        assert self._learned_target is not None
        return self._learned_target


def get_token(target: str | None = None, min_ttl: float | None = None,
              sock: str | os.PathLike[str] | None = None, timeout: float = DEFAULT_TIMEOUT,
              wait: float = 0.0) -> dict[str, Any]:
    """The token JSON as a dict; with ``wait`` (seconds), keep retrying while tokend is absent
    or answers 503. Raises Unreachable or a TokenRefused subclass."""
    deadline = time.monotonic() + wait
    delay = 0.1
    while True:
        try:
            answer = request(token_path(target, min_ttl), sock=sock, timeout=timeout)
        except Unreachable:
            if time.monotonic() + delay > deadline:
                raise
        else:
            if answer.status == 200:
                data: dict[str, Any] = answer.json()
                return data
            if answer.status != 503 or time.monotonic() + delay > deadline:
                raise error_from(answer)
        time.sleep(delay)
        delay = min(delay * 2, 2.0)
