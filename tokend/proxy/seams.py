"""What the facade plugs into a proxy (SPEC §9.3, §9.4): local logins, and who may forward.

A proxy answers every canonical path under ``/v1/tokens`` itself and never forwards one. The three
token endpoints go to a :class:`LocalLogin`; until the facade supplies one, :class:`NoLocalLogin`
answers 404. Before a request is forwarded, an :class:`Authorizer` says who sends it: on a Unix
socket the gate has already admitted the peer (:class:`UnixPeers`); a TCP listener will need a
valid local access token instead.

Both receive the aiohttp request and the :class:`Caller`: who is on the other end of the connection,
as the listener established it (peer credentials on a Unix socket, the address on TCP).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from aiohttp import web

from tokend.errbody import error_response
from tokend.peers import Peer

MAX_LOGIN_BODY = 4096  # the 4 KiB cap of SPEC §4 applies to the facade's token endpoints
LOGIN_BODY_TIMEOUT = 10.0  # as the API socket's IDLE_TIMEOUT

# The token endpoints by (route key, method): the route key is the canonical path in lower case,
# without a trailing slash (tokend.proxy.canon.route_key).
CREATE = ("/v1/tokens", "POST")
REFRESH = ("/v1/tokens/access-token/refresh", "PATCH")
REVOKE = ("/v1/tokens/refresh-token", "DELETE")


@dataclass(frozen=True)
class Caller:
    """Who is on the other end of a proxy connection, as its listener established it."""

    via: Literal["unix", "tcp"]
    peer: Peer | None = None  # on a Unix socket: the credentials the gate admitted
    address: str | None = None  # on TCP: the peer's IP address (X-Forwarded-For is never trusted)

    @property
    def who(self) -> str:
        """``uid:N`` on a Unix socket, the address on TCP: for logs, before anyone logged in."""
        if self.peer is not None:
            return f"uid:{self.peer.uid}"
        return self.address or "unknown"


class LocalLogin(Protocol):
    """The facade's token endpoints (SPEC §9.3). Each answers in full, errors in the Error shape.

    The consumer's ``Authorization`` header is to be ignored there; request bodies are capped at
    :data:`MAX_LOGIN_BODY` (see :func:`read_login_body`). Counting is the facade's:
    ``ProxyMetrics.login(outcome)`` with ``success``, ``rejected`` or ``rate_limited``.
    """

    async def create(self, request: web.BaseRequest, caller: Caller) -> web.StreamResponse:
        """``POST /v1/tokens``: 201 and a TokenPair of local tokens, or 401/429."""

    async def refresh(self, request: web.BaseRequest, caller: Caller) -> web.StreamResponse:
        """``PATCH /v1/tokens/access-token/refresh``: 200 and a local access token as a JSON
        string, or 404."""

    async def revoke(self, request: web.BaseRequest, caller: Caller) -> web.StreamResponse:
        """``DELETE /v1/tokens/refresh-token``: 204; revokes a local refresh id on this replica."""


class Authorizer(Protocol):
    """Who may forward (SPEC §9.4)."""

    async def authorize(self, request: web.BaseRequest, caller: Caller) -> str | None:
        """The identity a request is forwarded for (logged: ``uid:N``, a local user's ``sub``),
        or None to answer 401 ``Unauthorized``."""


@runtime_checkable
class FileWatcher(Protocol):
    """A part of a proxy that reads files (session keys, users, certificates): the proxy asks it
    every 30 s and on SIGHUP to re-read them if they changed."""

    def check_files(self, regenerate: bool = False) -> None:
        """Re-read changed files; a file that cannot be used is logged and the last good one
        kept. ``regenerate`` (SIGHUP): make generated material anew if it is due."""


class NoLocalLogin:
    """The token endpoints before the facade is wired in: 404 in the Error shape."""

    async def create(self, request: web.BaseRequest, caller: Caller) -> web.StreamResponse:
        """Not available yet."""
        return _not_available(request)

    async def refresh(self, request: web.BaseRequest, caller: Caller) -> web.StreamResponse:
        """Not available yet."""
        return _not_available(request)

    async def revoke(self, request: web.BaseRequest, caller: Caller) -> web.StreamResponse:
        """Not available yet."""
        return _not_available(request)


class UnixPeers:
    """On a Unix socket the allow-lists decide, at accept: every admitted peer may forward."""

    async def authorize(self, request: web.BaseRequest, caller: Caller) -> str | None:
        """``uid:N`` of an admitted Unix peer; None for anything else."""
        if caller.via != "unix" or caller.peer is None:
            return None
        return caller.who


class LoginBodyRefused(Exception):
    """A token endpoint's body that is too large (413) or too slow (408); answer ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def read_login_body(request: web.BaseRequest) -> bytes:
    """A token endpoint's body, at most :data:`MAX_LOGIN_BODY` bytes arriving within
    :data:`LOGIN_BODY_TIMEOUT`; raises :class:`LoginBodyRefused` when it is larger or slower."""
    too_large = LoginBodyRefused(413, f"the request body is larger than {MAX_LOGIN_BODY} bytes")
    if request.content_length is not None and request.content_length > MAX_LOGIN_BODY:
        raise too_large
    data = bytearray()
    try:
        async with asyncio.timeout(LOGIN_BODY_TIMEOUT):
            while chunk := await request.content.read(MAX_LOGIN_BODY + 1 - len(data)):
                data += chunk
                if len(data) > MAX_LOGIN_BODY:
                    raise too_large
    except TimeoutError:
        raise LoginBodyRefused(408, f"the request body did not arrive within"
                               f" {LOGIN_BODY_TIMEOUT:g} s") from None
    return bytes(data)


def _not_available(request: web.BaseRequest) -> web.StreamResponse:
    return error_response(404, "NOT_FOUND", "local login is not available on this proxy",
                          "Call the SDDC Manager API through this socket without logging in:"
                          " tokend adds its own token")
