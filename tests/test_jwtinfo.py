"""What tokend reads from an access token: ``exp``, ``iat`` and a fingerprint safe to log."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json

import jwt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokend.errors import InvalidResponse
from tokend.jwtinfo import JWT_PATTERN, Claims, decode_claims, fingerprint

# The upstream signs with its own secret; tokend never verifies, so any key will do.
KEY = "a-test-key-that-is-at-least-32-bytes-long"


def encode(payload: dict[str, object], key: str = KEY) -> str:
    return jwt.encode(payload, key, algorithm="HS256")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_token(payload: bytes, header: bytes = b'{"alg":"HS256","typ":"JWT"}') -> str:
    """A compact JWS with an arbitrary payload, for shapes ``jwt.encode`` refuses to produce."""
    return f"{b64(header)}.{b64(payload)}.{b64(b'signature')}"


# -- claims -------------------------------------------------------------------------------------


def test_integer_exp_and_iat_are_read_exactly() -> None:
    claims = decode_claims(encode({"sub": "admin", "iat": 1_795_845_600, "exp": 1_795_849_200}))

    assert claims == Claims(exp=1_795_849_200, iat=1_795_845_600)
    assert type(claims.exp) is int
    assert type(claims.iat) is int


def test_fractional_exp_and_iat_are_read_exactly() -> None:
    claims = decode_claims(encode({"iat": 1_795_845_600.123456, "exp": 1_795_849_200.654321}))

    assert claims.exp == 1_795_849_200.654321
    assert claims.iat == 1_795_845_600.123456
    assert type(claims.exp) is float


def test_the_vendor_sample_claims_are_read() -> None:
    token = encode({
        "jti": "0f4b1f9e", "iat": 1_700_000_000, "sub": "administrator@vsphere.local",
        "iss": "vcf-auth", "aud": "sddc-services", "nbf": 1_700_000_000, "exp": 1_700_003_600,
        "user": "administrator@vsphere.local", "name": "Administrator", "scope": ["ADMIN"],
    })

    assert decode_claims(token) == Claims(exp=1_700_003_600, iat=1_700_000_000)


def test_claims_are_read_whatever_the_key_and_however_long_ago_it_expired() -> None:
    token = encode({"iat": 1, "exp": 2, "nbf": 10**10, "aud": "elsewhere"}, key="another-key" * 4)

    assert decode_claims(token) == Claims(exp=2, iat=1)


def test_a_token_without_iat_has_claims_with_iat_none() -> None:
    assert decode_claims(encode({"exp": 1_700_003_600})) == Claims(exp=1_700_003_600, iat=None)


@given(exp=st.integers(0, 2**53) | st.floats(0, 1e12, allow_nan=False),
       iat=st.none() | st.integers(0, 2**53) | st.floats(0, 1e12, allow_nan=False))
def test_numeric_claims_survive_the_round_trip_unchanged(exp: float, iat: float | None) -> None:
    payload: dict[str, object] = {"exp": exp}
    if iat is not None:
        payload["iat"] = iat

    claims = decode_claims(encode(payload))

    assert claims.exp == exp and type(claims.exp) is type(exp)
    assert claims.iat == iat and type(claims.iat) is type(iat)


def test_a_token_without_exp_is_an_invalid_response() -> None:
    with pytest.raises(InvalidResponse, match="exp"):
        decode_claims(encode({"iat": 1_700_000_000}))


def test_a_null_exp_counts_as_missing() -> None:
    with pytest.raises(InvalidResponse, match="exp"):
        decode_claims(raw_token(b'{"exp": null}'))


@pytest.mark.parametrize("exp", ["1700003600", "soon", [1_700_003_600], {"at": 1}, True, False])
def test_a_non_numeric_exp_is_an_invalid_response(exp: object) -> None:
    with pytest.raises(InvalidResponse, match="exp"):
        decode_claims(encode({"exp": exp}))


@pytest.mark.parametrize("iat", ["1700000000", True, [1]])
def test_a_non_numeric_iat_is_an_invalid_response(iat: object) -> None:
    with pytest.raises(InvalidResponse, match="iat"):
        decode_claims(encode({"exp": 1_700_003_600, "iat": iat}))


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
def test_a_non_finite_exp_is_an_invalid_response(literal: bytes) -> None:
    with pytest.raises(InvalidResponse, match="exp"):
        decode_claims(raw_token(b'{"exp": ' + literal + b"}"))


def test_an_integer_exp_beyond_any_float_is_an_invalid_response() -> None:
    with pytest.raises(InvalidResponse, match="exp"):
        decode_claims(raw_token(b'{"exp": 1' + b"0" * 400 + b"}"))


@pytest.mark.parametrize("token", [
    "not-a-jwt",
    "",
    "a.b.c",
    "...",
    "eyJhbGciOiJIUzI1NiJ9.!!!!.sig",
    "eyJ%%%%.eyJ%%%%.x",
    raw_token(b"\xff\xfe not json"),
    raw_token(b"[1, 2, 3]"),
    raw_token(b'"a string"'),
    raw_token(b'{"exp": 1}', header=b"[]"),
    raw_token(b'{"exp": 1}', header=b"not json"),
    raw_token(b'{"exp": 1}') + ".extra",
    raw_token(b'{"exp": 1}')[:-9] + "\ud800",
])
def test_malformed_tokens_are_invalid_responses(token: str) -> None:
    with pytest.raises(InvalidResponse):
        decode_claims(token)


def test_the_error_text_does_not_repeat_the_token() -> None:
    token = "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0LXBheWxvYWQ.c2lnbmF0dXJl-garbled"

    with pytest.raises(InvalidResponse) as caught:
        decode_claims(token)

    assert token not in str(caught.value)
    assert caught.value.__cause__ is None


ANY_CHAR = st.characters() | st.characters(categories=["Cs"])


@given(st.text(ANY_CHAR))
def test_arbitrary_text_either_decodes_or_raises_invalid_response(text: str) -> None:
    try:
        claims = decode_claims(text)
    except InvalidResponse:
        return
    assert isinstance(claims.exp, int | float)


@given(st.lists(st.text(ANY_CHAR), min_size=3, max_size=3).map(".".join))
def test_three_dotted_parts_of_arbitrary_text_raise_only_invalid_response(text: str) -> None:
    with contextlib.suppress(InvalidResponse):
        decode_claims(text)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@given(payload=st.dictionaries(st.sampled_from(["exp", "iat", "nbf", "sub"]), JSON)
       | JSON | st.binary())
def test_arbitrary_payloads_yield_numeric_claims_or_invalid_response(payload: object) -> None:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    try:
        claims = decode_claims(raw_token(data))
    except InvalidResponse:
        return
    for value in (claims.exp, claims.iat):
        assert value is None or (isinstance(value, int | float) and not isinstance(value, bool))
    assert claims.exp is not None


# -- whole seconds ------------------------------------------------------------------------------


@pytest.mark.parametrize(("claims", "whole"), [
    (Claims(exp=1_700_003_600, iat=1_700_000_000), True),
    (Claims(exp=1_700_003_600.0, iat=1_700_000_000.0), True),
    (Claims(exp=1_700_003_600, iat=None), True),
    (Claims(exp=1_700_003_600.5, iat=1_700_000_000.5), False),
    (Claims(exp=1_700_003_600.5, iat=None), False),
])
def test_whole_seconds_means_no_claim_carries_a_fraction(claims: Claims, whole: bool) -> None:
    assert claims.whole_seconds is whole


# -- fingerprint and pattern --------------------------------------------------------------------


def test_fingerprint_is_the_sha256_of_the_token_in_lower_case_hex() -> None:
    token = encode({"exp": 1_700_003_600})

    assert fingerprint(token) == "sha256:" + hashlib.sha256(token.encode()).hexdigest()


@given(st.text())
def test_fingerprint_matches_sha256_of_any_text(token: str) -> None:
    digest = fingerprint(token)

    assert digest == "sha256:" + hashlib.sha256(token.encode()).hexdigest()
    assert digest == digest.lower()


def test_fingerprint_never_fails_even_on_a_lone_surrogate() -> None:
    assert fingerprint("\ud800").startswith("sha256:")


def test_different_tokens_have_different_fingerprints() -> None:
    assert fingerprint(encode({"exp": 1})) != fingerprint(encode({"exp": 2}))


def test_jwt_pattern_matches_a_real_encoded_token() -> None:
    token = encode({"iat": 1_700_000_000, "exp": 1_700_003_600, "sub": "admin"})

    match = JWT_PATTERN.search(f'{{"message": "refresh token {token} is expired"}}')

    assert match is not None
    assert match.group(0) == token


@given(exp=st.integers(0, 2**53) | st.floats(0, 1e12),
       extra=st.dictionaries(st.text().map("x-{}".format), st.integers() | st.text(), max_size=4))
def test_jwt_pattern_matches_every_token_with_an_exp_whole(
    exp: float, extra: dict[str, object],
) -> None:
    token = encode({"exp": exp, **extra})

    assert JWT_PATTERN.fullmatch(token) is not None


@pytest.mark.parametrize("text", [
    "sha256:" + "ab" * 32,
    "a3f1c2d4-5e6f-7a8b-9c0d-1e2f3a4b5c6d",
    "administrator@vsphere.local",
])
def test_jwt_pattern_leaves_fingerprints_and_refresh_ids_alone(text: str) -> None:
    assert JWT_PATTERN.search(text) is None


# -- what each refusal says: the part that is wrong, never the token ------------------------------


GOOD_HEADER = b64(b'{"alg":"HS256","typ":"JWT"}')
GOOD_PAYLOAD = b64(b'{"exp": 1700003600}')


@pytest.mark.parametrize(("token", "message"), [
    ("a.b", "the access token is not a JWT (2 dot-separated parts, not 3)"),
    ("a.b.c.d", "the access token is not a JWT (4 dot-separated parts, not 3)"),
    (f"!!.{GOOD_PAYLOAD}.c2ln", "the access token is not a JWT (its header is not base64url)"),
    (f"{GOOD_HEADER}.!!.c2ln", "the access token is not a JWT (its payload is not base64url)"),
    (f"{GOOD_HEADER}.{GOOD_PAYLOAD}.!!", "the access token is not a JWT (its signature is not base64url)"),
    (f"abcde.{GOOD_PAYLOAD}.c2ln", "the access token is not a JWT (its header is not base64url)"),
    (f"{GOOD_HEADER}.abcde.c2ln", "the access token is not a JWT (its payload is not base64url)"),
    (f"{GOOD_HEADER}.{GOOD_PAYLOAD}.abcde",
     "the access token is not a JWT (its signature is not base64url)"),
    (raw_token(b'{"exp": 1}', header=b"not json"), "the access token is not a JWT (its header is not JSON)"),
    (raw_token(b"not json"), "the access token is not a JWT (its payload is not JSON)"),
    (raw_token(b'{"exp": 1}', header=b"[1]"),
     "the access token is not a JWT (its header is not a JSON object)"),
    (raw_token(b"[1]"), "the access token is not a JWT (its payload is not a JSON object)"),
    (raw_token(b'{"iat": 1}'), "the access token has no 'exp' claim"),
    (raw_token(b'{"exp": "soon"}'), "the access token's 'exp' claim is not a number"),
    (raw_token(b'{"exp": 1, "iat": "then"}'), "the access token's 'iat' claim is not a number"),
    (raw_token(b'{"exp": 1, "iat": null}'), "the access token's 'iat' claim is not a number"),
])
def test_each_refusal_names_the_part_that_is_wrong(token: str, message: str) -> None:
    with pytest.raises(InvalidResponse) as caught:
        decode_claims(token)

    assert caught.value.message == message


def test_a_present_but_null_iat_is_refused_while_an_absent_one_is_none() -> None:
    # SPEC §8.1: claims are numbers, never null; an absent iat is allowed.
    with pytest.raises(InvalidResponse, match="'iat'"):
        decode_claims(raw_token(b'{"exp": 1700003600, "iat": null}'))
    assert decode_claims(raw_token(b'{"exp": 1700003600}')).iat is None


@pytest.mark.parametrize(("header", "refused"), [
    (b'{"alg":"HS256","b64":false,"crit":["b64"]}', True),
    (b'{"alg":"HS256","b64":true}', False),
    (b'{"alg":"HS256","b64":0}', False),  # only the JSON literal false unencodes the payload
    (b'{"alg":"HS256"}', False),
])
def test_an_unencoded_payload_rfc_7797_is_refused(header: bytes, refused: bool) -> None:
    token = raw_token(b'{"exp": 1700003600}', header=header)
    if refused:
        with pytest.raises(InvalidResponse) as caught:
            decode_claims(token)
        assert caught.value.message == "the access token is not a JWT (unencoded payload)"
    else:
        assert decode_claims(token).exp == 1_700_003_600
