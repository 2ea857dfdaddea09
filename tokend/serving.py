"""The serving half of a keeper: what consumers, watches and the daemon read of one target's token.

:class:`Serving` answers from the state machine (:class:`tokend.schedule.RefreshPolicy`) that its
driver, :class:`tokend.keeper.Keeper`, keeps up to date. Consumers never wait on the upstream
directly: they read the current token, or report that they need a newer one (``min_ttl``,
``invalidate``) and wait, at most ``request_timeout``, for the driver to publish it. Watches learn
of every publish, withdraw and retire through one shared future (:meth:`Serving.news`).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any

from tokend.clock import Clock
from tokend.config import TargetConfig
from tokend.errors import TokendError, UpstreamError
from tokend.held import HeldToken, iso_utc
from tokend.ledger import Ledger
from tokend.logs import REDACTOR
from tokend.names import ErrorCode, State
from tokend.outcomes import remediation
from tokend.schedule import RefreshPolicy

#: What the server serves: a held token with its answers rendered once.
ServedToken = HeldToken


class ServeError(TokendError):
    """A token request that cannot be answered with a token; rendered as an Error body."""

    def __init__(self, status: int, code: ErrorCode, message: str, remediation: str = "",
                 reference_token: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.remediation = remediation
        self.reference_token = reference_token
        self.retry_after = retry_after


def error_dict(error: UpstreamError, at_wall: float) -> dict[str, Any]:
    """``lastError`` of the status JSON: the upstream's fields and tokend's own message."""
    detail = error.detail
    message = error.message
    if detail.message:
        message = f"{message}: {detail.message}"
    return {
        "errorCode": error.error_code,
        "message": REDACTOR.text(message),
        "remediationMessage": REDACTOR.text(detail.remediation_message or remediation(error)),
        "referenceToken": detail.reference_token,
        "at": iso_utc(at_wall),
    }


class Serving:
    """One target's token as served: lookups, ``min_ttl``, ``invalidate``, status and news.

    ``policy`` is the target's state machine, ``clock`` where time comes from (seconds), ``ledger``
    the rejections that outlive a restart; the driver that subclasses it feeds all three.
    """

    def __init__(self, target: TargetConfig, policy: RefreshPolicy, clock: Clock,
                 ledger: Ledger) -> None:
        self.target = target
        self.name = target.name
        self.policy = policy
        self.clock = clock
        self.ledger = ledger
        self._wake = asyncio.Event()  # set: the driver polls its state machine again
        self._token_changed = asyncio.Event()
        self._news: asyncio.Future[None] | None = None  # created when first asked for (news())
        self.retired = False  # stopped: removed or replaced by a reload, or tokend is stopping

    # -- what the server and the daemon read ----------------------------------------------------

    @property
    def state(self) -> State:
        """The state of SPEC §4."""
        return self.policy.state(self.clock.monotonic())

    def current(self, now: float) -> ServedToken | None:
        """The token to serve at ``now``, or None. Never an expired one."""
        return self.policy.valid_token(now)

    def next_refresh_in(self, now: float) -> float | None:
        """Seconds to the next upstream call, or None when none is planned."""
        return self.policy.next_call_in(now)

    def last_error(self, now: float, wall: float) -> dict[str, Any] | None:
        """``lastError`` of SPEC §4, or None."""
        failure = self.policy.last_failure
        return None if failure is None else error_dict(failure.error, wall - (now - failure.at))

    def status(self, now: float, wall: float) -> dict[str, Any]:
        """This target's entry of ``GET /v1/status``."""
        served = self.current(now)
        next_in = self.next_refresh_in(now)
        last_at = self.policy.last_token_at
        return {
            "name": self.name,
            "url": self.target.url,
            "state": self.policy.state(now),
            "expiresAt": iso_utc(served.expires_wall) if served else None,
            "expiresIn": served.expires_in(now) if served else None,
            "lastRefreshAt": iso_utc(wall - (now - last_at)) if last_at is not None else None,
            "nextRefreshAt": iso_utc(wall + next_in) if next_in is not None else None,
            "consecutiveFailures": self.policy.failures,
            "lastError": self.last_error(now, wall),
            "lockout": self._lockout(wall),
        }

    def news(self) -> asyncio.Future[None]:
        """A future resolved at this keeper's next publish, withdraw or retire (SPEC §10.1).

        One future shared by every waiter, however many (:class:`tokend.watch.Watches` puts one
        callback on it for all its watches): never cancel it, nor await it from a task that may be
        cancelled. Once the keeper is retired it is resolved.
        """
        news = self._news
        if news is None:
            news = self._news = asyncio.get_running_loop().create_future()
            if self.retired:
                news.set_result(None)
        return news

    def _announce(self) -> None:
        """Wake everyone waiting on :meth:`news`; the next caller gets a fresh future."""
        news = self._news
        if self.retired:
            if news is not None and not news.done():
                news.set_result(None)
            return  # stays resolved: a watch that starts now must not wait
        self._news = None
        if news is not None and not news.done():
            news.set_result(None)

    def _published(self) -> None:
        """A new token is served: wake the requests waiting for one, and the watches."""
        self._token_changed.set()
        self._token_changed = asyncio.Event()
        self._announce()

    def _lockout(self, wall: float) -> dict[str, Any] | None:
        """The recorded rejections of this target that outlive a restart (SPEC §8.9), or None."""
        record = self.ledger.record(self.name)
        if record is None or not record.live(wall):
            return None
        return {"rejections": record.rejections, "expiresAt": iso_utc(record.expires_at())}

    # -- consumer requests ----------------------------------------------------------------------

    def unavailable(self, now: float) -> ServeError:
        """The 503 for a request that finds no valid token."""
        state = self.policy.state(now)
        err = self.last_error(now, self.clock.time()) or {}
        if state == "credentials_rejected":
            remediation_text = ("The upstream rejected this target's credentials; fix the secret"
                                " (tokend notices within 30 s) or send SIGHUP")
        else:
            remediation_text = err.get("remediationMessage") or "Retry after the Retry-After interval"
        next_in = self.next_refresh_in(now)
        return ServeError(503, "TOKEN_UNAVAILABLE",
                          f"no valid token for target '{self.name}' (state {state})"
                          + (f"; last error: {err['message']}" if err.get("message") else ""),
                          remediation_text, err.get("referenceToken"),
                          retry_after=max(1.0, next_in if next_in is not None else 30.0))

    async def token(self, min_ttl: float | None = None) -> ServedToken:
        """The current token, one valid for at least ``min_ttl`` s (refreshing if need be).

        Raises ServeError: 503 ``TOKEN_UNAVAILABLE`` without a valid token, 400 ``BAD_REQUEST``
        for a ``min_ttl`` no token of the upstream's lifetime can meet, 503 ``TOKEN_BELOW_MIN_TTL``
        when none valid that long came within ``request_timeout``.
        """
        now = self.clock.monotonic()
        served = self.current(now)
        if min_ttl is None:
            if served is None:
                raise self.unavailable(now)
            return served
        held = self.policy.token
        if held is not None and min_ttl >= held.lifetime:
            raise ServeError(400, "BAD_REQUEST",
                             f"min_ttl={min_ttl:g} cannot be met: the upstream's tokens for target"
                             f" '{self.name}' are served for {held.lifetime:.0f} s",
                             f"Ask for a min_ttl below {math.floor(held.lifetime)}")
        if served is not None and served.remaining(now) >= min_ttl:
            return served
        self._report(now, None, refused=False, reason="min_ttl")
        found = await self._wait_for(lambda s: s.remaining(self.clock.monotonic()) >= min_ttl)
        if found is None:
            raise ServeError(503, "TOKEN_BELOW_MIN_TTL",
                             f"no token for target '{self.name}' valid for {min_ttl:g} s more",
                             "Retry later, or ask for a smaller min_ttl", retry_after=5.0)
        return found

    async def invalidate(self, token_fingerprint: str) -> ServedToken:
        """A consumer got 401 with ``token_fingerprint``: answer a newer token (one refresh).

        Raises ServeError 503 ``TOKEN_UNAVAILABLE`` when none came within ``request_timeout``.
        """
        now = self.clock.monotonic()
        served = self.current(now)
        if served is not None and served.fingerprint != token_fingerprint:
            return served
        if served is not None:
            self._report(now, token_fingerprint, refused=True, reason="invalidate")
        found = await self._wait_for(lambda s: s.fingerprint != token_fingerprint)
        if found is None:
            raise self.unavailable(self.clock.monotonic())
        return found

    def _report(self, now: float, token_fingerprint: str | None, refused: bool, reason: str) -> None:
        self.policy.consumer_refresh(now, token_fingerprint, refused=refused, reason=reason)
        self._wake.set()  # the machine may have news: a refresh due, a deferral, a verdict

    async def _wait_for(self, good: Callable[[ServedToken], bool]) -> ServedToken | None:
        deadline = self.clock.monotonic() + self.target.request_timeout
        while True:
            now = self.clock.monotonic()
            served = self.current(now)
            if served is not None and good(served):
                return served
            if now >= deadline:
                return None
            await self.clock.wait(self._token_changed, deadline)
