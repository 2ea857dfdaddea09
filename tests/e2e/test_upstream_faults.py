"""Upstream failures against the real daemon process: the fake SDDC Manager misbehaves on purpose.

Every test drives ``tokend run`` through one failure path of SPEC §5 (refresh token gone, body form
discovery, outages, credential rejection and the lockout guard, redirects, TLS trust and pins,
transient errors, error reporting) and checks what consumers, ``/v1/status`` and the logs show.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import re
import signal
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trustme
from aiohttp import web

from tests.support import (
    PASSWORD,
    TLS,
    MakeTokend,
    MakeUpstream,
    Tokend,
    Upstream,
    eventually,
    in_state,
    last_error,
)
from tokend.testing.fake_sddc import CallRecord, FakeSddc

WRONG_PASSWORD = "Not-the-Passw0rd-for-tests!"
REFERENCE_TOKEN = re.compile(r"[A-Z0-9]{6}")
# The first refresh early in a token's life: room for retries before expiry, and every token is still
# served for a second or more when its refresh starts (so a consumer never sees expiresIn 0).
EARLY_REFRESH = {"refresh_at": 0.3, "jitter": 0.02}


# -- helpers --------------------------------------------------------------------------------------


def write_password(workdir: Path, value: str) -> None:
    """Replace the target's password file atomically (mode 0600 from creation): no half-written read."""
    tmp = workdir / "password.tmp"
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    os.replace(tmp, workdir / "password")


def leaf_pin(tls: TLS) -> str:
    """The fake's server certificate in the ``tls_fingerprint`` format (``sha256:AB:CD:...``)."""
    der = ssl.PEM_cert_to_DER_cert(tls.cert.cert_chain_pems[0].bytes().decode())
    digest = hashlib.sha256(der).hexdigest().upper()
    return "sha256:" + ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def calls_of(fake: FakeSddc, *operations: str) -> list[CallRecord]:
    return [c for c in fake.calls if c.operation in operations]


def summary(calls: list[CallRecord]) -> list[tuple[str, int]]:
    return [(c.operation, c.status) for c in calls]


async def check_served(tokend: Tokend, fake: FakeSddc) -> dict[str, Any]:
    """One consumer request: it must get a token the fake issued, with time left on it."""
    answer = await tokend.get("/v1/token")
    assert answer.status == 200, f"consumer got {answer.status}: {answer.body[:300]!r}"
    token: dict[str, Any] = answer.json()
    # Whole seconds, rounded down: 0 in the last second a token is served, never negative.
    assert token["expiresIn"] >= 0, f"served a token with expiresIn {token['expiresIn']}"
    assert token["accessToken"] in fake.issued_access_tokens, "served a token the fake never issued"
    return token


async def consume_until(tokend: Tokend, fake: FakeSddc, done: Callable[[], bool], timeout: float,
                        what: str, interval: float = 0.1) -> int:
    """Poll ``/v1/token`` every ``interval`` s, each answer checked, until ``done()``; the count."""
    deadline = time.monotonic() + timeout
    served = 0
    while True:
        await check_served(tokend, fake)
        served += 1
        if done():
            return served
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        await asyncio.sleep(interval)


async def no_error(tokend: Tokend) -> bool:
    return await last_error(tokend) is None


async def lock_out(make_upstream: MakeUpstream, make_tokend: MakeTokend,
                   workdir: Path) -> tuple[FakeSddc, Tokend]:
    """Start tokend with a wrong password and wait until the lockout guard stops its logins."""
    upstream = await make_upstream()
    fake = upstream.fake
    write_password(workdir, WRONG_PASSWORD)
    # login_retry_interval = "1s" comes with the base config.
    tokend = await make_tokend(upstream.url, upstream.ca_pem, wait="listening",
                               target={"max_login_failures": 3})

    async def locked() -> bool:
        return fake.count("login") >= 3 and await in_state(tokend, "credentials_rejected")
    await eventually(locked, timeout=15, what="credentials_rejected after three logins")

    logins = calls_of(fake, "login")
    assert summary(logins) == [("login", 401)] * 3
    gaps = [b.at - a.at for a, b in itertools.pairwise(logins)]
    assert all(gap >= 1.0 for gap in gaps), f"logins closer than login_retry_interval: {gaps}"

    error = await last_error(tokend)
    assert error is not None
    assert error["errorCode"] == "INVALID_CREDENTIALS"
    assert REFERENCE_TOKEN.fullmatch(error["referenceToken"] or ""), error
    rejected = tokend.events("login.rejected")
    assert [e["rejections"] for e in rejected] == [1, 2, 3], rejected
    assert rejected[-1]["referenceToken"] == error["referenceToken"]
    assert rejected[-1]["errorCode"] == "INVALID_CREDENTIALS"

    answer = await tokend.get("/v1/token")
    assert answer.status == 503
    assert answer.json()["errorCode"] == "TOKEN_UNAVAILABLE"
    return fake, tokend


