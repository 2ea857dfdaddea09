"""The token lifecycle against the real daemon process and the fake over HTTPS."""

from __future__ import annotations

import asyncio
import time

from tests.support import Tokend, Upstream


async def test_refreshes_before_expiry_with_the_refresh_token(
        upstream: Upstream, tokend: Tokend) -> None:
    fake = upstream.fake
    seen: set[str] = set()
    deadline = time.monotonic() + 14  # 6-second tokens: at least two refreshes
    while time.monotonic() < deadline:
        answer = await tokend.get("/v1/token")
        assert answer.status == 200, answer.body
        token = answer.json()
        assert token["expiresIn"] > 0
        assert token["accessToken"] in fake.issued_access_tokens
        seen.add(token["fingerprint"])
        await asyncio.sleep(0.2)
    assert fake.count("login") == 1
    assert fake.count("refresh", 200) >= 2
    assert len(seen) >= 3
    assert tokend.events("token.refreshed")
