"""What the refresh policy hands its driver, exactly: the token JSON and the log lines' fields.

tests/test_schedule.py covers when things happen; these pin what the policy says when they do, at
the unit level, so that a renamed field or a wrong value fails here and not only in an end-to-end
test (the mutation run, bench/mutation.sh, found them unpinned).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator

import pytest

from tests.test_schedule import (
    WALL,
    gone,
    held,
    logged_in,
    policy,
    refuse_three_brand_new_tokens,
    rejected,
    transient,
)
from tokend.effects import Call, CheckSecret, Log, Revoke, StateChanged, Withdraw
from tokend.errors import (
    CredentialsRejected,
    InvalidResponse,
    RefreshTokenGone,
    TransientError,
    UpstreamDetail,
    UpstreamError,
)
from tokend.held import HeldToken, admit, iso_utc, tracked_lifetime
from tokend.jwtinfo import Claims, fingerprint
from tokend.outcomes import remediation
from tokend.schedule import RefreshPolicy

TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjE3OTU4NDkyMDB9.c2ln"


def logs(effects: list[object]) -> list[Log]:
    return [e for e in effects if isinstance(e, Log)]


def poll_to_call(p: RefreshPolicy, now: float) -> list[object]:
    """Every effect of polling at ``now`` until a call goes out, the secret checks answered."""
    effects: list[object] = []
    for _ in range(5):
        batch = p.poll(now)
        effects += batch
        if isinstance(batch[-1], Call):
            return effects
        assert isinstance(batch[-1], CheckSecret), batch
        effects += p.on_secret(now, p.secret_digest or "secret-1", for_login=batch[-1].login)
    raise AssertionError(f"no call went out: {effects}")


# -- the token JSON (SPEC §4) ----------------------------------------------------------------------


def test_the_token_json_is_rendered_exactly_with_the_seconds_left() -> None:
    token = HeldToken(access_token=TOKEN, fingerprint=fingerprint(TOKEN), upstream_exp=WALL + 3600,
                      obtained_at=100.0, expires_at=100.0 + 3599.0, obtained_wall=WALL + 0.25,
                      target="sfo-vcf01")

    body = token.json(100.0 + 1000.4)

    assert body == (
        b'{"target": "sfo-vcf01", "tokenType": "Bearer", "accessToken": "' + TOKEN.encode()
        + b'", "expiresAt": "2026-11-28T06:59:59Z", "expiresIn": 2598, "upstreamExp": '
        + str(WALL + 3600).encode() + b', "fingerprint": "' + fingerprint(TOKEN).encode() + b'"}')
    assert json.loads(body)["expiresIn"] == 2598
    assert token.raw == TOKEN.encode()


def test_expires_in_counts_whole_seconds_down_to_zero_and_stays_there() -> None:
    token = held(obtained_at=0.0, lifetime=10.0)

    assert [token.expires_in(t) for t in (0.0, 0.5, 9.0, 9.99, 10.0, 11.0, 1e9)] == [10, 9, 1, 0, 0, 0, 0]
    assert json.loads(token.json(20.0))["expiresIn"] == 0


@pytest.fixture
def eastern_time() -> Iterator[None]:
    """A local time zone far from UTC, so that local time cannot pass for UTC."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "America/New_York"
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


def test_iso_utc_is_utc_whatever_the_local_zone_and_truncates_to_the_second(eastern_time: None) -> None:
    assert iso_utc(WALL) == "2026-11-28T06:00:00Z"
    assert iso_utc(WALL + 0.999) == "2026-11-28T06:00:00Z"
    assert iso_utc(WALL + 86400 * 40 + 3723) == "2027-01-07T07:02:03Z"


# -- token.acquired and token.refreshed ----------------------------------------------------------


def test_a_login_logs_token_acquired_with_its_fields() -> None:
    p = policy()
    p.observe_secret("secret-1")
    token = held(obtained_at=10.0, lifetime=100.0)

    [log] = logs(p.on_token(12.0, token, "login", "rid-1", duration=0.0123))

    assert log == Log("info", "token.acquired", {
        "operation": "login", "fingerprint": token.fingerprint,
        "expires_at": iso_utc(token.expires_wall), "expires_in": 98,
        "next_refresh_in": 68.0,  # 10 + 100 * 0.7 (jitter 0.1, rand 0.5) less now
        "duration": 0.012})


