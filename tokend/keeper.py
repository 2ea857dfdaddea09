"""One task per target: holds the current token, follows the refresh policy, serves consumers.

The keeper is the only caller of its target's upstream client, and it makes one call at a time, so
there is never more than one upstream request per target in flight (single flight). Consumers never
wait on the upstream directly: they read the current token, or wait for the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tokend.config import TargetConfig
from tokend.errors import (
    ConfigError,
    CredentialsRejected,
    RefreshTokenGone,
    TokendError,
    TransientError,
    UpstreamDetail,
    UpstreamError,
)
from tokend.filesink import TokenFile
from tokend.jwtinfo import JWT_PATTERN, fingerprint
from tokend.logs import REDACTOR, get_logger
from tokend.metrics import TargetMetrics
from tokend.schedule import Action, HeldToken, PolicyConfig, RefreshPolicy, State, tracked_lifetime
from tokend.secrets import Secret, read_secret, secret_stamp
from tokend.upstream import Issued, UpstreamClient

SECRET_CHECK_INTERVAL = 30.0
STUCK_GRACE = 30.0


class ServeError(TokendError):
    """A token request that cannot be answered with a token; rendered as an Error body."""

    def __init__(self, status: int, code: str, message: str, remediation: str = "",
                 reference_token: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.remediation = remediation
        self.reference_token = reference_token
        self.retry_after = retry_after


def iso_utc(epoch: float) -> str:
    """``2026-11-28T07:00:00Z``, truncated to the second (never later than ``epoch``)."""
    return datetime.fromtimestamp(math.floor(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class ServedToken:
    """A held token with its answers rendered once, so serving it is a few byte copies."""

    held: HeldToken
    raw: bytes
    json_head: bytes  # everything before the expiresIn value
    json_tail: bytes  # everything after it
    expires_wall: float

    @classmethod
    def render(cls, target: str, held: HeldToken) -> ServedToken:
        """Render the token JSON of SPEC §4 around a per-request ``expiresIn``."""
        expires_wall = held.obtained_wall + held.lifetime
        head = {"target": target, "tokenType": "Bearer", "accessToken": held.access_token,
                "expiresAt": iso_utc(expires_wall)}
        tail = {"upstreamExp": held.upstream_exp, "fingerprint": held.fingerprint}
        head_bytes = json.dumps(head, separators=(", ", ": "))[:-1] + ', "expiresIn": '
        tail_bytes = ", " + json.dumps(tail, separators=(", ", ": "))[1:]
        return cls(held, held.access_token.encode(), head_bytes.encode(), tail_bytes.encode(),
                   expires_wall)

    @property
    def fingerprint(self) -> str:
        """The token's ``sha256:`` fingerprint."""
        return self.held.fingerprint

    def expires_in(self, now: float) -> int:
        """Whole seconds tokend will still serve it."""
        return max(0, math.floor(self.held.remaining(now)))

    def json(self, now: float) -> bytes:
        """The token JSON at ``now`` (monotonic)."""
        return self.json_head + str(self.expires_in(now)).encode() + self.json_tail


def error_dict(error: UpstreamError, at: float) -> dict[str, Any]:
    """``lastError`` of the status JSON: the upstream's fields and tokend's own message."""
    detail = error.detail
    message = error.message
    if detail.message:
        message = f"{message}: {detail.message}"
    return {
        "errorCode": error.error_code,
        "message": REDACTOR.text(message),
        "remediationMessage": REDACTOR.text(detail.remediation_message or _remediation(error)),
        "referenceToken": detail.reference_token,
        "at": iso_utc(at),
    }


def _remediation(error: UpstreamError) -> str:
    if isinstance(error, CredentialsRejected):
        return ("Check the username and secret of this target; tokend logs in again when the"
                " secret changes or on SIGHUP")
    if isinstance(error, RefreshTokenGone):
        return "None needed: tokend logs in again"
    return "tokend retries with backoff; check that the SDDC Manager is reachable and healthy"


