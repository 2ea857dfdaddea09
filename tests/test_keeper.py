"""The keeper's flows, driven by a virtual clock and a fake token source: no sockets, no sleeps.

Each test starts a real :class:`Keeper` task on the event loop; time moves only when the test calls
``clock.advance``, and every upstream call is answered at once by :class:`FakeSource`, which mints
real JWTs against the virtual clock and records each call with its instant.
"""

from __future__ import annotations

import asyncio
import itertools
import stat
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import jwt
import pytest
from structlog.testing import capture_logs

from tokend.config import FileSink, TargetConfig
from tokend.errors import (
    CredentialsRejected,
    InvalidResponse,
    RefreshTokenGone,
    TransientError,
    UpstreamError,
)
from tokend.jwtinfo import decode_claims
from tokend.keeper import Keeper
from tokend.ledger import Ledger
from tokend.metrics import Metrics
from tokend.secrets import Secret, SecretSource
from tokend.serving import ServeError
from tokend.upstream import Issued

WALL_OFFSET = 1_795_000_000.0
SETTLE_STEPS = 50


async def settle() -> None:
    """Let every ready task run until it waits on the clock or an event."""
    for _ in range(SETTLE_STEPS):
        await asyncio.sleep(0)


class VirtualClock:
    """A monotonic clock that moves only in :meth:`advance`; waits resolve in time order."""

    def __init__(self) -> None:
        self.now = 1000.0
        self._timers: list[tuple[float, asyncio.Future[None]]] = []

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now + WALL_OFFSET

    async def wait(self, event: asyncio.Event, until: float) -> None:
        if event.is_set() or until <= self.now:
            return
        timer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (until, timer)
        self._timers.append(entry)
        woken = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait({timer, woken}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()
            self._timers.remove(entry)

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, firing every timer on the way in order."""
        end = self.now + seconds
        await settle()
        while due := [u for u, f in self._timers if u <= end and not f.done()]:
            self.now = max(self.now, min(due))
            for until, timer in self._timers:
                if until <= self.now and not timer.done():
                    timer.set_result(None)
            await settle()
        self.now = end
        await settle()


@dataclass
class CallRecord:
    operation: str
    at: float
    argument: str | None


class FakeSource:
    """Answers like the SDDC Manager, at once; ``script`` queues failures or odd answers."""

    def __init__(self, clock: VirtualClock, lifetime: float = 100.0) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.calls: list[CallRecord] = []
        self.queue: dict[str, list[UpstreamError | Callable[[], Issued]]] = {
            "login": [], "refresh": [], "revoke": []}
        self.trust_checks = 0
        self._serial = 0

    def script(self, operation: str, *answers: UpstreamError | Callable[[], Issued]) -> None:
        self.queue[operation].extend(answers)

    def ops(self, *operations: str) -> list[str]:
        return [c.operation for c in self.calls if not operations or c.operation in operations]

    def issue(self, refresh_id: str | None = "rid-1", exp_offset: float | None = None,
              iat_offset: float = 0.0) -> Issued:
        self._serial += 1
        wall = self.clock.time()
        exp = int(wall) + (self.lifetime if exp_offset is None else exp_offset)
        token = jwt.encode({"iat": int(wall) + iat_offset, "exp": exp, "jti": str(self._serial)},
                           "k" * 32, algorithm="HS256")
        return Issued(access_token=token, refresh_id=refresh_id, claims=decode_claims(token),
                      sent_mono=self.clock.now, sent_wall=wall, server_date=None,
                      received_wall=wall, duration=0.01)

    def _answer(self, operation: str, default: Callable[[], Issued]) -> Issued:
        queue = self.queue[operation]
        answer = queue.pop(0) if queue else default
        if isinstance(answer, UpstreamError):
            raise answer
        return answer()

    async def login(self, username: str | None, secret: Secret) -> Issued:
        self.calls.append(CallRecord("login", self.clock.now, secret.reveal()))
        return self._answer("login", self.issue)

    async def refresh(self, refresh_id: str) -> Issued:
        self.calls.append(CallRecord("refresh", self.clock.now, refresh_id))
        return self._answer("refresh", lambda: self.issue(None))

    async def revoke(self, refresh_id: str) -> None:
        self.calls.append(CallRecord("revoke", self.clock.now, refresh_id))
        queue = self.queue["revoke"]
        if queue and isinstance(queue[0], UpstreamError):
            raise queue.pop(0)

    async def close(self) -> None:
        pass

    def check_trust(self) -> bool:
        self.trust_checks += 1
        return False


def target(**settings: Any) -> TargetConfig:
    secret = SecretSource(kind="literal", ref="", key="targets[0].password", literal=Secret("pw-1"))
    base = TargetConfig(name="t1", url="https://sddc.example", username="admin", password=secret,
                        api_key=None, jitter=0.0, refresh_at=0.7, login_retry_interval=60.0)
    return replace(base, **settings)


def half() -> float:
    return 0.5


@dataclass
class Rig:
    keeper: Keeper
    clock: VirtualClock
    source: FakeSource
    metrics: Metrics

    def valid(self) -> bool:
        return self.keeper.current(self.clock.now) is not None

    def metric(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, {"target": "t1", **labels})


@pytest.fixture
async def rig_factory() -> AsyncIterator[Callable[..., Any]]:
    keepers: list[Keeper] = []

    async def make(lifetime: float = 100.0, before_start: Callable[[FakeSource], None] | None = None,
                   ledger: Ledger | None = None, **settings: Any) -> Rig:
        clock = VirtualClock()
        source = FakeSource(clock, lifetime)
        if before_start is not None:
            before_start(source)
        metrics = Metrics()
        keeper = Keeper(target(**settings), metrics.target("t1"), rand=half, client=source,
                        clock=clock, ledger=ledger)
        keepers.append(keeper)
        keeper.start()
        await settle()
        return Rig(keeper, clock, source, metrics)

    yield make
    for keeper in keepers:
        await keeper.stop(revoke=False)


# -- login and refresh ----------------------------------------------------------------------------


async def test_logs_in_at_start_and_serves_the_token(rig_factory: Callable[..., Any]) -> None:
    rig = await rig_factory()

    assert rig.source.ops() == ["login"]
    served = rig.keeper.current(rig.clock.now)
    assert served is not None and served.expires_in(rig.clock.now) == 99  # whole-second iat: 100 s less 1
    assert rig.keeper.state == "valid"
    assert rig.keeper.first_attempt_done.is_set()
    assert rig.metric("tokend_token_valid") == 1


async def test_refreshes_at_refresh_at_of_the_lifetime_with_the_refresh_id(
    rig_factory: Callable[..., Any],
) -> None:
    rig = await rig_factory(lifetime=100.0)
    start = rig.clock.now

    await rig.clock.advance(70.0)

    assert rig.source.ops() == ["login", "refresh"]
    refresh = rig.source.calls[1]
    assert refresh.argument == "rid-1"
    assert refresh.at == pytest.approx(start + 99.0 * 0.7)
    assert rig.metric("tokend_upstream_requests_total", operation="refresh", outcome="success") == 1


async def test_refresh_token_gone_logs_in_again_at_once(rig_factory: Callable[..., Any]) -> None:
    rig = await rig_factory(lifetime=100.0)
    rig.source.script("refresh", RefreshTokenGone("gone", status=404))

    await rig.clock.advance(70.0)

    assert rig.source.ops() == ["login", "refresh", "login"]
    assert rig.source.calls[2].at == rig.source.calls[1].at
    assert rig.keeper.state == "valid"


async def test_a_login_without_refresh_token_renews_by_login_on_the_refresh_schedule(
    rig_factory: Callable[..., Any],
) -> None:
    rig = await rig_factory(lifetime=100.0)
    rig.source.script("login", lambda: rig.source.issue(refresh_id=None))
    await rig.clock.advance(1.0)  # the first login already happened with an id; restart the flow
    rig.source.script("refresh", RefreshTokenGone("gone", status=404))

    await rig.clock.advance(69.0)  # the refresh is refused: a login that brings no refresh id
    logins_after = [c.at for c in rig.source.calls if c.operation == "login"][1:]
    await rig.clock.advance(100.0)

    assert rig.source.ops()[:3] == ["login", "refresh", "login"]
    renewals = [c for c in rig.source.calls[3:]]
    assert [c.operation for c in renewals] == ["login"]  # no refresh without an id
    assert renewals[0].at - logins_after[0] == pytest.approx(99.0 * 0.7)


# -- transient failures ---------------------------------------------------------------------------


async def test_transient_refresh_failures_back_off_and_the_fourth_attempt_is_a_login(
    rig_factory: Callable[..., Any],
) -> None:
    rig = await rig_factory(lifetime=1000.0)
    rig.source.script("refresh", *(TransientError("down", status=503) for _ in range(3)))

    with capture_logs() as logs:
        await rig.clock.advance(700.0 + 10.0)

    assert rig.source.ops() == ["login", "refresh", "refresh", "refresh", "login"]
    gaps = [b.at - a.at for a, b in zip(rig.source.calls[1:], rig.source.calls[2:], strict=False)]
    assert gaps == [pytest.approx(0.5), pytest.approx(1.0), pytest.approx(2.0)]  # rand = 0.5
    failed = [e for e in logs if e["event"] == "token.refresh_failed"]
    assert [e["consecutive_failures"] for e in failed] == [1, 2, 3]
    assert failed[-1]["next"].startswith("login in")
    assert rig.keeper.state == "valid"


async def test_the_old_token_is_served_while_refreshes_fail_and_withdrawn_at_expiry(
    rig_factory: Callable[..., Any], tmp_path: Path,
) -> None:
    sink = FileSink(path=tmp_path / "t1.token")
    rig = await rig_factory(lifetime=100.0, file_sink=sink, max_backoff=5.0)
    assert sink.path.read_bytes() == rig.keeper.current(rig.clock.now).raw  # type: ignore[union-attr]
    rig.source.script("refresh", *(TransientError("down", status=503) for _ in range(1000)))
    rig.source.script("login", *(TransientError("down", status=503) for _ in range(1000)))

    await rig.clock.advance(80.0)
    assert rig.keeper.state == "degraded" and rig.valid()
    await rig.clock.advance(19.5)

    assert not rig.valid()
    assert rig.keeper.state == "expired"
    assert not sink.path.exists()  # never an expired token left behind
    assert rig.metric("tokend_token_valid") == 0
    with pytest.raises(ServeError) as refused:
        await rig.keeper.token()
    assert refused.value.status == 503 and refused.value.retry_after is not None


# -- lockout guard --------------------------------------------------------------------------------


async def test_rejected_logins_are_spaced_and_stop_after_max_login_failures(
    rig_factory: Callable[..., Any],
) -> None:
    rig = await rig_factory(lifetime=100.0, max_login_failures=3, login_retry_interval=60.0)
    rig.source.script("refresh", RefreshTokenGone("gone", status=404))
    rig.source.script("login", *(CredentialsRejected("bad", status=401) for _ in range(10)))

    await rig.clock.advance(1000.0)

    logins = [c.at for c in rig.source.calls if c.operation == "login"][1:]
    assert len(logins) == 3
    assert all(b - a >= 60.0 for a, b in itertools.pairwise(logins))
    assert rig.keeper.state == "credentials_rejected"
    assert rig.keeper.next_refresh_in(rig.clock.now) is None


async def test_sighup_after_a_lockout_resumes_logins(rig_factory: Callable[..., Any]) -> None:
    rig = await rig_factory(lifetime=100.0, max_login_failures=1, login_retry_interval=10.0)
    rig.source.script("refresh", RefreshTokenGone("gone", status=404))
    rig.source.script("login", CredentialsRejected("bad", status=401))
    await rig.clock.advance(100.0)
    assert rig.keeper.state == "credentials_rejected"

    rig.keeper.reconfigure(rig.keeper.target)
    await rig.clock.advance(1.0)

    assert rig.source.ops("login")[-1] == "login" and len(rig.source.ops("login")) == 3
    assert rig.keeper.state == "valid"


# -- consumers ------------------------------------------------------------------------------------


async def test_invalidate_of_a_brand_new_token_is_deferred_to_the_end_of_the_quiet_window(
    rig_factory: Callable[..., Any],
) -> None:
    rig = await rig_factory(lifetime=100.0, request_timeout=15.0)
    old = rig.keeper.current(rig.clock.now)
    assert old is not None
    started = rig.clock.now

    with capture_logs() as logs:
        answer = asyncio.ensure_future(rig.keeper.invalidate(old.fingerprint))
        await rig.clock.advance(6.0)

    new = answer.result()
    assert new.fingerprint != old.fingerprint
    assert rig.source.ops() == ["login", "refresh"]
    assert rig.source.calls[1].at == pytest.approx(started + 5.0)
    assert [e["event"] for e in logs if e["event"].startswith("token.refresh_")] == [
        "token.refresh_deferred", "token.refresh_requested"]


async def test_many_reports_of_one_token_make_one_refresh(rig_factory: Callable[..., Any]) -> None:
    rig = await rig_factory(lifetime=100.0)
    await rig.clock.advance(20.0)
    old = rig.keeper.current(rig.clock.now)
    assert old is not None

    answers = [asyncio.ensure_future(rig.keeper.invalidate(old.fingerprint)) for _ in range(50)]
    await rig.clock.advance(0.1)

    assert rig.source.ops() == ["login", "refresh"]
    assert len({a.result().fingerprint for a in answers}) == 1


async def test_three_refused_brand_new_tokens_stop_refreshes_on_reports(
    rig_factory: Callable[..., Any],
) -> None:
    rig = await rig_factory(lifetime=1000.0, request_timeout=30.0)
    with capture_logs() as logs:
        for _ in range(3):  # each new token is reported refused as soon as it is served
            token = rig.keeper.current(rig.clock.now)
            assert token is not None
            answer = asyncio.ensure_future(rig.keeper.invalidate(token.fingerprint))
            for _ in range(60):
                if answer.done():
                    break
                await rig.clock.advance(0.5)
        token = rig.keeper.current(rig.clock.now)
        assert token is not None
        fourth = asyncio.ensure_future(rig.keeper.invalidate(token.fingerprint))
        await rig.clock.advance(31.0)

    assert rig.source.ops() == ["login", "refresh", "refresh"]
    assert rig.keeper.state == "degraded"
    assert [e for e in logs if e["event"] == "token.rejected_by_consumers"]
    assert isinstance(fourth.exception(), ServeError)


async def test_min_ttl_beyond_the_current_token_refreshes(rig_factory: Callable[..., Any]) -> None:
    rig = await rig_factory(lifetime=100.0)
    await rig.clock.advance(60.0)

    answer = asyncio.ensure_future(rig.keeper.token(min_ttl=50.0))
    await rig.clock.advance(0.1)

    assert answer.result().remaining(rig.clock.now) >= 50.0
    assert rig.source.ops() == ["login", "refresh"]


# -- answers checked at the door ------------------------------------------------------------------


async def test_exp_in_milliseconds_is_capped_to_max_token_lifetime(
    rig_factory: Callable[..., Any],
) -> None:
    clock_holder: list[FakeSource] = []

    def ms_token() -> Issued:
        source = clock_holder[0]
        return source.issue(exp_offset=source.clock.time() * 999)  # exp = now * 1000

    with capture_logs() as logs:
        rig = await rig_factory(lifetime=50.0, max_token_lifetime=60.0)
        clock_holder.append(rig.source)
        rig.source.script("refresh", ms_token)
        await rig.clock.advance(40.0)

    served = rig.keeper.current(rig.clock.now)
    assert served is not None and served.lifetime == 60.0
    assert rig.keeper.state == "valid"
    capped = [e for e in logs if e["event"] == "token.lifetime_capped"]
    assert len(capped) == 1 and capped[0]["used_lifetime"] == 60.0
    assert capped[0]["claimed_lifetime"] > 1e12
    assert not [e for e in logs if e["log_level"] == "error"]
    await rig.clock.advance(60.0 * 0.7 + 1.0)  # refreshed on the capped schedule
    assert rig.source.ops() == ["login", "refresh", "refresh"]


async def test_a_refused_answer_to_an_accepted_login_revokes_its_session_and_backs_off_long(
    rig_factory: Callable[..., Any],
) -> None:
    def expired_answers(source: FakeSource) -> None:
        def expired() -> Issued:
            return source.issue(refresh_id="rid-orphan", exp_offset=-10.0)
        source.script("login", *(expired for _ in range(12)))

    rig = await rig_factory(lifetime=100.0, max_backoff=300.0, before_start=expired_answers)
    await rig.clock.advance(1000.0)

    revokes = [c for c in rig.source.calls if c.operation == "revoke"]
    logins = [c.at for c in rig.source.calls if c.operation == "login"]
    assert len(revokes) == len(logins) - 1  # every refused session, not the good last one
    assert all(c.argument == "rid-orphan" for c in revokes)
    gaps = [b - a for a, b in itertools.pairwise(logins)]
    assert max(gaps) > 30.0  # past the no-token cap: a bad server is not asked every 30 s
    assert max(gaps) <= 300.0


# -- tokend's own faults --------------------------------------------------------------------------


async def test_an_internal_error_is_logged_once_and_the_keeper_carries_on(
    rig_factory: Callable[..., Any],
) -> None:
    rig = await rig_factory(lifetime=100.0)

    def broken() -> Issued:
        raise ZeroDivisionError("a bug")

    rig.source.script("refresh", broken)
    with capture_logs() as logs:
        await rig.clock.advance(80.0)

    crashed = [e for e in logs if e["event"] == "keeper.crashed"]
    assert len(crashed) == 1 and crashed[0]["error_type"] == "ZeroDivisionError"
    assert rig.source.ops() == ["login", "refresh", "refresh"]  # retried after a backoff
    assert rig.keeper.state == "valid"
    assert not rig.keeper.stuck(rig.clock.now)
    assert rig.metric("tokend_upstream_requests_total", operation="refresh",
                      outcome="internal_error") == 1


async def test_an_invalid_response_leaves_the_held_token_as_it_was(
    rig_factory: Callable[..., Any],
) -> None:
    rig = await rig_factory(lifetime=100.0)
    before = rig.keeper.current(rig.clock.now)
    rig.source.script("refresh", InvalidResponse("not a JWT"))

    await rig.clock.advance(69.5)

    assert rig.keeper.current(rig.clock.now) is before
    assert rig.keeper.state == "degraded"
    assert rig.keeper.status(rig.clock.now, rig.clock.time())["lastError"]["errorCode"] == \
        "INVALID_UPSTREAM_RESPONSE"


# -- reload ---------------------------------------------------------------------------------------


async def test_reload_keeps_the_token_and_applies_new_settings(
    rig_factory: Callable[..., Any], tmp_path: Path,
) -> None:
    rig = await rig_factory(lifetime=100.0)
    token = rig.keeper.current(rig.clock.now)
    sink = FileSink(path=tmp_path / "t1.token", format="json")

    rig.keeper.reconfigure(replace(rig.keeper.target, refresh_at=0.5, file_sink=sink))
    await rig.clock.advance(0.1)

    assert rig.keeper.current(rig.clock.now) is token
    assert stat.S_IMODE(sink.path.stat().st_mode) == 0o600
    assert rig.source.trust_checks >= 2  # the TLS material is looked at again on reload
    await rig.clock.advance(99.0 * 0.7)  # the held token keeps its schedule
    assert rig.source.ops() == ["login", "refresh"]
    await rig.clock.advance(99.0 * 0.5)  # the next one is scheduled by the new setting
    assert rig.source.ops() == ["login", "refresh", "refresh"]


async def test_a_token_expiring_while_a_call_hangs_is_withdrawn_at_once(
    rig_factory: Callable[..., Any], tmp_path: Path,
) -> None:
    sink = FileSink(path=tmp_path / "t1.token")
    rig = await rig_factory(lifetime=100.0, file_sink=sink, request_timeout=60.0)
    gate = asyncio.Event()

    async def hanging(refresh_id: str) -> Issued:
        rig.source.calls.append(CallRecord("refresh", rig.clock.now, refresh_id))
        await gate.wait()
        raise TransientError("down", status=503)

    rig.source.refresh = hanging  # type: ignore[method-assign]
    await rig.clock.advance(69.5)  # the refresh goes out and hangs
    assert rig.source.ops() == ["login", "refresh"] and sink.path.exists()

    await rig.clock.advance(30.0)  # past expiry, the call still out

    assert not rig.valid()
    assert not sink.path.exists()
    assert rig.metric("tokend_token_valid") == 0
    assert rig.keeper.state == "expired"
    gate.set()


async def test_a_secret_source_that_turns_unreadable_is_reported_once(
    rig_factory: Callable[..., Any], tmp_path: Path,
) -> None:
    secret_file = tmp_path / "pw"
    secret_file.write_bytes(b"pw-1\n")
    secret_file.chmod(0o600)
    source = SecretSource(kind="file", ref=str(secret_file), key="targets[0].password_file")
    rig = await rig_factory(lifetime=1000.0, password=source)
    assert rig.source.calls[0].argument == "pw-1"

    secret_file.write_bytes(b"\xe4pw\n")  # Latin-1, not UTF-8
    with capture_logs() as logs:
        await rig.clock.advance(95.0)  # three periodic checks

    unavailable = [e for e in logs if e["event"] == "secret.unavailable"]
    assert len(unavailable) == 1 and unavailable[0]["key"] == "targets[0].password_file"
    last_error = rig.keeper.status(rig.clock.now, rig.clock.time())["lastError"]
    assert last_error["errorCode"] == "SECRET_UNAVAILABLE"
    assert rig.keeper.state == "valid"  # the token in hand is still good


async def test_after_a_crash_the_status_names_the_internal_error(
    rig_factory: Callable[..., Any],
) -> None:
    def broken(source: FakeSource) -> None:
        def crash() -> Issued:
            raise ZeroDivisionError("a bug")
        source.script("login", *(crash for _ in range(3)))

    rig = await rig_factory(lifetime=100.0, before_start=broken)
    await rig.clock.advance(0.5)

    status = rig.keeper.status(rig.clock.now, rig.clock.time())
    assert status["state"] == "expired"
    assert status["lastError"]["errorCode"] == "INTERNAL_ERROR"
    assert "ZeroDivisionError" in status["lastError"]["message"]


# -- the lockout guard across restarts (SPEC §8.9) --------------------------------------------------

START_WALL = 1000.0 + WALL_OFFSET  # the virtual wall clock when a rig starts


def ledger_with(rejections: int, age: float) -> Ledger:
    ledger = Ledger(b"k" * 32)
    ledger.rejected("t1", ledger.secret_id(Secret("pw-1")), rejections, START_WALL - age)
    return ledger


async def test_rejections_recorded_before_a_restart_stop_logins_at_start(
    rig_factory: Callable[..., Any],
) -> None:
    with capture_logs() as logs:
        rig = await rig_factory(ledger=ledger_with(3, age=100.0), max_login_failures=3)
        await rig.clock.advance(600.0)

    assert rig.source.ops() == []
    assert rig.keeper.state == "credentials_rejected"
    restored = [e for e in logs if e["event"] == "lockout.restored"]
    assert restored and restored[0]["log_level"] == "warning" and restored[0]["rejections"] == 3
    lockout = rig.keeper.status(rig.clock.now, rig.clock.time())["lockout"]
    assert lockout["rejections"] == 3 and lockout["expiresAt"].endswith("Z")


async def test_login_spacing_is_honoured_across_a_restart(rig_factory: Callable[..., Any]) -> None:
    rig = await rig_factory(ledger=ledger_with(1, age=10.0), login_retry_interval=60.0)
    await rig.clock.advance(60.0)

    assert [c.at for c in rig.source.calls] == [pytest.approx(1000.0 + 50.0)]


async def test_a_record_older_than_fifteen_minutes_lets_logins_resume(
    rig_factory: Callable[..., Any],
) -> None:
    rig = await rig_factory(ledger=ledger_with(3, age=901.0), max_login_failures=3)

    assert rig.source.ops() == ["login"]
    assert rig.keeper.state == "valid"


async def test_a_rejection_is_recorded_and_a_successful_login_clears_it(
    rig_factory: Callable[..., Any],
) -> None:
    ledger = Ledger(b"k" * 32)

    def reject_once(source: FakeSource) -> None:
        source.script("login", CredentialsRejected("bad", status=401))

    rig = await rig_factory(ledger=ledger, before_start=reject_once, login_retry_interval=5.0)
    record = ledger.record("t1")
    assert record is not None and record.rejections == 1
    assert record.secret_id == ledger.secret_id(Secret("pw-1"))

    await rig.clock.advance(6.0)

    assert rig.source.ops() == ["login", "login"] and rig.keeper.state == "valid"
    assert ledger.record("t1") is None
