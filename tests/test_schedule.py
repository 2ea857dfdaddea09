"""The refresh policy, driven by hand: plain floats for the clock, an injected random source.

No test sleeps or opens a socket; every instant below is a number on the keeper's monotonic clock
(or, for claims and ``Date``, on a wall clock) chosen by the test.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import fields
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from tokend.config import PolicyConfig, TargetConfig
from tokend.effects import Call, Log, Sleep
from tokend.errors import (
    CredentialsRejected,
    InvalidResponse,
    RefreshTokenGone,
    TransientError,
    UpstreamError,
)
from tokend.held import HeldToken, tracked_lifetime
from tokend.jwtinfo import Claims, fingerprint
from tokend.names import STATES
from tokend.reports import CONSUMER_MIN_INTERVAL, CONSUMER_QUIET_AFTER_NEW_TOKEN
from tokend.schedule import (
    FIRST_RETRY,
    MIN_REFRESH_INTERVAL,
    NO_TOKEN_BACKOFF_CAP,
    TRANSIENT_REFRESHES_BEFORE_LOGIN,
    Action,
    RefreshPolicy,
)
from tokend.secrets import Secret, SecretSource

WALL = 1_795_845_600  # a whole second on the wall clock, for claims and Date headers
ALMOST_ONE = math.nextafter(1.0, 0.0)  # the largest value random.random() can return
UNIT = st.floats(0, 1, exclude_max=True)


def low() -> float:
    return 0.0


def high() -> float:
    return ALMOST_ONE


def half() -> float:
    return 0.5


def held(obtained_at: float = 0.0, lifetime: float = 3600.0, token: str = "eyJ.token") -> HeldToken:
    return HeldToken(
        access_token=token,
        fingerprint=fingerprint(token),
        upstream_exp=WALL + int(lifetime),
        obtained_at=obtained_at,
        expires_at=obtained_at + lifetime,
        obtained_wall=WALL + obtained_at,
    )


def policy(rand: Callable[[], float] = half, **settings: Any) -> RefreshPolicy:
    return RefreshPolicy(PolicyConfig(**settings), rand=rand)


def logged_in(rand: Callable[[], float] = half, now: float = 0.0, lifetime: float = 3600.0,
              **settings: Any) -> RefreshPolicy:
    """A policy that has just logged in successfully at ``now``."""
    p = policy(rand, **settings)
    p.observe_secret("secret-1")
    p.on_token(now, held(now, lifetime), "login", "rid-1")
    return p


def locked_out_policy(rand: Callable[[], float] = half) -> RefreshPolicy:
    """A policy whose secret ``digest-a`` was rejected at 0, 60 and 120 s: no more logins."""
    p = policy(rand)
    p.observe_secret("digest-a")
    for i in range(3):
        p.on_failure(60.0 * i, "login", rejected())
    return p


def transient(retry_after: float | None = None) -> TransientError:
    return TransientError("upstream unavailable", status=503, retry_after=retry_after)


def rejected() -> CredentialsRejected:
    return CredentialsRejected("wrong password", status=401)


def gone() -> RefreshTokenGone:
    return RefreshTokenGone("refresh token expired", status=404)


# == expiry tracking (SPEC §5.1) ================================================================


def test_lifetime_is_exp_minus_iat_less_a_second_for_whole_second_claims() -> None:
    claims = Claims(exp=WALL + 3600, iat=WALL)

    assert tracked_lifetime(claims, sent_wall=WALL, server_date=None) == 3599.0


def test_integral_float_claims_count_as_whole_seconds() -> None:
    claims = Claims(exp=float(WALL + 3600), iat=float(WALL))

    assert tracked_lifetime(claims, sent_wall=WALL, server_date=None) == 3599.0


def test_fractional_claims_give_exp_minus_iat_without_the_second() -> None:
    claims = Claims(exp=WALL + 3600.25, iat=WALL + 0.25)

    assert tracked_lifetime(claims, sent_wall=WALL, server_date=None) == 3600.0


def test_a_whole_second_iat_costs_a_second_even_when_exp_has_a_fraction() -> None:
    # Issued at WALL + 0.9 (as the request was sent), iat truncated, exp from the untruncated
    # instant: 3600 s remain from the send, but exp − iat says 3600.9.
    claims = Claims(exp=WALL + 0.9 + 3600, iat=WALL)

    span = tracked_lifetime(claims, sent_wall=WALL + 0.9, server_date=None)

    assert span <= 3600.0
    assert span == pytest.approx(3599.9)


def test_a_fractional_iat_with_a_truncated_exp_is_not_shortened_further() -> None:
    claims = Claims(exp=WALL + 3600, iat=WALL + 0.5)

    assert tracked_lifetime(claims, sent_wall=WALL, server_date=None) == 3599.5


def test_without_iat_lifetime_is_exp_minus_date_less_a_second() -> None:
    claims = Claims(exp=WALL + 3600, iat=None)

    assert tracked_lifetime(claims, sent_wall=WALL + 12345, server_date=WALL) == 3599.0


def test_without_iat_or_date_lifetime_is_exp_less_a_minute_on_the_local_clock() -> None:
    claims = Claims(exp=WALL + 3600, iat=None)

    assert tracked_lifetime(claims, sent_wall=WALL + 100, server_date=None) == 3600 - 60 - 100


@pytest.mark.parametrize("skew", [-600.0, -599.5, -1.0, 0.0, 0.4, 1.0, 599.5, 600.0])
@pytest.mark.parametrize("with_date", [False, True])
def test_server_clock_skew_does_not_change_the_span_when_iat_is_present(
    skew: float, with_date: bool,
) -> None:
    sent_wall = WALL + 0.3  # local wall clock when the request went out
    server_now = math.floor(sent_wall + skew)  # the server's whole-second view of that instant
    claims = Claims(exp=server_now + 3600, iat=server_now)

    span = tracked_lifetime(claims, sent_wall, server_now if with_date else None)

    assert span == 3599.0


@pytest.mark.parametrize("sent_wall", [WALL - 86_400.0, WALL, WALL + 86_400.0])
def test_the_local_wall_clock_is_ignored_when_the_server_dates_the_token(sent_wall: float) -> None:
    claims = Claims(exp=WALL + 3600, iat=WALL)

    assert tracked_lifetime(claims, sent_wall, WALL) == 3599.0


def test_min_of_both_bounds_when_the_date_is_later_than_iat() -> None:
    # The upstream handed out a token issued 1000 s before the response: only 2600 s remain.
    claims = Claims(exp=WALL + 3600, iat=WALL)

    assert tracked_lifetime(claims, sent_wall=WALL, server_date=WALL + 1000) == 2599.0


def test_min_of_both_bounds_when_iat_is_the_tighter_one() -> None:
    claims = Claims(exp=WALL + 3600, iat=WALL)

    assert tracked_lifetime(claims, sent_wall=WALL, server_date=WALL - 5) == 3599.0


@pytest.mark.parametrize(("claims", "server_date"), [
    (Claims(exp=WALL, iat=WALL), None),
    (Claims(exp=WALL - 10, iat=WALL), None),
    (Claims(exp=WALL + 1, iat=WALL), None),  # a second of life is used up by truncation
    (Claims(exp=WALL + 0.5, iat=WALL + 0.5), None),
    (Claims(exp=WALL + 3600, iat=WALL), WALL + 3600),  # old iat, but expired by the server's Date
    (Claims(exp=WALL + 3600, iat=WALL), WALL + 7200),
    (Claims(exp=WALL, iat=None), WALL),
    (Claims(exp=WALL, iat=None), WALL + 60),
])
def test_a_token_already_expired_at_issue_is_an_invalid_response(
    claims: Claims, server_date: float | None,
) -> None:
    with pytest.raises(InvalidResponse, match="expired"):
        tracked_lifetime(claims, sent_wall=WALL, server_date=server_date)


def test_without_dates_a_token_expiring_within_a_minute_of_the_local_clock_is_refused() -> None:
    with pytest.raises(InvalidResponse):
        tracked_lifetime(Claims(exp=WALL + 60, iat=None), sent_wall=WALL, server_date=None)


@given(
    sent=st.floats(0, 10**6),
    issue_delay=st.floats(0, 30),
    response_delay=st.floats(0, 30),
    skew=st.floats(-600, 600),
    ttl=st.integers(2, 86_400),
    with_date=st.booleans(),
)
def test_truncated_claims_never_outlive_the_real_expiry_and_err_early_by_little(
    sent: float, issue_delay: float, response_delay: float, skew: float, ttl: int,
    with_date: bool,
) -> None:
    # Local clock: the request is sent at `sent`, the token issued at T, the response dated at R.
    issue = sent + issue_delay
    response = issue + response_delay
    server_issue = WALL + issue + skew  # the server clock, off by `skew`
    iat = math.floor(server_issue)
    exp = iat + ttl
    server_date = math.floor(WALL + response + skew) if with_date else None
    real_expiry = issue + (exp - server_issue)  # local instant the server stops accepting it
    assume(exp - (server_date if server_date is not None else iat) > 1)

    served_until = sent + tracked_lifetime(Claims(exp=exp, iat=iat), WALL + sent, server_date)

    assert served_until <= real_expiry + 1e-6
    last_instant_known = response if with_date else issue
    assert real_expiry - served_until <= 1 + (last_instant_known - sent) + 1e-6


@given(sent=st.floats(0, 10**6), issue_delay=st.floats(0, 30), skew=st.floats(-600, 600),
       ttl=st.floats(0.5, 86_400))
def test_fractional_claims_are_served_until_the_real_expiry_less_the_request_time(
    sent: float, issue_delay: float, skew: float, ttl: float,
) -> None:
    issue = sent + issue_delay
    iat = WALL + issue + skew
    exp = iat + ttl
    assume(exp - iat > 0 and iat != math.floor(iat))
    real_expiry = issue + (exp - iat)

    served_until = sent + tracked_lifetime(Claims(exp=exp, iat=iat), WALL + sent, None)

    assert served_until <= real_expiry + 1e-6
    assert real_expiry - served_until <= issue_delay + 1e-6


@given(sent=st.floats(0, 10**6), issue_delay=st.floats(0, 30), ttl=st.integers(2, 86_400),
       fraction=st.floats(0, 1, exclude_max=True))
def test_a_truncated_iat_with_a_fractional_exp_never_outlives_the_real_expiry(
    sent: float, issue_delay: float, ttl: int, fraction: float,
) -> None:
    issue = sent + issue_delay
    server_issue = WALL + math.floor(issue) + fraction
    claims = Claims(exp=server_issue + ttl, iat=math.floor(server_issue))
    assume(claims.exp != math.floor(claims.exp))

    served_until = sent + tracked_lifetime(claims, WALL + sent, None)

    assert served_until <= issue + ttl + 1e-6


# == the held token =============================================================================


def test_a_token_is_valid_until_just_before_it_expires() -> None:
    token = held(obtained_at=100.0, lifetime=50.0)

    assert token.valid(100.0)
    assert token.valid(149.999)
    assert not token.valid(150.0)
    assert not token.valid(150.001)
    assert not token.valid(1e9)


def test_remaining_counts_down_to_zero_at_expiry_and_below_after() -> None:
    token = held(obtained_at=100.0, lifetime=50.0)

    assert token.remaining(100.0) == 50.0
    assert token.remaining(140.0) == 10.0
    assert token.remaining(150.0) == 0.0
    assert token.remaining(160.0) == -10.0
    assert token.lifetime == 50.0


@given(obtained=st.floats(-1e6, 1e6), lifetime=st.floats(1e-3, 1e6), offset=st.floats(-1e7, 1e7))
def test_a_token_is_never_valid_at_or_after_its_expiry(
    obtained: float, lifetime: float, offset: float,
) -> None:
    token = held(obtained, lifetime)
    now = token.expires_at + offset

    assert token.valid(now) == (now < token.expires_at)
    if token.valid(now):
        assert token.remaining(now) > 0


def test_a_held_token_repr_shows_the_fingerprint_not_the_token() -> None:
    token = held(token="eyJhbGciOiJIUzI1NiJ9.secret-claims.signature")

    assert "secret-claims" not in repr(token)
    assert token.fingerprint in repr(token)


# == refresh ahead with jitter (SPEC §5.2) ======================================================


def test_refresh_is_scheduled_at_refresh_at_of_the_tracked_lifetime() -> None:
    p = logged_in(half, now=100.0, lifetime=1000.0, refresh_at=0.7, jitter=0.05)

    assert p.next_action(100.0) == Action("refresh", 100.0 + 700.0)


def test_lowest_random_draw_refreshes_at_refresh_at_minus_jitter() -> None:
    p = logged_in(low, now=100.0, lifetime=1000.0, refresh_at=0.7, jitter=0.05)

    assert p.next_action(100.0).at == pytest.approx(100.0 + 1000.0 * 0.65)


def test_highest_random_draw_refreshes_just_under_refresh_at_plus_jitter() -> None:
    p = logged_in(high, now=100.0, lifetime=1000.0, refresh_at=0.7, jitter=0.05)

    at = p.next_action(100.0).at
    assert at == pytest.approx(100.0 + 1000.0 * 0.75)
    assert at <= 100.0 + 1000.0 * 0.75


def test_the_refresh_is_timed_from_when_the_request_was_sent_not_when_it_returned() -> None:
    p = policy(half)
    p.on_token(112.0, held(obtained_at=100.0, lifetime=1000.0), "login", "rid-1")

    assert p.next_action(112.0).at == pytest.approx(800.0)


def test_a_successful_refresh_schedules_the_next_refresh_on_the_new_token() -> None:
    p = logged_in(half, now=0.0, lifetime=1000.0)
    p.on_token(700.0, held(obtained_at=700.0, lifetime=1000.0), "refresh")

    assert p.next_action(700.0) == Action("refresh", 700.0 + 700.0)


def test_without_jitter_every_refresh_lands_exactly_at_refresh_at() -> None:
    rand = random.Random(1).random
    for start in (0.0, 5.0, 1e6):
        p = logged_in(rand, now=start, lifetime=600.0, refresh_at=0.5, jitter=0.0)
        assert p.next_action(start).at == start + 300.0


def test_seeded_jitter_spreads_refreshes_on_both_sides_of_refresh_at() -> None:
    rand = random.Random(1).random
    offsets = []
    for _ in range(200):
        p = logged_in(rand, now=0.0, lifetime=1000.0, refresh_at=0.7, jitter=0.05)
        offsets.append(p.next_action(0.0).at - 700.0)

    assert all(-50.0 <= o < 50.0 for o in offsets)
    assert min(offsets) < -25.0
    assert max(offsets) > 25.0


@given(
    r=UNIT,
    refresh_at=st.floats(0.05, 0.95),
    jitter_share=st.floats(0, 0.99),  # refresh_at + jitter reaching 1 is refused by the config
    obtained=st.floats(0, 1e6),
    lifetime=st.floats(1, 1e6),
)
def test_the_refresh_always_lies_within_the_jitter_band_and_before_expiry(
    r: float, refresh_at: float, jitter_share: float, obtained: float, lifetime: float,
) -> None:
    # Any jitter that keeps refresh_at ± jitter inside (0, 1).
    jitter = jitter_share * min(refresh_at, 1 - refresh_at)
    assume(lifetime * (refresh_at - jitter) >= MIN_REFRESH_INTERVAL)  # shorter: the next test
    p = policy(lambda: r, refresh_at=refresh_at, jitter=jitter)
    token = held(obtained, lifetime)
    p.on_token(obtained, token, "login", "rid-1")

    at = p.next_action(obtained).at

    slack = 1e-9 * (obtained + lifetime)
    assert obtained + lifetime * (refresh_at - jitter) - slack <= at
    assert at <= obtained + lifetime * (refresh_at + jitter) + slack
    assert at < token.expires_at


@given(lifetime=st.floats(0.01, 1.4), refresh_at=st.floats(0.05, 0.7))
def test_a_short_lifetime_never_refreshes_more_often_than_once_a_second(
    lifetime: float, refresh_at: float,
) -> None:
    p = policy(low, refresh_at=refresh_at, jitter=0.0)
    p.on_token(10.0, held(10.0, lifetime), "login", "rid-1")

    assert p.next_action(10.0).at == max(10.0 + lifetime * refresh_at, 10.0 + MIN_REFRESH_INTERVAL)


# == backoff (SPEC §5.4) ========================================================================


@pytest.mark.parametrize("rand", [low, half, high])
def test_the_first_retry_comes_within_a_second(rand: Callable[[], float]) -> None:
    p = logged_in(rand, now=0.0, lifetime=3600.0)
    p.on_failure(2520.0, "refresh", transient())

    at = p.next_action(2520.0).at
    assert 2520.0 <= at <= 2520.0 + FIRST_RETRY


@pytest.mark.parametrize("rand", [low, half, high])
def test_the_first_login_retry_without_a_token_comes_within_a_second(
    rand: Callable[[], float],
) -> None:
    p = policy(rand)
    p.on_failure(10.0, "login", transient())

    assert p.next_action(10.0).kind == "login"
    assert 10.0 <= p.next_action(10.0).at <= 11.0


def test_backoff_doubles_with_each_failure_up_to_the_cap() -> None:
    p = policy(high, max_backoff=300.0)
    delays = []
    for _ in range(8):
        p.on_failure(1000.0, "login", transient())
        delays.append(p.next_action(1000.0).at - 1000.0)

    expected = [1, 2, 4, 8, 16, NO_TOKEN_BACKOFF_CAP, NO_TOKEN_BACKOFF_CAP, NO_TOKEN_BACKOFF_CAP]
    assert delays == pytest.approx([e * ALMOST_ONE for e in expected])


def test_backoff_with_a_long_lived_token_doubles_to_max_backoff() -> None:
    p = logged_in(high, now=0.0, lifetime=1e7, max_backoff=300.0)
    delays = []
    for failures in range(1, 12):
        p.failures = failures
        delays.append(p.backoff(100.0))

    assert delays == pytest.approx(
        [ALMOST_ONE * d for d in (1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300)])


def test_backoff_is_full_jitter_from_zero() -> None:
    p = logged_in(low, now=0.0, lifetime=1e7)
    p.failures = 8

    assert p.backoff(100.0) == 0.0


def test_backoff_never_exceeds_max_backoff() -> None:
    p = logged_in(high, now=0.0, lifetime=1e7, max_backoff=5.0)
    p.failures = 30

    assert p.backoff(100.0) == pytest.approx(5.0)


def test_backoff_never_exceeds_a_tenth_of_the_remaining_life() -> None:
    p = logged_in(high, now=0.0, lifetime=1000.0, max_backoff=300.0)
    p.failures = 30

    assert p.backoff(900.0) == pytest.approx(10.0)  # 100 s left
    assert p.backoff(990.0) == pytest.approx(1.0)  # 10 s left


def test_the_remaining_life_cap_has_a_floor_of_one_second() -> None:
    p = logged_in(high, now=0.0, lifetime=1000.0)
    p.failures = 30

    assert p.backoff(995.0) == pytest.approx(1.0)  # 5 s left
    assert p.backoff(999.9) == pytest.approx(1.0)


def test_backoff_is_capped_at_thirty_seconds_without_a_token() -> None:
    p = policy(high, max_backoff=300.0)
    p.failures = 30

    assert p.backoff(0.0) == pytest.approx(NO_TOKEN_BACKOFF_CAP)


def test_an_expired_token_counts_as_no_token_for_the_backoff_cap() -> None:
    p = logged_in(high, now=0.0, lifetime=100.0, max_backoff=300.0)
    p.failures = 30

    assert p.backoff(100.0) == pytest.approx(NO_TOKEN_BACKOFF_CAP)


def test_max_backoff_below_thirty_seconds_also_caps_the_no_token_backoff() -> None:
    p = policy(high, max_backoff=7.0)
    p.failures = 30

    assert p.backoff(0.0) == pytest.approx(7.0)


def test_retry_after_is_honoured_within_the_caps() -> None:
    p = logged_in(low, now=0.0, lifetime=3600.0)
    p.on_failure(1000.0, "refresh", transient(retry_after=20.0))

    assert p.next_action(1000.0) == Action("refresh", 1020.0)


def test_retry_after_never_shortens_the_backoff() -> None:
    p = logged_in(high, now=0.0, lifetime=1e7)
    p.failures = 6

    assert p.backoff(100.0, retry_after=0.5) == pytest.approx(32.0)


@pytest.mark.parametrize(("lifetime", "now", "max_backoff", "cap"), [
    (1000.0, 900.0, 300.0, 10.0),  # a tenth of 100 s left
    (1000.0, 998.0, 300.0, 1.0),  # the 1 s floor
    (100.0, 200.0, 300.0, 30.0),  # no valid token
    (1e7, 0.0, 45.0, 45.0),  # max_backoff
])
def test_retry_after_never_exceeds_the_caps(
    lifetime: float, now: float, max_backoff: float, cap: float,
) -> None:
    p = logged_in(low, now=0.0, lifetime=lifetime, max_backoff=max_backoff)
    p.failures = 1

    assert p.backoff(now, retry_after=3600.0) == pytest.approx(cap)


@pytest.mark.parametrize("retry_after", [0.0, -5.0, None])
def test_a_zero_or_negative_retry_after_is_ignored(retry_after: float | None) -> None:
    p = logged_in(low, now=0.0, lifetime=3600.0)
    p.failures = 3

    assert p.backoff(100.0, retry_after=retry_after) == 0.0


@pytest.mark.parametrize("failures", [0, 63, 64, 1024, 10**9, 10**100])
def test_huge_failure_counts_do_not_overflow(failures: int) -> None:
    p = logged_in(high, now=0.0, lifetime=1e7, max_backoff=300.0)
    p.failures = failures

    delay = p.backoff(100.0)

    assert math.isfinite(delay)
    assert 0.0 <= delay <= 300.0


@given(
    r=UNIT,
    failures=st.integers(0, 10**12),
    lifetime=st.none() | st.floats(0.001, 1e8),
    elapsed=st.floats(0, 1e8),
    max_backoff=st.floats(0.1, 1e5),
    retry_after=st.none() | st.floats(-1e9, 1e9),
)
def test_backoff_is_never_negative_and_never_above_its_caps(
    r: float, failures: int, lifetime: float | None, elapsed: float, max_backoff: float,
    retry_after: float | None,
) -> None:
    p = policy(lambda: r, max_backoff=max_backoff)
    if lifetime is not None:
        p.on_token(0.0, held(0.0, lifetime), "login", "rid-1")
    p.failures = failures

    delay = p.backoff(elapsed, retry_after)

    assert 0.0 <= delay <= max_backoff
    if lifetime is not None and elapsed < lifetime:
        assert delay <= max(FIRST_RETRY, (lifetime - elapsed) / 10)
    else:
        assert delay <= NO_TOKEN_BACKOFF_CAP
    if failures <= 1:
        assert delay <= FIRST_RETRY or (retry_after is not None and retry_after > 0)


@given(rand_seed=st.integers(0, 2**32), steps=st.integers(1, 40))
def test_retries_are_never_scheduled_in_the_past(rand_seed: int, steps: int) -> None:
    p = logged_in(random.Random(rand_seed).random, now=0.0, lifetime=60.0)
    now = 42.0
    for _ in range(steps):
        action = p.next_action(now)
        now = max(now, action.at)
        p.on_failure(now, action.kind if action.kind != "idle" else "login", transient())
        assert p.next_action(now).at >= now


# == refresh token first, login second (SPEC §5.3) ==============================================


def test_the_first_action_is_an_immediate_login() -> None:
    assert policy().next_action(0.0) == Action("login", 0.0)


@pytest.mark.parametrize("failures", range(1, TRANSIENT_REFRESHES_BEFORE_LOGIN))
def test_fewer_than_three_transient_refresh_failures_keep_refreshing(failures: int) -> None:
    p = logged_in(now=0.0, lifetime=3600.0)
    for i in range(failures):
        p.on_failure(2520.0 + i, "refresh", transient())

    assert p.next_action(2530.0).kind == "refresh"


def test_after_three_transient_refresh_failures_in_a_row_the_next_action_is_login() -> None:
    p = logged_in(now=0.0, lifetime=3600.0)
    for i in range(3):
        p.on_failure(2520.0 + i, "refresh", transient())

    assert p.next_action(2530.0).kind == "login"


def test_malformed_refresh_responses_count_as_transient_failures() -> None:
    p = logged_in(now=0.0, lifetime=3600.0)
    for i in range(3):
        p.on_failure(2520.0 + i, "refresh", InvalidResponse("not JSON"))

    assert p.next_action(2530.0).kind == "login"


def test_a_success_between_refresh_failures_starts_the_count_again() -> None:
    p = logged_in(now=0.0, lifetime=3600.0)
    p.on_failure(2520.0, "refresh", transient())
    p.on_failure(2521.0, "refresh", transient())
    p.on_token(2522.0, held(2522.0, 3600.0), "refresh")
    p.on_failure(5000.0, "refresh", transient())
    p.on_failure(5001.0, "refresh", transient())

    assert p.next_action(5002.0).kind == "refresh"


@pytest.mark.parametrize("outcome", ["success", "transient", "rejected"])
def test_after_that_login_refreshes_resume_while_a_refresh_token_is_held(outcome: str) -> None:
    p = logged_in(now=0.0, lifetime=3600.0)
    for i in range(3):
        p.on_failure(2520.0 + i, "refresh", transient())
    assert p.next_action(2530.0).kind == "login"

    if outcome == "success":
        p.on_token(2530.0, held(2530.0, 3600.0), "login", "rid-1")
    else:
        p.on_failure(2530.0, "login", transient() if outcome == "transient" else rejected())

    assert p.next_action(2530.0).kind == "refresh"


def test_after_a_failed_fallback_login_three_new_refresh_failures_are_needed_for_another() -> None:
    p = logged_in(now=0.0, lifetime=3600.0)
    for i in range(3):
        p.on_failure(2520.0 + i, "refresh", transient())
    p.on_failure(2530.0, "login", transient())
    p.on_failure(2531.0, "refresh", transient())
    p.on_failure(2532.0, "refresh", transient())

    assert p.next_action(2533.0).kind == "refresh"

    p.on_failure(2533.0, "refresh", transient())

    assert p.next_action(2534.0).kind == "login"


def test_refresh_token_gone_makes_the_next_action_an_immediate_login() -> None:
    p = logged_in(high, now=0.0, lifetime=3600.0)
    p.on_failure(2520.0, "refresh", transient())
    p.on_failure(2521.0, "refresh", gone())

    assert p.next_action(2521.0) == Action("login", 2521.0)


def test_after_refresh_token_gone_a_failed_login_is_retried_as_a_login() -> None:
    p = logged_in(now=0.0, lifetime=3600.0)
    p.on_failure(2520.0, "refresh", gone())
    p.on_failure(2520.0, "login", transient())

    assert p.next_action(2520.0).kind == "login"


def test_a_login_after_refresh_token_gone_gives_a_refresh_token_again() -> None:
    p = logged_in(now=0.0, lifetime=3600.0)
    p.on_failure(2520.0, "refresh", gone())
    p.on_token(2520.0, held(2520.0, 3600.0), "login", "rid-1")

    assert p.has_refresh_token
    assert p.next_action(2520.0).kind == "refresh"


def test_a_forgotten_refresh_token_means_the_next_call_is_a_login() -> None:
    p = logged_in(now=0.0, lifetime=3600.0)
    p.forget_refresh_token()

    assert p.next_action(10.0).kind == "login"


# == lockout guard (SPEC §5.5) ==================================================================


def test_credential_rejections_are_counted_against_the_secret_they_were_made_with() -> None:
    p = policy()
    p.observe_secret("digest-a")
    p.on_failure(0.0, "login", rejected())
    p.on_failure(60.0, "login", rejected())
    assert p.rejections() == 2

    p.observe_secret("digest-b")
    assert p.rejections() == 0
    p.on_failure(120.0, "login", rejected())
    assert p.rejections() == 1

    p.observe_secret("digest-a")
    assert p.rejections() == 2


def test_logins_after_a_rejection_are_spaced_by_login_retry_interval() -> None:
    p = policy(high, login_retry_interval=60.0)
    p.observe_secret("digest-a")
    p.on_failure(100.0, "login", rejected())

    assert p.next_action(100.0) == Action("login", 160.0)


def test_login_spacing_follows_the_configured_interval() -> None:
    p = policy(high, login_retry_interval=5.0)
    p.observe_secret("digest-a")
    p.on_failure(100.0, "login", rejected())

    assert p.next_action(100.0) == Action("login", 105.0)


def test_a_login_after_refresh_token_gone_is_still_spaced_after_a_rejection() -> None:
    p = logged_in(now=0.0, lifetime=3600.0, login_retry_interval=60.0)
    for i in range(3):
        p.on_failure(2520.0 + i, "refresh", transient())
    p.on_failure(2530.0, "login", rejected())
    p.on_failure(2535.0, "refresh", gone())

    assert p.next_action(2535.0) == Action("login", 2590.0)


@pytest.mark.parametrize("max_login_failures", [1, 3, 5])
def test_after_max_login_failures_rejections_of_one_secret_logins_stop(
    max_login_failures: int,
) -> None:
    p = policy(max_login_failures=max_login_failures)
    p.observe_secret("digest-a")
    now = 0.0
    for _ in range(max_login_failures - 1):
        p.on_failure(now, "login", rejected())
        action = p.next_action(now)
        assert action.kind == "login"
        now = action.at

    p.on_failure(now, "login", rejected())

    assert p.locked_out
    assert p.next_action(now) == Action("idle", math.inf)
    assert p.next_action(now + 1e9) == Action("idle", math.inf)
    assert p.state(now, in_flight=False) == "credentials_rejected"


def test_a_changed_secret_resumes_logins_with_a_new_count() -> None:
    p = locked_out_policy(high)
    assert p.next_action(120.0).kind == "idle"

    p.observe_secret("digest-b")

    assert not p.locked_out
    assert p.rejections() == 0
    action = p.next_action(130.0)
    assert action.kind == "login"
    assert action.at == 180.0  # still spaced from the last rejection
    assert p.state(130.0, in_flight=False) == "expired"


def test_observing_the_same_secret_again_keeps_the_lockout() -> None:
    p = locked_out_policy()

    p.observe_secret("digest-a")

    assert p.next_action(1000.0).kind == "idle"


def test_reset_lockout_resumes_logins_still_spaced() -> None:
    p = locked_out_policy(high)

    p.reset_lockout()

    assert p.rejections() == 0
    assert p.next_action(130.0) == Action("login", 180.0)
    assert p.state(130.0, in_flight=False) == "expired"


def test_a_successful_login_clears_the_rejection_count() -> None:
    p = policy(high)
    p.observe_secret("digest-a")
    p.on_failure(0.0, "login", rejected())
    p.on_failure(60.0, "login", rejected())
    p.on_token(120.0, held(120.0, 3600.0), "login", "rid-1")
    assert p.rejections() == 0

    p.forget_refresh_token()
    p.on_failure(200.0, "login", rejected())
    p.on_failure(260.0, "login", rejected())

    assert not p.locked_out
    assert p.next_action(260.0).kind == "login"


def test_a_successful_login_lifts_the_login_spacing() -> None:
    p = policy(high)
    p.observe_secret("digest-a")
    p.on_failure(0.0, "login", rejected())
    p.on_token(60.0, held(60.0, 3600.0), "login", "rid-1")
    p.on_failure(100.0, "refresh", gone())

    assert p.next_action(100.0) == Action("login", 100.0)


def test_transient_login_failures_do_not_count_as_rejections() -> None:
    p = policy(high)
    p.observe_secret("digest-a")
    now = 0.0
    for _ in range(20):
        p.on_failure(now, "login", transient())
        now = p.next_action(now).at

    assert p.rejections() == 0
    assert not p.locked_out
    assert p.next_action(now).kind == "login"
    assert p.state(now, in_flight=False) == "expired"


def test_other_upstream_errors_on_login_do_not_count_as_rejections() -> None:
    p = policy()
    p.observe_secret("digest-a")
    for i in range(5):
        p.on_failure(float(i), "login", UpstreamError("500", status=500))
        p.on_failure(float(i), "login", InvalidResponse("no exp"))

    assert p.rejections() == 0


def test_a_locked_out_target_keeps_refreshing_while_it_holds_a_refresh_token() -> None:
    p = logged_in(now=0.0, lifetime=3600.0)
    for i in range(3):
        p.on_failure(2520.0 + i, "refresh", transient())
    for i in range(3):
        p.on_failure(2600.0 + 60 * i, "login", rejected())
    for i in range(5):
        p.on_failure(2800.0 + i, "refresh", transient())

    assert p.locked_out
    assert p.next_action(2810.0).kind == "refresh"
    assert p.state(2810.0, in_flight=False) == "degraded"

    p.on_failure(2820.0, "refresh", gone())

    assert p.next_action(2820.0) == Action("idle", math.inf)
    assert p.state(2820.0, in_flight=False) == "credentials_rejected"


# == states (SPEC §4) ===========================================================================


def test_the_states_are_those_of_the_contract() -> None:
    assert set(STATES) == {
        "starting", "valid", "refreshing", "degraded", "expired", "credentials_rejected"}


@pytest.mark.parametrize("in_flight", [False, True])
def test_the_state_is_starting_before_any_attempt(in_flight: bool) -> None:
    assert policy().state(0.0, in_flight=in_flight) == "starting"


@pytest.mark.parametrize(("failed_at_70", "at", "in_flight", "state"), [
    pytest.param(False, 0.0, False, "valid", id="valid-while-held-and-nothing-failed"),
    pytest.param(False, 99.9, False, "valid", id="valid-to-the-end-of-its-life"),
    pytest.param(False, 70.0, True, "refreshing", id="refreshing-while-a-healthy-call-is-out"),
    pytest.param(False, 70.0, False, "valid", id="valid-again-once-the-call-is-back"),
    pytest.param(True, 70.0, False, "degraded", id="degraded-while-refreshes-fail"),
    # A retry in flight does not hide the failing refreshes (alerts would lose their pending time).
    pytest.param(True, 71.0, True, "degraded", id="degraded-while-a-retry-is-in-flight"),
    pytest.param(True, 100.0, False, "expired", id="expired-once-the-token-runs-out"),
    pytest.param(True, 100.0, True, "expired", id="expired-even-with-a-call-out"),
])
def test_the_state_of_a_held_token_follows_its_life_its_failures_and_the_call_in_flight(
    failed_at_70: bool, at: float, in_flight: bool, state: str,
) -> None:
    p = logged_in(now=0.0, lifetime=100.0)
    if failed_at_70:
        p.on_failure(70.0, "refresh", transient())

    assert p.state(at, in_flight=in_flight) == state
    assert (p.valid_token(at) is None) == (state == "expired")


def test_the_state_is_expired_after_a_failed_first_login() -> None:
    p = policy()
    p.on_failure(0.0, "login", transient())

    assert p.state(0.0, in_flight=False) == "expired"


def test_the_state_is_credentials_rejected_when_the_lockout_guard_stops_logins() -> None:
    p = locked_out_policy()

    assert p.state(200.0, in_flight=False) == "credentials_rejected"


def test_a_success_after_failures_returns_to_valid() -> None:
    p = logged_in(now=0.0, lifetime=100.0)
    p.on_failure(70.0, "refresh", transient())
    p.on_token(71.0, held(71.0, 100.0), "refresh")

    assert p.failures == 0
    assert p.state(71.0, in_flight=False) == "valid"


@given(r=UNIT, events=st.lists(st.tuples(
    st.sampled_from(["token-login", "token-refresh", "transient", "rejected", "gone", "secret",
                     "reset"]),
    st.floats(0, 500),
), max_size=30), probe=st.floats(0, 1e5), in_flight=st.booleans())
def test_any_history_leaves_a_contract_state_and_never_a_stale_valid_token(
    r: float, events: list[tuple[str, float]], probe: float, in_flight: bool,
) -> None:
    p = policy(lambda: r)
    now = 0.0
    for kind, step in events:
        now += step
        if kind.startswith("token"):
            if kind == "token-login":
                p.on_token(now, held(now, 600.0), "login", "rid-1")
            else:
                p.on_token(now, held(now, 600.0), "refresh")
        elif kind == "transient":
            p.on_failure(now, "refresh", transient())
        elif kind == "rejected":
            p.on_failure(now, "login", rejected())
        elif kind == "gone":
            p.on_failure(now, "refresh", gone())
        elif kind == "secret":
            p.observe_secret(f"digest-{int(step)}")
        else:
            p.reset_lockout()
    at = now + probe

    state = p.state(at, in_flight)
    action = p.next_action(at)

    assert state in STATES
    token = p.valid_token(at)
    assert token is None or at < token.expires_at
    if state in ("valid", "refreshing", "degraded"):
        assert token is not None
    assert (action.kind == "idle") == (state == "credentials_rejected")
    assert action.at >= 0.0


# == consumer-triggered refreshes (SPEC §4) =====================================================


def test_a_consumer_refresh_within_five_seconds_of_a_new_token_is_deferred_to_their_end() -> None:
    p = logged_in(now=100.0, lifetime=3600.0)

    assert p.consumer_refresh(100.0) == 100.0 + CONSUMER_QUIET_AFTER_NEW_TOKEN
    assert p.next_action(104.0) == Action("refresh", 100.0 + CONSUMER_QUIET_AFTER_NEW_TOKEN)


def test_a_consumer_refresh_is_due_at_once_five_seconds_after_a_new_token() -> None:
    p = logged_in(now=100.0, lifetime=3600.0)

    due = 100.0 + CONSUMER_QUIET_AFTER_NEW_TOKEN
    assert p.consumer_refresh(due) == due


def test_an_accepted_consumer_refresh_makes_the_refresh_due_now() -> None:
    p = logged_in(now=100.0, lifetime=3600.0)

    assert p.consumer_refresh(500.0) == 500.0

    assert p.next_action(500.0) == Action("refresh", 500.0)


def test_a_consumer_refresh_never_postpones_an_overdue_refresh() -> None:
    p = logged_in(now=0.0, lifetime=100.0)

    assert p.consumer_refresh(90.0) == 90.0

    assert p.next_action(90.0) == Action("refresh", 70.0)


def test_every_report_of_one_token_joins_one_refresh() -> None:
    p = logged_in(now=0.0, lifetime=3600.0)

    assert p.consumer_refresh(200.0) == 200.0
    assert p.consumer_refresh(200.0) == 200.0
    assert p.consumer_refresh(203.0, refused=True) == 200.0


def test_a_refused_report_joining_a_refresh_already_asked_for_keeps_it_due() -> None:
    p = logged_in(now=0.0, lifetime=3600.0)
    assert p.consumer_refresh(200.0) == 200.0  # min_ttl

    assert p.consumer_refresh(201.0, refused=True) == 200.0

    assert p.next_action(201.0) == Action("refresh", 200.0)


def test_at_most_one_consumer_refresh_per_ten_seconds_the_next_is_deferred() -> None:
    p = logged_in(now=0.0, lifetime=3600.0)
    assert p.consumer_refresh(200.0) == 200.0
    p.on_token(200.5, held(200.0, 3600.0), "refresh")

    # 6 s after the new token, 6 s after the last consumer refresh: due 10 s after that one.
    assert p.consumer_refresh(206.0) == 200.0 + CONSUMER_MIN_INTERVAL
    assert p.next_action(206.0) == Action("refresh", 200.0 + CONSUMER_MIN_INTERVAL)


def test_a_deferred_refresh_is_dropped_when_a_new_token_comes_first() -> None:
    p = logged_in(now=100.0, lifetime=3600.0)
    assert p.consumer_refresh(101.0) == 105.0
    p.on_token(102.0, held(102.0, 3600.0), "refresh")

    assert p.next_action(106.0) == Action("refresh", 102.0 + 3600.0 * 0.7)


def test_a_report_of_a_token_that_is_no_longer_current_makes_no_refresh() -> None:
    p = logged_in(now=100.0, lifetime=3600.0)

    assert p.consumer_refresh(500.0, fingerprint="sha256:older", refused=True) is None
    assert p.next_action(500.0) == Action("refresh", 100.0 + 3600.0 * 0.7)


def test_a_deferred_refresh_is_logged_with_its_delay() -> None:
    p = logged_in(now=100.0, lifetime=3600.0)
    p.poll(100.0)
    p.consumer_refresh(102.0, refused=True, reason="invalidate")

    effects = p.poll(102.0)

    assert Log("info", "token.refresh_deferred", {"reason": "invalidate", "in": 3.0}) in effects
    assert effects[-1] == Sleep(105.0)


def test_consumer_refreshes_are_refused_while_failures_back_off() -> None:
    p = logged_in(high, now=0.0, lifetime=3600.0)
    p.on_failure(2520.0, "refresh", transient())
    retry = p.next_action(2520.0)

    assert p.consumer_refresh(2520.5) is None
    assert p.consumer_refresh(3000.0) is None
    assert p.next_action(3000.0) == retry


def test_consumer_refreshes_are_refused_while_credentials_are_rejected() -> None:
    p = locked_out_policy()
    p.failures = 0  # even were the failure count cleared

    assert p.consumer_refresh(1000.0) is None
    assert p.next_action(1000.0).kind == "idle"


def test_consumer_refreshes_resume_after_a_success() -> None:
    p = logged_in(now=0.0, lifetime=3600.0)
    p.on_failure(2520.0, "refresh", transient())
    p.on_token(2521.0, held(2521.0, 3600.0), "refresh")

    assert p.consumer_refresh(2522.0) == 2526.0
    assert p.next_action(2526.0) == Action("refresh", 2526.0)


def refuse_brand_new_tokens(p: RefreshPolicy, count: int, start: float = 10.0) -> float:
    """Report ``count`` tokens refused, each within a second of its arrival; return the time."""
    now = start
    for i in range(count):
        token = p.valid_token(now)
        assert token is not None
        due = p.consumer_refresh(now + 1.0, token.fingerprint, refused=True)
        if due is None:
            return now + 1.0
        now = due + 0.5
        p.on_token(now, held(due, 3600.0, token=f"eyJ.token-at-{now}"), "refresh")
    return now


def refuse_three_brand_new_tokens(p: RefreshPolicy, start: float = 0.0) -> tuple[float, HeldToken]:
    """Report three tokens refused in a row, each a second after its arrival: the first two still
    refresh, the third does not. Returns the instant of the third report and the third token."""
    now = refuse_brand_new_tokens(p, 2, start=start)
    assert not p.rejected_by_consumers
    token = p.valid_token(now)
    assert token is not None
    assert p.consumer_refresh(now + 1.0, token.fingerprint, refused=True) is None
    return now + 1.0, token


def assert_the_row_starts_again(p: RefreshPolicy, now: float) -> None:
    """Two brand-new tokens refused from ``now`` on still refresh; the third in a row stops that."""
    refuse_three_brand_new_tokens(p, start=now)
    assert p.rejected_by_consumers


def test_three_brand_new_tokens_refused_in_a_row_stop_consumer_refreshes() -> None:
    p = logged_in(now=0.0, lifetime=3600.0)

    now, token = refuse_three_brand_new_tokens(p)

    assert p.rejected_by_consumers
    assert p.state(now) == "degraded"
    effects = p.poll(now)
    assert any(isinstance(e, Log) and e.event == "token.rejected_by_consumers" for e in effects)
    assert p.consumer_refresh(now + 29.0, token.fingerprint, refused=True) is None


def test_a_refused_token_that_was_not_brand_new_breaks_the_row() -> None:
    p = logged_in(now=0.0, lifetime=3600.0)
    now = refuse_brand_new_tokens(p, 2, start=0.0)
    token = p.valid_token(now)
    assert token is not None

    assert p.consumer_refresh(now + 60.0, token.fingerprint, refused=True) is not None
    assert not p.rejected_by_consumers


def test_the_next_scheduled_refresh_gives_consumers_another_chance() -> None:
    p = logged_in(now=0.0, lifetime=3600.0)
    refuse_brand_new_tokens(p, 3, start=0.0)
    assert p.rejected_by_consumers

    p.on_token(2600.0, held(2600.0, 3600.0, token="eyJ.scheduled"), "refresh")

    assert not p.rejected_by_consumers
    assert p.state(2600.0) == "valid"


def test_sighup_gives_consumers_another_chance() -> None:
    p = logged_in(now=0.0, lifetime=3600.0)
    refuse_brand_new_tokens(p, 3, start=0.0)

    p.reconfigure(100.0, PolicyConfig())

    assert not p.rejected_by_consumers


def test_a_token_nobody_refused_breaks_the_row() -> None:
    p = logged_in(now=0.0, lifetime=3600.0)
    refuse_brand_new_tokens(p, 2, start=0.0)  # the third token is not reported

    p.on_token(2600.0, held(2600.0, 3600.0, token="eyJ.scheduled"), "refresh")

    assert_the_row_starts_again(p, 2600.0)


def test_after_the_verdict_the_next_scheduled_refresh_starts_the_row_again() -> None:
    p = logged_in(now=0.0, lifetime=3600.0)
    refuse_brand_new_tokens(p, 3, start=0.0)  # the third token, refused too, is still held
    assert p.rejected_by_consumers

    p.on_token(2600.0, held(2600.0, 3600.0, token="eyJ.scheduled"), "refresh")

    assert_the_row_starts_again(p, 2600.0)


def test_sighup_starts_the_row_of_refused_brand_new_tokens_again() -> None:
    p = logged_in(now=0.0, lifetime=3600.0)
    now = refuse_brand_new_tokens(p, 2, start=0.0)

    p.reconfigure(now, PolicyConfig())

    assert_the_row_starts_again(p, now)


def test_a_failed_refresh_between_refused_brand_new_tokens_does_not_break_the_row() -> None:
    p = logged_in(now=0.0, lifetime=3600.0)
    now = refuse_brand_new_tokens(p, 1, start=0.0)
    token = p.valid_token(now)
    assert token is not None
    due = p.consumer_refresh(now + 1.0, token.fingerprint, refused=True)
    assert due is not None
    p.on_failure(due, "refresh", transient())
    p.on_token(due + 10.0, held(due + 10.0, 3600.0, token="eyJ.after-a-retry"), "refresh")
    token = p.valid_token(due + 10.0)
    assert token is not None

    assert p.consumer_refresh(due + 11.0, token.fingerprint, refused=True) is None
    assert p.rejected_by_consumers


def a_target(**settings: Any) -> TargetConfig:
    secret = SecretSource(kind="literal", ref="", key="targets[0].password", literal=Secret("pw"))
    return TargetConfig(name="t1", url="https://sddc.example", username="admin", password=secret,
                        api_key=None, **settings)


def test_a_target_with_default_settings_gets_the_default_policy() -> None:
    assert a_target().policy() == PolicyConfig()


def test_a_target_passes_every_policy_setting_to_the_machine() -> None:
    settings = {"refresh_at": 0.5, "jitter": 0.1, "max_backoff": 30.0, "max_login_failures": 5,
                "login_retry_interval": 90.0}
    assert {f.name for f in fields(PolicyConfig)} == set(settings)
    assert a_target(**settings).policy() == PolicyConfig(**settings)


def test_the_verdict_drops_a_refresh_brought_forward_by_min_ttl() -> None:
    p = logged_in(now=0.0, lifetime=3600.0)
    now = refuse_brand_new_tokens(p, 2, start=0.0)
    token = p.valid_token(now)
    assert token is not None
    assert p.consumer_refresh(now + 0.5) is not None  # min_ttl right after the new token
    assert p.next_action(now + 0.5).at < token.obtained_at + 100

    assert p.consumer_refresh(now + 1.0, token.fingerprint, refused=True) is None

    assert p.rejected_by_consumers
    assert p.next_action(now + 1.0).at == pytest.approx(token.obtained_at + token.lifetime * 0.7)


def test_a_crash_is_a_failure_on_record_and_counts_as_a_transient_refresh_failure() -> None:
    p = logged_in(now=0.0, lifetime=3600.0)
    for _ in range(3):  # a secret check may come first
        if any(isinstance(e, Call) for e in p.poll(2520.0)):
            break
    assert p.in_flight == "refresh"

    p.on_crash(2520.0, transient())

    assert p.attempted and p.last_failure is not None and p.failures == 1
    assert p.transient_refresh_failures == 1
    assert p.state(2520.0) == "degraded"


def test_a_replacement_keeps_its_predecessors_login_spacing() -> None:
    old = policy(login_retry_interval=60.0)
    old.observe_secret("digest-a")
    old.on_failure(100.0, "login", rejected())
    new = policy(login_retry_interval=60.0)
    new.observe_secret("digest-b")

    new.inherit(old)

    assert new.next_action(101.0) == Action("login", 160.0)
