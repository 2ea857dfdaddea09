"""The upstream client's door (SPEC §8.2): the TokenPair shapes it takes, the access tokens it refuses.

Each test answers one login or refresh from a real aiohttp server on loopback (``call`` from the
fuzz module) with one exact body.
"""

from __future__ import annotations

import json
from typing import Any

import jwt
import pytest

from tests.test_fuzz_upstream import Body, Reply, call, target
from tokend.errors import InvalidResponse, RefreshTokenGone, UpstreamError
from tokend.upstream import UpstreamClient
from tokend.upstream_answers import MAX_ACCESS_TOKEN

RID = "5f0d7c3e-0f6b-4b4e-9a51-2c7d5c1e8a11"
GOOD = jwt.encode({"iat": 1_999_996_400, "exp": 2_000_000_000, "sub": "administrator"},
                  "k" * 32, algorithm="HS256")
NO_EXP = jwt.encode({"iat": 1_999_996_400, "sub": "administrator"}, "k" * 32, algorithm="HS256")


def login(pair: dict[str, Any]) -> Any:
    return call([Reply(201, Body(json.dumps(pair).encode()))], "Pw#x", "login")


def refresh(answer: object) -> Any:
    return call([Reply(200, Body(json.dumps(answer).encode()))], "Pw#x", "refresh", RID,
                form="json_string")


def padded_token(length: int) -> str:
    """A usable access token exactly ``length`` characters long (a padding claim sets the size)."""
    token = ""
    for pad in range(length):
        token = jwt.encode({"exp": 2_000_000_000, "pad": "x" * pad}, "k" * 32, algorithm="HS256")
        if len(token) >= length:
            break
    assert len(token) == length, len(token)
    return token


# -- refreshToken shapes -----------------------------------------------------------------------


def test_login_with_refresh_token_object_is_accepted() -> None:
    outcome = login({"accessToken": GOOD, "refreshToken": {"id": RID}})
    assert outcome.error is None and outcome.result.refresh_id == RID


def test_login_with_bare_string_refresh_token_is_accepted() -> None:
    outcome = login({"accessToken": GOOD, "refreshToken": RID})
    assert outcome.error is None, outcome.error
    assert outcome.result.refresh_id == RID and outcome.result.access_token == GOOD


def test_login_without_refresh_token_is_accepted() -> None:
    outcome = login({"accessToken": GOOD})
    assert outcome.error is None, outcome.error
    assert outcome.result.refresh_id is None and outcome.result.access_token == GOOD


def test_login_with_null_refresh_token_is_accepted() -> None:
    outcome = login({"accessToken": GOOD, "refreshToken": None})
    assert outcome.error is None, outcome.error
    assert outcome.result.refresh_id is None


@pytest.mark.parametrize("value", [5, 1.5, True, [], [RID], {}, {"id": None}, {"id": 5},
                                   {"id": ""}, {"ID": RID}, {"id": [RID]}, ""])
def test_wrong_typed_refresh_token_is_invalid(value: object) -> None:
    outcome = login({"accessToken": GOOD, "refreshToken": value})
    assert isinstance(outcome.error, InvalidResponse), outcome.error
    assert "refreshToken" in outcome.error.message
    assert outcome.error.issued_refresh_id is None


def test_refresh_token_id_with_a_lone_surrogate_is_invalid() -> None:
    body = b'{"accessToken": "' + GOOD.encode() + b'", "refreshToken": {"id": "rid-\\ud800"}}'
    outcome = call([Reply(201, Body(body))], "Pw#x", "login")
    assert isinstance(outcome.error, InvalidResponse), outcome.error
    assert outcome.error.issued_refresh_id is None


async def test_refresh_with_an_unsendable_id_is_refresh_token_gone_without_a_call() -> None:
    client = UpstreamClient(target("http://127.0.0.1:9", "Pw#x"))
    client.refresh_form = "bare"
    try:
        with pytest.raises(RefreshTokenGone):
            await client.refresh("rid-\ud800")
    finally:
        await client.close()


# -- the access token ------------------------------------------------------------------------------