def test_a_refresh_logs_token_refreshed_without_a_duration_when_none_was_measured() -> None:
    p = logged_in(now=0.0, lifetime=100.0)
    token = held(obtained_at=70.0, lifetime=100.0)

    [log] = logs(p.on_token(70.0, token, "refresh"))

    assert log.event == "token.refreshed"
    assert log.fields["operation"] == "refresh" and log.fields["expires_in"] == 100
    assert log.fields["next_refresh_in"] == 70.0 and log.fields["duration"] is None


# -- failures ------------------------------------------------------------------------------------


def test_a_failed_refresh_logs_what_the_upstream_said_and_what_comes_next() -> None:
    p = logged_in(now=0.0, lifetime=1000.0)
    detail = UpstreamDetail(error_code="TOKEN_NOT_FOUND", message="no such token",
                            remediation_message="log in again", reference_token="REF-42")
    error = RefreshTokenGone("the refresh token was refused", status=404, detail=detail)

    [log] = logs(p.on_failure(700.0, "refresh", error))

    assert log == Log("warning", "token.refresh_failed", {
        "operation": "refresh", "outcome": "refresh_token_gone", "status": 404,
        "errorCode": "TOKEN_NOT_FOUND", "message": "the refresh token was refused: no such token",
        "remediationMessage": "log in again", "referenceToken": "REF-42",
        "consecutive_failures": 1, "token_valid_for": 300, "next": "login in 0.0s"})


def test_a_failure_without_upstream_detail_says_tokend_s_own_remediation() -> None:
    p = logged_in(now=0.0, lifetime=1000.0)

    [log] = logs(p.on_failure(700.0, "refresh", transient()))

    assert log.fields["errorCode"] == "UPSTREAM_UNAVAILABLE"
    assert log.fields["message"] == "upstream unavailable"
    assert log.fields["remediationMessage"] == remediation(transient())
    assert "referenceToken" not in log.fields  # nothing the upstream did not say
    assert log.fields["next"] == "refresh in 0.5s"  # the first retry: FIRST_RETRY * rand


def test_a_failure_without_a_token_reports_zero_seconds_of_validity() -> None:
    p = policy()
    p.observe_secret("secret-1")

    [log] = logs(p.on_failure(5.0, "login", transient()))

    assert log.fields["token_valid_for"] == 0 and log.fields["consecutive_failures"] == 1
    assert log.fields["operation"] == "login"


def test_a_rejected_login_logs_login_rejected_with_the_count_and_when_logins_stop() -> None:
    p = policy(max_login_failures=2, login_retry_interval=60.0)
    p.observe_secret("secret-1")

    [first] = logs(p.on_failure(0.0, "login", rejected()))
    [second] = logs(p.on_failure(60.0, "login", rejected()))

    assert first.level == "error" and first.event == "login.rejected"
    assert (first.fields["rejections"], first.fields["max_login_failures"]) == (1, 2)
    assert first.fields["next"] == "login in 60.0s"
    assert first.fields["remediationMessage"] == remediation(rejected())
    assert (second.fields["rejections"], second.fields["consecutive_failures"]) == (2, 2)
    assert second.fields["next"] == "no more logins until the secret changes or SIGHUP"


@pytest.mark.parametrize(("error", "text"), [
    (CredentialsRejected("x"), "Check the username and secret of this target; tokend logs in again"
                               " when the secret changes or on SIGHUP"),
    (RefreshTokenGone("x"), "None needed: tokend logs in again"),
    (TransientError("x"), "tokend retries with backoff; check that the SDDC Manager is reachable"
                          " and healthy"),
    (InvalidResponse("x"), "tokend retries with backoff; check that the SDDC Manager is reachable"
                           " and healthy"),
])
def test_remediation_by_kind_of_failure(error: UpstreamError, text: str) -> None:
    assert remediation(error) == text


