"""Brute-force limits of local logins and the rate limit of their log lines (SPEC §9.3, §9.6).

Pure objects driven by hand: ``now`` is a number on a monotonic clock chosen by the test.
"""

from __future__ import annotations

import pytest

from tokend.proxy.bruteforce import LIMIT, WINDOW, Attempt, LoginLimiter, LogLimiter, Refused

A, B = "192.0.2.10", "2001:db8::7"
T0 = 1000.0


def fail(limiter: LoginLimiter, user: str, address: str, now: float, times: int = 1) -> None:
    for _ in range(times):
        attempt = limiter.admit(user, address, now)
        assert isinstance(attempt, Attempt), f"refused: {attempt}"
        limiter.finish(attempt, ok=False, now=now)


def succeed(limiter: LoginLimiter, user: str, address: str, now: float) -> None:
    attempt = limiter.admit(user, address, now)
    assert isinstance(attempt, Attempt), f"refused: {attempt}"
    limiter.finish(attempt, ok=True, now=now)


def test_five_failures_a_minute_then_refused_until_the_first_ages_out() -> None:
    limiter = LoginLimiter()
    for n in range(LIMIT):
        fail(limiter, "alice", A, T0 + n)
    assert limiter.admit("alice", A, T0 + 10) == Refused(retry_after=50)
    assert limiter.admit("alice", A, T0 + 59.5) == Refused(retry_after=1)
    assert isinstance(limiter.admit("alice", A, T0 + WINDOW), Attempt)


def test_failures_for_many_users_from_one_address_fill_the_address_count() -> None:
    limiter = LoginLimiter()
    for n in range(LIMIT):
        fail(limiter, f"user{n}", A, T0)
    refused = limiter.admit("someone-else", A, T0 + 1)
    assert refused == Refused(retry_after=59)


def test_failures_from_one_address_never_lock_the_user_out_elsewhere() -> None:
    limiter = LoginLimiter()
    fail(limiter, "alice", A, T0, times=LIMIT)
    assert isinstance(limiter.admit("alice", A, T0 + 1), Refused)
    succeed(limiter, "alice", B, T0 + 1)
    fail(limiter, "alice", B, T0 + 2, times=LIMIT - 1)
    succeed(limiter, "alice", B, T0 + 3)


def test_successes_do_not_count() -> None:
    limiter = LoginLimiter()
    for n in range(3 * LIMIT):
        succeed(limiter, "alice", A, T0 + n)
    fail(limiter, "alice", A, T0 + 100, times=LIMIT)


def test_refused_logins_do_not_extend_the_wait() -> None:
    limiter = LoginLimiter()
    fail(limiter, "alice", A, T0, times=LIMIT)
    for n in range(1, 50):
        assert limiter.admit("alice", A, T0 + n) == Refused(retry_after=60 - n)
    assert isinstance(limiter.admit("alice", A, T0 + 60), Attempt)


def test_checks_under_way_count_so_a_parallel_burst_cannot_queue_more_than_five_hashes() -> None:
    limiter = LoginLimiter()
    running = [limiter.admit(f"guess{n}", A, T0) for n in range(LIMIT)]
    assert all(isinstance(a, Attempt) for a in running)
    assert limiter.admit("guess5", A, T0) == Refused(retry_after=1)
    first = running[0]
    assert isinstance(first, Attempt)
    limiter.finish(first, ok=True, now=T0 + 0.1)
    assert isinstance(limiter.admit("guess5", A, T0 + 0.1), Attempt)


def test_per_user_count_refuses_the_user_while_the_address_count_has_room() -> None:
    limiter = LoginLimiter(per_user=2, per_address=10)
    fail(limiter, "alice", A, T0)
    fail(limiter, "alice", A, T0 + 30)
    assert limiter.admit("alice", A, T0 + 31) == Refused(retry_after=29)
    succeed(limiter, "bob", A, T0 + 31)


def test_successful_login_from_a_fresh_address_leaves_nothing_behind() -> None:
    limiter = LoginLimiter()
    succeed(limiter, "alice", A, T0)
    assert len(limiter) == 0


def test_old_addresses_are_forgotten_once_their_failures_age_out() -> None:
    limiter = LoginLimiter()
    for n in range(100):
        fail(limiter, "alice", f"198.51.100.{n}", T0)
    assert len(limiter) == 100
    fail(limiter, "alice", A, T0 + WINDOW)
    assert len(limiter) == 1


def test_tracked_addresses_are_capped_forgetting_the_least_recently_active() -> None:
    limiter = LoginLimiter(max_addresses=3)
    for n, address in enumerate(["10.0.0.1", "10.0.0.2", "10.0.0.3"]):
        fail(limiter, "alice", address, T0 + n, times=LIMIT)
    fail(limiter, "alice", "10.0.0.4", T0 + 10)
    assert len(limiter) == 3
    assert isinstance(limiter.admit("alice", "10.0.0.1", T0 + 11), Attempt)
    assert isinstance(limiter.admit("alice", "10.0.0.3", T0 + 11), Refused)


def test_finishing_an_attempt_whose_address_was_forgotten_still_counts_its_failure() -> None:
    limiter = LoginLimiter(max_addresses=1, per_user=1, per_address=1)
    attempt = limiter.admit("alice", A, T0)
    assert isinstance(attempt, Attempt)
    fail(limiter, "bob", B, T0)
    limiter.finish(attempt, ok=False, now=T0 + 1)
    assert isinstance(limiter.admit("alice", A, T0 + 2), Refused)


def test_user_names_are_not_kept_in_clear() -> None:
    limiter = LoginLimiter()
    attempt = limiter.admit("hunter2-typed-as-user", A, T0)
    assert "hunter2" not in repr(attempt)
    assert isinstance(attempt, Attempt)
    assert b"hunter2" not in attempt.user_key


# --- Log lines ---------------------------------------------------------------------------------


def test_rejected_login_is_logged_at_most_once_a_minute_per_user_and_address() -> None:
    logs = LogLimiter()
    assert logs.allow("alice", A, T0)
    assert not logs.allow("alice", A, T0 + 59)
    assert logs.allow("alice", B, T0 + 1)
    assert logs.allow("bob", A, T0 + 1)
    assert logs.allow("alice", A, T0 + 60)


def test_log_limiter_forgets_pairs_after_a_minute() -> None:
    logs = LogLimiter()
    for n in range(50):
        logs.allow(f"user{n}", A, T0)
    assert len(logs) == 50
    logs.allow("alice", A, T0 + 60)
    assert len(logs) == 1


@pytest.mark.parametrize("later", [0.0, 59.0])
def test_log_limiter_full_of_recent_pairs_stays_quiet_rather_than_repeat(later: float) -> None:
    logs = LogLimiter(max_entries=2)
    assert logs.allow("a", A, T0) and logs.allow("b", A, T0)
    assert not logs.allow("c", A, T0 + later)
    assert not logs.allow("a", A, T0 + later)
    assert len(logs) == 2
