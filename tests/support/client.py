"""One HTTP client for tokend's Unix socket, for the tests and the benchmarks.

Three ways in, one :class:`Answer`:

- ``await client.request(...)``: one request on a connection of its own, as a consumer makes it;
- ``async with client.session() as s``: keep-alive connections for many requests (the soak's
  consumers);
- ``client.request_blocking(...)`` and ``client.send_raw(...)``: no event loop, a plain socket and
  the request written byte for byte (hypothesis tests, the benchmark's probes).

A body that is not bytes is sent as JSON; a body is sent with no Content-Type unless one is given.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from multidict import CIMultiDict

HOST = "tokend"


@dataclass(frozen=True)
class Answer:
    """An HTTP answer: status, body, and headers looked up without regard to case."""

    status: int
    body: bytes
    headers: CIMultiDict[str]

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


def encode(body: Any) -> bytes | None:
    """A request body: bytes as they are, None as no body, anything else as JSON."""
    if body is None or isinstance(body, bytes):
        return body
    return json.dumps(body).encode()


class Session:
    """Keep-alive connections to the socket (see :meth:`SocketClient.session`)."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    async def request(self, method: str, path: str, body: Any = None, *,
                      headers: Mapping[str, str] | None = None) -> Answer:
        """One request; the answer read whole."""
        async with self._session.request(method, f"http://{HOST}{path}", data=encode(body),
                                         headers=headers) as r:
            return Answer(r.status, await r.read(), CIMultiDict(r.headers))

    async def get(self, path: str) -> Answer:
        """``GET path``."""
        return await self.request("GET", path)


class SocketClient:
    """HTTP/1.1 to a server on the Unix socket at ``path``."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    @contextlib.asynccontextmanager
    async def session(self, *, limit: int = 1, timeout: float = 30.0) -> AsyncIterator[Session]:
        """Up to ``limit`` keep-alive connections, each request given ``timeout`` s in all."""
        connector = aiohttp.UnixConnector(path=str(self.path), limit=limit)
        async with aiohttp.ClientSession(connector=connector,
                                         timeout=aiohttp.ClientTimeout(total=timeout)) as s:
            yield Session(s)

    async def request(self, method: str, path: str, body: Any = None, *,
                      headers: Mapping[str, str] | None = None, timeout: float = 30.0) -> Answer:
        """One request on a connection of its own."""
        async with self.session(timeout=timeout) as s:
            return await s.request(method, path, body, headers=headers)

    async def get(self, path: str, timeout: float = 30.0) -> Answer:
        """``GET path`` on a connection of its own."""
        return await self.request("GET", path, timeout=timeout)

    def request_blocking(self, method: str, path: str, body: Any = None, *,
                         headers: Mapping[str, str] | None = None, timeout: float = 15.0) -> Answer:
        """One request with ``Connection: close``, written as given (``path`` is not checked)."""
        data = encode(body)
        lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if data is not None:
            lines.append(f"Content-Length: {len(data)}")
        return self.send_raw(("\r\n".join(lines) + "\r\n\r\n").encode() + (data or b""), method,
                             timeout)

    def send_raw(self, raw: bytes, method: str = "GET", timeout: float = 15.0) -> Answer:
        """Write ``raw``, a whole request, and read one answer (``method`` says how to read it)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.path))
            sock.sendall(raw)
            response = http.client.HTTPResponse(sock, method=method)
            response.begin()
            return Answer(response.status, response.read(), CIMultiDict(response.getheaders()))
