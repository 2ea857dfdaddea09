"""The refresh policy: what a target's keeper does next, and when. Pure: no I/O, no clock reads.

Every method takes ``now`` (seconds on the monotonic clock) and the random source is injected, so the
whole policy is tested without sockets or sleeps. The keeper feeds it outcomes and asks
:meth:`RefreshPolicy.next_action`; nothing else decides timing.

Rules (SPEC §5): a token is served until ``sent + lifetime`` where the lifetime can only err short;
refresh at ``refresh_at ± jitter`` of it; the refresh token first, a login when it is gone or after
three transient refresh failures; full-jitter exponential backoff capped by ``max_backoff``, a tenth
of the remaining life (floor 1 s) and 30 s while no token is held; ``Retry-After`` honoured within
those caps; credential rejections counted per secret, logins spaced by ``login_retry_interval`` after
one, and none at all after ``max_login_failures`` rejections of the same secret.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from tokend.errors import (
    CredentialsRejected,
    InvalidResponse,
    RefreshTokenGone,
    UpstreamError,
)
from tokend.jwtinfo import Claims

FIRST_RETRY = 1.0
NO_TOKEN_BACKOFF_CAP = 30.0
TRANSIENT_REFRESHES_BEFORE_LOGIN = 3
CONSUMER_QUIET_AFTER_NEW_TOKEN = 5.0
CONSUMER_MIN_INTERVAL = 10.0
NO_CLAIMS_MARGIN = 60.0

Operation = Literal["login", "refresh"]
State = Literal["starting", "valid", "refreshing", "degraded", "expired", "credentials_rejected"]
STATES: tuple[State, ...] = (
    "starting", "valid", "refreshing", "degraded", "expired", "credentials_rejected",
)


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
    """An access token and the monotonic span in which tokend serves it."""

    access_token: str
    fingerprint: str
    upstream_exp: int | float
    obtained_at: float  # monotonic instant the request that obtained it was sent
    expires_at: float  # monotonic instant tokend stops serving it
    obtained_wall: float  # wall-clock twin of obtained_at, for display and metrics

    @property
    def lifetime(self) -> float:
        """The tracked span from request to serve-until."""
        return self.expires_at - self.obtained_at

    def remaining(self, now: float) -> float:
        """Seconds it may still be served."""
        return self.expires_at - now

    def valid(self, now: float) -> bool:
        """Whether it may be served at ``now``."""
        return now < self.expires_at

    def __repr__(self) -> str:
        return f"HeldToken({self.fingerprint}, expires_at={self.expires_at:.3f})"


@dataclass(frozen=True)
class PolicyConfig:
    """The per-target settings the policy needs (SPEC §3)."""

    refresh_at: float = 0.7
    jitter: float = 0.05
    max_backoff: float = 300.0
    max_login_failures: int = 3
    login_retry_interval: float = 60.0


@dataclass(frozen=True)
class Action:
    """What to do next. ``idle`` waits for an outside event (a changed secret, SIGHUP)."""

    kind: Literal["login", "refresh", "idle"]
    at: float


class RefreshPolicy:
    """The decisions of one target's keeper."""

    def __init__(self, config: PolicyConfig, rand: Callable[[], float] = random.random) -> None:
        self.config = config
        self._rand = rand
        self.token: HeldToken | None = None
        self.has_refresh_token = False
        self.failures = 0
        self.transient_refresh_failures = 0
        self.attempted = False
        self.secret_digest: str | None = None
        self._rejections: dict[str, int] = {}
        self._last_rejection_at: float | None = None
        self._next_at = 0.0
        self._token_received_at = -math.inf
        self._last_consumer_refresh = -math.inf

    # -- what the keeper asks -------------------------------------------------------------------

    @property
    def locked_out(self) -> bool:
        """True when the current secret has been rejected ``max_login_failures`` times."""
        count = self._rejections.get(self.secret_digest or "", 0)
        return count >= self.config.max_login_failures

    def rejections(self) -> int:
        """How often the current secret has been rejected."""
        return self._rejections.get(self.secret_digest or "", 0)

    def next_action(self, now: float) -> Action:
        """The next upstream call and the monotonic instant it is due (maybe already past)."""
        wants_login = (not self.has_refresh_token
                       or self.transient_refresh_failures >= TRANSIENT_REFRESHES_BEFORE_LOGIN)
        if wants_login and self.locked_out:
            if not self.has_refresh_token:
                return Action("idle", math.inf)
            wants_login = False
        if not wants_login:
            return Action("refresh", self._next_at)
        at = self._next_at
        if self._last_rejection_at is not None:
            at = max(at, self._last_rejection_at + self.config.login_retry_interval)
        return Action("login", at)

    def state(self, now: float, in_flight: bool) -> State:
        """The target state of SPEC §4."""
        if self.locked_out and not self.has_refresh_token:
            return "credentials_rejected"
        if self.token is not None and self.token.valid(now):
            if self.failures:
                return "degraded"  # stays degraded while a retry is in flight
            return "refreshing" if in_flight else "valid"
        return "expired" if self.attempted else "starting"

    def valid_token(self, now: float) -> HeldToken | None:
        """The current token if it may still be served."""
        token = self.token
        return token if token is not None and token.valid(now) else None

    def backoff(self, now: float, retry_after: float | None = None) -> float:
        """Delay before the next retry after ``self.failures`` failures in a row (full jitter)."""
        token = self.valid_token(now)
        if token is not None:
            cap = max(FIRST_RETRY, token.remaining(now) / 10)
        else:
            cap = NO_TOKEN_BACKOFF_CAP
        cap = min(cap, self.config.max_backoff)
        exponent = min(max(self.failures - 1, 0), 62)
        delay = self._rand() * min(cap, FIRST_RETRY * 2.0**exponent)
        if retry_after is not None and retry_after > 0:
            delay = max(delay, min(retry_after, cap))
        return delay

    # -- what the keeper reports ----------------------------------------------------------------

    def on_token(self, now: float, token: HeldToken, operation: Operation) -> None:
        """A call succeeded with ``token``: schedule the next refresh inside its lifetime."""
        self.token = token
        self.attempted = True
        self.failures = 0
        self.transient_refresh_failures = 0
        self._token_received_at = now
        if operation == "login":
            self.has_refresh_token = True
            self._rejections.pop(self.secret_digest or "", None)
            self._last_rejection_at = None
        fraction = self.config.refresh_at + self.config.jitter * (2 * self._rand() - 1)
        self._next_at = token.obtained_at + token.lifetime * fraction

    def on_failure(self, now: float, operation: Operation, error: UpstreamError) -> None:
        """A call failed: count it and schedule the retry."""
        self.attempted = True
        self.failures += 1
        if operation == "login":
            # Whatever the outcome, the next attempt goes back to the refresh token if one is held.
            self.transient_refresh_failures = 0
        if isinstance(error, CredentialsRejected) and operation == "login":
            digest = self.secret_digest or ""
            self._rejections[digest] = self._rejections.get(digest, 0) + 1
            self._last_rejection_at = now
        elif isinstance(error, RefreshTokenGone):
            self.has_refresh_token = False
            self.transient_refresh_failures = 0
            self._next_at = now
            return
        elif operation == "refresh":
            self.transient_refresh_failures += 1
        self._next_at = now + self.backoff(now, error.retry_after)

    def forget_refresh_token(self) -> None:
        """The refresh token was revoked or dropped: the next call is a login."""
        self.has_refresh_token = False

    def observe_secret(self, digest: str) -> None:
        """The secret in use now (re-read before each login and every 30 s)."""
        self.secret_digest = digest

    def reset_lockout(self) -> None:
        """SIGHUP: forget the rejection counts, so logins resume (still spaced)."""
        self._rejections.clear()

    def consumer_refresh(self, now: float) -> bool:
        """A consumer asked for a fresher token. True if a refresh was brought forward to now.

        None within 5 s of a new token, at most one per 10 s, and none while retries are
        backing off (the keeper is already trying as fast as the backoff allows).
        """
        if self.failures or (self.locked_out and not self.has_refresh_token):
            return False
        if now - self._token_received_at < CONSUMER_QUIET_AFTER_NEW_TOKEN:
            return False
        if now - self._last_consumer_refresh < CONSUMER_MIN_INTERVAL:
            return False
        self._last_consumer_refresh = now
        self._next_at = min(self._next_at, now)
        return True
