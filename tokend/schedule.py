"""One target's state machine: all of its state and every decision about it. Pure: no I/O, no clock.

The keeper (:mod:`tokend.keeper`) is a driver around it, in the manner of h11's ``_state.py``: it
reports *events* and performs the *effects* each event returns, in order. Every method takes ``now``,
seconds on the monotonic clock; the random source is injected; so the whole machine is tested with
plain numbers, without sockets or sleeps.

Events: :meth:`RefreshPolicy.poll` (time passed), :meth:`~RefreshPolicy.on_token` (a call gave a
token), :meth:`~RefreshPolicy.on_failure` (a call failed), :meth:`~RefreshPolicy.on_secret` (the
secret was read), :meth:`~RefreshPolicy.on_crash` (tokend's own bug), :meth:`~RefreshPolicy.consumer_refresh`
(a consumer reported a refused token or wants a longer one), :meth:`~RefreshPolicy.reconfigure` (SIGHUP).
Effects: :class:`Call`, :class:`Revoke`, :class:`CheckSecret`, :class:`Publish`, :class:`Withdraw`,
:class:`Log`, :class:`StateChanged` and :class:`Sleep` (wait until an instant or the next event).

Rules (SPEC §5 and §8):

1. A token is admitted whole or not at all: claims, lifetime cap and rendering are checked by
   :func:`admit` before the machine sees it; a failed check is an ``InvalidResponse`` like any other.
2. It is served until ``sent + lifetime``, where the lifetime can only err short and is cut to
   ``max_token_lifetime``; once that instant passes it is withdrawn (never served expired).
3. The next refresh is due at ``refresh_at ± jitter`` of the lifetime after the request was sent, and
   never less than a second after it.
4. Refresh token first; a login when there is none (a login answer may carry none), when it is
   gone, or after three transient refresh failures in a row.
5. One call at a time (single flight): no call is due while one is in flight.
6. Failures back off with full jitter, from 1 s doubling to ``max_backoff``, capped by a tenth of
   the remaining life (floor 1 s), and by 30 s while no token is held, except after a login whose
   answer was refused although the upstream took the credentials: that session is revoked and the
   retry may wait up to ``max_backoff``. ``Retry-After`` is honoured within those caps.
7. Logins read the secret first. Credential rejections count against the secret they were made
   with; after one, logins are spaced by ``login_retry_interval``; after ``max_login_failures`` of
   one secret, none until the secret changes or SIGHUP. The secret source is checked every 30 s.
8. Consumer refreshes (``invalidate``, ``min_ttl``) are deferred, never dropped: the refresh is due
   at the earliest instant both limits allow (5 s after a new token, 10 s after the last consumer
   refresh); it is dropped only if a new token arrives first. Every report of one token joins one
   refresh. None while failures back off or logins are stopped. After 3 brand-new tokens (reported
   within their first 5 s) in a row, reports no longer refresh: the state is ``degraded`` until the
   next scheduled refresh or SIGHUP. The reports are kept by :mod:`tokend.reports`.
9. tokend's own bugs (:meth:`on_crash`) count as failures and back off; the state stays consistent.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from tokend.effects import (
    Call,
    CheckSecret,
    Effect,
    Log,
    Publish,
    Revoke,
    Sleep,
    StateChanged,
    Withdraw,
)
from tokend.errors import CredentialsRejected, RefreshTokenGone, UpstreamError
from tokend.held import HeldToken
from tokend.names import KeeperCall, State
from tokend.outcomes import Failure, failure_log, refused_after_accept, token_log
from tokend.reports import REFUSED_NEW_TOKENS_LIMIT, ConsumerReports

if TYPE_CHECKING:
    from tokend.config import PolicyConfig  # only its fields are read: no import of the loader

FIRST_RETRY = 1.0
NO_TOKEN_BACKOFF_CAP = 30.0
TRANSIENT_REFRESHES_BEFORE_LOGIN = 3
MIN_REFRESH_INTERVAL = 1.0
SECRET_CHECK_INTERVAL = 30.0


@dataclass(frozen=True)
class Action:
    """The next upstream call and when it is due. ``idle`` waits for an outside event."""

    kind: Literal["login", "refresh", "idle"]
    at: float


class RefreshPolicy:
    """The state machine of one target. The driver holds no target state of its own."""

    def __init__(self, config: PolicyConfig, rand: Callable[[], float] = random.random) -> None:
        self.config = config
        self._rand = rand
        self.token: HeldToken | None = None  # the newest token, valid or not (its lifetime is known)
        self.refresh_id: str | None = None
        self.failures = 0
        self.transient_refresh_failures = 0
        self.attempted = False
        self.in_flight: KeeperCall | None = None
        self.secret_digest: str | None = None
        self.last_failure: Failure | None = None
        self.last_token_at: float | None = None  # monotonic instant the last token arrived
        self.reports = ConsumerReports()
        self._state: State = "starting"
        self._published: HeldToken | None = None
        self._rejections: dict[str, int] = {}
        self._last_rejection_at: float | None = None
        self._next_at = 0.0
        self._scheduled_at = 0.0  # the refresh the token's own schedule asks for
        self._next_secret_check = 0.0
        self._secret_fresh = False  # read since the last login: a login may go ahead
        self._long_backoff = False  # the last failure was a refused answer to an accepted login
        self._pending: list[Effect] = []  # effects of consumer reports, given out at the next poll

    # -- reading --------------------------------------------------------------------------------

    @property
    def has_refresh_token(self) -> bool:
        """True while a refresh id is held."""
        return self.refresh_id is not None

    @property
    def rejected_by_consumers(self) -> bool:
        """True while consumers' reports make no refresh (brand-new tokens refused in a row)."""
        return self.reports.rejected

    @property
    def locked_out(self) -> bool:
        """True when the current secret has been rejected ``max_login_failures`` times."""
        return self.rejections() >= self.config.max_login_failures

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

    def next_call_in(self, now: float) -> float | None:
        """Seconds to the next upstream call, or None when none is planned."""
        action = self.next_action(now)
        return None if action.kind == "idle" else max(0.0, action.at - now)

    def state(self, now: float, in_flight: bool | None = None) -> State:
        """The target state of SPEC §4 (``in_flight`` defaults to whether a call is out)."""
        if in_flight is None:
            in_flight = self.in_flight is not None
        if self.locked_out and not self.has_refresh_token:
            return "credentials_rejected"  # even with a token left: nothing will renew it
        if self.token is not None and self.token.valid(now):
            if self.failures or self.rejected_by_consumers:
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
        elif self._long_backoff:
            cap = math.inf  # a server that takes the credentials and answers garbage: no 30 s cap
        else:
            cap = NO_TOKEN_BACKOFF_CAP
        cap = min(cap, self.config.max_backoff)
        exponent = min(max(self.failures - 1, 0), 62)
        delay = self._rand() * min(cap, FIRST_RETRY * 2.0**exponent)
        if retry_after is not None and retry_after > 0:
            delay = max(delay, min(retry_after, cap))
        return delay

    # -- events ---------------------------------------------------------------------------------

    def poll(self, now: float) -> list[Effect]:
        """Time passed: what is due at ``now``. The list ends with a Call, CheckSecret or Sleep."""
        effects, self._pending = self._pending, []
        effects += self.expire(now)
        if now >= self._next_secret_check:
            self._next_secret_check = now + SECRET_CHECK_INTERVAL
            effects.append(CheckSecret(login=False))
            return effects
        action = self.next_action(now)
        if self.in_flight is None and action.kind != "idle" and action.at <= now:
            if action.kind == "login" and not self._secret_fresh:
                effects.append(CheckSecret(login=True))
                return effects
            self._secret_fresh = False
            self.in_flight = action.kind
            if self.reports.due is not None and action.kind == "refresh":
                effects.append(Log("info", "token.refresh_requested", {"reason": "consumer"}))
            effects += self._state_effects(now)
            effects.append(Call(action.kind, self.refresh_id if action.kind == "refresh" else None))
            return effects
        wake = min(action.at, self._next_secret_check)
        if self._published is not None:
            wake = min(wake, self._published.expires_at)
        effects.append(Sleep(wake))
        return effects

    def expire(self, now: float) -> list[Effect]:
        """Time passed, maybe while a call is out: withdraw the served token once it expired."""
        effects: list[Effect] = []
        published = self._published
        if published is not None and not published.valid(now):
            self._published = None
            effects.append(Withdraw(published))
        return effects + self._state_effects(now)

    def expiry_deadline(self) -> float | None:
        """When the served token must be withdrawn (monotonic), if one is served."""
        return None if self._published is None else self._published.expires_at

    def on_token(self, now: float, token: HeldToken, operation: KeeperCall,
                 refresh_id: str | None = None, duration: float | None = None) -> list[Effect]:
        """A call succeeded with an admitted ``token``; a login also brings its refresh id, if any."""
        self.reports.new_token(now, self.token.fingerprint if self.token is not None else None)
        self.token = token
        self._published = token
        self.in_flight = None
        self.attempted = True
        self.failures = 0
        self.transient_refresh_failures = 0
        self._long_backoff = False
        self.last_failure = None
        self.last_token_at = now
        if operation == "login":
            self.refresh_id = refresh_id
            self._rejections.pop(self.secret_digest or "", None)
            self._last_rejection_at = None
        fraction = self.config.refresh_at + self.config.jitter * (2 * self._rand() - 1)
        self._next_at = token.obtained_at + max(token.lifetime * fraction, MIN_REFRESH_INTERVAL)
        self._scheduled_at = self._next_at
        log = token_log(now, operation, token, self.next_call_in(now), duration)
        return [Publish(token), log, *self._state_effects(now)]

    def on_failure(self, now: float, operation: KeeperCall, error: UpstreamError) -> list[Effect]:
        """A call failed (or could not be made): count it, schedule the retry."""
        effects: list[Effect] = []
        self.in_flight = None
        self.attempted = True
        self.failures += 1
        self.last_failure = Failure(error, now)
        self.reports.drop()
        self._long_backoff = False
        if operation == "login":
            # Whatever the outcome, the next attempt goes back to the refresh token if one is held.
            self.transient_refresh_failures = 0
        if isinstance(error, CredentialsRejected) and operation == "login":
            digest = self.secret_digest or ""
            self._rejections[digest] = self._rejections.get(digest, 0) + 1
            self._last_rejection_at = now
        elif isinstance(error, RefreshTokenGone):
            self.refresh_id = None
            self.transient_refresh_failures = 0
        elif operation == "refresh":
            self.transient_refresh_failures += 1
        elif refused_after_accept(error):
            self._long_backoff = True
            if error.issued_refresh_id is not None:
                effects.append(Revoke(error.issued_refresh_id))
        if isinstance(error, RefreshTokenGone):
            self._next_at = now
        else:
            self._next_at = now + self.backoff(now, error.retry_after)
        effects.append(self._failure_log(now, operation, error))
        return effects + self._state_effects(now)

    def on_crash(self, now: float, error: UpstreamError) -> list[Effect]:
        """tokend's own code failed (``error`` describes it): back off, carry on from the last state.

        A crash during a refresh counts as a transient refresh failure, so repeated ones fall back
        to a login like any other.
        """
        if self.in_flight == "refresh":
            self.transient_refresh_failures += 1
        self.in_flight = None
        self._secret_fresh = False
        self.attempted = True
        self.failures += 1
        self.last_failure = Failure(error, now)
        self._next_at = max(self._next_at, now + self.backoff(now))
        return self._state_effects(now)

    def note_error(self, now: float, error: UpstreamError) -> None:
        """A problem that is no failed call (a secret source that cannot be read): ``lastError``."""
        self.last_failure = Failure(error, now)

    def restore(self, now: float, rejections: int, last_attempt: float) -> list[Effect]:
        """A record of the current secret's rejections from before a restart (SPEC §8.9).

        ``last_attempt`` is the monotonic instant of the last rejected login (it may lie before
        this process started). Logins are spaced from it, and none are made if it reached
        ``max_login_failures``.
        """
        digest = self.secret_digest or ""
        self._rejections[digest] = max(self._rejections.get(digest, 0), rejections)
        if self._last_rejection_at is None or last_attempt > self._last_rejection_at:
            self._last_rejection_at = last_attempt
        self.attempted = self.attempted or self.locked_out
        return self._state_effects(now)

    def inherit(self, previous: RefreshPolicy) -> None:
        """A keeper replaced at reload keeps its predecessor's login spacing (SPEC §5.5).

        The rejection counts are not carried: SIGHUP, or the changed secret that caused the
        replacement, starts them again. The spacing protects the account all the same.
        """
        self._last_rejection_at = previous._last_rejection_at

    def on_secret(self, now: float, digest: str, for_login: bool) -> list[Effect]:
        """The secret now in use: read for the login about to be made, or its source changed."""
        was_locked = self.locked_out
        self.secret_digest = digest
        self._secret_fresh = for_login
        effects: list[Effect] = []
        if was_locked and not self.locked_out:
            effects.append(Log("info", "secret.changed", {"action": "logins resume"}))
        return effects + self._state_effects(now)

    def consumer_refresh(self, now: float, fingerprint: str | None = None,
                         refused: bool = False, reason: str = "consumer") -> float | None:
        """A consumer wants a newer token than ``fingerprint`` (None: the current one).

        ``refused``: the upstream refused that token (``invalidate``); ``reason`` goes to the log.
        The driver wakes :meth:`poll` after every report. Returns the instant the
        refresh is due (``now`` or later, deferred by the rate limits), or None when no refresh
        will be made for it: the token is not the current one, failures are backing off, logins
        are stopped, or consumers have refused too many brand-new tokens.
        """
        token = self.valid_token(now)
        if token is None or (fingerprint is not None and fingerprint != token.fingerprint):
            return None
        if refused and self.reports.refused(now, token.fingerprint) and not self.failures:
            self._next_at = self._scheduled_at  # the verdict: drop any refresh brought forward
        if self.reports.rejected or self.failures or (self.locked_out and not self.has_refresh_token):
            return None
        due, asked = self.reports.ask(now)  # one refresh however many report it
        if asked:
            self._next_at = min(self._next_at, due)
            if due > now:
                self._pending.append(Log("info", "token.refresh_deferred",
                                         {"reason": reason, "in": round(due - now, 3)}))
        return due

    def forget_refresh_token(self) -> None:
        """The refresh token was revoked or dropped: the next call is a login."""
        self.refresh_id = None

    def observe_secret(self, digest: str) -> None:
        """The secret in use now, without effects (tests and start-up)."""
        self.secret_digest = digest

    def reset_lockout(self) -> None:
        """SIGHUP: forget the rejection counts, so logins resume (still spaced)."""
        self._rejections.clear()

    def reconfigure(self, now: float, config: PolicyConfig) -> list[Effect]:
        """SIGHUP kept this target: new settings, lockout and consumer verdict cleared, secret re-read."""
        self.config = config
        self.reset_lockout()
        self.reports.reset()
        self._next_secret_check = now
        return self._state_effects(now)

    # -- internals ------------------------------------------------------------------------------

    def _state_effects(self, now: float) -> list[Effect]:
        state = self.state(now)
        if state == self._state:
            return []
        old, self._state = self._state, state
        effects: list[Effect] = [StateChanged(old, state)]
        if state == "degraded" and self.rejected_by_consumers and not self.failures:
            effects.append(Log("warning", "token.rejected_by_consumers", {
                "reason": f"consumers reported {REFUSED_NEW_TOKENS_LIMIT} brand-new tokens in a row"
                          " refused: the upstream issues tokens it does not accept; reports no"
                          " longer refresh until the next scheduled refresh or SIGHUP"}))
        return effects

    def _failure_log(self, now: float, operation: KeeperCall, error: UpstreamError) -> Log:
        action = self.next_action(now)
        token = self.valid_token(now)
        return failure_log(operation, error, (action.kind, action.at - now), failures=self.failures,
                           token_valid_for=token.expires_in(now) if token else 0,
                           rejections=self.rejections(),
                           max_login_failures=self.config.max_login_failures)