# -- secrets, crashes, restored rejections, consumers ------------------------------------------------


def locked(max_login_failures: int = 1) -> RefreshPolicy:
    p = policy(max_login_failures=max_login_failures, login_retry_interval=10.0)
    p.observe_secret("secret-1")
    for i in range(max_login_failures):
        p.on_failure(10.0 * i, "login", rejected())
    assert p.locked_out
    return p


def test_a_new_secret_after_a_lockout_logs_that_logins_resume() -> None:
    p = locked()

    assert logs(p.on_secret(100.0, "secret-1", for_login=False)) == []  # the same secret
    assert logs(p.on_secret(101.0, "secret-2", for_login=False)) == [
        Log("info", "secret.changed", {"action": "logins resume"})]
    assert not p.locked_out and p.secret_digest == "secret-2"
    assert logs(p.on_secret(102.0, "secret-3", for_login=False)) == []  # was not locked


def test_each_crash_counts_as_one_more_failure() -> None:
    p = logged_in(now=0.0, lifetime=1000.0)
    error = UpstreamError("tokend crashed")

    p.on_crash(700.0, error)
    p.on_crash(701.0, error)

    assert p.failures == 2
    assert p.last_failure is not None and p.last_failure.error is error


def test_restored_rejections_keep_the_higher_count_and_the_later_attempt() -> None:
    p = policy(max_login_failures=5, login_retry_interval=60.0)
    p.observe_secret("secret-1")
    p.on_failure(100.0, "login", rejected())
    p.on_failure(200.0, "login", rejected())

    p.restore(300.0, rejections=1, last_attempt=50.0)  # an older, smaller record

    assert p.rejections() == 2
    assert p.next_action(300.0).at == 260.0  # still spaced from the later attempt
    p.restore(300.0, rejections=4, last_attempt=250.0)
    assert p.rejections() == 4 and p.next_action(300.0).at == 310.0


def test_restoring_a_full_record_stops_logins_and_counts_as_attempted() -> None:
    p = policy(max_login_failures=3)
    p.observe_secret("secret-1")
    assert not p.attempted

    p.restore(0.0, rejections=3, last_attempt=-10.0)

    assert p.locked_out and p.attempted
    assert p.next_action(0.0).kind == "idle"
    assert p.state(0.0) == "credentials_rejected"


def test_a_consumer_refresh_is_logged_with_its_reason_when_it_goes_out() -> None:
    p = logged_in(now=0.0, lifetime=1000.0)

    due = p.consumer_refresh(100.0)
    effects = poll_to_call(p, 100.0)

    assert due == 100.0
    assert Log("info", "token.refresh_requested", {"reason": "consumer"}) in effects


def test_a_deferred_consumer_refresh_is_logged_with_the_reason_it_was_given() -> None:
    p = logged_in(now=0.0, lifetime=1000.0)

    due = p.consumer_refresh(1.0, reason="invalidate")
    effects = p.poll(1.0)

    assert due is not None and due > 1.0
    [deferred] = [e for e in logs(effects) if e.event == "token.refresh_deferred"]
    assert deferred.fields == {"reason": "invalidate", "in": round(due - 1.0, 3)}


def test_no_consumer_refresh_while_failures_back_off_or_when_locked_out_without_refresh_token() -> None:
    p = logged_in(now=0.0, lifetime=1000.0)
    p.on_failure(700.0, "refresh", transient())
    assert p.consumer_refresh(701.0) is None

    q = logged_in(now=0.0, lifetime=1000.0, max_login_failures=1)
    q.on_failure(700.0, "refresh", gone())
    q.on_failure(700.0, "login", rejected())
    assert q.locked_out and not q.has_refresh_token
    q.failures = 0  # a later success would reset it; only the lockout is left to refuse
    assert q.consumer_refresh(701.0) is None

    r = logged_in(now=0.0, lifetime=1000.0, max_login_failures=1)
    r.observe_secret("secret-2")
    r.on_failure(1.0, "login", rejected())
    r.failures = 0
    assert r.locked_out and r.has_refresh_token
    assert r.consumer_refresh(702.0) is not None  # a refresh needs no login


