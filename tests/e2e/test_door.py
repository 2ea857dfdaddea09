"""Every input is checked at the door (SPEC §8): one end-to-end test per input, named after it.

The real ``tokend run`` process against the fake SDDC Manager over HTTPS. The fake's faults
(``Faults.malformed_next`` kinds) produce the inputs: odd ``exp`` claims, TokenPair shapes, refused
login answers; the socket API and signals produce the rest. Every test also runs the fixture's leak
check at teardown (nothing secret in what tokend printed).

Timing bounds carry the fault suite's margins: a scheduled call starts late by at most ``SLACK``,
and the fake records a call up to ``ARRIVAL`` after tokend sent it.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import (
    MakeTokend,
    MakeUpstream,
    Tokend,
    Upstream,
    assert_no_secrets,
    eventually,
    free_port,
    in_state,
    state,
    write_config,
)
from tokend.testing.fake_sddc import CallRecord, FakeSddc
from tokend.testing.faults import MalformedKind

SLACK = 0.5
ARRIVAL = 0.3
MANY = 1000  # a fault that stays for the whole test


# -- helpers ------------------------------------------------------------------------------------


async def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The metrics listener's samples: (name, labels) -> value."""
    async with aiohttp.ClientSession() as session, \
            session.get(f"http://127.0.0.1:{port}/metrics") as r:
        assert r.status == 200
        text = await r.text()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def upstream_requests(samples: dict[tuple[str, frozenset[tuple[str, str]]], float],
                      operation: str, outcome: str) -> float:
    labels = frozenset({"target": "t1", "operation": operation, "outcome": outcome}.items())
    return samples.get(("tokend_upstream_requests_total", labels), 0.0)


async def tcp_get(port: int, path: str) -> tuple[int, dict[str, str]]:
    async with aiohttp.ClientSession() as session, \
            session.get(f"http://127.0.0.1:{port}{path}") as r:
        return r.status, dict(r.headers)


def failures_of(tokend: Tokend) -> list[dict[str, Any]]:
    return tokend.events("token.refresh_failed")


def said(tokend: Tokend) -> list[tuple[str, str | None, str | None]]:
    """What tokend logged about failures: (event, operation, message or exception), in order."""
    return [(e["event"], e.get("operation"),
             e.get("message") or (e.get("exception") or [{}])[0].get("exc_value"))
            for e in tokend.events()
            if e.get("event") == "token.refresh_failed" or e.get("level") in ("error", "critical")]


async def first_token(tokend: Tokend, fake: FakeSddc, timeout: float = 10.0) -> dict[str, Any]:
    """The first token tokend serves from ``fake``; failing, say what tokend logged instead."""
    try:
        token: dict[str, Any] = await eventually(lambda: served_from(tokend, fake), timeout,
                                                 what="a token")
    except AssertionError:
        raise AssertionError(f"no token within {timeout:g} s; tokend logged: {said(tokend)[-4:]}") \
            from None
    return token


def errors_logged(tokend: Tokend) -> list[dict[str, Any]]:
    return [e for e in tokend.events() if e.get("level") in ("error", "critical")]


def assert_no_traceback(tokend: Tokend) -> None:
    text = tokend.stdout() + tokend.stderr()
    assert "Traceback" not in text and '"exception"' not in text, tokend.stderr()[-2000:]


async def assert_alive(tokend: Tokend) -> None:
    assert tokend.proc is not None
    assert tokend.proc.poll() is None, f"tokend exited {tokend.proc.returncode}: {tokend.stderr()}"
    assert (await tokend.get("/healthz")).status == 200


def gaps(calls: list[CallRecord]) -> list[float]:
    return [b.at - a.at for a, b in itertools.pairwise(calls)]


async def invalidate(tokend: Tokend, fingerprint: str) -> Any:
    return await tokend.request("POST", "/v1/targets/t1/invalidate", {"fingerprint": fingerprint})


# -- §8.1 claims ----------------------------------------------------------------------------------


