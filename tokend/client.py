"""A small synchronous client for the tokend socket, for consumers and the CLI.

Standard library only, so a consumer (or ``tokend token``) starts fast and needs nothing else.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

DEFAULT_SOCKET = "/run/tokend/tokend.sock"


def socket_path(explicit: str | None = None) -> str:
    """``--socket``, else ``$TOKEND_SOCKET``, else the default path."""
    return explicit or os.environ.get("TOKEND_SOCKET") or DEFAULT_SOCKET


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("tokend", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


@dataclass(frozen=True)
class Answer:
    """An HTTP answer from tokend."""

    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)

    @property
    def error(self) -> str:
        """A one-line description of an Error body (or the raw body)."""
        try:
            data = self.json()
        except ValueError:
            return self.body.decode(errors="replace").strip()[:300]
        if not isinstance(data, dict):
            return str(data)[:300]
        text = f"{data.get('errorCode', 'ERROR')}: {data.get('message', '')}"
        if data.get("remediationMessage"):
            text += f" ({data['remediationMessage']})"
        if data.get("referenceToken"):
            text += f" [referenceToken {data['referenceToken']}]"
        return text


class Unreachable(Exception):
    """The socket is absent, refuses connections, or did not answer in time."""


def request(path: str, method: str = "GET", body: bytes | None = None,
            sock: str | None = None, timeout: float = 5.0) -> Answer:
    """One request to tokend; raises Unreachable when it cannot be made."""
    conn = _UnixConnection(socket_path(sock), timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        try:
            conn.request(method, path, body=body, headers=headers)
        except (BrokenPipeError, ConnectionResetError):
            # tokend answers a refused peer at accept and closes before reading the request:
            # the answer is already waiting to be read.
            if conn.sock is None:
                raise
        resp = conn.getresponse()
        return Answer(resp.status, resp.read(), {k.lower(): v for k, v in resp.getheaders()})
    except (OSError, http.client.HTTPException) as exc:
        raise Unreachable(f"cannot reach tokend at {socket_path(sock)}: {_describe(exc)}") from None
    finally:
        conn.close()


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


def token_path(target: str | None, min_ttl: float | None = None, raw: bool = False) -> str:
    """The socket API path for a token request."""
    path = f"/v1/targets/{urllib.parse.quote(target, safe='')}/token" if target else "/v1/token"
    query = {}
    if min_ttl is not None:
        query["min_ttl"] = f"{min_ttl:g}"
    if raw:
        query["format"] = "raw"
    return path + ("?" + urllib.parse.urlencode(query) if query else "")


def get_token(target: str | None = None, min_ttl: float | None = None, sock: str | None = None,
              timeout: float = 5.0, wait: float = 0.0) -> dict[str, Any]:
    """The token JSON; with ``wait``, keep retrying while tokend is absent or answers 503."""
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
                raise TokenRefused(answer)
        time.sleep(delay)
        delay = min(delay * 2, 2.0)


class TokenRefused(Exception):
    """tokend answered, without a token."""

    def __init__(self, answer: Answer) -> None:
        super().__init__(answer.error)
        self.answer = answer