# -- second round: what the first mutation run still let through -----------------------------------


def test_the_first_token_changes_the_state_from_starting_to_valid() -> None:
    p = policy()
    p.observe_secret("secret-1")

    effects = p.on_token(0.0, held(0.0, 100.0), "login", "rid-1")

    assert [e for e in effects if isinstance(e, StateChanged)] == [StateChanged("starting", "valid")]


def test_a_login_call_carries_no_refresh_id_and_a_refresh_call_carries_the_held_one() -> None:
    p = logged_in(now=0.0, lifetime=100.0)
    p.on_failure(70.0, "refresh", transient())
    p.on_failure(71.0, "refresh", transient())
    p.on_failure(73.0, "refresh", transient())  # three in a row: the next call is a login

    [login] = [e for e in poll_to_call(p, 80.0) if isinstance(e, Call)]
    assert login == Call("login", None)
    p.on_token(80.0, held(80.0, 100.0), "login", "rid-2")
    [refresh] = [e for e in poll_to_call(p, 160.0) if isinstance(e, Call)]
    assert refresh == Call("refresh", "rid-2")


def refuse_eight_login_answers(message: str, status: int | None) -> tuple[list[list[object]], float]:
    """Eight logins in a row, each answered with an ``InvalidResponse`` that carries a refresh id,
    each retried when due. Returns each failure's effects and the wait before the last retry."""
    p = policy(max_backoff=300.0, rand=lambda: 0.99)
    p.observe_secret("secret-1")
    now = 0.0
    batches: list[list[object]] = []
    for _ in range(8):
        batches.append(list(p.on_failure(now, "login", InvalidResponse(
            message, status=status, issued_refresh_id="rid-orphan"))))
        gap = p.next_action(now).at - now
        now += gap
    return batches, gap


@pytest.mark.parametrize("status", [300, 302, 308, 399])
def test_a_redirected_login_is_backed_off_like_any_failure_and_revokes_nothing(status: int) -> None:
    batches, gap = refuse_eight_login_answers("redirect not followed", status)

    for effects in batches:
        assert not [e for e in effects if isinstance(e, Revoke)]
    assert gap <= 30.0  # without a token, backoff is capped at 30 s


@pytest.mark.parametrize("status", [200, 201, None])
def test_a_refused_answer_to_an_accepted_login_is_revoked_and_backed_off_long(status: int | None) -> None:
    batches, gap = refuse_eight_login_answers("expired at issue", status)

    for effects in batches:
        assert Revoke("rid-orphan") in effects
    assert gap > 30.0  # past the no-token cap: a bad server is not asked every 30 s


def test_a_retry_after_under_a_second_is_still_honoured() -> None:
    p = logged_in(now=0.0, lifetime=3600.0, rand=lambda: 0.0)

    p.on_failure(2520.0, "refresh", transient(retry_after=0.9))

    assert p.next_action(2520.0).at == pytest.approx(2520.9)


def test_three_crashes_during_refreshes_fall_back_to_a_login() -> None:
    p = logged_in(now=0.0, lifetime=3600.0)
    for at in (2520.0, 2530.0, 2560.0):
        p.in_flight = "refresh"
        p.on_crash(at, UpstreamError("tokend crashed"))

    assert p.transient_refresh_failures == 3
    assert p.next_action(2600.0).kind == "login"


def test_a_consumer_refresh_due_at_once_is_not_logged_as_deferred_and_a_deferred_one_says_consumer() -> None:
    p = logged_in(now=0.0, lifetime=3600.0)

    assert p.consumer_refresh(100.0) == 100.0
    assert not [e for e in logs(p.poll(100.0)) if e.event == "token.refresh_deferred"]

    q = logged_in(now=0.0, lifetime=3600.0)
    assert q.consumer_refresh(2.0) == 5.0  # within the quiet time after the new token
    [deferred] = [e for e in logs(q.poll(2.0)) if e.event == "token.refresh_deferred"]
    assert deferred.fields == {"reason": "consumer", "in": 3.0}