async def check_capped(make_upstream: MakeUpstream, make_tokend: MakeTokend,
                       kind: MalformedKind) -> None:
    """Every token carries ``kind``'s exp: each is served capped, logged once, refreshed on time."""
    cap = 10
    upstream = await make_upstream(access_ttl=3600)
    fake = upstream.fake
    fake.faults.malformed_next("login", kind, count=MANY)
    fake.faults.malformed_next("refresh", kind, count=MANY)
    tokend = await make_tokend(upstream.url, upstream.ca_pem, wait="listening",
                               target={"max_token_lifetime": f"{cap}s"})
    token = await first_token(tokend, fake)
    assert token["accessToken"] == fake.issued_access_tokens[0], "the first answer was not served"
    assert 0 < token["expiresIn"] <= cap, token
    assert token["upstreamExp"] > 10**10, token  # the claim as issued, unchanged

    capped = await eventually(lambda: tokend.events("token.lifetime_capped"), 5,
                              what="token.lifetime_capped")
    first = capped[0]
    assert first["level"] == "warning" and first["target"] == "t1", first
    assert float(first["claimed_lifetime"]) > 3600, first
    assert cap - 2 <= float(first["used_lifetime"]) <= cap, first
    await eventually(lambda: in_state(tokend, "valid"), 5, what="state valid")

    # The refresh comes at refresh_at (0.7 ± 0.05) of the capped lifetime (cap - 1 s for
    # whole-second claims), not an hour (or a millennium) later.
    await eventually(lambda: fake.count("refresh", 200) >= 1, cap, what="a refresh on the capped schedule")
    login, refresh = fake.calls_of("login", 201)[0], fake.calls_of("refresh", 200)[0]
    assert 0.65 * (cap - 1) - ARRIVAL <= refresh.at - login.at <= 0.75 * cap + SLACK, \
        refresh.at - login.at
    after = await eventually(lambda: served_other(tokend, token["fingerprint"]), 5,
                             what="the refreshed token served")
    assert 0 < after["expiresIn"] <= cap, after
    # Logged once per token: one line for the login's token, one for each refresh's.
    def once_per_token() -> bool:
        tokens = len(tokend.events("token.acquired")) + len(tokend.events("token.refreshed"))
        return len(tokend.events("token.lifetime_capped")) == tokens
    await eventually(once_per_token, 2, what="one token.lifetime_capped per token")
    assert fake.count("login") == 1
    assert not errors_logged(tokend), errors_logged(tokend)
    await assert_alive(tokend)


async def served_other(tokend: Tokend, fingerprint: str) -> dict[str, Any] | None:
    token = await tokend.token()
    return token if token["fingerprint"] != fingerprint else None


@pytest.mark.parametrize("kind", ["exp_milliseconds", "exp_after_9999"])
async def test_exp_in_milliseconds_is_capped_and_served(
        make_upstream: MakeUpstream, make_tokend: MakeTokend, kind: MalformedKind) -> None:
    # exp_milliseconds: exp = iat * 1000; exp_after_9999: an hour past 10000-01-01 (SPEC §8.1).
    await check_capped(make_upstream, make_tokend, kind)


