"""The fake SDDC Manager, plus a record of every access token it sent: when, and in which answer."""

from __future__ import annotations

import base64
import contextlib
import email.utils
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tokend.testing.fake_sddc import FakeSddc

# Per-request storage for the tracking middleware (web.RequestKey where aiohttp has it).
_RequestKey: Any = getattr(web, "RequestKey", None)
TOKENS_KEY: Any = _RequestKey("soak_tokens", list) if _RequestKey is not None else "soak_tokens"


def _claims(token: str) -> dict[str, Any] | None:
    """The JWT payload, unverified; None for anything that is not a JWT with a JSON payload."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


@dataclass
class Issued:
    """An access token the fake sent in a 200/201 answer, and its SPEC §5.1 window."""

    token: str
    fingerprint: str
    exp: float | None
    iat: float | None
    iat_whole: bool
    received: float  # wall clock: the fake got the request (tokend sent it no later)
    date: float | None = None  # the answer's Date header
    delivered: float | None = None  # wall clock: the answer was being written; None if never

    @property
    def span(self) -> float | None:
        """SPEC §5.1 tracked lifetime, or None when tokend must refuse the token."""
        if self.exp is None:
            return None
        spans = []
        if self.iat is not None:
            spans.append(self.exp - self.iat - (1.0 if self.iat_whole else 0.0))
        if self.date is not None:
            spans.append(self.exp - self.date - 1.0)
        if not spans:
            return None
        span = min(spans)
        return span if span > 0 else None

    @property
    def end(self) -> float | None:
        """Wall-clock instant after which tokend may no longer serve it (an upper bound)."""
        span = self.span
        return None if span is None else self.received + span


class TrackingFake(FakeSddc):
    """The fake, plus a record of every access token it sent, when, and in which answer."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.issued: dict[str, Issued] = {}
        self.recent: list[Issued] = []  # delivered tokens, pruned as their windows close

    def app(self) -> web.Application:
        app = super().app()
        app.middlewares.append(self._track)
        app.on_response_prepare.append(self._stamp)  # after the fake's own Date hook
        return app

    @web.middleware
    async def _track(self, request: web.Request,
                     handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                     ) -> web.StreamResponse:
        received = time.time()
        tokens: list[Issued] = []
        request[TOKENS_KEY] = tokens
        response = await handler(request)
        if isinstance(response, web.Response) and response.status in (200, 201) and response.body:
            body = response.body
            with contextlib.suppress(ValueError, TypeError):
                data = json.loads(body if isinstance(body, bytes | bytearray) else b"")
                access = data.get("accessToken") if isinstance(data, dict) else data
                if isinstance(access, str):
                    tokens.append(self._record(access, received))
        return response

    def _record(self, token: str, received: float) -> Issued:
        claims = _claims(token) or {}
        iat = _number(claims.get("iat"))
        rec = Issued(token=token, fingerprint="sha256:" + hashlib.sha256(token.encode()).hexdigest(),
                     exp=_number(claims.get("exp")), iat=iat,
                     iat_whole=iat is not None and float(iat).is_integer(), received=received)
        self.issued[token] = rec
        return rec

    async def _stamp(self, request: web.Request, response: web.StreamResponse) -> None:
        tokens: list[Issued] = request.get(TOKENS_KEY) or []
        if not tokens:
            return
        transport = request.transport
        if transport is None or transport.is_closing():
            return  # never reaches tokend
        date_header = response.headers.get("Date")
        date = email.utils.parsedate_to_datetime(date_header).timestamp() if date_header else None
        now = time.time()
        for rec in tokens:
            rec.date, rec.delivered = date, now
            self.recent.append(rec)

    def prune(self, now: float) -> None:
        self.recent = [r for r in self.recent if r.end is not None and r.end > now - 5.0]


# -- the report --------------------------------------------------------------------------------
