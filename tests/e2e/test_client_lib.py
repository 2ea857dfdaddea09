"""``tokend.client`` (SPEC §10.2) against the real daemon and the fake SDDC Manager over HTTPS."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from aiohttp import web

from tests.support import Tokend, Upstream, eventually
from tokend.client import (
    AsyncClient,
    BadRequest,
    Client,
    TargetNotFound,
    TokendAuth,
    TokendError,
    TokendHttpxAuth,
    TokenUnavailable,
    Unreachable,
)

REPO = Path(__file__).resolve().parents[2]
# Consumer-triggered refreshes wait until a token is 5 s old (SPEC §4): revoke after that.
QUIET_AFTER_NEW_TOKEN = 5.0
CALLS = 200


async def long_lived(make_upstream: Callable[..., Any], make_tokend: Callable[..., Any],
                     ttl: float = 60) -> tuple[Upstream, Tokend]:
    """A fake issuing ``ttl``-second tokens (no scheduled refresh during a test) and its tokend."""
    upstream: Upstream = await make_upstream(access_ttl=ttl)
    tokend: Tokend = await make_tokend(upstream.url, upstream.ca_pem)
    return upstream, tokend


# -- Client and AsyncClient -----------------------------------------------------------------------


async def test_client_token_watch_invalidate_and_status(upstream: Upstream, tokend: Tokend) -> None:
    client = Client(socket=tokend.socket, target="t1")
    token = await asyncio.to_thread(client.token)
    assert token.target == "t1" and token.access_token in upstream.fake.issued_access_tokens
    assert token.access_token not in repr(token)
    assert token.header == {"Authorization": f"Bearer {token.access_token}"}
    assert 0 < token.remaining() <= token.expires_in
    # watch: held until the scheduled refresh of the 6 s token, then the new one.
    new = await asyncio.to_thread(client.watch, token.fingerprint, 30)
    assert new.fingerprint != token.fingerprint
    assert new.fingerprint == (await tokend.token())["fingerprint"]
    # invalidate of an old token: the current one at once, no refresh.
    refreshes = upstream.fake.count("refresh")
    assert (await asyncio.to_thread(client.invalidate, token.fingerprint)).fingerprint == \
        new.fingerprint
    assert upstream.fake.count("refresh") == refreshes
    status = await asyncio.to_thread(client.status)
    assert status["targets"][0]["url"] == upstream.url
    assert await asyncio.to_thread(client.url) == upstream.url
    # The default target, learned from a token answer, for invalidate.
    default = Client(socket=tokend.socket)
    assert (await asyncio.to_thread(default.invalidate, token.fingerprint)).target == "t1"


async def test_client_errors_carry_the_error_fields(tokend: Tokend, workdir: Path) -> None:
    with pytest.raises(TargetNotFound) as missing:
        await asyncio.to_thread(Client(socket=tokend.socket, target="nope").token)
    err = missing.value
    assert (err.status, err.error_code) == (404, "TARGET_NOT_FOUND")
    assert err.message and "t1" in err.remediation_message
    assert isinstance(err, TokendError)
    with pytest.raises(BadRequest) as bad:
        await asyncio.to_thread(Client(socket=tokend.socket).watch, "sha256:nothex", 1)
    assert bad.value.status == 400 and bad.value.error_code == "BAD_REQUEST"
    with pytest.raises(Unreachable) as away:
        Client(socket=workdir / "absent.sock").token()
    assert away.value.status is None and "no socket there" in str(away.value)


async def test_client_errors_on_503_carry_retry_after(upstream: Upstream,
                                                      make_tokend: Callable[..., Any]) -> None:
    upstream.fake.faults.down = True
    tokend: Tokend = await make_tokend(upstream.url, upstream.ca_pem, wait="listening")
    with pytest.raises(TokenUnavailable) as down:
        await asyncio.to_thread(Client(socket=tokend.socket).token)
    assert down.value.status == 503 and down.value.error_code == "TOKEN_UNAVAILABLE"
    assert down.value.retry_after is not None and down.value.retry_after >= 1


async def test_async_client_and_tokens_follow_every_refresh(upstream: Upstream,
                                                            tokend: Tokend) -> None:
    async with AsyncClient(socket=tokend.socket) as client:
        first = await client.token()
        assert (await client.watch(first.fingerprint, 0)).fingerprint == first.fingerprint
        assert (await client.url()) == upstream.url
        seen: list[tuple[str, float]] = []
        async for token in client.tokens(wait=30):
            seen.append((token.fingerprint, time.time()))
            if len(seen) == 3:
                break
    assert len({fp for fp, _ in seen}) == 3
    assert seen[0][0] == first.fingerprint
    # Each new token came as soon as tokend had it: within 0.5 s of its token.refreshed line.
    refreshed = {e["fingerprint"]: datetime.fromisoformat(e["timestamp"]).timestamp()
                 for e in tokend.events("token.refreshed")}
    for fingerprint, at in seen[1:]:
        assert 0 <= at - refreshed[fingerprint] < 0.5, (at, refreshed[fingerprint])


async def test_tokens_outlive_a_withdrawn_token(upstream: Upstream, tokend: Tokend) -> None:
    async with AsyncClient(socket=tokend.socket) as client:
        tokens = client.tokens(wait=30)
        first = await anext(tokens)
        upstream.fake.faults.down = True  # the token expires with no successor: watches get 503

        async def heal() -> None:
            await eventually(lambda: _no_token(tokend), 15, what="the token to be withdrawn")
            upstream.fake.faults.down = False
        healing = asyncio.create_task(heal())
        second = await asyncio.wait_for(anext(tokens), 60)
        await healing
        await tokens.aclose()  # type: ignore[attr-defined]
    assert second.fingerprint != first.fingerprint


async def _no_token(tokend: Tokend) -> bool:
    return (await tokend.get("/v1/token")).status == 503


# -- TokendAuth and TokendHttpxAuth through a forced revocation ------------------------------------


@pytest.mark.parametrize("flavour", ["requests", "httpx", "httpx-async"])
async def test_auth_hooks_carry_200_calls_through_a_forced_revocation(
        flavour: str, make_upstream: Callable[..., Any], make_tokend: Callable[..., Any]) -> None:
    upstream, tokend = await long_lived(make_upstream, make_tokend)
    fake = upstream.fake
    url = f"{upstream.url}/v1/domains"
    ctx = ssl.create_default_context(cafile=str(upstream.ca_pem))
    started = time.monotonic()
    statuses: list[int] = []

    async def calls(n: int) -> None:
        if flavour == "requests":
            def run() -> list[int]:
                with requests.Session() as session:
                    session.auth = TokendAuth(socket=tokend.socket)
                    # per request: REQUESTS_CA_BUNDLE in the environment overrides session.verify
                    return [session.get(url, timeout=30, verify=str(upstream.ca_pem)).status_code
                            for _ in range(n)]
            statuses.extend(await asyncio.to_thread(run))
        elif flavour == "httpx":
            def run() -> list[int]:
                with httpx.Client(auth=TokendHttpxAuth(socket=tokend.socket), verify=ctx) as c:
                    return [c.get(url, timeout=30).status_code for _ in range(n)]
            statuses.extend(await asyncio.to_thread(run))
        else:
            async with httpx.AsyncClient(auth=TokendHttpxAuth(socket=tokend.socket),
                                         verify=ctx, timeout=30) as c:
                # Ten at a time: several see the 401 at once and report the same token.
                for _ in range(n // 10):
                    answers = await asyncio.gather(*(c.get(url) for _ in range(10)))
                    statuses.extend(a.status_code for a in answers)

    await calls(CALLS // 2)
    await asyncio.sleep(max(0.0, started + QUIET_AFTER_NEW_TOKEN + 0.5 - time.monotonic()))
    before = fake.count("domains", 401)
    fake.revoke_access_tokens()
    await calls(CALLS // 2)

    assert statuses == [200] * CALLS
    assert fake.count("refresh") == 1  # one refresh, however many calls saw the 401
    assert fake.count("login") == 1
    assert fake.count("domains", 401) - before >= 1  # the revocation was seen, and retried


async def test_the_header_goes_only_to_the_targets_origin(
        upstream: Upstream, tokend: Tokend) -> None:
    seen: list[str | None] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        if request.path == "/ok":
            return web.Response(text="ok")
        return web.Response(status=401, text="no")  # a 401 elsewhere is never "ours"

    app = web.Application()
    app.router.add_get("/{tail:.*}", record)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    other = f"http://127.0.0.1:{runner.addresses[0][1]}/v1/domains"
    ctx = ssl.create_default_context(cafile=str(upstream.ca_pem))
    try:
        def with_requests() -> list[int]:
            with requests.Session() as session:
                session.auth = TokendAuth(socket=tokend.socket)
                return [session.get(other).status_code,
                        session.get(f"{upstream.url}/v1/domains",
                                    verify=str(upstream.ca_pem)).status_code]
        assert await asyncio.to_thread(with_requests) == [401, 200]
        async with httpx.AsyncClient(auth=TokendHttpxAuth(socket=tokend.socket), verify=ctx) as c:
            assert (await c.get(other)).status_code == 401
            assert (await c.get(f"{upstream.url}/v1/domains")).status_code == 200
        # An explicit origin: only that one gets the header.
        def with_origin() -> list[int]:
            with httpx.Client(auth=TokendHttpxAuth(socket=tokend.socket, origin=other),
                              verify=ctx) as c:
                return [c.get(f"{upstream.url}/v1/domains").status_code,
                        c.get(other.replace("/v1/domains", "/ok")).status_code]
        assert await asyncio.to_thread(with_origin) == [401, 200]
    finally:
        await runner.cleanup()
    assert seen[:2] == [None, None]
    assert seen[2] is not None and seen[2].startswith("Bearer ")  # origin=other: it gets it
    assert upstream.fake.count("refresh") == 0  # 401s from another host invalidate nothing


async def test_a_streamed_body_is_not_replayed(upstream: Upstream, tokend: Tokend) -> None:
    ctx = ssl.create_default_context(cafile=str(upstream.ca_pem))
    upstream.fake.revoke_access_tokens()
    # A request whose body is a generator cannot be sent twice: its 401 is the caller's.

    def gen() -> Any:
        yield b"{}"
    def send() -> int:
        with httpx.Client(auth=TokendHttpxAuth(socket=tokend.socket), verify=ctx) as c:
            return c.request("GET", f"{upstream.url}/v1/domains", content=gen()).status_code
    assert await asyncio.to_thread(send) == 401
    assert upstream.fake.count("refresh") == 0


# -- start-up cost ---------------------------------------------------------------------------------


def test_importing_the_client_imports_no_http_library() -> None:
    probe = ("import sys, tokend.client; import json;"
             " print(json.dumps(sorted(m for m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True,
                         check=True, timeout=30).stdout
    modules = set(json.loads(out))
    assert not modules & {"aiohttp", "requests", "httpx", "ssl", "tokend.config"}


def test_each_hook_imports_only_its_library() -> None:
    for name, library, others in [("TokendAuth", "requests", {"httpx", "aiohttp"}),
                                  ("TokendHttpxAuth", "httpx", {"requests", "aiohttp"}),
                                  ("AsyncClient", "aiohttp", {"requests", "httpx"})]:
        probe = (f"import sys, json; from tokend.client import {name};"
                 " print(json.dumps(sorted(sys.modules)))")
        out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True,
                             text=True, check=True, timeout=30).stdout
        modules = set(json.loads(out))
        assert library in modules, name
        assert not modules & others, (name, modules & others)


def test_a_missing_library_names_the_extra_that_installs_it() -> None:
    probe = ("import sys; sys.modules['requests'] = None\n"
             "try:\n    from tokend.client import TokendAuth\n"
             "except ModuleNotFoundError as exc:\n    print(exc)")
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True,
                         check=True, timeout=30).stdout
    assert out.strip() == "tokend.client.TokendAuth needs requests: pip install 'tokend[requests]'"