@pytest.mark.parametrize("kind", ["exp_string", "exp_true", "exp_1e308"])
async def test_exp_not_a_number_is_an_invalid_response(
        make_upstream: MakeUpstream, make_tokend: MakeTokend, kind: MalformedKind) -> None:
    if kind == "exp_1e308":  # a finite number: a lifetime to cap, not an invalid claim
        await check_capped(make_upstream, make_tokend, kind)
        return
    upstream = await make_upstream(access_ttl=3600)
    fake = upstream.fake
    fake.faults.malformed_next("login", kind, count=MANY)
    port = free_port()
    tokend = await make_tokend(upstream.url, upstream.ca_pem, wait="listening",
                               metrics={"listen": f"127.0.0.1:{port}"}, target={"max_backoff": "2s"})
    # tokend keeps retrying, each answer counted as an invalid response.
    await eventually(lambda: fake.count("login", 201) >= 3, 15, what="three logins")

    async def counted() -> float:
        return upstream_requests(await scrape(port), "login", "invalid_response")
    await eventually(lambda: _at_least(counted(), 2), 5, what="invalid_response counted")
    samples = await scrape(port)
    assert upstream_requests(samples, "login", "success") == 0
    failed = tokend.events("token.refresh_failed")
    assert failed and {e["outcome"] for e in failed} == {"invalid_response"}, failed
    answer = await tokend.get("/v1/token")
    assert answer.status == 503 and answer.json()["errorCode"] == "TOKEN_UNAVAILABLE", answer
    assert int(answer.headers["Retry-After"]) >= 1
    assert await state(tokend) == "expired"
    await assert_alive(tokend)
    status, _ = await tcp_get(port, "/healthz")
    assert status == 200
    assert_no_traceback(tokend)
    assert not tokend.events("keeper.crashed") and not tokend.events("keeper.unexpected_error")


async def _at_least(value: Awaitable[float], wanted: float) -> bool:
    return await value >= wanted


# -- §8.3 secrets -----------------------------------------------------------------------------


def run_bytes_env(args: list[str], env: dict[bytes, bytes]) -> tuple[int | None, str, str]:
    """``tokend ARGS`` under ``env``: (exit status or None if still running after 10 s, out, err)."""
    try:
        done = subprocess.run([sys.executable, "-m", "tokend", *args], capture_output=True, env=env,
                              timeout=10, check=False)
    except subprocess.TimeoutExpired as exc:  # killed: it took the secret and kept running
        out, err = exc.stdout or b"", exc.stderr or b""
        return None, out.decode(errors="backslashreplace"), err.decode(errors="backslashreplace")
    return (done.returncode, done.stdout.decode(errors="backslashreplace"),
            done.stderr.decode(errors="backslashreplace"))


async def test_non_utf8_secret_exits_2_naming_the_key(
        upstream: Upstream, workdir: Path, fakes: list[FakeSddc]) -> None:
    path = write_config(workdir, upstream.url, upstream.ca_pem,
                        target={"password_file": None, "password_env": "TOKEND_PW"})
    written = tomllib.loads(path.read_text())["targets"][0]
    assert "password_file" not in written and written["password_env"] == "TOKEND_PW", written
    # Byte 0xE4 (ä in Latin-1) is no UTF-8; under the C locale Python hands it over as '\udce4'.
    env = {b"TOKEND_PW": b"\xe4", b"LC_ALL": b"C", b"PATH": os.environb.get(b"PATH", b"/usr/bin"),
           b"PYTHONPATH": os.environb.get(b"PYTHONPATH", b"")}
    results = {}
    for command in (["check-config", "--config", str(path)], ["run", "--config", str(path)]):
        results[command[0]] = await asyncio.to_thread(run_bytes_env, command, env)
    (workdir / "tokend.sock").unlink(missing_ok=True)  # left by a run that had to be killed
    for name, (status, stdout, stderr) in results.items():
        where = f"tokend {name}: exit {status} (None: still running), stderr {stderr[-600:]!r}"
        assert status == 2, where
        assert "Traceback" not in stderr + stdout, where
        lines = stderr.strip("\n").split("\n")
        assert len(lines) == 1 and "targets[0].password_env" in lines[0], where
        for shown in ("\xe4", "\\xe4", "\\udce4"):  # the secret, however it would be printed
            assert shown not in stdout + stderr, where
        assert_no_secrets(stdout + stderr, fakes, f"tokend {name}")
    assert upstream.fake.calls == []  # refused before any login


# -- §8.5 consumer refreshes ------------------------------------------------------------------


async def unrefreshed(make_upstream: MakeUpstream, make_tokend: MakeTokend,
                      request_timeout: str) -> tuple[FakeSddc, Tokend]:
    """A fake with 120-second tokens (no scheduled refresh during the test) and tokend on it."""
    upstream = await make_upstream(access_ttl=120)
    tokend = await make_tokend(upstream.url, upstream.ca_pem,
                               target={"request_timeout": request_timeout})
    return upstream.fake, tokend