def assert_no_password_in_output(tokend: Tokend) -> None:
    for secret in (WRONG_PASSWORD, PASSWORD):
        assert secret not in tokend.stdout()
        assert secret not in tokend.stderr()


# -- refresh token and body form ------------------------------------------------------------------


async def test_revoked_refresh_token_leads_to_a_new_login(
        upstream: Upstream, make_tokend: MakeTokend) -> None:
    fake = upstream.fake
    tokend = await make_tokend(upstream.url, upstream.ca_pem, target=EARLY_REFRESH)
    assert fake.count("login") == 1
    revoked_at = len(fake.calls)
    fake.faults.revoke_all_refresh_tokens()

    await consume_until(tokend, fake, lambda: fake.count("login") == 2, timeout=12,
                        what="a second login")
    after_revoke = summary(fake.calls[revoked_at:])
    assert after_revoke[:2] == [("refresh", 404), ("login", 201)], after_revoke
    # The new token is served, without a gap.
    await consume_until(tokend, fake, lambda: fake.count("login", 201) == 2, timeout=2,
                        what="the new login's token")
    assert (await check_served(tokend, fake))["accessToken"] == fake.issued_access_tokens[-1]
    assert fake.count("login") == 2


async def test_bare_refresh_body_is_discovered_after_one_400(
        make_upstream: MakeUpstream, make_tokend: MakeTokend) -> None:
    upstream = await make_upstream(accept_json_refresh=False, accept_bare_refresh=True)
    fake = upstream.fake
    tokend = await make_tokend(upstream.url, upstream.ca_pem, target=EARLY_REFRESH)

    await consume_until(tokend, fake, lambda: fake.count("refresh", 200) >= 3, timeout=15,
                        what="three successful refreshes")
    refreshes = calls_of(fake, "refresh")
    forms = [(c.body_form, c.status) for c in refreshes]
    assert forms[0] == ("json_string", 400), forms
    assert forms[1:] == [("bare", 200)] * (len(forms) - 1), forms
    assert all(c.request_headers.get("Content-Type") == "application/json" for c in refreshes)
    assert fake.count("login") == 1


# -- outages and transient errors -----------------------------------------------------------------


async def test_outage_shorter_than_token_life_causes_no_failed_consumer_request(
        make_upstream: MakeUpstream, make_tokend: MakeTokend) -> None:
    # 10-second tokens are served for 8 to 9 s (whole-second iat and Date each may cost a second);
    # the refresh falls at 30 % ± 2 % of that: 2.2 to 2.9 s after the login.
    upstream = await make_upstream(access_ttl=10)
    fake = upstream.fake
    tokend = await make_tokend(upstream.url, upstream.ca_pem, target=EARLY_REFRESH)
    login_at = fake.calls[0].at
    outage_end = login_at + 4.5  # covers the refresh time; leaves 3.5 s or more of token life
    outage_start = time.monotonic()
    assert outage_end - outage_start > 3.0, "tokend took too long to get its first token"

    fake.faults.down = True
    states: set[str] = set()
    while time.monotonic() < outage_end:
        await check_served(tokend, fake)
        states.add((await tokend.status())["state"])
        await asyncio.sleep(0.1)
    fake.faults.down = False
    recovered_at = time.monotonic()
    outage_seconds = recovered_at - outage_start

    failed = [c for c in calls_of(fake, "login", "refresh") if c.status == 503]
    assert "degraded" in states, states
    assert len(failed) >= 2, summary(fake.calls)  # retried within the outage, not just once
    # Each retry waits a uniformly random time below a cap: here the cap is 1 s (a tenth of the
    # remaining life is under the 1 s floor, and the first retry comes within 1 s anyway), so the
    # retries average one per 0.5 s. Attempts only start at the refresh time, ~2 s before the
    # outage ends, so even that rate stays well below this bound; a retry loop without backoff
    # would exceed it by orders of magnitude.
    assert len(failed) <= outage_seconds / 0.5 + 3, (len(failed), outage_seconds)

    # Right after the outage: the next attempt succeeds, and the token never lapsed.
    def recovered() -> bool:
        later = [c for c in fake.calls if c.at >= recovered_at]
        return bool(later) and later[0].status in (200, 201)
    await consume_until(tokend, fake, recovered, timeout=3, what="a success after the outage")
    await consume_until(tokend, fake,
                        lambda: any(c.at >= recovered_at and c.status == 200
                                    for c in calls_of(fake, "refresh")),
                        timeout=10, what="a successful refresh after the outage")
    status = await tokend.status()
    assert status["state"] in ("valid", "refreshing"), status
    assert status["lastError"] is None


