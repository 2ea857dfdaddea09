"""A small synchronous client for the tokend socket, for consumers and the CLI.

Standard library only, so a consumer (or ``tokend token``) starts fast and needs nothing else.
"""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

from tokend import DEFAULT_SOCKET


def socket_path(explicit: str | None = None) -> str:
    """``--socket``, else ``$TOKEND_SOCKET``, else the default path."""
    return explicit or os.environ.get("TOKEND_SOCKET") or DEFAULT_SOCKET


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


MAX_ANSWER = 1 << 20


def request(path: str, method: str = "GET", body: bytes | None = None,
            sock: str | None = None, timeout: float = 5.0) -> Answer:
    """One request to tokend; raises Unreachable when it cannot be made.

    A few lines of HTTP/1.1 over the socket rather than http.client, which imports ssl and the
    email package: this keeps ``tokend token`` quick to start.
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
    """The token JSON; with ``wait`` (seconds), keep retrying while tokend is absent or answers
    503, until ``wait`` has passed: the last try is made at the deadline, not a backoff step
    before it."""
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
                raise TokenRefused(answer)
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 2.0)


class TokenRefused(Exception):
    """tokend answered, without a token."""

    def __init__(self, answer: Answer) -> None:
        super().__init__(answer.error)
        self.answer = answer