async def test_invalidate_of_brand_new_token_is_deferred_not_dropped(
        make_upstream: MakeUpstream, make_tokend: MakeTokend) -> None:
    fake, tokend = await unrefreshed(make_upstream, make_tokend, request_timeout="15s")
    token = await tokend.token()
    issued = fake.calls_of("login", 201)[0].at
    assert time.monotonic() - issued < 4, "the token is no longer brand new"

    answer = await invalidate(tokend, token["fingerprint"])
    assert answer.status == 200, (answer.status, answer.body)
    new = answer.json()
    assert new["fingerprint"] != token["fingerprint"]
    assert new["accessToken"] == fake.issued_access_tokens[-1]
    # The refresh waited for the 5 s quiet window after the token, and was made once.
    [refresh] = fake.calls_of("refresh")
    assert refresh.at - issued >= 5 - ARRIVAL, refresh.at - issued
    assert refresh.at - issued <= 5 + SLACK + 1, refresh.at - issued
    assert fake.count("login") == 1
    assert (await tokend.token())["fingerprint"] == new["fingerprint"]
    assert not errors_logged(tokend)


async def test_three_refused_brand_new_tokens_stop_consumer_refreshes(
        make_upstream: MakeUpstream, make_tokend: MakeTokend) -> None:
    fake, tokend = await unrefreshed(make_upstream, make_tokend, request_timeout="12s")
    # Each new token is reported refused at once: the refreshes are deferred (5 s after a token,
    # 10 s after the previous consumer refresh) but made, until the third report.
    for report in range(3):
        token = await tokend.token()
        answer = await invalidate(tokend, token["fingerprint"])
        if report < 2:
            assert answer.status == 200, (report, answer.status, answer.body)
            assert answer.json()["fingerprint"] != token["fingerprint"]
        else:
            assert answer.status in (200, 503), (answer.status, answer.body)
            if answer.status == 503:
                assert int(answer.headers["Retry-After"]) >= 1

    rejected = await eventually(lambda: tokend.events("token.rejected_by_consumers"), 5,
                                what="token.rejected_by_consumers")
    assert rejected[0]["level"] == "warning" and rejected[0].get("reason"), rejected
    await eventually(lambda: in_state(tokend, "degraded"), 5, what="state degraded")

    calls = len(fake.calls)
    current = await tokend.token()
    reported_at = time.monotonic()
    fourth = await invalidate(tokend, current["fingerprint"])
    assert fourth.status in (200, 503), (fourth.status, fourth.body)
    # No upstream call for it, also not deferred: wait out the longest deferral the rate limits
    # allow (10 s after the last consumer refresh), then count.
    await asyncio.sleep(max(0.0, reported_at + 10 + SLACK - time.monotonic()))
    assert len(fake.calls) == calls, fake.calls[calls:]
    assert await state(tokend) == "degraded"
    assert (await tokend.token())["fingerprint"] == current["fingerprint"]  # still served
    await assert_alive(tokend)


