"""What the auth hooks for ``requests`` and ``httpx`` share (SPEC §10.2): standard library only.

The rules, whichever HTTP library:

1. The header goes only to requests whose origin (scheme, host, port) is the target's: ``origin``
   if given, else the ``url`` tokend's ``/v1/status`` gives for the target. Never to other hosts the
   session talks to, nor after a redirect to one (both libraries drop the header then).
2. The token is kept and reused while it has more than half its life at receipt left (at most
   :data:`REUSE_MARGIN` s before its end); then tokend is asked again. tokend's answer is a few
   microseconds: there is no reason to cache harder.
3. A 401 to a request that carried the header: the token it carried is reported (``invalidate``,
   one refresh however many report it) and the request is sent once more with the new token,
   if its body can be sent again; a second 401 is the caller's.
"""

from __future__ import annotations

import os
import threading
import urllib.parse

from tokend.client import Client, Token, TokendError, fingerprint_of

REUSE_MARGIN = 60.0
_DEFAULT_PORTS = {"https": 443, "http": 80}

Origin = tuple[str, str, int]


def origin_of(url: str) -> Origin:
    """(scheme, host, port) of ``url``, lower case, with the scheme's default port filled in."""
    parts = urllib.parse.urlsplit(str(url))
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:  # a port out of range: matches nothing
        port = -1
    return scheme, (parts.hostname or "").lower(), port or _DEFAULT_PORTS.get(scheme, -1)


def fresh(token: Token) -> bool:
    """Whether ``token`` may be used again rather than asking tokend (rule 2)."""
    return token.remaining() > min(REUSE_MARGIN, token.expires_in / 2)


def used_fingerprint(authorization: str | None) -> str | None:
    """The fingerprint of the token in an ``Authorization: Bearer`` header value."""
    scheme, _, value = (authorization or "").partition(" ")
    return fingerprint_of(value.strip()) if scheme.lower() == "bearer" and value else None


class Tokens:
    """The token and origin of one auth hook, kept for every request of its session; thread-safe."""

    def __init__(self, socket: str | os.PathLike[str] | None, target: str | None,
                 origin: str | None) -> None:
        self.client = Client(socket, target)
        self._origin = origin_of(origin) if origin else None
        self._token: Token | None = None
        self._lock = threading.Lock()

    def applies(self, url: str) -> bool:
        """Whether a request to ``url`` gets the header (rule 1). Asks tokend for the origin once."""
        if self._origin is None:
            with self._lock:
                if self._origin is None:
                    self._origin = origin_of(self.client.url())
        return origin_of(url) == self._origin

    def learn_origin(self, url: str) -> None:
        """Set the origin from the target's ``url`` (for hooks that ask tokend themselves)."""
        self._origin = origin_of(url)

    @property
    def origin(self) -> Origin | None:
        """The origin the header goes to, once known."""
        return self._origin

    def current(self) -> Token:
        """The token to send (rule 2)."""
        with self._lock:
            token = self._token
            if token is None or not fresh(token):
                token = self._token = self.client.token()
            return token

    def replace(self, refused: str) -> Token:
        """The token to send instead of the one with fingerprint ``refused`` (rule 3)."""
        with self._lock:
            token = self._token
            if token is None or token.fingerprint == refused:
                token = self._token = self.client.invalidate(refused)
            return token

    def keep(self, token: Token) -> Token:
        """Remember ``token`` (one an async hook got from tokend itself)."""
        self._token = token
        return token

    def kept(self) -> Token | None:
        """The token held, if any."""
        return self._token


__all__ = ["Origin", "TokendError", "Tokens", "fresh", "origin_of", "used_fingerprint"]
