"""One task per target: the driver of its state machine (:mod:`tokend.schedule`).

The keeper holds no decision of its own: it asks :meth:`RefreshPolicy.poll` what is due, performs
each effect (an upstream call, a secret read, a log line, a metric, the file sink) and reports the
outcome back. It is the only caller of its target's token source and makes one call at a time, so
there is never more than one upstream request per target in flight (single flight). What it serves
(the current token, ``min_ttl``, ``invalidate``, status, news for watches) is the part it inherits
from :class:`tokend.serving.Serving`.

Time comes from a :class:`Clock` and upstream calls from a :class:`TokenSource`, both passed in, so
the keeper's flows are tested with a virtual clock and a fake source (``tests/test_keeper.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from tokend.clock import Clock, SystemClock
from tokend.config import TargetConfig
from tokend.effects import Call, CheckSecret, Effect, Log, Publish, Revoke, Sleep, StateChanged, Withdraw
from tokend.errors import (
    ConfigError,
    CredentialsRejected,
    InvalidResponse,
    TransientError,
    UpstreamDetail,
    UpstreamError,
)
from tokend.filesink import TokenFile
from tokend.held import HeldToken, admit, iso_utc
from tokend.jwtinfo import JWT_PATTERN, fingerprint
from tokend.ledger import Ledger
from tokend.logs import REDACTOR, get_logger
from tokend.metrics import TargetMetrics
from tokend.names import KeeperCall, State
from tokend.schedule import RefreshPolicy
from tokend.secrets import Secret, read_secret, secret_stamp
from tokend.serving import ServedToken, Serving, error_dict
from tokend.upstream import Issued, UpstreamClient

STUCK_GRACE = 30.0  # seconds a step may take beyond two request_timeouts


class TokenSource(Protocol):
    """The upstream calls a keeper makes (:class:`tokend.upstream.UpstreamClient`, or a fake)."""

    async def login(self, username: str | None, secret: Secret) -> Issued:
        """``POST /v1/tokens``; raises UpstreamError."""

    async def refresh(self, refresh_id: str) -> Issued:
        """``PATCH /v1/tokens/access-token/refresh``; raises UpstreamError."""

    async def revoke(self, refresh_id: str) -> None:
        """``DELETE /v1/tokens/refresh-token``; raises UpstreamError."""

    async def close(self) -> None:
        """Release connections."""

    def check_trust(self) -> bool:
        """Re-read ``ca_file``; True when the trust store changed. Raises ConfigError."""


class Keeper(Serving):
    """Keeps one target's token valid: drives its state machine, and serves it as :class:`Serving`.

    Building one checks the file sink and sets up the upstream client (unless ``client`` is given):
    raises ConfigError, OSError or ValueError when either is refused.
    """

    def __init__(self, target: TargetConfig, metrics: TargetMetrics,
                 rand: Callable[[], float] = random.random, client: TokenSource | None = None,
                 clock: Clock | None = None, ledger: Ledger | None = None) -> None:
        policy = RefreshPolicy(target.policy(), rand)
        self.client: TokenSource = client if client is not None else UpstreamClient(target)
        super().__init__(target, policy, clock if clock is not None else SystemClock(),
                         ledger if ledger is not None else Ledger.open(None, 0.0))
        self.metrics = metrics
        self.log = get_logger(target=target.name)
        self.first_attempt_done = asyncio.Event()
        self.sink = _token_file(target)
        self._secret: Secret | None = None  # read for the login about to be made
        self._secret_id: str | None = None  # the ledger's id of the secret last read
        self._restored = False  # the ledger was consulted for this keeper's first secret
        self._secret_stamp: object = None
        self._busy_since: float | None = None
        self._task: asyncio.Task[None] | None = None

    # -- life -----------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the keeper task."""
        self._task = asyncio.create_task(self._run(), name=f"keeper:{self.name}")

    async def stop(self, revoke: bool, keep_file: bool = False) -> None:
        """Stop the task; revoke the refresh token if asked; close the HTTP session; remove the
        token file unless ``keep_file`` or its ``keep_on_exit``."""
        self.retired = True
        self._announce()  # held watches learn at once that this keeper is going
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        refresh_id = self.policy.refresh_id
        if revoke and refresh_id is not None:
            await self._revoke(refresh_id, at_exit=True)
        await self.client.close()
        if self.sink is not None and not (keep_file or self.sink.sink.keep_on_exit):
            self._sink_remove()

    def reconfigure(self, target: TargetConfig) -> None:
        """SIGHUP with the same url, TLS settings and secret: keep the token, take new settings."""
        now = self.clock.monotonic()
        if target.file_sink != self.target.file_sink:
            if self.sink is not None:
                self._sink_remove()
            self.sink = _token_file(target)
            served = self.current(now)
            if self.sink is not None and served is not None:
                self._sink_write(served, now)
        self.target = target
        if isinstance(self.client, UpstreamClient):  # request_timeout may have changed
            self.client.reconfigure(target)
        self.ledger.clear(self.name, self.clock.time())  # SIGHUP clears the record (SPEC §8.9)
        self._secret_stamp = None  # re-read the secret and the TLS material now
        self._perform_now(self.policy.reconfigure(now, target.policy()))
        self._wake.set()

    # -- what the daemon reads ------------------------------------------------------------------

    def stuck(self, now: float) -> bool:
        """True when one step has taken longer than any upstream call may (healthz, watchdog)."""
        if self._task is not None and self._task.done():
            return True
        limit = 2 * self.target.request_timeout + STUCK_GRACE
        return self._busy_since is not None and now - self._busy_since > limit

    # -- the driver -----------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            self._wake.clear()  # before poll: a report arriving after it is not lost
            try:
                for effect in self.policy.poll(self.clock.monotonic()):
                    await self._perform(effect)
            except Exception as exc:  # tokend's own bug: never the end of the keeper (SPEC §8.4)
                self._crashed(exc)

    async def _perform(self, effect: Effect) -> None:
        match effect:
            case Sleep(until):
                if self.policy.next_action(self.clock.monotonic()).kind == "idle":
                    self.first_attempt_done.set()  # nothing will be tried: do not hold READY=1
                await self.clock.wait(self._wake, until)
            case Call():
                await self._call(effect)
            case CheckSecret(login):
                await self._check_secret(login)
            case Revoke(refresh_id):
                await self._revoke(refresh_id, at_exit=False)
            case _:
                self._perform_now([effect])

    def _perform_now(self, effects: list[Effect]) -> None:
        """Perform the effects that need no waiting (logs, metrics, the sink, waking waiters)."""
        for effect in effects:
            match effect:
                case Publish(token):
                    self._publish(token)
                case Withdraw():
                    self.metrics.valid.set(0)
                    if self.sink is not None:
                        self._sink_remove()  # never leave an expired token behind
                    self._announce()
                case Log(level, event, fields):
                    getattr(self.log, level)(event, **fields)
                case StateChanged(old, new):
                    self._state_changed(old, new)
                case _:
                    raise AssertionError(f"effect {type(effect).__name__} needs the event loop")

    async def _call(self, call: Call) -> None:
        operation = call.operation
        start = self.clock.monotonic()
        self._busy_since = start
        try:
            try:
                issued = await self._while_serving(self._upstream_call(call))
            except UpstreamError as error:
                await self._failed(operation, error, self.clock.monotonic() - start)
                return
            self._register(issued)
            try:
                admitted = admit(self.name, issued.access_token, fingerprint(issued.access_token),
                                 issued.claims, issued.sent_mono, issued.sent_wall,
                                 issued.server_date, self.target.max_token_lifetime)
            except InvalidResponse as error:
                if operation == "login":
                    error.issued_refresh_id = issued.refresh_id  # the upstream took the credentials
                await self._failed(operation, error, issued.duration)
                return
            if admitted.claimed_lifetime is not None:
                self.log.warning("token.lifetime_capped", fingerprint=admitted.token.fingerprint,
                                 claimed_lifetime=round(admitted.claimed_lifetime, 3),
                                 used_lifetime=round(admitted.token.lifetime, 3))
            self.metrics.upstream(operation, "success", issued.duration)
            if issued.clock_skew is not None:
                self.metrics.skew.set(issued.clock_skew)
            effects = self.policy.on_token(self.clock.monotonic(), admitted.token, operation,
                                           issued.refresh_id, issued.duration)
            if operation == "login":
                self.ledger.clear(self.name, self.clock.time())
            self.metrics.failures.set(0)
            self._perform_now(effects)
        finally:
            self._busy_since = None
            self.first_attempt_done.set()

    async def _while_serving(self, call: Coroutine[Any, Any, Issued]) -> Issued:
        """Await an upstream call, withdrawing the served token if it expires meanwhile."""
        task = asyncio.ensure_future(call)
        done = asyncio.Event()
        task.add_done_callback(lambda _: done.set())
        try:
            while not task.done():
                deadline = self.policy.expiry_deadline()
                if deadline is None:
                    await asyncio.wait({task})
                    break
                await self.clock.wait(done, deadline)
                if not task.done():
                    self._perform_now(self.policy.expire(self.clock.monotonic()))
            return task.result()
        finally:
            task.cancel()  # only when the keeper itself is cancelled mid-call

    async def _upstream_call(self, call: Call) -> Issued:
        if call.operation == "login":
            secret, self._secret = self._secret, None
            if secret is None:
                raise AssertionError("a login without a freshly read secret")
            return await self.client.login(self.target.username, secret)
        if call.refresh_id is None:
            raise AssertionError("a refresh without a refresh id")
        return await self.client.refresh(call.refresh_id)

    async def _failed(self, operation: KeeperCall, error: UpstreamError,
                      duration: float | None) -> None:
        if error.issued_refresh_id is not None:
            REDACTOR.register(error.issued_refresh_id)
        if isinstance(error, CredentialsRejected) and operation == "login" and self._secret_id:
            self.ledger.rejected(self.name, self._secret_id, self.policy.rejections() + 1,
                                 self.clock.time())
        self.metrics.upstream(operation, error.outcome, duration)
        effects = self.policy.on_failure(self.clock.monotonic(), operation, error)
        self.metrics.failures.set(self.policy.failures)
        for effect in effects:
            await self._perform(effect)

    def _register(self, issued: Issued) -> None:
        """Every secret the upstream handed over is redacted from now on, used or not."""
        if issued.refresh_id is not None:
            REDACTOR.register(issued.refresh_id)
        if not JWT_PATTERN.fullmatch(issued.access_token):
            REDACTOR.register(issued.access_token)

    def _publish(self, token: HeldToken) -> None:
        now = self.clock.monotonic()
        m = self.metrics
        m.expiry.set(token.expires_wall)
        m.issued.set(token.obtained_wall)
        m.valid.set(1)
        if self.sink is not None:
            self._sink_write(token, now)
        self._published()

    async def _check_secret(self, login: bool) -> None:
        """Read the secret for a login, or every 30 s when its source changed; TLS material too."""
        now = self.clock.monotonic()
        stamp = secret_stamp(self.target.secret)
        if not login:
            self._check_trust()
            if stamp == self._secret_stamp:
                return
        try:
            secret = read_secret(self.target.secret)
        except ConfigError as exc:
            error = TransientError(
                str(exc), outcome="invalid_response",
                detail=UpstreamDetail(error_code="SECRET_UNAVAILABLE",
                                      remediation_message=exc.fix or "Fix the secret source"))
            if login:  # not an upstream call: not counted in the upstream metrics
                effects = self.policy.on_failure(now, "login", error)
                self.metrics.failures.set(self.policy.failures)
                self._perform_now(effects)
                self.first_attempt_done.set()
            elif stamp != self._secret_stamp:  # once per change of the source, not every 30 s
                self._secret_stamp = stamp
                self.policy.note_error(now, error)
                self.log.warning("secret.unavailable", key=exc.key, error=str(exc),
                                 action="the secret in use is kept until the source is fixed")
            return
        self._secret_stamp = stamp
        REDACTOR.register(secret.reveal())
        if login:
            self._secret = secret
        changed = self.policy.secret_digest not in (None, secret.digest)
        self._secret_id = self.ledger.secret_id(secret)
        if changed:  # a new secret starts a new count, here and in the ledger
            self.ledger.clear(self.name, self.clock.time())
        self._perform_now(self.policy.on_secret(now, secret.digest, for_login=login))
        if not self._restored:
            self._restored = True
            self._restore(now)

    def _restore(self, now: float) -> None:
        """At start: rejections of this secret recorded before a restart still count."""
        assert self._secret_id is not None
        wall = self.clock.time()
        record = self.ledger.lookup(self.name, self._secret_id, wall)
        if record is None:
            return
        effects = self.policy.restore(now, record.rejections, now - (wall - record.last_attempt))
        locked = self.policy.locked_out
        (self.log.warning if locked else self.log.info)(
            "lockout.restored", rejections=record.rejections,
            max_login_failures=self.target.max_login_failures,
            expires_at=iso_utc(record.expires_at()),
            action=("no login until the secret changes, SIGHUP, or the record expires" if locked
                    else f"logins spaced by {self.target.login_retry_interval:g}s"))
        self._perform_now(effects)

    def _check_trust(self) -> None:
        try:
            if self.client.check_trust():
                self.log.info("tls.trust_reloaded", ca_file=str(self.target.ca_file))
        except ConfigError as exc:
            self.log.error("tls.trust_reload_failed", key=exc.key, error=str(exc),
                           action="the previous trust store is kept")

    async def _revoke(self, refresh_id: str, at_exit: bool) -> None:
        start = self.clock.monotonic()
        try:
            await self.client.revoke(refresh_id)
        except UpstreamError as error:
            self.metrics.upstream("revoke", error.outcome, self.clock.monotonic() - start)
            self.log.warning("token.revoke_failed", **error_dict(error, self.clock.time()))
            return
        self.metrics.upstream("revoke", "success", self.clock.monotonic() - start)
        if at_exit:
            self.policy.forget_refresh_token()
        self.log.info("token.revoked", reason="exit" if at_exit else "unused session")

    def _crashed(self, exc: Exception) -> None:
        now = self.clock.monotonic()
        operation = self.policy.in_flight or self.policy.next_action(now).kind
        self.log.error("keeper.crashed", error_type=type(exc).__name__, exc_info=exc)
        self.metrics.upstream("refresh" if operation == "idle" else operation, "internal_error", None)
        self._busy_since = None
        self._secret = None
        effects = self.policy.on_crash(now, TransientError(
            f"tokend internal error ({type(exc).__name__}); retried after a backoff",
            outcome="internal_error",
            detail=UpstreamDetail(error_code="INTERNAL_ERROR", remediation_message=(
                "A bug in tokend: report the keeper.crashed log line; tokend keeps retrying"))))
        self.metrics.failures.set(self.policy.failures)
        with contextlib.suppress(Exception):
            self._perform_now(effects)

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

    def _state_changed(self, old: State, new: State) -> None:
        self.metrics.set_state(new)
        if new in ("degraded", "expired", "credentials_rejected"):
            level = "warning"
        elif "refreshing" in (old, new) and "degraded" not in (old, new):
            level = "debug"  # every healthy refresh passes through it: not worth a line at info
        else:
            level = "info"
        getattr(self.log, level)("target.state_changed", old=old, new=new)


def _token_file(target: TargetConfig) -> TokenFile | None:
    """The target's checked file sink, if it has one."""
    if target.file_sink is None:
        return None
    sink = TokenFile(target.file_sink, target.key("file_sink"))
    sink.check()
    return sink