# -- §8.2 TokenPair shapes ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["refresh_id_bare", "refresh_id_absent"])
async def test_bare_string_refresh_token_is_kept_and_used(
        make_upstream: MakeUpstream, make_tokend: MakeTokend, kind: MalformedKind) -> None:
    ttl = 6
    upstream = await make_upstream(access_ttl=ttl)
    fake = upstream.fake
    fake.faults.malformed_next("login", kind, count=1 if kind == "refresh_id_bare" else MANY)
    tokend = await make_tokend(upstream.url, upstream.ca_pem, wait="listening")
    first = await first_token(tokend, fake)
    refused = [(e["operation"], e["outcome"], e.get("message")) for e in failures_of(tokend)]
    assert first["accessToken"] == fake.issued_access_tokens[0], f"the first answer was refused: {refused}"
    if kind == "refresh_id_bare":
        # One login, then refreshes with the id it gave, over two lifetimes.
        await eventually(lambda: fake.count("refresh", 200) >= 2, 2 * ttl + 2,
                         what="two refreshes with the bare id")
        [rid] = fake.issued_refresh_ids
        assert {c.refresh_id for c in fake.calls_of("refresh")} == {rid}
        assert fake.count("login") == 1
    else:
        # No refresh token: each renewal is a login, on the refresh schedule (refresh_at 0.7 ±
        # 0.05 of the tracked lifetime, ttl - 1 s), not a retry loop.
        await eventually(lambda: fake.count("login", 201) >= 3, 2 * ttl + 2,
                         what="renewals by login")
        logins = fake.calls_of("login")
        assert all(c.status == 201 for c in logins), [c.status for c in logins]
        assert fake.count("refresh") == 0
        assert not failures_of(tokend), said(tokend)[:4]
        for gap in gaps(logins):
            assert 0.65 * (ttl - 1) - ARRIVAL <= gap <= 0.75 * ttl + SLACK, gaps(logins)
    assert not failures_of(tokend), said(tokend)[:4]
    token = await tokend.token()
    assert token["fingerprint"] != first["fingerprint"]
    assert token["accessToken"] == fake.issued_access_tokens[-1] or \
        token["accessToken"] == fake.issued_access_tokens[-2]
    assert not errors_logged(tokend)
    await assert_alive(tokend)


async def test_refused_login_answer_revokes_session_and_backs_off(
        make_upstream: MakeUpstream, make_tokend: MakeTokend) -> None:
    max_backoff = 4.0
    upstream = await make_upstream(access_ttl=60)
    fake = upstream.fake
    # Every login is accepted by the upstream, with an access token tokend cannot use.
    fake.faults.malformed_next("login", "not_jwt", count=MANY)
    tokend = await make_tokend(upstream.url, upstream.ca_pem, wait="listening",
                               target={"max_backoff": f"{max_backoff:g}s"})
    # The session each refused answer opened is revoked (best effort): a DELETE for its id.
    await eventually(lambda: fake.calls_of("revoke"), 5, what="a revoke of the refused session")
    first_id = fake.issued_refresh_ids[0]
    assert fake.calls_of("revoke")[0].refresh_id == first_id
    assert fake.calls_of("revoke")[0].at > fake.calls_of("login")[0].at

    # Retries back off: full jitter under a cap that doubles from 1 s to max_backoff. The gaps
    # stay under their caps, and later ones go beyond the first retry's cap (each of 12 gaps
    # under a 4 s cap is below 1.2 s with probability 0.3: all of them, 5e-7).
    await eventually(lambda: fake.count("login") >= 16, 60, what="16 logins")
    logins = fake.calls_of("login")[:16]
    spacing = gaps(logins)
    for n, gap in enumerate(spacing):
        cap = min(2.0 ** n, max_backoff)
        assert gap <= cap + SLACK + 0.2, (n, spacing)  # 0.2: the revoke made in between
    assert max(spacing[3:]) > 1.2, spacing
    revoked = {c.refresh_id for c in fake.calls_of("revoke")}
    issued = fake.issued_refresh_ids[:15]  # the last may still be in flight
    assert set(issued) <= revoked, len(set(issued) - revoked)
    failed = tokend.events("token.refresh_failed")
    assert failed and {e["outcome"] for e in failed} == {"invalid_response"}
    assert (await tokend.get("/v1/token")).status == 503
    await assert_alive(tokend)


# -- §8.6 Retry-After ---------------------------------------------------------------------------