@pytest.mark.parametrize("space", [" ", "\n", "\r\n", "\t ", " \n\t"])
def test_access_token_with_surrounding_whitespace_is_trimmed(space: str) -> None:
    outcome = login({"accessToken": space + GOOD + space, "refreshToken": {"id": RID}})
    assert outcome.error is None, outcome.error
    assert outcome.result.access_token == GOOD
    outcome = refresh(space + GOOD + space)
    assert outcome.error is None, outcome.error
    assert outcome.result.access_token == GOOD


@pytest.mark.parametrize("inside", ["\n", "\r", "\r\n", " ", "\t"])
@pytest.mark.parametrize("where", ["in a part", "after a dot"])
def test_access_token_with_interior_newline_is_invalid(inside: str, where: str) -> None:
    cut = GOOD.index(".") + (1 if where == "after a dot" else -3)
    broken = GOOD[:cut] + inside + GOOD[cut:]
    outcome = login({"accessToken": broken, "refreshToken": {"id": RID}})
    assert isinstance(outcome.error, InvalidResponse), outcome.error
    assert "compact JWS" in outcome.error.message
    outcome = refresh(broken)
    assert isinstance(outcome.error, InvalidResponse), outcome.error


@pytest.mark.parametrize("broken", [
    GOOD.rsplit(".", 1)[0],  # two parts
    GOOD + ".c2ln",  # four parts
    GOOD + "=",  # padding is not base64url in a JWS
    "." + GOOD.split(".", 1)[1],  # empty header
    GOOD.replace("-", "+").replace("_", "/") + "+/",  # base64, not base64url
    "ey\u0407" + GOOD[3:],  # a non-ASCII letter
    "   ",
])
def test_access_token_that_is_not_a_compact_jws_is_invalid(broken: str) -> None:
    outcome = login({"accessToken": broken, "refreshToken": {"id": RID}})
    assert isinstance(outcome.error, InvalidResponse), outcome.error
    outcome = refresh(broken)
    assert isinstance(outcome.error, InvalidResponse), outcome.error


def test_access_token_of_16_kib_is_accepted_and_one_byte_more_is_invalid() -> None:
    exact = padded_token(MAX_ACCESS_TOKEN)
    outcome = login({"accessToken": exact, "refreshToken": {"id": RID}})
    assert outcome.error is None, outcome.error
    over = padded_token(MAX_ACCESS_TOKEN + 1)
    outcome = login({"accessToken": over, "refreshToken": {"id": RID}})
    assert isinstance(outcome.error, InvalidResponse), outcome.error
    assert "longer than 16384 bytes" in outcome.error.message
    outcome = refresh(over)
    assert isinstance(outcome.error, InvalidResponse), outcome.error


# -- a refused login answer --------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["object", "bare"])
def test_refused_login_answer_carries_refresh_id_for_revocation(shape: str) -> None:
    refresh_token: object = {"id": RID} if shape == "object" else RID
    outcome = login({"accessToken": NO_EXP, "refreshToken": refresh_token})
    error = outcome.error
    assert isinstance(error, InvalidResponse), error
    assert error.issued_refresh_id == RID
    assert RID not in f"{error} {error!r} {error.message} {error.args}"


@pytest.mark.parametrize("access", [GOOD[:20] + "\n" + GOOD[20:], "not a token", 42, None, ""])
def test_refused_login_access_token_still_carries_refresh_id(access: object) -> None:
    outcome = login({"accessToken": access, "refreshToken": {"id": RID}})
    assert isinstance(outcome.error, InvalidResponse), outcome.error
    assert outcome.error.issued_refresh_id == RID


def test_refused_login_answer_without_refresh_id_carries_none() -> None:
    outcome = login({"accessToken": NO_EXP})
    assert isinstance(outcome.error, InvalidResponse), outcome.error
    assert outcome.error.issued_refresh_id is None


def test_upstream_errors_carry_no_refresh_id_by_default() -> None:
    assert UpstreamError("x").issued_refresh_id is None
    assert InvalidResponse("x", issued_refresh_id=RID).issued_refresh_id == RID
