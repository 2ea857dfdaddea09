"""Restarts do not reset the lockout guard (SPEC §8.9): the real daemon, started five times."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support import Tokend, eventually

WRONG = "Not-the-Passw0rd"
MAX_LOGIN_FAILURES = 3


async def rejected(tokend: Tokend) -> bool:
    return bool((await tokend.status())["state"] == "credentials_rejected")


@pytest.mark.parametrize("ledger", ["kept", "removed before each start"])
async def test_five_starts_with_a_wrong_password_make_at_most_max_login_failures_logins(
    make_upstream: Callable[..., Any], make_tokend: Callable[..., Any], workdir: Path, ledger: str,
) -> None:
    upstream = await make_upstream(access_ttl=60)
    fake = upstream.fake
    per_start: list[int] = []
    for _ in range(5):
        if ledger != "kept":
            (workdir / "state" / "tokend" / "lockout.json").unlink(missing_ok=True)
        before = fake.count("login")
        tokend: Tokend = await make_tokend(
            upstream.url, upstream.ca_pem, wait="listening", password=WRONG,
            target={"max_login_failures": MAX_LOGIN_FAILURES, "login_retry_interval": "1s"})
        await eventually(lambda t=tokend: rejected(t), 15, what="credentials_rejected")
        assert await tokend.stop() == 0
        per_start.append(fake.count("login") - before)

    print(f"logins per start, ledger {ledger}: {per_start}")
    if ledger == "kept":
        assert sum(per_start) <= MAX_LOGIN_FAILURES, per_start
        assert per_start[1:] == [0, 0, 0, 0], per_start
        restored = tokend.events("lockout.restored")
        assert restored and restored[-1]["level"] == "warning", restored
    else:
        assert all(n >= 1 for n in per_start), per_start
        assert sum(per_start) == 5 * MAX_LOGIN_FAILURES, per_start


async def test_the_status_shows_the_lockout_record_and_its_expiry(
    make_upstream: Callable[..., Any], make_tokend: Callable[..., Any],
) -> None:
    upstream = await make_upstream(access_ttl=60)
    tokend: Tokend = await make_tokend(
        upstream.url, upstream.ca_pem, wait="listening", password=WRONG,
        target={"max_login_failures": 1, "login_retry_interval": "1s"})
    await eventually(lambda: rejected(tokend), 15, what="credentials_rejected")

    lockout = (await tokend.status())["lockout"]

    assert lockout["rejections"] == 1 and lockout["expiresAt"].endswith("Z")