async def test_readyz_on_metrics_listener_503_has_retry_after(
        make_upstream: MakeUpstream, make_tokend: MakeTokend) -> None:
    upstream = await make_upstream(access_ttl=60)
    fake = upstream.fake
    fake.faults.down = True  # no token yet: not ready
    port = free_port()
    tokend = await make_tokend(upstream.url, upstream.ca_pem, wait="listening",
                               metrics={"listen": f"127.0.0.1:{port}"})
    await eventually(lambda: fake.count("login") >= 1, 5, what="a first login attempt")
    for path in ("/readyz", "/readyz?target=t1"):
        status, headers = await tcp_get(port, path)
        assert status == 503, (path, status)
        assert int(headers["Retry-After"]) >= 1, (path, headers)
        answer = await tokend.get(path)
        assert answer.status == 503 and int(answer.headers["Retry-After"]) >= 1, (path, answer)
    answer = await tokend.get("/v1/token")
    assert answer.status == 503 and int(answer.headers["Retry-After"]) >= 1, answer

    fake.faults.down = False
    await tokend.ready()
    status, headers = await tcp_get(port, "/readyz")
    assert status == 200 and "Retry-After" not in headers


# -- §8.7 reloads -------------------------------------------------------------------------------


async def test_two_quick_sighups_after_a_url_change_leave_one_keeper(
        make_upstream: MakeUpstream, make_tokend: MakeTokend, workdir: Path) -> None:
    ttl, revoke_delay = 4, 1.5
    old = await make_upstream(access_ttl=ttl)
    new = await make_upstream(access_ttl=ttl)
    revoke = {"revoke_on_exit": True}
    tokend = await make_tokend(old.url, old.ca_pem, target=revoke)
    await tokend.token()
    # The retired keeper's revoke takes a while: the next SIGHUPs surely arrive during the reload.
    # (Signals sent back to back may merge into one in the kernel before tokend sees them.)
    old.fake.faults.delays["revoke"] = revoke_delay
    write_config(workdir, new.url, new.ca_pem, target=revoke)
    tokend.signal(signal.SIGHUP)
    await eventually(lambda: old.fake.calls_of("revoke"), 5, interval=0.01,
                     what="the retired keeper's revoke")
    tokend.signal(signal.SIGHUP)
    tokend.signal(signal.SIGHUP)

    token = await eventually(lambda: served_from(tokend, new.fake), 10,
                             what="a token from the new url")
    assert token["accessToken"] in new.fake.issued_access_tokens
    # Over two lifetimes: one keeper logs in once and refreshes with its own id.
    await eventually(lambda: new.fake.count("refresh", 200) >= 2, 2 * ttl + 2,
                     what="refreshes at the new url")
    assert new.fake.count("login") == 1, [(c.operation, c.status) for c in new.fake.calls]
    [rid] = new.fake.issued_refresh_ids
    assert {c.refresh_id for c in new.fake.calls_of("refresh")} == {rid}
    # The old keeper revoked once, and made that call and no other after its successor started.
    [revoked] = old.fake.calls_of("revoke")
    assert revoked.refresh_id == old.fake.issued_refresh_ids[0]
    assert old.fake.calls[-1] is revoked, [(c.operation, c.status) for c in old.fake.calls]
    first_login = new.fake.calls_of("login")[0]
    assert first_login.at >= revoked.at + revoke_delay - 0.05, first_login.at - revoked.at
    # The SIGHUPs during the reload made exactly one more reload, which kept the new keeper.
    reloaded = await eventually(lambda: len(tokend.events("config.reloaded")) == 2
                                and tokend.events("config.reloaded"), 5, what="two reloads")
    assert reloaded[0]["restarted"] == ["t1"] and reloaded[1]["kept"] == ["t1"], reloaded
    assert (await tokend.token())["accessToken"] in new.fake.issued_access_tokens
    assert await state(tokend) in ("valid", "refreshing")
    assert not errors_logged(tokend), errors_logged(tokend)
    await assert_alive(tokend)
    await asyncio.sleep(0.3)  # nothing further: no third reload
    assert len(tokend.events("config.reloaded")) == 2


async def served_from(tokend: Tokend, fake: FakeSddc) -> dict[str, Any] | None:
    answer = await tokend.get("/v1/token")
    if answer.status != 200:
        return None
    token: dict[str, Any] = answer.json()
    return token if token["accessToken"] in fake.issued_access_tokens else None
