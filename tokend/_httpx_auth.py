"""``TokendHttpxAuth``: tokend's token on an ``httpx`` client, sync or async (SPEC §10.2).

Imports ``httpx``. An async client never blocks its event loop on tokend: the async flow asks
tokend through httpx's own Unix-socket transport, so it runs under asyncio and trio alike.
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator, Generator

import httpx

from tokend._auth import Tokens, fresh, origin_of, used_fingerprint
from tokend._clientbase import (
    DEFAULT_TIMEOUT,
    MAX_ANSWER,
    Answer,
    Token,
    Unreachable,
    error_from,
    invalidate_body,
    invalidate_path,
    target_url,
    token_from,
    token_path,
)

INVALIDATE_GRACE = 30.0


class TokendHttpxAuth(httpx.Auth):
    """``httpx.Client(auth=TokendHttpxAuth())``, or ``httpx.AsyncClient``: the token on the target's
    requests.

    Arguments and behaviour as :class:`tokend.client.TokendAuth`: the header only for the target's
    origin; on a 401 to a request that carried it, ``invalidate`` and one retry when the body can be
    sent again (no body, or one given as bytes, text, JSON or form data; not a stream).
    """

    def __init__(self, socket: str | os.PathLike[str] | None = None, target: str | None = None,
                 origin: str | None = None) -> None:
        self.tokens = Tokens(socket, target, origin)

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """The flow of an ``httpx.Client``."""
        tokens = self.tokens
        if not tokens.applies(str(request.url)):
            yield request
            return
        request.headers["Authorization"] = f"Bearer {tokens.current().access_token}"
        response = yield request
        refused = used_fingerprint(request.headers.get("Authorization"))
        if response.status_code == 401 and refused is not None and _replayable(request):
            request.headers["Authorization"] = f"Bearer {tokens.replace(refused).access_token}"
            yield request

    async def async_auth_flow(
            self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        """The flow of an ``httpx.AsyncClient``: tokend is asked without blocking the loop."""
        tokens = self.tokens
        if tokens.origin is None:
            status = await self._ask("/v1/status")
            if status.status != 200:
                raise error_from(status)
            tokens.learn_origin(target_url(status.json(), await self._target_name()))
        if origin_of(str(request.url)) != tokens.origin:
            yield request
            return
        token = tokens.kept()
        if token is None or not fresh(token):
            token = tokens.keep(token_from(await self._ask(token_path(tokens.client.target))))
        request.headers["Authorization"] = f"Bearer {token.access_token}"
        response = yield request
        refused = used_fingerprint(request.headers.get("Authorization"))
        if response.status_code == 401 and refused is not None and _replayable(request):
            kept = tokens.kept()
            if kept is None or kept.fingerprint == refused:
                answer = await self._ask(invalidate_path(await self._target_name()), "POST",
                                         invalidate_body(refused), DEFAULT_TIMEOUT + INVALIDATE_GRACE)
                kept = tokens.keep(token_from(answer))
            request.headers["Authorization"] = f"Bearer {kept.access_token}"
            yield request

    async def _target_name(self) -> str:
        name = self.tokens.client.target
        if name is None:
            kept: Token | None = self.tokens.kept()
            if kept is None:
                kept = self.tokens.keep(token_from(await self._ask(token_path(None))))
            name = kept.target
        return name

    async def _ask(self, path: str, method: str = "GET", body: bytes | None = None,
                   timeout: float = DEFAULT_TIMEOUT) -> Answer:
        """One request to tokend over httpx's Unix-socket transport."""
        socket = self.tokens.client.socket
        transport = httpx.AsyncHTTPTransport(uds=socket)
        try:
            async with httpx.AsyncClient(transport=transport, timeout=timeout) as client:
                response = await client.request(method, "http://tokend" + path, content=body,
                                                headers={"Content-Type": "application/json"}
                                                if body is not None else None)
        except httpx.TransportError as exc:
            raise Unreachable(f"cannot reach tokend at {socket}: {type(exc).__name__}: {exc}"
                              ) from None
        if len(response.content) > MAX_ANSWER:
            raise Unreachable(f"tokend at {socket} sent an answer larger than 1 MiB")
        return Answer(response.status_code, response.content,
                      {k.lower(): v for k, v in response.headers.items()})


def _replayable(request: httpx.Request) -> bool:
    """Whether the body can be sent again: httpx keeps bytes, text, JSON and form bodies whole."""
    return isinstance(request.stream, httpx.ByteStream)
