"""The asynchronous client (SPEC §10.2): :class:`AsyncClient`, imported as ``tokend.client.AsyncClient``.

Kept apart from :mod:`tokend.client` so that importing that module (the CLI does) never imports
``aiohttp``.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

import aiohttp

from tokend._clientbase import (
    DEFAULT_TIMEOUT,
    DEFAULT_WAIT,
    MAX_ANSWER,
    Answer,
    ClientBase,
    TargetNotFound,
    Token,
    TokenUnavailable,
    Unreachable,
    describe_os_error,
    target_url,
    token_path,
)

# tokend closes a connection idle for 10 s; the client lets go of it sooner, so it never sends a
# request on a connection tokend is closing.
KEEPALIVE = 5.0
INVALIDATE_GRACE = 30.0
# tokens(): a re-watch starts up to REWATCH_JITTER s late, at random, so that the watchers a new
# token answered do not all ask again while tokend is still answering the others (a token that
# comes meanwhile is answered at once); each watch waits up to WATCH_JITTER of ``wait`` less, so
# that consumers started together do not time out together; and the back-off while tokend is away.
REWATCH_JITTER = 0.25
WATCH_JITTER = 0.1
RETRY_FIRST = 0.5
RETRY_MAX = 30.0
GONE_TRIES = 6  # about 60 s of 404s before tokens() believes the target is gone


class AsyncClient(ClientBase):
    """tokend's socket API for asyncio (SPEC §4, §10), on one kept-alive connection pool.

    Arguments as :class:`tokend.client.Client`. Use ``async with AsyncClient() as client:`` or call
    :meth:`aclose`. Every method raises :class:`tokend.client.TokendError` subclasses only.
    """

    def __init__(self, socket: str | os.PathLike[str] | None = None, target: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__(socket, target, timeout)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def token(self, min_ttl: float | None = None) -> Token:
        """As :meth:`tokend.client.Client.token`."""
        return self._token(await self._call(token_path(self.target, min_ttl)))

    async def invalidate(self, fingerprint: str) -> Token:
        """As :meth:`tokend.client.Client.invalidate`."""
        path, method, body = self._invalidation(await self._target_name(), fingerprint)
        return self._token(await self._call(path, method, body, self.timeout + INVALIDATE_GRACE))

    async def watch(self, after: str, wait: float = DEFAULT_WAIT) -> Token:
        """As :meth:`tokend.client.Client.watch`: read timeout ``wait`` plus ``timeout``."""
        return self._token(await self._call(token_path(self.target, after=after, wait=wait),
                                            timeout=wait + self.timeout))

    async def status(self) -> dict[str, Any]:
        """As :meth:`tokend.client.Client.status`."""
        return self._status_of(await self._call("/v1/status"))

    async def url(self) -> str:
        """As :meth:`tokend.client.Client.url`."""
        return target_url(await self.status(), await self._target_name())

    async def tokens(self, wait: float = DEFAULT_WAIT) -> AsyncIterator[Token]:
        """The current token, then each new one as soon as tokend has it (SPEC §10.2).

        Built on :meth:`watch`: re-watches on the kept-alive connection after a random pause of up
        to 0.25 s (jitter: a thousand consumers do not ask again all at once), each watch ``wait``
        seconds (at most 300) less up to 10 % at random. While tokend is away, has no token, or
        swaps the target's keeper on reload, it waits (``Retry-After``, else backing off from 0.5 s
        to 30 s) and carries on: a consumer's refresher outlives a restart of tokend. Raises
        Forbidden, BadRequest, and TargetNotFound when the target stays gone.
        """
        token: Token | None = None  # the one watched
        last = ""  # the fingerprint last yielded
        delay = RETRY_FIRST
        gone = 0
        while True:
            try:
                if token is None:
                    new = await self.token()
                else:
                    await asyncio.sleep(REWATCH_JITTER * random.random())
                    new = await self.watch(token.fingerprint,
                                           wait * (1 - WATCH_JITTER * random.random()))
            except (Unreachable, TokenUnavailable) as exc:
                pause = exc.retry_after if exc.retry_after is not None else delay
                await asyncio.sleep(min(pause, RETRY_MAX) * (0.5 + random.random() / 2))
                delay = min(delay * 2, RETRY_MAX)
                continue
            except TargetNotFound:
                # A reload replacing the target answers 404 until the old keeper has stopped
                # (revoking, with revoke_on_exit, takes up to its request_timeout): be patient.
                gone += 1
                if gone > GONE_TRIES:  # not a reload swapping the keeper: the target is gone
                    raise
                await asyncio.sleep(min(RETRY_FIRST * 2 ** gone, RETRY_MAX))
                token = None
                continue
            delay, gone = RETRY_FIRST, 0
            token = new
            if new.fingerprint != last:
                last = new.fingerprint
                yield new

    async def _call(self, path: str, method: str = "GET", body: bytes | None = None,
                    timeout: float | None = None) -> Answer:
        session = self._session
        if session is None or session.closed:
            connector = aiohttp.UnixConnector(path=self.socket, keepalive_timeout=KEEPALIVE)
            session = self._session = aiohttp.ClientSession(connector=connector)
        limit = aiohttp.ClientTimeout(total=None, connect=self.timeout,
                                      sock_read=self.timeout if timeout is None else timeout)
        headers = {"Content-Type": "application/json"} if body is not None else None
        try:
            async with session.request(method, "http://tokend" + path, data=body, headers=headers,
                                       timeout=limit) as response:
                data = await response.content.read(MAX_ANSWER + 1)
                if len(data) > MAX_ANSWER:
                    raise Unreachable(f"tokend at {self.socket} sent an answer larger than 1 MiB")
                return Answer(response.status, data,
                              {k.lower(): v for k, v in response.headers.items()})
        except aiohttp.ClientResponseError as exc:
            raise Unreachable(f"tokend at {self.socket} sent no valid HTTP answer: {exc}") from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise Unreachable(f"cannot reach tokend at {self.socket}: {_describe(exc)}") from None

    async def _target_name(self) -> str:
        if self._learned_target is None:
            await self.token()
        assert self._learned_target is not None
        return self._learned_target


def _describe(exc: BaseException) -> str:
    cause = exc.os_error if isinstance(exc, aiohttp.ClientConnectorError) else exc
    return describe_os_error(exc, "TOKEND_SOCKET", cause)
