"""The fake SDDC Manager: its answers follow the vendor's OpenAPI spec, and every fault knob works."""

from __future__ import annotations

import asyncio
import email.utils
import json
import re
import ssl
import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
import trustme
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from openapi_core import OpenAPI
from openapi_core.datatypes import RequestParameters
from openapi_schema_validator import OAS30Validator

from tokend.testing.cli import parse_listen, serve_forever
from tokend.testing.fake_sddc import CallRecord, FakeSddc, start_fake
from tokend.testing.tls import ensure_tls_dir

# A verbatim copy of the vendor's public OpenAPI extract (SDDC Manager 9.0.2: the token paths,
# GET /v1/domains and their schemas), kept with the tests so they run from any checkout.
SPEC_PATH = Path(__file__).resolve().parent / "data" / "sddc-manager-tokens.openapi.json"
# The spec's only `servers` entry; requests are validated as if sent there.
SPEC_SERVER = "http://localhost:80"
USER, PASSWORD = "administrator@vsphere.local", "VMware1!"
CREDENTIALS = {"username": USER, "password": PASSWORD}
JSON = {"Content-Type": "application/json"}
REFERENCE_TOKEN = re.compile(r"^[A-Z0-9]{6}$")
PATHS = {
    "login": ("post", "/v1/tokens"),
    "refresh": ("patch", "/v1/tokens/access-token/refresh"),
    "revoke": ("delete", "/v1/tokens/refresh-token"),
    "domains": ("get", "/v1/domains"),
}

Client = TestClient[web.Request, web.Application]
ClientFactory = Callable[[web.Application], Awaitable[Client]]


# -- OpenAPI validation -------------------------------------------------------------------------


@dataclass
class SpecRequest:
    """openapi-core's request protocol, for a request a client sent to the fake."""

    method: str
    path: str
    body: bytes | None
    content_type: str
    parameters: RequestParameters = field(default_factory=RequestParameters)
    host_url: str = SPEC_SERVER


@dataclass
class SpecResponse:
    """openapi-core's response protocol, for an answer of the fake."""

    status_code: int
    content_type: str
    data: bytes
    headers: dict[str, str]


@pytest.fixture(scope="module")
def openapi() -> OpenAPI:
    return OpenAPI.from_file_path(str(SPEC_PATH))


def spec_request(record: CallRecord) -> SpecRequest:
    method, path = PATHS[record.operation]
    headers = {k.lower(): v for k, v in record.request_headers.items()}
    return SpecRequest(
        method=method,
        path=path,
        body=record.request_body or None,
        content_type=headers.get("content-type", ""),
        parameters=RequestParameters(header=record.request_headers),
    )


async def spec_response(resp: aiohttp.ClientResponse) -> SpecResponse:
    return SpecResponse(
        status_code=resp.status,
        content_type=resp.headers.get("Content-Type", ""),
        data=await resp.read(),
        headers=dict(resp.headers),
    )


async def validate_exchange(openapi: OpenAPI, fake: FakeSddc, resp: aiohttp.ClientResponse) -> None:
    """The last request the fake received and ``resp`` both follow the vendor's spec."""
    request = spec_request(fake.calls[-1])
    openapi.validate_request(request)
    openapi.validate_response(request, await spec_response(resp))


def error_validator() -> OAS30Validator:
    doc = json.loads(SPEC_PATH.read_text())
    return OAS30Validator({"$ref": "#/components/schemas/Error", "components": doc["components"]})


async def assert_error_body(
    resp: aiohttp.ClientResponse, status: int, code: str | None = None
) -> dict[str, Any]:
    """``resp`` is an ``Error`` object valid against the spec, with the fields operators rely on."""
    assert resp.status == status
    assert resp.content_type == "application/json"
    body: dict[str, Any] = await resp.json()
    error_validator().validate(body)
    assert isinstance(body["message"], str) and isinstance(body["remediationMessage"], str)
    assert REFERENCE_TOKEN.match(body["referenceToken"])
    if code is not None:
        assert body["errorCode"] == code
    return body


# -- helpers ------------------------------------------------------------------------------------


