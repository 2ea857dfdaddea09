"""The fake's odd-claim and TokenPair-shape faults (SPEC §8.1, §8.2): what each answers, on the wire."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.test_fake_sddc import (  # noqa: F401 (client_fixture, fake_fixture: the fixtures used)
    CREDENTIALS,
    claims,
    client_fixture,
    fake_fixture,
    login,
    refresh,
)
from tokend.testing.claims import YEAR_10000
from tokend.testing.fake_sddc import FakeSddc
from tokend.testing.faults import MalformedKind

Client = TestClient[web.Request, web.Application]


def raw_claims(token: str) -> dict[str, Any]:
    """The JWT payload as JSON parsed it, without a library's opinion of the claim types."""
    payload = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return decoded


async def domains_status(client: Client, token: str) -> int:
    return (await client.get("/v1/domains", headers={"Authorization": f"Bearer {token}"})).status


@pytest.mark.parametrize(
    ("kind", "check"),
    [
        ("exp_milliseconds", lambda c: c["exp"] == c["iat"] * 1000),
        ("exp_after_9999", lambda c: c["exp"] == YEAR_10000 + 3600),
        ("exp_string", lambda c: c["exp"] == str(c["iat"] + 3600)),
        ("exp_true", lambda c: c["exp"] is True),
        ("exp_1e308", lambda c: c["exp"] == 1e308),
    ],
)
async def test_odd_exp_claims_are_issued_tokens(fake: FakeSddc, client: Client, kind: MalformedKind,
                                                check: Any) -> None:
    fake.faults.malformed_next("login", kind)
    pair = await login(client)
    token = pair["accessToken"]
    c = raw_claims(token)
    assert check(c), c
    assert abs(c["iat"] - time.time()) < 5
    assert fake.issued_access_tokens == [token]  # leak checks look for it
    assert isinstance(pair["refreshToken"]["id"], str)
    # A numeric exp in the future is one the fake honours; a string or a boolean is none.
    expected = 401 if kind in ("exp_string", "exp_true") else 200
    assert await domains_status(client, token) == expected


async def test_odd_claims_on_refresh(fake: FakeSddc, client: Client) -> None:
    rid = (await login(client))["refreshToken"]["id"]
    fake.faults.malformed_next("refresh", "exp_milliseconds", count=2)
    for _ in range(2):
        resp = await refresh(client, rid)
        assert resp.status == 200
        c = raw_claims(await resp.json())
        assert c["exp"] == c["iat"] * 1000
    assert (await refresh(client, rid)).status == 200
    assert fake.faults.queue == []


async def test_bare_string_refresh_id_is_a_working_id(fake: FakeSddc, client: Client) -> None:
    fake.faults.malformed_next("login", "refresh_id_bare")
    pair = await login(client)
    rid = pair["refreshToken"]
    assert isinstance(rid, str) and rid in fake.refresh_ids
    assert claims(pair["accessToken"])["exp"] > time.time()
    resp = await refresh(client, rid)
    assert resp.status == 200 and claims(await resp.json())["exp"] > time.time()


async def test_absent_refresh_token(fake: FakeSddc, client: Client) -> None:
    fake.faults.malformed_next("login", "refresh_id_absent", count=3)
    for _ in range(3):
        pair = await login(client)
        assert set(pair) == {"accessToken"}
        assert await domains_status(client, pair["accessToken"]) == 200
    assert fake.issued_refresh_ids == [] and fake.count("login", 201) == 3
    assert "refreshToken" in await login(client)


async def test_padded_token_is_valid_once_trimmed(fake: FakeSddc, client: Client) -> None:
    fake.faults.malformed_next("login", "token_padded")
    token = (await login(client))["accessToken"]
    assert token != token.strip() and token.startswith(" \t") and token.endswith("\r\n")
    assert fake.issued_access_tokens == [token.strip()]
    assert await domains_status(client, token.strip()) == 200


async def test_token_with_an_interior_newline(fake: FakeSddc, client: Client) -> None:
    rid = (await login(client))["refreshToken"]["id"]
    fake.faults.malformed_next("refresh", "token_newline")
    token = await (await refresh(client, rid)).json()
    head, rest = token.split("\n")
    assert head.endswith(".") and "\n" not in rest and token == token.strip()
    assert fake.issued_access_tokens[-1] == token.replace("\n", "")


async def test_call_records_name_the_refresh_id(fake: FakeSddc, client: Client) -> None:
    rid = (await login(client))["refreshToken"]["id"]
    await refresh(client, rid)
    resp = await client.delete("/v1/tokens/refresh-token", data=rid,
                               headers={"Content-Type": "application/json"})
    assert resp.status == 400  # the bare form is off by default
    fake.accept_bare_refresh = True
    await client.delete("/v1/tokens/refresh-token", data=rid,
                        headers={"Content-Type": "application/json"})
    # The id the call named, whether or not the fake accepted that body form.
    assert [c.refresh_id for c in fake.calls] == [None, rid, rid, rid]
    assert [c.operation for c in fake.calls_of("revoke")] == ["revoke", "revoke"]
    assert [c.status for c in fake.calls_of("revoke", 204)] == [204]
    assert fake.calls_of("login", 201)[0].request_body == json.dumps(CREDENTIALS).encode()