async def test_transient_5xx_on_refresh_is_retried_and_three_in_a_row_switch_to_login(
        make_upstream: MakeUpstream, make_tokend: MakeTokend) -> None:
    upstream = await make_upstream(access_ttl=10)
    fake = upstream.fake
    tokend = await make_tokend(upstream.url, upstream.ca_pem, target=EARLY_REFRESH)
    fake.faults.fail_next("refresh", 500, count=3)

    await consume_until(tokend, fake, lambda: fake.count("login") == 2, timeout=12,
                        what="the login after three failed refreshes")
    after_first = summary(fake.calls[1:])
    assert after_first == [("refresh", 500)] * 3 + [("login", 201)], after_first
    await consume_until(tokend, fake, lambda: fake.count("login", 201) == 2, timeout=2,
                        what="the login's token")
    failures = [e for e in tokend.events("token.refresh_failed") if e.get("operation") == "refresh"]
    assert [e["outcome"] for e in failures] == ["http_error"] * 3
    assert [e["consecutive_failures"] for e in failures] == [1, 2, 3]
    assert (await tokend.status())["consecutiveFailures"] == 0


async def test_status_reports_upstream_error_fields(
        make_upstream: MakeUpstream, make_tokend: MakeTokend) -> None:
    # 60-second tokens refreshed at 5 % of their life (~3 s): Retry-After 3 is within the backoff cap
    # (a tenth of the remaining life), so the error stays visible for 3 s before the retry.
    upstream = await make_upstream(access_ttl=60)
    fake = upstream.fake
    tokend = await make_tokend(upstream.url, upstream.ca_pem, target={"refresh_at": 0.05, "jitter": 0.01})
    body = {"errorCode": "X_Y", "message": "m", "remediationMessage": "do z",
            "referenceToken": "ABC123"}
    fake.faults.fail_next("refresh", 503, body=body, headers={"Retry-After": "3"})

    error = await eventually(lambda: last_error(tokend), timeout=10, what="lastError")
    assert fake.count("refresh", 503) == 1
    assert error["errorCode"] == "X_Y"
    assert error["remediationMessage"] == "do z"
    assert error["referenceToken"] == "ABC123"
    assert error["message"].endswith(": m"), error
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", error["at"]), error
    await check_served(tokend, fake)

    events = tokend.events("token.refresh_failed")
    assert len(events) == 1, events
    event = events[0]
    assert event["errorCode"] == "X_Y"
    assert event["referenceToken"] == "ABC123"
    assert event["remediationMessage"] == "do z"
    assert event["status"] == 503
    assert event["operation"] == "refresh"
    assert event["target"] == "t1"

    # Retry-After is honoured: the retry comes about 3 s later and clears the error.
    await eventually(lambda: fake.count("refresh", 200) >= 1, timeout=8, what="the retried refresh")
    failed_at, retried_at = (c.at for c in calls_of(fake, "refresh")[:2])
    assert retried_at - failed_at >= 2.9, retried_at - failed_at
    await eventually(lambda: no_error(tokend), timeout=3, what="lastError cleared")


# -- the lockout guard ----------------------------------------------------------------------------


async def test_wrong_password_stops_after_max_login_failures_and_resumes_on_sighup(
        make_upstream: MakeUpstream, make_tokend: MakeTokend, workdir: Path) -> None:
    fake, tokend = await lock_out(make_upstream, make_tokend, workdir)

    # No fourth login: tokend stays idle until the secret changes or SIGHUP.
    quiet_until = time.monotonic() + 3
    while time.monotonic() < quiet_until:
        assert fake.count("login") == 3
        await asyncio.sleep(0.1)
    assert (await tokend.status())["state"] == "credentials_rejected"
    assert (await tokend.get("/healthz")).status == 200  # idle on purpose is healthy

    write_password(workdir, PASSWORD)
    tokend.signal(signal.SIGHUP)
    # Much sooner than the 30-second secret check: the signal did it.
    await eventually(lambda: fake.count("login", 201) == 1, timeout=5, what="a login after SIGHUP")
    await eventually(lambda: in_state(tokend, "valid"), timeout=5, what="state valid")
    await check_served(tokend, fake)
    assert summary(calls_of(fake, "login")) == [("login", 401)] * 3 + [("login", 201)]
    assert_no_password_in_output(tokend)


