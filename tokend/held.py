"""The token tokend holds: its tracked lifetime, its admission and its answers rendered once.

Pure. An issued token is admitted whole or not at all (SPEC §5.1, §8.1): its lifetime is tracked
on the monotonic clock from the moment its request was sent and can only err short, is cut to
``max_token_lifetime``, and the answers served for it are rendered before anyone sees it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime

from tokend.errors import InvalidResponse
from tokend.jwtinfo import Claims

NO_CLAIMS_MARGIN = 60.0


def iso_utc(epoch: float) -> str:
    """``2026-11-28T07:00:00Z``, truncated to the second (never later than ``epoch``).

    Raises ValueError or OverflowError for an instant outside years 1–9999.
    """
    return datetime.fromtimestamp(math.floor(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def tracked_lifetime(claims: Claims, sent_wall: float, server_date: float | None) -> float:
    """Seconds after the request was sent during which the token may be served.

    ``exp − iat`` is immune to either clock; ``exp − Date`` bounds it by the server's own clock (an
    already-expired token is caught even when its ``iat`` is old). A whole-second ``iat`` and the
    whole-second ``Date`` header each cost a second, so the result can only err early. With neither,
    ``exp`` is read against the local wall clock, 60 s early.
    """
    spans: list[float] = []
    if claims.iat is not None:
        # A whole-second iat may be the issue instant truncated by up to a second, so exp − iat can
        # overstate the span by as much, even when exp itself carries a fraction. A truncated exp
        # only shortens it.
        iat_truncated = isinstance(claims.iat, int) or claims.iat.is_integer()
        spans.append(claims.exp - claims.iat - (1.0 if iat_truncated else 0.0))
    if server_date is not None:
        spans.append(claims.exp - server_date - 1.0)
    if not spans:
        spans.append(claims.exp - NO_CLAIMS_MARGIN - sent_wall)
    span = min(spans)
    if span <= 0:
        raise InvalidResponse("the access token is already expired when issued")
    return span


@dataclass(frozen=True)
class HeldToken:
    """An access token, the monotonic span in which tokend serves it, and its answers rendered once.

    Rendering happens at construction (so a token that cannot be rendered is never taken); serving
    it is then a few byte copies (SPEC §4 token JSON, ``?format=raw``).
    """

    access_token: str
    fingerprint: str
    upstream_exp: int | float
    obtained_at: float  # monotonic instant the request that obtained it was sent
    expires_at: float  # monotonic instant tokend stops serving it
    obtained_wall: float  # wall-clock twin of obtained_at, for display and metrics
    target: str = ""
    raw: bytes = field(init=False, repr=False, compare=False)
    json_head: bytes = field(init=False, repr=False, compare=False)  # before the expiresIn value
    json_tail: bytes = field(init=False, repr=False, compare=False)  # after it

    def __post_init__(self) -> None:
        head = {"target": self.target, "tokenType": "Bearer", "accessToken": self.access_token,
                "expiresAt": iso_utc(self.expires_wall)}
        tail = {"upstreamExp": self.upstream_exp, "fingerprint": self.fingerprint}
        head_text = json.dumps(head, separators=(", ", ": "))[:-1] + ', "expiresIn": '
        tail_text = ", " + json.dumps(tail, separators=(", ", ": "), allow_nan=False)[1:]
        object.__setattr__(self, "raw", self.access_token.encode("utf-8", "surrogatepass"))
        object.__setattr__(self, "json_head", head_text.encode())
        object.__setattr__(self, "json_tail", tail_text.encode())

    @property
    def lifetime(self) -> float:
        """The tracked span from request to serve-until, in seconds."""
        return self.expires_at - self.obtained_at

    @property
    def expires_wall(self) -> float:
        """When tokend stops serving it, on the local wall clock (``expiresAt``)."""
        return self.obtained_wall + self.lifetime

    def remaining(self, now: float) -> float:
        """Seconds it may still be served."""
        return self.expires_at - now

    def valid(self, now: float) -> bool:
        """Whether it may be served at ``now``."""
        return now < self.expires_at

    def expires_in(self, now: float) -> int:
        """Whole seconds tokend will still serve it (``expiresIn``)."""
        return max(0, math.floor(self.remaining(now)))

    def json(self, now: float) -> bytes:
        """The token JSON of SPEC §4 at ``now`` (monotonic)."""
        return self.json_head + str(self.expires_in(now)).encode() + self.json_tail

    def __repr__(self) -> str:
        return f"HeldToken({self.fingerprint}, expires_at={self.expires_at:.3f})"


@dataclass(frozen=True)
class Admitted:
    """A token that passed every check, and the lifetime it claimed when that was cut."""

    token: HeldToken
    claimed_lifetime: float | None  # set only when the cap applied


def admit(target: str, access_token: str, token_fingerprint: str, claims: Claims, sent_mono: float,
          sent_wall: float, server_date: float | None, max_lifetime: float) -> Admitted:
    """Check an issued token whole (SPEC §5.1, §8.1): lifetime, cap, rendering.

    Raises InvalidResponse when the token cannot be served (already expired, or not renderable).
    """
    lifetime = tracked_lifetime(claims, sent_wall, server_date)
    claimed: float | None = None
    if lifetime > max_lifetime:
        claimed, lifetime = lifetime, max_lifetime
    try:
        token = HeldToken(access_token=access_token, fingerprint=token_fingerprint,
                          upstream_exp=claims.exp, obtained_at=sent_mono,
                          expires_at=sent_mono + lifetime, obtained_wall=sent_wall, target=target)
    except (ValueError, OverflowError) as exc:
        raise InvalidResponse(f"the access token cannot be served ({type(exc).__name__})") from None
    return Admitted(token, claimed)