class Keeper:
    """Keeps one target's token valid."""

    def __init__(self, target: TargetConfig, metrics: TargetMetrics,
                 rand: Callable[[], float] = random.random) -> None:
        self.target = target
        self.name = target.name
        self.metrics = metrics
        self.policy = RefreshPolicy(policy_config(target), rand)
        self.client = UpstreamClient(target)
        self.log = get_logger(target=target.name)
        self.last_error: dict[str, Any] | None = None
        self.last_refresh_wall: float | None = None
        self.first_attempt_done = asyncio.Event()
        self.sink = _token_file(target)
        self._refresh_id: str | None = None
        self._served: ServedToken | None = None
        self._state: State = "starting"
        self._in_flight = False
        self._busy_since: float | None = None
        self._wake = asyncio.Event()
        self._token_changed = asyncio.Event()
        self._next_secret_check = 0.0
        self._secret_stamp: object = None
        self._task: asyncio.Task[None] | None = None

    # -- life -----------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the keeper task."""
        self._task = asyncio.create_task(self._run(), name=f"keeper:{self.name}")

    async def stop(self, revoke: bool) -> None:
        """Stop the task; revoke the refresh token if asked; close the HTTP session."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if revoke and self._refresh_id is not None:
            await self._revoke()
        await self.client.close()
        if self.sink is not None and not self.sink.sink.keep_on_exit:
            self._sink_remove()

    def reconfigure(self, target: TargetConfig) -> None:
        """SIGHUP with the same url, TLS settings and secret: keep the token, take new settings."""
        if target.file_sink != self.target.file_sink:
            if self.sink is not None:
                self._sink_remove()
            self.sink = _token_file(target)
            served = self.current(time.monotonic())
            if self.sink is not None and served is not None:
                self._sink_write(served, time.monotonic())
        self.target = target
        self.policy.config = policy_config(target)
        self.policy.reset_lockout()
        self._next_secret_check = 0.0
        self._wake.set()

    # -- what the server and the daemon read ----------------------------------------------------

    @property
    def state(self) -> State:
        """The state of SPEC §4."""
        return self._state

    def current(self, now: float) -> ServedToken | None:
        """The token to serve at ``now``, or None. Never an expired one."""
        served = self._served
        return served if served is not None and served.held.valid(now) else None

    def stuck(self, now: float) -> bool:
        """True when one step has taken longer than any upstream call may (healthz, watchdog)."""
        if self._task is not None and self._task.done():
            return True
        limit = 2 * self.target.request_timeout + STUCK_GRACE
        return self._busy_since is not None and now - self._busy_since > limit

    def next_refresh_in(self, now: float) -> float | None:
        """Seconds to the next upstream call, or None when none is planned."""
        action = self.policy.next_action(now)
        return None if action.kind == "idle" else max(0.0, action.at - now)

    def status(self, now: float, wall: float) -> dict[str, Any]:
        """This target's entry of ``GET /v1/status``."""
        served = self.current(now)
        next_in = self.next_refresh_in(now)
        return {
            "name": self.name,
            "state": self._state,
            "expiresAt": iso_utc(served.expires_wall) if served else None,
            "expiresIn": served.expires_in(now) if served else None,
            "lastRefreshAt": iso_utc(self.last_refresh_wall) if self.last_refresh_wall else None,
            "nextRefreshAt": iso_utc(wall + next_in) if next_in is not None else None,
            "consecutiveFailures": self.policy.failures,
            "lastError": self.last_error,
        }

    # -- consumer requests ----------------------------------------------------------------------

    def unavailable(self, now: float) -> ServeError:
        """The 503 for a request that finds no valid token."""
        err = self.last_error or {}
        if self._state == "credentials_rejected":
            remediation = ("The upstream rejected this target's credentials; fix the secret"
                           " (tokend notices within 30 s) or send SIGHUP")
        else:
            remediation = err.get("remediationMessage") or "Retry after the Retry-After interval"
        next_in = self.next_refresh_in(now)
        return ServeError(503, "TOKEN_UNAVAILABLE",
                          f"no valid token for target '{self.name}' (state {self._state})"
                          + (f"; last error: {err['message']}" if err.get("message") else ""),
                          remediation, err.get("referenceToken"),
                          retry_after=max(1.0, next_in if next_in is not None else 30.0))

    async def token(self, min_ttl: float | None = None) -> ServedToken:
        """The current token, one valid for at least ``min_ttl`` s (refreshing if need be)."""
        now = time.monotonic()
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
        if served is not None and served.held.remaining(now) >= min_ttl:
            return served
        self._consumer_refresh(now)
        found = await self._wait_for(lambda s: s.held.remaining(time.monotonic()) >= min_ttl)
        if found is None:
            raise ServeError(503, "TOKEN_BELOW_MIN_TTL",
                             f"no token for target '{self.name}' valid for {min_ttl:g} s more",
                             "Retry later, or ask for a smaller min_ttl", retry_after=5.0)
        return found

    async def invalidate(self, token_fingerprint: str) -> ServedToken:
        """A consumer got 401 with ``token_fingerprint``: answer a newer token (one refresh)."""
        now = time.monotonic()
        served = self.current(now)
        if served is not None and served.fingerprint != token_fingerprint:
            return served
        if served is not None:
            self._consumer_refresh(now)
        found = await self._wait_for(lambda s: s.fingerprint != token_fingerprint)
        if found is None:
            raise self.unavailable(time.monotonic())
        return found

    def _consumer_refresh(self, now: float) -> None:
        if self.policy.consumer_refresh(now):
            self.log.info("token.refresh_requested", reason="consumer")
            self._wake.set()

    async def _wait_for(self, good: Callable[[ServedToken], bool]) -> ServedToken | None:
        deadline = time.monotonic() + self.target.request_timeout
        while True:
            now = time.monotonic()
            served = self.current(now)
            if served is not None and good(served):
                return served
            if now >= deadline:
                return None
            changed = self._token_changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), deadline - now)

    # -- the loop -------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            now = time.monotonic()
            self._set_state(now)
            if now >= self._next_secret_check:
                self._check_secret(now)
            action = self.policy.next_action(now)
            if action.at <= now:
                await self._attempt(action)
                continue
            wake_at = min(action.at, self._next_secret_check)
            served = self.current(now)
            if served is not None:
                wake_at = min(wake_at, served.held.expires_at)
            await self._sleep(wake_at - now)

    async def _sleep(self, seconds: float) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), max(seconds, 0.0))

    async def _attempt(self, action: Action) -> None:
        operation = "login" if action.kind == "login" else "refresh"
        self._in_flight = True
        self._busy_since = time.monotonic()
        self._set_state(self._busy_since)
        try:
            if operation == "login":
                secret = self._read_secret()
                if secret is None or self.policy.locked_out:
                    return
                issued = await self.client.login(self.target.username, secret)
            else:
                assert self._refresh_id is not None
                issued = await self.client.refresh(self._refresh_id)
            self._accept(operation, issued)
        except UpstreamError as error:
            self._fail(operation, error, duration=time.monotonic() - self._busy_since)
        except Exception as exc:  # a bug must not end the keeper; it is logged and retried
            self.log.error("keeper.unexpected_error", operation=operation, exc_info=exc)
            self._fail(operation, TransientError(f"{operation}: internal error ({type(exc).__name__})",
                                                 outcome="invalid_response"))
        finally:
            self._in_flight = False
            self._busy_since = None
            self.first_attempt_done.set()
            self._set_state(time.monotonic())

    def _read_secret(self) -> Secret | None:
        try:
            secret = read_secret(self.target.secret)
        except ConfigError as exc:
            self._fail("login", TransientError(
                str(exc), outcome="invalid_response",
                detail=UpstreamDetail(error_code="SECRET_UNAVAILABLE",
                                      remediation_message=exc.fix or "Fix the secret source")),
                count=False)
            return None
        REDACTOR.register(secret.reveal())
        self.policy.observe_secret(secret.digest)
        return secret

    def _check_secret(self, now: float) -> None:
        """Every 30 s: a changed secret lifts the lockout guard and is used at the next login."""
        self._next_secret_check = now + SECRET_CHECK_INTERVAL
        stamp = secret_stamp(self.target.secret)
        if stamp == self._secret_stamp:
            return
        self._secret_stamp = stamp
        was_locked = self.policy.locked_out
        try:
            secret = read_secret(self.target.secret)
        except ConfigError:
            return  # reported at the next login attempt
        REDACTOR.register(secret.reveal())
        self.policy.observe_secret(secret.digest)
        if was_locked and not self.policy.locked_out:
            self.log.info("secret.changed", action="logins resume")

    def _accept(self, operation: str, issued: Issued) -> None:
        if issued.refresh_id is not None:
            REDACTOR.register(issued.refresh_id)
            self._refresh_id = issued.refresh_id
        if not JWT_PATTERN.fullmatch(issued.access_token):
            REDACTOR.register(issued.access_token)
        lifetime = tracked_lifetime(issued.claims, issued.sent_wall, issued.server_date)
        held = HeldToken(
            access_token=issued.access_token,
            fingerprint=fingerprint(issued.access_token),
            upstream_exp=issued.claims.exp,
            obtained_at=issued.sent_mono,
            expires_at=issued.sent_mono + lifetime,
            obtained_wall=issued.sent_wall,
        )
        now = time.monotonic()
        self.policy.on_token(now, held, "login" if operation == "login" else "refresh")
        served = ServedToken.render(self.name, held)
        self._served = served
        self.last_error = None
        self.last_refresh_wall = time.time()
        m = self.metrics
        m.upstream(operation, "success", issued.duration)
        m.expiry.set(served.expires_wall)
        m.issued.set(held.obtained_wall)
        m.valid.set(1)
        m.failures.set(0)
        if issued.clock_skew is not None:
            m.skew.set(issued.clock_skew)
        next_in = self.next_refresh_in(now)
        self.log.info("token.acquired" if operation == "login" else "token.refreshed",
                      operation=operation, fingerprint=held.fingerprint,
                      expires_at=iso_utc(served.expires_wall), expires_in=served.expires_in(now),
                      next_refresh_in=round(next_in, 1) if next_in is not None else None,
                      duration=round(issued.duration, 3))
        if self.sink is not None:
            self._sink_write(served, now)
        self._token_changed.set()
        self._token_changed = asyncio.Event()

    def _fail(self, operation: str, error: UpstreamError, count: bool = True,
              duration: float | None = None) -> None:
        now = time.monotonic()
        if count:
            self.metrics.upstream(operation, error.outcome, duration)
        if isinstance(error, RefreshTokenGone):
            self._refresh_id = None
        self.policy.on_failure(now, "login" if operation == "login" else "refresh", error)
        self.last_error = error_dict(error, time.time())
        self.metrics.failures.set(self.policy.failures)
        action = self.policy.next_action(now)
        fields: dict[str, Any] = {
            "operation": operation,
            "outcome": error.outcome,
            "status": error.status,
            **{k: v for k, v in self.last_error.items() if v is not None and k != "at"},
            "consecutive_failures": self.policy.failures,
        }
        served = self.current(now)
        fields["token_valid_for"] = served.expires_in(now) if served else 0
        if action.kind == "idle":
            fields["next"] = "no more logins until the secret changes or SIGHUP"
        else:
            fields["next"] = f"{action.kind} in {max(0.0, action.at - now):.1f}s"
        if isinstance(error, CredentialsRejected):
            self.log.error("login.rejected", rejections=self.policy.rejections(),
                           max_login_failures=self.target.max_login_failures, **fields)
        else:
            self.log.warning("token.refresh_failed", **fields)

    async def _revoke(self) -> None:
        assert self._refresh_id is not None
        start = time.monotonic()
        try:
            await self.client.revoke(self._refresh_id)
        except UpstreamError as error:
            self.metrics.upstream("revoke", error.outcome, time.monotonic() - start)
            self.log.warning("token.revoke_failed", **error_dict(error, time.time()))
            return
        self.metrics.upstream("revoke", "success", time.monotonic() - start)
        self._refresh_id = None
        self.log.info("token.revoked")

    def _sink_write(self, served: ServedToken, now: float) -> None:
        assert self.sink is not None
        content = served.raw if self.sink.sink.format == "raw" else served.json(now)
        try:
            self.sink.write(content)
        except OSError as exc:
            self.log.error("file_sink.write_failed", path=str(self.sink.sink.path),
                           error=exc.strerror or str(exc),
                           remediation="check the directory's owner, mode and free space")

    def _sink_remove(self) -> None:
        assert self.sink is not None
        try:
            self.sink.remove()
        except OSError as exc:
            self.log.error("file_sink.remove_failed", path=str(self.sink.sink.path),
                           error=exc.strerror or str(exc))

    def _set_state(self, now: float) -> None:
        state = self.policy.state(now, self._in_flight)
        if self._served is not None and not self._served.held.valid(now):
            self._served = None
            self.metrics.valid.set(0)
            if self.sink is not None:
                self._sink_remove()  # never leave an expired token behind
        if state == self._state:
            return
        old, self._state = self._state, state
        self.metrics.set_state(state)
        if state in ("degraded", "expired", "credentials_rejected"):
            level = "warning"
        elif "refreshing" in (old, state) and "degraded" not in (old, state):
            level = "debug"  # every healthy refresh passes through it: not worth a line at info
        else:
            level = "info"
        getattr(self.log, level)("target.state_changed", old=old, new=state)


def _token_file(target: TargetConfig) -> TokenFile | None:
    """The target's checked file sink, if it has one."""
    if target.file_sink is None:
        return None
    sink = TokenFile(target.file_sink, f"file_sink of target '{target.name}'")
    sink.check()
    return sink


def policy_config(target: TargetConfig) -> PolicyConfig:
    """The policy's view of a target's settings."""
    return PolicyConfig(refresh_at=target.refresh_at, jitter=target.jitter,
                        max_backoff=target.max_backoff,
                        max_login_failures=target.max_login_failures,
                        login_retry_interval=target.login_retry_interval)