def test_a_token_refused_exactly_at_the_end_of_its_quiet_time_is_not_brand_new() -> None:
    p = logged_in(now=0.0, lifetime=3600.0)
    token = p.valid_token(0.0)
    assert token is not None

    due = p.consumer_refresh(5.0, token.fingerprint, refused=True)  # 5 s: quiet time over

    assert due == 5.0 and p.reports.refused_new_tokens == 0


def test_consumers_refusing_brand_new_tokens_log_why_their_reports_stop() -> None:
    p = logged_in(now=0.0, lifetime=3600.0)
    now, _ = refuse_three_brand_new_tokens(p)

    effects = p.poll(now)

    assert StateChanged("valid", "degraded") in effects
    assert Log("warning", "token.rejected_by_consumers", {
        "reason": "consumers reported 3 brand-new tokens in a row refused: the upstream issues"
                  " tokens it does not accept; reports no longer refresh until the next"
                  " scheduled refresh or SIGHUP"}) in effects


def test_an_expired_token_is_withdrawn_by_name() -> None:
    p = logged_in(now=0.0, lifetime=100.0)
    token = p.valid_token(0.0)

    assert Withdraw(token) in p.expire(100.0)  # type: ignore[arg-type]


def test_a_token_expired_when_issued_is_refused_saying_so() -> None:
    with pytest.raises(InvalidResponse) as caught:
        tracked_lifetime(Claims(exp=WALL - 10, iat=WALL - 3610), sent_wall=WALL, server_date=WALL)

    assert caught.value.message == "the access token is already expired when issued"


# -- third round ---------------------------------------------------------------------------------


def test_the_state_is_refreshing_while_a_refresh_call_is_out() -> None:
    p = logged_in(now=0.0, lifetime=100.0)

    [call] = [e for e in poll_to_call(p, 70.0) if isinstance(e, Call)]

    assert call.operation == "refresh"
    assert p.state(70.5) == "refreshing"
    assert p.state(70.5, in_flight=False) == "valid"


def test_only_a_refresh_a_consumer_asked_for_is_logged_as_requested() -> None:
    p = logged_in(now=0.0, lifetime=100.0)
    assert not [e for e in logs(poll_to_call(p, 70.0)) if e.event == "token.refresh_requested"]

    q = logged_in(now=0.0, lifetime=1000.0)
    assert q.consumer_refresh(100.0) == 100.0
    assert [e for e in logs(poll_to_call(q, 100.0)) if e.event == "token.refresh_requested"]
    q.on_failure(100.0, "refresh", transient())
    retry = q.next_action(100.0).at
    assert not [e for e in logs(poll_to_call(q, retry)) if e.event == "token.refresh_requested"]


def test_the_scheduled_refresh_after_the_consumers_verdict_is_not_logged_as_requested() -> None:
    p = logged_in(now=0.0, lifetime=3600.0)
    _, token = refuse_three_brand_new_tokens(p)
    scheduled = p.next_action(token.obtained_at).at

    effects = poll_to_call(p, scheduled)

    assert Call("refresh", "rid-1") in effects
    assert not [e for e in logs(effects) if e.event == "token.refresh_requested"]


def test_reports_joining_a_deferred_refresh_log_it_once() -> None:
    p = logged_in(now=0.0, lifetime=3600.0)
    assert p.consumer_refresh(1.0) == 5.0
    assert p.consumer_refresh(2.0, refused=True) == 5.0

    [deferred] = [e for e in logs(p.poll(2.0)) if e.event == "token.refresh_deferred"]

    assert deferred.fields == {"reason": "consumer", "in": 4.0}


def test_log_durations_are_rounded_to_a_tenth_and_a_millisecond() -> None:
    p = logged_in(now=0.0, lifetime=100.0, rand=lambda: 0.123)
    token = held(obtained_at=0.0, lifetime=100.0)

    [log] = logs(p.on_token(0.0, token, "refresh"))
    assert log.fields["next_refresh_in"] == 66.2  # 100 * (0.7 + 0.05 * (2 * 0.123 - 1)) = 66.23

    p.consumer_refresh(1.23456)
    [deferred] = [e for e in logs(p.poll(1.23456)) if e.event == "token.refresh_deferred"]
    assert deferred.fields["in"] == 3.765