async def test_wrong_password_resumes_when_the_secret_file_changes_without_sighup(
        make_upstream: MakeUpstream, make_tokend: MakeTokend, workdir: Path) -> None:
    fake, tokend = await lock_out(make_upstream, make_tokend, workdir)

    write_password(workdir, PASSWORD)
    fixed_at = time.monotonic()
    # The secret is checked every 30 s (SECRET_CHECK_INTERVAL), counted from the keeper's start.
    await eventually(lambda: fake.count("login", 201) == 1, timeout=40, interval=0.2,
                     what="a login after the password file was fixed")
    logins = calls_of(fake, "login")
    assert summary(logins) == [("login", 401)] * 3 + [("login", 201)]
    assert logins[-1].at > fixed_at
    await eventually(lambda: in_state(tokend, "valid"), timeout=5, what="state valid")
    await check_served(tokend, fake)
    assert_no_password_in_output(tokend)


# -- redirects and TLS ----------------------------------------------------------------------------


async def test_redirect_on_login_is_not_followed_and_the_password_never_reaches_it(
        make_upstream: MakeUpstream, make_tokend: MakeTokend) -> None:
    captured: list[tuple[str, str, bytes]] = []

    async def capture(request: web.Request) -> web.Response:
        captured.append((request.method, request.path, await request.read()))
        return web.Response(status=200, text="captured")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", capture)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        capture_url = f"http://127.0.0.1:{runner.addresses[0][1]}"

        upstream = await make_upstream()
        fake = upstream.fake
        fake.faults.redirect_next("login", capture_url + "/v1/tokens", status=307, count=100)
        tokend = await make_tokend(upstream.url, upstream.ca_pem, wait="listening")

        error = await eventually(lambda: last_error(tokend), timeout=10, what="lastError")
        assert error["errorCode"] == "INVALID_UPSTREAM_RESPONSE", error
        assert "redirect" in error["message"], error
        failed = tokend.events("token.refresh_failed")
        assert failed and failed[0]["operation"] == "login", failed
        assert failed[0]["outcome"] == "invalid_response" and failed[0]["status"] == 307, failed

        fake.faults.reset()  # the redirects stop
        await tokend.ready(timeout=15)
        await check_served(tokend, fake)
        logins = calls_of(fake, "login")
        assert logins[-1].status == 201
        assert all(c.status == 307 for c in logins[:-1]) and len(logins) >= 2, summary(logins)
        assert captured == [], f"a request followed the redirect: {[c[:2] for c in captured]}"
    finally:
        await runner.cleanup()


async def test_wrong_ca_keeps_the_daemon_up_and_reports_the_certificate_fingerprint(
        upstream: Upstream, make_tokend: MakeTokend, tls: TLS, workdir: Path) -> None:
    other_ca = workdir / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    tokend = await make_tokend(upstream.url, other_ca, wait="listening")
    pin = leaf_pin(tls)

    error = await eventually(lambda: last_error(tokend), timeout=10, what="lastError")
    assert error["errorCode"] == "TLS_ERROR", error
    assert pin in error["message"], error
    assert "certificate verify failed" in error["message"], error  # why, not just that it failed
    assert pin in error["remediationMessage"], error  # ready to paste as tls_fingerprint

    answer = await tokend.get("/v1/token")
    assert answer.status == 503
    assert answer.json()["errorCode"] == "TOKEN_UNAVAILABLE"
    assert float(answer.headers["Retry-After"]) >= 1

    # It keeps retrying, and stays up and healthy while it does.
    await eventually(lambda: len([e for e in tokend.events("token.refresh_failed")
                                  if e.get("outcome") == "tls_error"]) >= 2,
                     timeout=10, what="a second TLS failure")
    assert tokend.proc is not None and tokend.proc.poll() is None
    assert (await tokend.get("/healthz")).status == 200
    assert (await tokend.status())["state"] == "expired"
    assert upstream.fake.count("login") == 0  # the password was never sent over the untrusted link


async def test_pinned_fingerprint_is_trusted_without_a_ca(
        upstream: Upstream, make_tokend: MakeTokend, tls: TLS) -> None:
    wrong = "sha256:" + ":".join(["AB"] * 32)
    tokend = await make_tokend(upstream.url, None,
                               target={"tls_fingerprint": [wrong, leaf_pin(tls)]})
    await check_served(tokend, upstream.fake)
    assert upstream.fake.count("login", 201) == 1


async def test_wrong_pin_reports_the_presented_fingerprint(
        upstream: Upstream, make_tokend: MakeTokend, tls: TLS) -> None:
    wrong = "sha256:" + ":".join(["AB"] * 32)
    tokend = await make_tokend(upstream.url, None, wait="listening",
                               target={"tls_fingerprint": [wrong]})

    error = await eventually(lambda: last_error(tokend), timeout=10, what="lastError")
    assert error["errorCode"] == "TLS_ERROR", error
    assert leaf_pin(tls) in error["message"], error
    assert wrong not in error["message"], error
    assert (await tokend.get("/v1/token")).status == 503
    assert tokend.proc is not None and tokend.proc.poll() is None
    assert upstream.fake.count("login") == 0  # the password never went to the unpinned server
