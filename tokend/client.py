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

import os
import socket
import time
from typing import TYPE_CHECKING, Any

from tokend._clientbase import (
    DEFAULT_TIMEOUT,
    DEFAULT_WAIT,
    MAX_ANSWER,
    Answer,
    BadRequest,
    ClientBase,
    Forbidden,
    TargetNotFound,
    Token,
    TokendError,
    TokenRefused,
    TokenUnavailable,
    Unreachable,
    describe_os_error,
    error_from,
    socket_path,
    target_url,
    token_path,
)

if TYPE_CHECKING:  # imported on first use (module __getattr__ below), never by the CLI
    from tokend._aclient import AsyncClient
    from tokend._httpx_auth import TokendHttpxAuth
    from tokend._requests_auth import TokendAuth

__all__ = [
    "AsyncClient", "BadRequest", "Client", "Forbidden", "TargetNotFound", "Token", "TokenRefused",
    "TokenUnavailable", "TokendAuth", "TokendError", "TokendHttpxAuth", "Unreachable",
    "fingerprint_of", "get_token", "socket_path",
]

SOCKET_HINT = "--socket / TOKEND_SOCKET"  # where a missing socket's path came from
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


def fingerprint_of(access_token: str) -> str:
    """``sha256:<hex>`` of an access token, as tokend's token JSON gives it (SPEC §4)."""
    import hashlib  # here: it loads OpenSSL, a few ms that `tokend token` does not need

    return "sha256:" + hashlib.sha256(access_token.encode()).hexdigest()


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
        why = describe_os_error(exc, SOCKET_HINT)
        raise Unreachable(f"cannot reach tokend at {path_}: {why}") from None
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


class Client(ClientBase):
    """tokend's socket API, synchronously (SPEC §4, §10): one short connection per call.

    ``socket``: tokend's socket (default ``$TOKEND_SOCKET``, else ``/run/tokend/tokend.sock``);
    ``target``: the target's name (default: tokend's default target); ``timeout``: seconds for the
    connect and each read of one call. Every method raises :class:`TokendError` subclasses only.
    Safe to share between threads.
    """

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
        path, method, body = self._invalidation(self._target_name(), fingerprint)
        return self._token(self._call(path, method, body, self.timeout + 30.0))

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
        return self._status_of(self._call("/v1/status"))

    def url(self) -> str:
        """The target's ``url`` as configured in tokend (from ``/v1/status``)."""
        return target_url(self.status(), self._target_name())

    def _call(self, path: str, method: str = "GET", body: bytes | None = None,
              timeout: float | None = None) -> Answer:
        return request(path, method, body, self.socket, self.timeout if timeout is None else timeout)

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
    or answers 503, until ``wait`` has passed: the last try is made at the deadline, not a
    backoff step before it. Raises Unreachable or a TokenRefused subclass."""
    deadline = time.monotonic() + wait
    delay = 0.1
    while True:
        try:
            answer = request(token_path(target, min_ttl), sock=sock, timeout=timeout)
        except Unreachable:
            if time.monotonic() >= deadline:
                raise
        else:
            if answer.status == 200:
                data: dict[str, Any] = answer.json()
                return data
            if answer.status != 503 or time.monotonic() >= deadline:
                raise error_from(answer)
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 2.0)