def test_the_next_call_is_due_in_zero_seconds_when_it_is_due_now() -> None:
    p = logged_in(now=0.0, lifetime=100.0)
    p.on_failure(70.0, "refresh", gone())

    assert p.next_call_in(70.0) == 0.0
    assert p.next_call_in(75.0) == 0.0  # overdue is due now, never negative


def test_a_token_records_when_it_arrived() -> None:
    p = logged_in(now=0.0, lifetime=100.0)
    p.on_token(70.25, held(70.0, 100.0), "refresh")

    assert p.last_token_at == 70.25


def test_restoring_no_rejections_adds_none_and_a_full_record_reports_the_state_change() -> None:
    p = policy(max_login_failures=1)
    p.observe_secret("secret-1")
    p.restore(0.0, rejections=0, last_attempt=-100.0)
    assert p.rejections() == 0 and not p.locked_out

    q = policy(max_login_failures=2)
    q.observe_secret("secret-1")
    q.on_token(0.0, held(0.0, 100.0), "login", None)  # a token, and no refresh id
    effects = q.restore(1.0, rejections=2, last_attempt=-5.0)
    assert StateChanged("valid", "credentials_rejected") in effects


# -- admit: the checks an issued token passes before it is served ---------------------------------


def test_admit_builds_the_served_token_from_the_claims_and_the_request() -> None:
    # No iat: the lifetime comes from the server's Date (exp - date - 1 s) and the wall clock
    # of the request (obtained_wall), both passed through.
    claims = Claims(exp=WALL + 3600, iat=None)

    admitted = admit("sfo-vcf01", TOKEN, fingerprint(TOKEN), claims, sent_mono=50.0,
                     sent_wall=WALL + 0.5, server_date=WALL + 600, max_lifetime=7200.0)

    token = admitted.token
    assert admitted.claimed_lifetime is None
    assert (token.obtained_at, token.expires_at) == (50.0, 50.0 + 2999.0)
    assert token.obtained_wall == WALL + 0.5 and token.upstream_exp == WALL + 3600
    assert json.loads(token.json(50.0))["target"] == "sfo-vcf01"
    assert json.loads(token.json(50.0))["upstreamExp"] == WALL + 3600


def test_admit_caps_a_lifetime_only_when_it_exceeds_the_cap() -> None:
    claims = Claims(exp=WALL + 3601, iat=WALL)  # 3600 s once the whole second is taken off

    at_cap = admit("t", TOKEN, fingerprint(TOKEN), claims, 0.0, WALL, None, max_lifetime=3600.0)
    over = admit("t", TOKEN, fingerprint(TOKEN), claims, 0.0, WALL, None, max_lifetime=3599.0)

    assert at_cap.claimed_lifetime is None and at_cap.token.lifetime == 3600.0
    assert over.claimed_lifetime == 3600.0 and over.token.lifetime == 3599.0


def test_admit_refuses_a_token_whose_expiry_cannot_be_rendered() -> None:
    claims = Claims(exp=WALL + 10**12, iat=WALL)  # an expiry past the year 9999

    with pytest.raises(InvalidResponse) as caught:
        admit("t", TOKEN, fingerprint(TOKEN), claims, 0.0, WALL, None, max_lifetime=10.0**13)

    assert caught.value.message == "the access token cannot be served (ValueError)"


def test_admit_without_iat_or_date_times_the_token_by_the_local_wall_clock_of_the_request() -> None:
    claims = Claims(exp=WALL + 3600, iat=None)

    admitted = admit("t", TOKEN, fingerprint(TOKEN), claims, sent_mono=0.0, sent_wall=WALL + 100,
                     server_date=None, max_lifetime=7200.0)

    assert admitted.token.lifetime == 3600 - 100 - 60  # less a minute for the local clock
