"""Secrets never leave: an upstream that echoes secrets in its errors, with debug logging on."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from tests.support import Tokend, assert_no_secrets, eventually, free_port
from tokend.testing.fake_sddc import FakeSddc


async def scrape(port: int) -> str:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/metrics") as r:
        return await r.text()


async def test_echoed_secrets_never_reach_logs_status_errors_or_metrics(
        make_upstream: Callable[..., Any], make_tokend: Callable[..., Any],
        fakes: list[FakeSddc], workdir: Path) -> None:
    upstream = await make_upstream(access_ttl=4)
    fake = upstream.fake
    fake.faults.echo_secrets_in_errors = True
    port = free_port()
    tokend: Tokend = await make_tokend(upstream.url, upstream.ca_pem,
                                       metrics={"listen": f"127.0.0.1:{port}"},
                                       target={"max_backoff": "1s"})
    seen: list[str] = []

    async def collect() -> None:
        seen.append((await tokend.get("/v1/status")).body.decode())
        answer = await tokend.get("/v1/token")
        if answer.status != 200:  # a 200 carries the token on purpose; error bodies must not
            seen.append(answer.body.decode())
        seen.append((await tokend.get("/readyz")).body.decode())
        seen.append(await scrape(port))

    # Refresh failures whose messages echo the refresh id the daemon sent.
    fake.faults.fail_next("refresh", 500, count=2)
    await eventually(lambda: fake.count("refresh", 500) >= 2, 15, what="two failed refreshes")
    await collect()
    # A revoked refresh token (404 echoing the id), then logins rejected with the password echoed.
    fake.revoke_all_refresh_tokens()
    good_password = next(iter(fake.users.values()))
    user = next(iter(fake.users))
    fake.users[user] = "a-different-password"
    await eventually(lambda: fake.count("login", 401) >= 1, 20, what="a rejected login")
    await collect()
    # The token expires while logins are rejected: the 503 error body too.
    async def expired() -> bool:
        answer = await tokend.get("/v1/token")
        if answer.status != 200:  # a 200 carries the token on purpose
            seen.append(answer.body.decode())
        return answer.status == 503
    await eventually(expired, 15, what="the token to expire")
    await collect()
    fake.users[user] = good_password
    # The echoes really carried the secrets: the leak check below is not vacuous.
    echoed = [c for c in fake.calls if c.status >= 400]
    assert echoed, "the fake answered no error"
    assert fake.issued_refresh_ids and fake.issued_access_tokens
    await asyncio.sleep(0)  # let the last log lines reach the file
    await tokend.stop()
    for text in seen:
        assert_no_secrets(text, fakes, "an answer of tokend")
    assert_no_secrets(tokend.stdout(), fakes, "stdout")
    assert_no_secrets(tokend.stderr(), fakes, "stderr")
    assert "**redacted**" in tokend.stdout(), "the echoed secrets were expected to be redacted"