class FakeClock:
    """A wall clock that moves only when told."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def login(client: Client, **spec: str) -> dict[str, Any]:
    resp = await client.post("/v1/tokens", json=spec or CREDENTIALS)
    assert resp.status == 201
    pair: dict[str, Any] = await resp.json()
    return pair


async def refresh(client: Client, refresh_id: str) -> aiohttp.ClientResponse:
    return await client.patch("/v1/tokens/access-token/refresh", json=refresh_id)


def claims(token: str) -> dict[str, Any]:
    decoded: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return decoded


# Named apart from their fixture names, so that test_fake_sddc_shapes can import them.
@pytest.fixture(name="fake")
def fake_fixture() -> FakeSddc:
    return FakeSddc()


@pytest.fixture(name="client")
async def client_fixture(fake: FakeSddc, aiohttp_client: ClientFactory) -> Client:
    return await aiohttp_client(fake.app())


# -- login --------------------------------------------------------------------------------------


async def test_login_answers_a_token_pair_valid_against_the_spec(
    fake: FakeSddc, client: Client, openapi: OpenAPI
) -> None:
    resp = await client.post("/v1/tokens", json=CREDENTIALS)
    assert resp.status == 201
    await validate_exchange(openapi, fake, resp)
    pair = await resp.json()
    assert pair["refreshToken"]["id"] in fake.refresh_ids
    assert fake.issued_access_tokens == [pair["accessToken"]]
    assert fake.count("login", 201) == 1


async def test_login_with_an_api_key(aiohttp_client: ClientFactory, openapi: OpenAPI) -> None:
    fake = FakeSddc(api_keys={"k-123"})
    client = await aiohttp_client(fake.app())
    resp = await client.post("/v1/tokens", json={"apiKey": "k-123"})
    assert resp.status == 201
    await validate_exchange(openapi, fake, resp)
    resp = await client.post("/v1/tokens", json={"apiKey": "wrong"})
    await assert_error_body(resp, 401)


async def test_configured_users_replace_the_default(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(FakeSddc(users={"svc@rainpole.io": "s3cret"}).app())
    await login(client, username="svc@rainpole.io", password="s3cret")
    resp = await client.post("/v1/tokens", json=CREDENTIALS)
    assert resp.status == 401


async def test_wrong_password_is_rejected_with_an_error_body(fake: FakeSddc, client: Client) -> None:
    resp = await client.post("/v1/tokens", json={"username": USER, "password": "nope"})
    body = await assert_error_body(resp, 401, "INVALID_CREDENTIALS")
    assert "nope" not in json.dumps(body)
    assert fake.count("login", 401) == 1 and not fake.refresh_ids


@pytest.mark.parametrize("status", [400, 403])
async def test_rejection_status_is_configurable(
    aiohttp_client: ClientFactory, openapi: OpenAPI, status: int
) -> None:
    fake = FakeSddc(reject_status=status)
    client = await aiohttp_client(fake.app())
    resp = await client.post("/v1/tokens", json={"username": USER, "password": "nope"})
    await assert_error_body(resp, status)
    if status == 400:  # the one the spec lists for create
        await validate_exchange(openapi, fake, resp)


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'"text"'])
async def test_malformed_login_body_is_a_400_error(client: Client, body: bytes) -> None:
    resp = await client.post("/v1/tokens", data=body, headers=JSON)
    await assert_error_body(resp, 400, "BAD_REQUEST")


async def test_access_token_claims(aiohttp_client: ClientFactory) -> None:
    clock = FakeClock(1_800_000_000.4)
    client = await aiohttp_client(FakeSddc(access_ttl=600, clock=clock).app())
    token = (await login(client))["accessToken"]
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    c = claims(token)
    assert {"jti", "iat", "nbf", "exp", "sub", "iss", "aud", "user", "name", "scope"} <= c.keys()
    assert c["iss"] == "vcf-auth" and c["aud"] == "sddc-services"
    assert c["sub"] == c["user"] == USER and isinstance(c["scope"], list)
    assert c["iat"] == 1_800_000_000 and isinstance(c["iat"], int) and isinstance(c["exp"], int)
    assert c["exp"] - c["iat"] == 600
    assert c["nbf"] <= c["iat"]


async def test_fractional_lifetime_gives_fractional_claims(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(FakeSddc(access_ttl=2.5, clock=FakeClock(1_800_000_000.25)).app())
    c = claims((await login(client))["accessToken"])
    assert isinstance(c["exp"], float)
    assert c["exp"] - c["iat"] == pytest.approx(2.5, abs=1e-6)


async def test_every_token_is_unique(client: Client) -> None:
    first, second = await login(client), await login(client)
    assert first["accessToken"] != second["accessToken"]
    assert first["refreshToken"]["id"] != second["refreshToken"]["id"]


# -- refresh ------------------------------------------------------------------------------------


async def test_refresh_answers_the_new_access_token_as_a_json_string(
    fake: FakeSddc, client: Client, openapi: OpenAPI
) -> None:
    pair = await login(client)
    rid = pair["refreshToken"]["id"]
    resp = await refresh(client, rid)
    assert resp.status == 200
    await validate_exchange(openapi, fake, resp)
    new_token = await resp.json()
    assert isinstance(new_token, str) and new_token != pair["accessToken"]
    assert claims(new_token)["sub"] == USER
    assert fake.calls[-1].body_form == "json_string"
    # not rotated: the same id keeps working
    assert rid in fake.refresh_ids
    assert (await refresh(client, rid)).status == 200
    assert fake.count("refresh", 200) == 2


async def test_refresh_without_json_content_type_fails(fake: FakeSddc, client: Client) -> None:
    rid = (await login(client))["refreshToken"]["id"]
    resp = await client.patch(
        "/v1/tokens/access-token/refresh", data=json.dumps(rid), headers={"Content-Type": "text/plain"}
    )
    await assert_error_body(resp, 415)
    resp = await client.patch("/v1/tokens/access-token/refresh", data=json.dumps(rid).encode())
    await assert_error_body(resp, 415)


async def test_content_type_failure_status_is_configurable(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(FakeSddc(wrong_content_type_status=400).app())
    rid = (await login(client))["refreshToken"]["id"]
    headers = {"Content-Type": "text/plain"}
    resp = await client.patch("/v1/tokens/access-token/refresh", data=rid, headers=headers)
    await assert_error_body(resp, 400)


async def test_bare_refresh_id_is_a_400_by_default(fake: FakeSddc, client: Client, openapi: OpenAPI) -> None:
    rid = (await login(client))["refreshToken"]["id"]
    resp = await client.patch("/v1/tokens/access-token/refresh", data=rid, headers=JSON)
    await assert_error_body(resp, 400, "BAD_REQUEST")
    assert fake.calls[-1].body_form == "bare"
    # the bare form is not what the spec describes, so validate only the answer
    openapi.validate_response(
        SpecRequest("patch", PATHS["refresh"][1], b'"x"', "application/json"), await spec_response(resp)
    )


async def test_bare_only_server_rejects_the_json_string_form(aiohttp_client: ClientFactory) -> None:
    fake = FakeSddc(accept_bare_refresh=True, accept_json_refresh=False)
    client = await aiohttp_client(fake.app())
    rid = (await login(client))["refreshToken"]["id"]
    await assert_error_body(await refresh(client, rid), 400)
    resp = await client.patch("/v1/tokens/access-token/refresh", data=rid, headers=JSON)
    assert resp.status == 200
    assert claims(await resp.json())["sub"] == USER
    assert [c.body_form for c in fake.calls if c.operation == "refresh"] == ["json_string", "bare"]


async def test_server_accepting_both_forms(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(FakeSddc(accept_bare_refresh=True).app())
    rid = (await login(client))["refreshToken"]["id"]
    assert (await refresh(client, rid)).status == 200
    assert (await client.patch("/v1/tokens/access-token/refresh", data=rid, headers=JSON)).status == 200


async def test_unknown_refresh_id_is_gone(fake: FakeSddc, client: Client, openapi: OpenAPI) -> None:
    resp = await refresh(client, "00000000-0000-4000-8000-000000000000")
    await assert_error_body(resp, 404)
    await validate_exchange(openapi, fake, resp)


async def test_gone_status_is_configurable(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(FakeSddc(gone_status=401).app())
    await assert_error_body(await refresh(client, "00000000-0000-4000-8000-000000000000"), 401)


async def test_refresh_token_expires_after_its_lifetime(aiohttp_client: ClientFactory) -> None:
    clock = FakeClock()
    fake = FakeSddc(refresh_ttl=100, clock=clock)
    client = await aiohttp_client(fake.app())
    rid = (await login(client))["refreshToken"]["id"]
    clock.now += 99
    assert (await refresh(client, rid)).status == 200
    clock.now += 2
    assert rid not in fake.refresh_ids
    await assert_error_body(await refresh(client, rid), 404)


# -- revoke -------------------------------------------------------------------------------------


async def test_revoke_answers_204_and_the_id_stops_working(
    fake: FakeSddc, client: Client, openapi: OpenAPI
) -> None:
    rid = (await login(client))["refreshToken"]["id"]
    resp = await client.delete("/v1/tokens/refresh-token", json=rid)
    assert resp.status == 204
    await validate_exchange(openapi, fake, resp)
    assert rid not in fake.refresh_ids
    await assert_error_body(await refresh(client, rid), 404)
    assert fake.count("revoke", 204) == 1


async def test_revoke_all_refresh_tokens(fake: FakeSddc, client: Client) -> None:
    first = (await login(client))["refreshToken"]["id"]
    second = (await login(client))["refreshToken"]["id"]
    fake.faults.revoke_all_refresh_tokens()
    assert not fake.refresh_ids
    for rid in (first, second):
        await assert_error_body(await refresh(client, rid), 404)
    third = (await login(client))["refreshToken"]["id"]
    fake.revoke_all_refresh_tokens()
    await assert_error_body(await refresh(client, third), 404)


# -- a protected endpoint -----------------------------------------------------------------------


async def test_domains_answers_a_page_of_domain_to_a_valid_token(
    fake: FakeSddc, client: Client, openapi: OpenAPI
) -> None:
    token = (await login(client))["accessToken"]
    resp = await client.get("/v1/domains", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 200
    await validate_exchange(openapi, fake, resp)
    assert len((await resp.json())["elements"]) == 1


@pytest.mark.parametrize("auth", [None, "Bearer not-a-token", "Basic abc"])
async def test_domains_without_a_valid_token_is_401(client: Client, auth: str | None) -> None:
    headers = {"Authorization": auth} if auth else {}
    resp = await client.get("/v1/domains", headers=headers)
    assert resp.status == 401
    assert await resp.json() == {
        "errorCode": "Unauthorized",
        "message": "Authorization Header is missing or not in correct format",
    }


async def test_expired_access_token_is_refused(aiohttp_client: ClientFactory) -> None:
    clock = FakeClock()
    client = await aiohttp_client(FakeSddc(access_ttl=60, clock=clock).app())
    headers = {"Authorization": f"Bearer {(await login(client))['accessToken']}"}
    clock.now += 59
    assert (await client.get("/v1/domains", headers=headers)).status == 200
    clock.now += 1
    assert (await client.get("/v1/domains", headers=headers)).status == 401


async def test_a_token_from_another_fake_is_refused(aiohttp_client: ClientFactory) -> None:
    other = await aiohttp_client(FakeSddc().app())
    client = await aiohttp_client(FakeSddc().app())
    token = (await login(other))["accessToken"]
    assert (await client.get("/v1/domains", headers={"Authorization": f"Bearer {token}"})).status == 401


# -- clock and bookkeeping ----------------------------------------------------------------------


async def test_date_header_comes_from_the_fake_clock(aiohttp_client: ClientFactory) -> None:
    clock = FakeClock(1_800_000_000.0)
    fake = FakeSddc(clock=clock)
    client = await aiohttp_client(fake.app())
    resp = await client.post("/v1/tokens", json=CREDENTIALS)
    assert email.utils.parsedate_to_datetime(resp.headers["Date"]).timestamp() == 1_800_000_000
    fake.faults.clock_skew = -300
    resp = await client.post("/v1/tokens", json={})
    assert email.utils.parsedate_to_datetime(resp.headers["Date"]).timestamp() == 1_800_000_000 - 300


async def test_call_records(fake: FakeSddc, client: Client) -> None:
    before = time.monotonic()
    await login(client)
    await client.post("/v1/tokens", json={"username": USER, "password": "x"})
    record = fake.calls[0]
    assert record.operation == "login" and record.status == 201 and record.body_form is None
    assert record.at >= before
    assert json.loads(record.request_body) == CREDENTIALS
    assert record.request_headers["Content-Type"] == "application/json"
    assert fake.count("login") == 2 and fake.count("login", 401) == 1 and fake.count("refresh") == 0


# -- faults -------------------------------------------------------------------------------------


async def test_fail_next_answers_an_error_then_recovers(
    fake: FakeSddc, client: Client, openapi: OpenAPI
) -> None:
    fake.faults.fail_next("login", 500, count=2)
    for _ in range(2):
        resp = await client.post("/v1/tokens", json=CREDENTIALS)
        await assert_error_body(resp, 500, "INTERNAL_SERVER_ERROR")
        await validate_exchange(openapi, fake, resp)
    await login(client)
    assert fake.count("login", 500) == 2 and fake.count("login", 201) == 1


async def test_fail_next_429_with_retry_after_and_a_custom_body(fake: FakeSddc, client: Client) -> None:
    fake.faults.fail_next("refresh", 429, body={"errorCode": "TOO_MANY"}, headers={"Retry-After": "7"})
    rid = (await login(client))["refreshToken"]["id"]
    resp = await refresh(client, rid)
    assert resp.status == 429 and resp.headers["Retry-After"] == "7"
    assert await resp.json() == {"errorCode": "TOO_MANY"}
    assert (await refresh(client, rid)).status == 200


async def test_fail_next_with_a_text_body(fake: FakeSddc, client: Client) -> None:
    fake.faults.fail_next("login", 502, body="Bad Gateway")
    resp = await client.post("/v1/tokens", json=CREDENTIALS)
    assert resp.status == 502 and await resp.text() == "Bad Gateway"


async def test_fail_next_any_matches_token_endpoints_in_order(fake: FakeSddc, client: Client) -> None:
    token = (await login(client))["accessToken"]
    fake.faults.fail_next("any", 503)
    fake.faults.fail_next("login", 500)
    assert (await client.get("/v1/domains", headers={"Authorization": f"Bearer {token}"})).status == 200
    assert (await client.post("/v1/tokens", json=CREDENTIALS)).status == 503
    assert (await client.post("/v1/tokens", json=CREDENTIALS)).status == 500
    assert (await client.post("/v1/tokens", json=CREDENTIALS)).status == 201


async def test_fail_next_on_domains(fake: FakeSddc, client: Client) -> None:
    token = (await login(client))["accessToken"]
    fake.faults.fail_next("domains", 500)
    resp = await client.get("/v1/domains", headers={"Authorization": f"Bearer {token}"})
    await assert_error_body(resp, 500)


async def test_down_answers_503_on_every_token_endpoint(fake: FakeSddc, client: Client) -> None:
    rid = (await login(client))["refreshToken"]["id"]
    fake.faults.down = True
    await assert_error_body(await client.post("/v1/tokens", json=CREDENTIALS), 503)
    await assert_error_body(await refresh(client, rid), 503)
    await assert_error_body(await client.delete("/v1/tokens/refresh-token", json=rid), 503)
    fake.faults.down = False
    assert (await refresh(client, rid)).status == 200


async def test_down_in_drop_mode_closes_connections(fake: FakeSddc, client: Client) -> None:
    fake.faults.down = True
    fake.faults.down_mode = "drop"
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await client.post("/v1/tokens", json=CREDENTIALS)
    assert fake.calls[-1].status == 0
    fake.faults.down = False
    await login(client)


async def test_delay_holds_the_answer(fake: FakeSddc, client: Client) -> None:
    fake.faults.delay = 0.2
    start = time.monotonic()
    await login(client)
    assert time.monotonic() - start >= 0.2


async def test_per_operation_delay_times_out_a_client(fake: FakeSddc, client: Client) -> None:
    fake.faults.delays["login"] = 5
    with pytest.raises(TimeoutError):
        await client.post("/v1/tokens", json=CREDENTIALS, timeout=aiohttp.ClientTimeout(total=0.2))
    assert fake.faults.delay_for("refresh") == 0


async def test_drop_next_breaks_the_response_after_its_headers(fake: FakeSddc, client: Client) -> None:
    fake.faults.drop_next("login")
    resp = await client.post("/v1/tokens", json=CREDENTIALS)
    assert resp.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()
    assert fake.calls[-1].status == 0
    await login(client)


async def test_drop_next_without_a_response(fake: FakeSddc, client: Client) -> None:
    fake.faults.drop_next("login", when="no_response")
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await client.post("/v1/tokens", json=CREDENTIALS)
    await login(client)


async def test_redirect_next(fake: FakeSddc, client: Client) -> None:
    fake.faults.redirect_next("login", "https://elsewhere.example/v1/tokens")
    resp = await client.post("/v1/tokens", json=CREDENTIALS, allow_redirects=False)
    assert resp.status == 307
    assert resp.headers["Location"] == "https://elsewhere.example/v1/tokens"
    await login(client)


async def test_malformed_not_json(fake: FakeSddc, client: Client) -> None:
    fake.faults.malformed_next("login", "not_json")
    resp = await client.post("/v1/tokens", json=CREDENTIALS)
    assert resp.status == 201 and await resp.text() == "<html>oops"


async def test_malformed_answer_waits_for_a_call_that_would_succeed(fake: FakeSddc, client: Client) -> None:
    fake.faults.malformed_next("login", "not_jwt")
    resp = await client.post("/v1/tokens", json={"username": USER, "password": "wrong"})
    await assert_error_body(resp, 401)
    assert (await login(client))["accessToken"] == "not-a-jwt"
    assert fake.faults.queue == []


@pytest.mark.parametrize("kind", ["missing_fields", "wrong_types", "not_jwt"])
async def test_malformed_login_shapes(fake: FakeSddc, client: Client, kind: Any) -> None:
    fake.faults.malformed_next("login", kind)
    body = await (await client.post("/v1/tokens", json=CREDENTIALS)).json()
    if kind == "missing_fields":
        assert body == {}
    elif kind == "wrong_types":
        assert isinstance(body["accessToken"], int)
    else:
        assert body["accessToken"] == "not-a-jwt"
    assert fake.issued_access_tokens == []


@pytest.mark.parametrize("kind", ["no_exp", "expired", "iat_future"])
async def test_malformed_token_claims(fake: FakeSddc, client: Client, kind: Any) -> None:
    fake.faults.malformed_next("login", kind)
    c = claims((await login(client))["accessToken"])
    now = time.time()
    if kind == "no_exp":
        assert "exp" not in c
    elif kind == "expired":
        assert c["exp"] < now and c["exp"] - c["iat"] == 3600
    else:
        assert c["iat"] > now + 60


@pytest.mark.parametrize(
    ("kind", "check"),
    [
        ("not_json", lambda raw: raw == b"<html>oops"),
        ("not_jwt", lambda raw: json.loads(raw) == "not-a-jwt"),
        ("missing_fields", lambda raw: json.loads(raw) == {}),
        ("wrong_types", lambda raw: isinstance(json.loads(raw), int)),
        ("no_exp", lambda raw: "exp" not in claims(json.loads(raw))),
    ],
)
async def test_malformed_refresh(
    fake: FakeSddc, client: Client, kind: Any, check: Callable[[bytes], bool]
) -> None:
    rid = (await login(client))["refreshToken"]["id"]
    fake.faults.malformed_next("refresh", kind)
    resp = await refresh(client, rid)
    assert resp.status == 200 and check(await resp.read())
    assert (await refresh(client, rid)).status == 200


async def test_clock_skew_moves_iat_and_exp(fake: FakeSddc, client: Client) -> None:
    fake.faults.clock_skew = 7200
    c = claims((await login(client))["accessToken"])
    assert c["iat"] >= time.time() + 7000
    assert c["exp"] - c["iat"] == 3600


async def test_echo_secrets_in_errors(fake: FakeSddc, client: Client) -> None:
    fake.faults.echo_secrets_in_errors = True
    resp = await client.post("/v1/tokens", json={"username": USER, "password": "hunter2-secret"})
    assert "hunter2-secret" in (await resp.json())["message"]
    rid = "11111111-2222-4333-8444-555555555555"
    assert rid in (await (await refresh(client, rid)).json())["message"]
    resp = await client.get("/v1/domains", headers={"Authorization": "Bearer eyJfake.eyJtoken.sig"})
    assert "eyJfake.eyJtoken.sig" in (await resp.json())["message"]
    fake.faults.fail_next("login", 500)
    resp = await client.post("/v1/tokens", json=CREDENTIALS)
    assert PASSWORD in (await resp.json())["message"]


async def test_faults_reset(fake: FakeSddc, client: Client) -> None:
    fake.faults.down = True
    fake.faults.fail_next("login", 500)
    fake.faults.clock_skew = 99
    fake.faults.reset()
    await login(client)
    assert fake.faults.queue == [] and fake.faults.clock_skew == 0


# -- TLS and serving ----------------------------------------------------------------------------


async def test_serves_https_with_a_trusted_ca(aiohttp_server: Any, openapi: OpenAPI) -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    fake = FakeSddc()
    server: TestServer = await aiohttp_server(fake.app(), ssl=server_ctx)
    async with aiohttp.ClientSession() as session:
        url = server.make_url("/v1/tokens")
        assert url.scheme == "https"
        async with session.post(url, json=CREDENTIALS, ssl=client_ctx) as resp:
            assert resp.status == 201
            await validate_exchange(openapi, fake, resp)
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await session.post(url, json=CREDENTIALS, ssl=ssl.create_default_context())


async def test_start_fake_serves_on_a_free_port() -> None:
    fake = FakeSddc()
    runner, url = await start_fake(fake)
    try:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url) and not url.endswith(":0")
        async with aiohttp.ClientSession() as session:
            resp = await session.post(f"{url}/v1/tokens", json=CREDENTIALS)
            assert resp.status == 201
    finally:
        await runner.cleanup()


async def test_ensure_tls_dir_creates_a_ca_a_client_can_trust(tmp_path: Path) -> None:
    tls_dir = tmp_path / "tls"
    server_ctx = ensure_tls_dir(tls_dir)
    for name in ("ca.pem", "cert.pem", "key.pem"):
        assert (tls_dir / name).is_file()
    assert stat.S_IMODE((tls_dir / "key.pem").stat().st_mode) == 0o600
    cert_before = (tls_dir / "cert.pem").read_bytes()
    ensure_tls_dir(tls_dir)  # existing files are kept
    assert (tls_dir / "cert.pem").read_bytes() == cert_before

    runner, url = await start_fake(FakeSddc(), ssl_context=server_ctx)
    port = url.rsplit(":", 1)[1]
    trusted = ssl.create_default_context(cafile=str(tls_dir / "ca.pem"))
    try:
        assert url.startswith("https://127.0.0.1:")
        async with aiohttp.ClientSession() as session:
            for base in (url, f"https://localhost:{port}"):
                async with session.post(f"{base}/v1/tokens", json=CREDENTIALS, ssl=trusted) as resp:
                    assert resp.status == 201
    finally:
        await runner.cleanup()


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:8443") == ("127.0.0.1", 8443)
    assert parse_listen("[::1]:0") == ("::1", 0)
    for bad in ("8443", "host:", ":80", "host:99999", "host:x"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_listen(bad)


async def test_serve_forever_prints_the_url_first_and_no_password(
    capsys: pytest.CaptureFixture[str],
) -> None:
    task = asyncio.create_task(
        serve_forever("127.0.0.1:0", 60, 600, {"svc@rainpole.io": "pa55-word"}, None, None)
    )
    try:
        out = ""
        deadline = time.monotonic() + 5
        while "/v1/domains" not in out:
            assert time.monotonic() < deadline, out
            await asyncio.sleep(0.01)
            out += capsys.readouterr().out
        url = out.splitlines()[0]
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
        assert "pa55-word" not in out and "svc@rainpole.io" in out
        async with aiohttp.ClientSession() as session:
            spec = {"username": "svc@rainpole.io", "password": "pa55-word"}
            async with session.post(f"{url}/v1/tokens", json=spec) as resp:
                assert resp.status == 201
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_long_running_fake_keeps_only_its_latest_calls(aiohttp_client: ClientFactory) -> None:
    """The command line's and the demo's fake answer for hours: their call log stays bounded."""
    fake = FakeSddc(calls_kept=3)
    client = await aiohttp_client(fake.app())
    for _ in range(20):
        resp = await client.get("/v1/domains")  # no token: 401, recorded all the same
        assert resp.status == 401
        assert len(fake.calls) < 2 * 3
    assert len(fake.calls) >= 3
    stamps = [c.at for c in fake.calls]
    assert stamps == sorted(stamps) and fake.calls[-1].operation == "domains"
    unbounded = FakeSddc()
    client = await aiohttp_client(unbounded.app())
    for _ in range(20):
        await client.get("/v1/domains")
    assert unbounded.count("domains", 401) == 20, "a test's fake keeps every call"
