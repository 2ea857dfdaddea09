"""``TokendAuth``: tokend's token on a ``requests`` session (SPEC §10.2). Imports ``requests``."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import requests
from requests.cookies import extract_cookies_to_jar

from tokend._auth import Tokens, used_fingerprint


class TokendAuth(requests.auth.AuthBase):
    """``session.auth = TokendAuth()``: ``Authorization: Bearer`` from tokend on the target's requests.

    ``socket``: tokend's socket (default ``$TOKEND_SOCKET``, else ``/run/tokend/tokend.sock``);
    ``target``: the target's name (default: tokend's default target); ``origin``: the URL whose
    scheme, host and port get the header (default: the target's ``url`` in tokend's status).
    Requests to any other origin go out untouched. On a 401 to a request that carried the header,
    the token is reported to tokend (``invalidate``) and the request is sent once more with the new
    token, when its body can be sent again (none, bytes, str, or a seekable file). Errors of tokend
    itself are raised as :class:`tokend.client.TokendError` subclasses. Thread-safe.
    """

    def __init__(self, socket: str | os.PathLike[str] | None = None, target: str | None = None,
                 origin: str | None = None) -> None:
        self.tokens = Tokens(socket, target, origin)

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        """Add the header, and the hook that retries after a 401."""
        if request.url is None or not self.tokens.applies(request.url):
            return request
        request.headers["Authorization"] = f"Bearer {self.tokens.current().access_token}"
        position = _body_position(request.body)
        if position is not False:
            hook = _retry_hook(self.tokens, position)
            request.register_hook("response", hook)
        return request


def _body_position(body: Any) -> int | bool | None:
    """Where a replayable body starts: None for bytes/str/no body, an offset for a seekable file,
    False for a body that cannot be sent twice (a generator, a pipe)."""
    if body is None or isinstance(body, bytes | str):
        return None
    tell = getattr(body, "tell", None)
    if tell is not None and getattr(body, "seek", None) is not None:
        try:
            position: int = tell()
        except OSError:
            return False
        return position
    return False


def _retry_hook(tokens: Tokens, position: int | None) -> Callable[..., requests.Response]:
    def retry_once(response: requests.Response, **kwargs: Any) -> requests.Response:
        header = response.request.headers.get("Authorization")
        refused = used_fingerprint(header if isinstance(header, str) else None)
        if response.status_code != 401 or refused is None:
            return response
        new = tokens.replace(refused)
        response.content  # noqa: B018  (read it, so the connection can be reused)
        response.close()
        again = response.request.copy()
        again.deregister_hook("response", retry_once)  # once
        if position is not None:
            again.body.seek(position)  # type: ignore[union-attr]
        cookies = getattr(again, "_cookies", None)
        if cookies is not None:
            extract_cookies_to_jar(cookies, response.request, response.raw)
            again.prepare_cookies(cookies)
        again.headers["Authorization"] = f"Bearer {new.access_token}"
        retried: requests.Response = response.connection.send(again, **kwargs)
        retried.history.append(response)
        retried.request = again
        return retried

    return retry_once
