"""Upstream response handling under arbitrary answers: status codes, headers and bodies.

A real aiohttp server on loopback answers each example; ``UpstreamClient`` talks to it over HTTP.
Whatever the upstream says, the only exceptions that leave the client are ``UpstreamError``
subclasses, classified by status as SPEC §5.3/§5.4 and VCF-API.md say, and their text never
carries the password or the refresh token id that was sent. Each example runs in its own event
loop (``asyncio.run``), so no state leaks from one example to the next.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import json
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import jwt
import pytest
from aiohttp import web
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tokend.config import TargetConfig
from tokend.errors import (
    CredentialsRejected,
    InvalidResponse,
    RefreshTokenGone,
    TransientError,
    UpstreamError,
)
from tokend.secrets import Secret, SecretSource
from tokend.upstream import MAX_BODY, Issued, UpstreamClient

TIMEOUT = 2.0
FUZZ = settings(max_examples=250, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# -- the secrets sent, and where they must not show up -----------------------------------------

# A marker prefix keeps a short generated secret from matching ordinary message text by chance.
passwords = st.text(st.characters(blacklist_characters="\r\n"), min_size=4, max_size=24).map(
    lambda s: "Pw#" + s)
refresh_ids = st.uuids().map(lambda u: f"rid-{u}") | st.text(
    st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)),
    min_size=6, max_size=30).map(lambda s: "Rid#" + s)


def assert_no_secret(exc: BaseException, *secrets: str) -> None:
    text = f"{exc} {exc!r} {getattr(exc, 'message', '')}"
    for secret in secrets:
        assert secret not in text, f"{type(exc).__name__} text carries a secret: {text!r}"


# -- bodies --------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                  max_size=4),
    max_leaves=12,
)
# Deeper than the interpreter's recursion limit: json.loads raises RecursionError, not ValueError.
deep_json = st.integers(min_value=1, max_value=60_000).flatmap(
    lambda n: st.sampled_from(["[" * n + "]" * n, '{"a":' * n + "1" + "}" * n, "[" * n]))

finite_numbers = (st.integers(min_value=-(2**63), max_value=2**63)
                  | st.floats(allow_nan=False, allow_infinity=False))
odd_claim_values = (st.booleans() | st.text(max_size=10) | st.just(None) | st.lists(st.integers(),
                                                                                     max_size=2)
                    | st.sampled_from([math.nan, math.inf, -math.inf, 10**400, "1795849200"])
                    | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
MISSING = object()
claim_values = st.one_of(st.just(MISSING), finite_numbers, odd_claim_values)
extra_claims = st.dictionaries(
    st.sampled_from(["sub", "jti", "iss", "aud", "nbf", "user", "name", "scope"]) | st.text(max_size=6),
    json_values, max_size=4,
).map(lambda d: {k: v for k, v in d.items() if k not in ("exp", "iat")})


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def is_number(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


@dataclass(frozen=True)
class Token:
    """An access token and whether tokend can schedule by it (a numeric exp; a numeric or no iat).

    An ``iat`` that is present but null is refused (SPEC §8.1: claims are numbers, never null).
    """

    text: str
    exp: Any = MISSING
    iat: Any = MISSING
    usable: bool | None = None  # None: not built from known claims (random text)


@st.composite
def jwt_tokens(draw: st.DrawFn) -> Token:
    exp, iat = draw(claim_values), draw(claim_values)
    claims = draw(extra_claims)
    if exp is not MISSING:
        claims["exp"] = exp
    if iat is not MISSING:
        claims["iat"] = iat
    header = {"alg": "HS256", "typ": "JWT"}
    text = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode()) + "." + b64(
        draw(st.binary(min_size=1, max_size=32)))
    usable = exp is not None and is_number(exp) and (iat is MISSING or is_number(iat))
    return Token(text, None if exp is MISSING else exp, None if iat in (MISSING, None) else iat,
                 usable)


@st.composite
def vendor_tokens(draw: st.DrawFn) -> Token:
    """What the SDDC Manager issues: HS256 via pyjwt, the vendor's claim set."""
    iat = draw(st.integers(min_value=0, max_value=2**40) | st.floats(min_value=0, max_value=2**40))
    exp = iat + draw(st.sampled_from([3600, 60, 1, 0.5, 0]))
    claims = {"jti": draw(st.uuids()).hex, "iat": iat, "sub": "administrator@vsphere.local",
              "iss": "vcf-auth", "aud": "sddc-services", "nbf": iat, "exp": exp,
              "user": "administrator@vsphere.local", "name": "administrator",
              "scope": draw(st.lists(st.sampled_from(["ADMIN", "OPERATOR", "VIEWER"]), max_size=3))}
    if draw(st.booleans()):
        del claims["iat"]
    text = jwt.encode(claims, draw(st.binary(min_size=32, max_size=32)), algorithm="HS256")
    return Token(text, exp, claims.get("iat"), True)


garbage_tokens = st.builds(Token, st.text(max_size=60)) | st.builds(
    Token, st.from_regex(r"eyJ[A-Za-z0-9_-]{0,30}\.[A-Za-z0-9_-]{0,30}\.[A-Za-z0-9_-]{0,10}",
                         fullmatch=True))
tokens = vendor_tokens() | jwt_tokens() | garbage_tokens


@dataclass(frozen=True)
class Body:
    """A response body and, when it was built as one, the token pair or token it carries."""

    data: bytes
    token: Token | None = None
    refresh_id: str | None = None


def error_body(echo: str) -> st.SearchStrategy[Body]:
    """The upstream's Error object, its message echoing a secret (VCF-API.md allows any fields)."""
    return st.builds(
        lambda code, extra: Body(json.dumps({
            "errorCode": code, "message": f"refresh token {echo} is not valid",
            "remediationMessage": echo, "referenceToken": "REF-1", "causes": extra}).encode()),
        st.sampled_from(["Unauthorized", "BAD_REQUEST", "TOKEN_NOT_FOUND", ""]) | st.text(max_size=10),
        json_values,
    )


def pair_bodies() -> st.SearchStrategy[Body]:
    """``TokenPair`` bodies, mostly well-formed, sometimes with a part of any shape."""
    def build(token: Token, rid: str, extra: dict[str, Any], access: Any, refresh: Any) -> Body:
        data: dict[str, Any] = {**extra, "accessToken": token.text, "refreshToken": {"id": rid}}
        if access is not MISSING:
            data["accessToken"] = access
        if refresh is not MISSING:
            data["refreshToken"] = refresh
        good = access is MISSING and refresh is MISSING and bool(token.text) and bool(rid)
        return Body(json.dumps(data).encode(), token if good else None, rid if good else None)

    return st.builds(
        build, tokens, refresh_ids | st.just(""),
        st.dictionaries(st.text(max_size=8), json_values, max_size=2),
        st.just(MISSING) | st.just(MISSING) | json_values,
        st.just(MISSING) | st.just(MISSING) | json_values
        | st.builds(lambda v: {"id": v}, json_values),
    )


def string_bodies() -> st.SearchStrategy[Body]:
    """The refresh answer: the access token as a JSON string (or, wrongly, bare)."""
    return (st.builds(lambda t: Body(json.dumps(t.text).encode(), t if t.text else None), tokens)
            | st.builds(lambda t: Body(t.text.encode("utf-8", "surrogatepass")), tokens))


any_bodies = (
    st.binary(max_size=300).map(Body)
    | json_values.map(lambda v: Body(json.dumps(v).encode()))
    | deep_json.map(lambda s: Body(s.encode()))
    | st.sampled_from([b"", b"null", b"{}", b"[]", b'""', b"\xff\xfe", b'"\\ud800"', b"NaN"]).map(Body)
)


# -- headers -------------------------------------------------------------------------------------

# What an HTTP server can put in a header value: no CR, LF or other control characters.
header_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=40)
http_dates = st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(9998, 12, 31),
                          timezones=st.just(UTC)).map(lambda d: d.replace(microsecond=0))


@dataclass(frozen=True)
class Header:
    """A header value and, when it was built as one, the number it stands for."""

    value: str
    seconds: float | None = None  # Retry-After delta-seconds
    when: float | None = None  # an HTTP date, as epoch seconds


retry_afters = (
    st.integers(min_value=0, max_value=10**7).map(lambda n: Header(str(n), seconds=float(n)))
    | http_dates.map(lambda d: Header(email.utils.format_datetime(d, usegmt=True),
                                      when=d.timestamp()))
    | header_text.map(Header)
    | st.sampled_from(["²", "١٢", "-5", "1.5", "9" * 400, "Fri, 31 Dec 9999 23:59:59 -0000",
                       "Mon, 01 Jan 0001 00:00:00 -0000", "Sun, 06 Nov 1994 08:49:37 GMT"]).map(Header)
)
dates = (
    http_dates.map(lambda d: Header(email.utils.format_datetime(d, usegmt=True), when=d.timestamp()))
    | header_text.map(Header)
    | st.sampled_from(["Fri, 31 Dec 9999 23:59:59 -0000", "Fri, 31 Dec 9999 23:59:59 -2359",
                       "Mon, 01 Jan 0001 00:00:00 +2359", "0", "Thu, 01 Jan 1970 00:00:00 GMT"]
                      ).map(Header)
)


@dataclass(frozen=True)
class Reply:
    """One answer of the fake upstream."""

    status: int
    body: Body
    retry_after: Header | None = None
    date: Header | None = None
    location: str | None = None
    content_type: str | None = None

    def headers(self) -> dict[str, str]:
        headers = {}
        if self.retry_after is not None:
            headers["Retry-After"] = self.retry_after.value
        if self.date is not None:
            headers["Date"] = self.date.value
        if self.location is not None:
            headers["Location"] = self.location
        if self.content_type is not None:
            headers["Content-Type"] = self.content_type
        return headers

    @property
    def sent_body(self) -> bytes:
        # aiohttp sends no body with these, as HTTP says.
        return b"" if self.status in (204, 304) else self.body.data


statuses = st.integers(min_value=200, max_value=599) | st.sampled_from(
    [200, 201, 202, 204, 301, 302, 303, 307, 308, 400, 401, 403, 404, 405, 409, 429, 500, 502, 503,
     504])


def replies(bodies: st.SearchStrategy[Body]) -> st.SearchStrategy[Reply]:
    return st.builds(
        Reply,
        status=statuses,
        body=bodies,
        retry_after=st.none() | retry_afters,
        date=st.none() | dates,
        location=st.none() | header_text | st.just("https://evil.example/v1/tokens"),
        content_type=st.none() | st.sampled_from(["application/json", "text/html", "text/plain",
                                                  "application/json; charset=latin-1"]),
    )


# -- the server ----------------------------------------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    content_type: str
    body: bytes


@dataclass
class Upstream:
    """Answers the i-th request with the i-th reply (the last one again after that)."""

    replies: list[Reply]
    seen: list[Seen] = field(default_factory=list)
    runner: web.AppRunner | None = None
    url: str = ""

    async def __aenter__(self) -> Upstream:
        async def handle(request: web.Request) -> web.Response:
            self.seen.append(Seen(request.method, request.path,
                                  request.headers.get("Content-Type", ""), await request.read()))
            reply = self.replies[min(len(self.seen), len(self.replies)) - 1]
            return web.Response(status=reply.status, body=reply.body.data, headers=reply.headers())

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


def target(url: str, password: str, timeout: float = TIMEOUT) -> TargetConfig:
    source = SecretSource("literal", "/etc/tokend/config.toml", "targets[0].password",
                          literal=Secret(password))
    # Plain HTTP: verify_tls=False only spares loading the system CAs for every example.
    return TargetConfig(name="t1", url=url, username="administrator@vsphere.local",
                        password=source, api_key=None, request_timeout=timeout, verify_tls=False)


@dataclass
class Outcome:
    result: Issued | None = None
    error: UpstreamError | None = None
    seen: list[Seen] = field(default_factory=list)
    before: float = 0.0
    after: float = 0.0
    form_after: str | None = None


def call(replies_: list[Reply], password: str, operation: str, refresh_id: str = "",
         form: str | None = None, api_key: bool = False) -> Outcome:
    """Run one operation against a fresh server in a fresh loop; anything but UpstreamError fails."""
    async def run() -> Outcome:
        async with Upstream(replies_) as upstream:
            client = UpstreamClient(target(upstream.url, password))
            client.refresh_form = form  # type: ignore[assignment]
            outcome = Outcome(seen=upstream.seen, before=time.time())
            try:
                if operation == "login":
                    outcome.result = await client.login(None if api_key else "administrator@vsphere.local",
                                                        Secret(password))
                elif operation == "refresh":
                    outcome.result = await client.refresh(refresh_id)
                else:
                    assert await client.revoke(refresh_id) is None
            except UpstreamError as exc:
                outcome.error = exc
            finally:
                outcome.after = time.time()
                outcome.form_after = client.refresh_form
                await client.close()
            return outcome

    return asyncio.run(run())


def label(operation: str, outcome: Outcome) -> None:
    """Show in --hypothesis-show-statistics how the examples ended."""
    event(f"{operation}: {type(outcome.error or outcome.result).__name__}")


# -- what must hold ------------------------------------------------------------------------------


def check_retry_after(error: UpstreamError, reply: Reply, outcome: Outcome) -> None:
    got = error.retry_after
    assert got is None or (got >= 0 and not math.isnan(got)), got
    header = reply.retry_after
    if header is None:
        assert got is None
    elif header.seconds is not None:
        assert got == header.seconds
    elif header.when is not None:
        low = max(0.0, header.when - outcome.after - 1)
        high = max(0.0, header.when - outcome.before + 1)
        assert got is not None and low <= got <= high, (got, low, high)


def check_failure(outcome: Outcome, reply: Reply, expected: type[UpstreamError]) -> None:
    error = outcome.error
    assert error is not None, f"HTTP {reply.status} gave {outcome.result!r}"
    assert type(error) is expected, f"HTTP {reply.status}: {type(error).__name__}: {error}"
    assert error.status == reply.status
    if expected is InvalidResponse:
        assert "redirect not followed" in error.message
    elif reply.status == 429 or reply.status >= 500:
        check_retry_after(error, reply, outcome)


def check_issued(outcome: Outcome, reply: Reply, token: Token, refresh_id: str | None) -> None:
    issued = outcome.result
    assert outcome.error is None, f"a usable answer was refused: {outcome.error}"
    assert isinstance(issued, Issued)
    assert issued.access_token == token.text
    assert issued.refresh_id == refresh_id
    assert issued.claims.exp == token.exp
    assert issued.claims.iat == token.iat
    assert outcome.before - 1 <= issued.sent_wall <= issued.received_wall <= outcome.after + 1
    assert 0 <= issued.duration <= TIMEOUT + 1
    date = reply.date
    if date is None:  # aiohttp's own Date header: now
        assert issued.server_date is not None
        assert abs(issued.server_date - outcome.before) < 5
    elif date.when is not None:
        assert issued.server_date == date.when
    if issued.server_date is not None:
        assert math.isfinite(issued.clock_skew or 0.0)


def check_success_or_invalid(outcome: Outcome, reply: Reply, token: Token | None,
                             refresh_id: str | None) -> None:
    """A 2xx: a known-usable token is issued, a known-unusable one is an InvalidResponse."""
    body_kept = reply.sent_body == reply.body.data
    if token is not None and body_kept and token.usable:
        check_issued(outcome, reply, token, refresh_id)
    elif token is not None and body_kept and token.usable is False:
        assert isinstance(outcome.error, InvalidResponse), (outcome.error, outcome.result)
    elif outcome.error is not None:
        assert isinstance(outcome.error, InvalidResponse), outcome.error
    else:  # random text that happens to decode: it must be what was sent
        assert outcome.result is not None


def successes(bodies: st.SearchStrategy[Body]) -> st.SearchStrategy[Reply]:
    """2xx answers, so that enough examples get as far as decoding the token."""
    return st.builds(Reply, status=st.sampled_from([200, 201, 202, 203, 206, 226, 299]), body=bodies,
                     date=st.none() | dates)


good_pairs = st.builds(
    lambda token, rid: Body(json.dumps({"accessToken": token.text, "refreshToken": {"id": rid}}
                                       ).encode(), token, rid),
    vendor_tokens() | jwt_tokens(), refresh_ids)
good_strings = st.builds(lambda token: Body(json.dumps(token.text).encode(), token),
                         vendor_tokens() | jwt_tokens())
login_replies = replies(pair_bodies() | any_bodies | error_body("ECHO")) | successes(good_pairs)


@FUZZ
@given(reply=login_replies, password=passwords, api_key=st.booleans())
def test_login_answers(reply: Reply, password: str, api_key: bool) -> None:
    reply = echo(reply, password)
    outcome = call([reply], password, "login", api_key=api_key)
    label("login", outcome)
    assert len(outcome.seen) == 1, "a redirect was followed or the login repeated"
    seen = outcome.seen[0]
    assert (seen.method, seen.path, seen.content_type) == ("POST", "/v1/tokens", "application/json")
    sent = json.loads(seen.body)
    assert sent == ({"apiKey": password} if api_key
                    else {"username": "administrator@vsphere.local", "password": password})
    if outcome.error is not None:
        assert_no_secret(outcome.error, password)
    status = reply.status
    if 200 <= status < 300:
        check_success_or_invalid(outcome, reply, reply.body.token, reply.body.refresh_id)
    elif 300 <= status < 400:
        check_failure(outcome, reply, InvalidResponse)
    elif status in (400, 401, 403):
        check_failure(outcome, reply, CredentialsRejected)
    else:
        check_failure(outcome, reply, TransientError)


refresh_replies = (replies(string_bodies() | any_bodies | error_body("ECHO"))
                   | successes(good_strings))


@FUZZ
@given(first=refresh_replies, second=refresh_replies, refresh_id=refresh_ids,
       form=st.sampled_from([None, "json_string", "bare"]))
def test_refresh_answers(first: Reply, second: Reply, refresh_id: str, form: str | None) -> None:
    first, second = echo(first, refresh_id), echo(second, refresh_id)
    outcome = call([first, second], "Pw#unused", "refresh", refresh_id, form)
    label("refresh", outcome)
    fallback = first.status == 400 and form is None
    assert len(outcome.seen) == (2 if fallback else 1)
    bodies = [json.dumps(refresh_id).encode() if (form or "json_string") == "json_string"
              else refresh_id.encode()]
    if fallback:
        bodies.append(refresh_id.encode())
    for seen, body in zip(outcome.seen, bodies, strict=True):
        assert (seen.method, seen.path, seen.content_type) == (
            "PATCH", "/v1/tokens/access-token/refresh", "application/json")
        assert seen.body == body
    if outcome.error is not None:
        assert_no_secret(outcome.error, refresh_id)
    reply = second if fallback else first
    used_form = "bare" if fallback else (form or "json_string")
    status = reply.status
    if 200 <= status < 300:
        check_success_or_invalid(outcome, reply, reply.body.token, None)
        assert outcome.form_after == (used_form if outcome.error is None else form)
        return
    assert outcome.form_after == form
    if 300 <= status < 400:
        check_failure(outcome, reply, InvalidResponse)
    elif status in (400, 401, 403, 404):
        check_failure(outcome, reply, RefreshTokenGone)
    else:
        check_failure(outcome, reply, TransientError)


# -- SPEC §8.2: the TokenPair shapes and the access token's form ----------------------------------

surrounding_space = st.text(st.sampled_from(" \t\r\n"), max_size=3)
interior_space = st.sampled_from([" ", "\t", "\r", "\n", "\r\n"])
bad_refresh_tokens = (st.sampled_from([0, 1.5, True, False, [], {}, "", {"id": None}, {"id": ""},
                                       {"id": 5}, {"id": ["x"]}, {"ID": "rid-1"}])
                      | st.lists(st.text(max_size=5), min_size=1, max_size=2)
                      | st.builds(lambda v: {"id": v}, st.integers() | st.booleans() | st.floats()))


@dataclass(frozen=True)
class Shaped:
    """A 2xx answer built to a §8.2 shape, and what the client must make of it."""

    body: Body
    token: Token
    access_ok: bool  # the access token is, once trimmed, a compact JWS within 16 KiB
    refresh_ok: bool  # the refreshToken has an allowed shape
    refresh_id: str | None  # the id it carries, if refresh_ok


@st.composite
def shaped_pairs(draw: st.DrawFn) -> Shaped:
    token = draw(vendor_tokens() | jwt_tokens())
    text, access_ok = token.text, True
    fault = draw(st.sampled_from(["none", "none", "interior", "oversize"]))
    if fault == "interior":
        cut = draw(st.integers(1, len(text) - 1))
        text, access_ok = text[:cut] + draw(interior_space) + text[cut:], False
    elif fault == "oversize":
        text, access_ok = text + "A" * 16384, False
    pair: dict[str, Any] = {"accessToken": draw(surrounding_space) + text + draw(surrounding_space)}
    rid = draw(refresh_ids)
    shape = draw(st.sampled_from(["object", "bare", "absent", "null", "wrong"]))
    refresh_id: str | None = rid if shape in ("object", "bare") else None
    if shape == "object":
        pair["refreshToken"] = {"id": rid, **draw(st.dictionaries(st.sampled_from(["expiry", "x"]),
                                                                   json_values, max_size=1))}
    elif shape == "bare":
        pair["refreshToken"] = rid
    elif shape == "null":
        pair["refreshToken"] = None
    elif shape == "wrong":
        pair["refreshToken"] = draw(bad_refresh_tokens)
    return Shaped(Body(json.dumps(pair).encode()), token, access_ok, shape != "wrong", refresh_id)


@FUZZ
@given(case=shaped_pairs(), status=st.sampled_from([200, 201]))
def test_login_answer_shapes(case: Shaped, status: int) -> None:
    reply = Reply(status, case.body)
    outcome = call([reply], "Pw#x", "login")
    label("login shape", outcome)
    error = outcome.error
    if error is not None:
        assert isinstance(error, InvalidResponse), error
        assert_no_secret(error, *([case.refresh_id] if case.refresh_id else []))
    if not case.refresh_ok:
        assert error is not None and error.issued_refresh_id is None
    elif case.access_ok and case.token.usable:
        check_issued(outcome, reply, case.token, case.refresh_id)
    else:
        # The upstream opened a session tokend will not use: the caller must be able to revoke it.
        assert error is not None, outcome.result
        assert error.issued_refresh_id == case.refresh_id


@st.composite
def shaped_strings(draw: st.DrawFn) -> tuple[Body, Token, bool]:
    token = draw(vendor_tokens() | jwt_tokens())
    text, ok = token.text, True
    if draw(st.booleans()):
        cut = draw(st.integers(1, len(text) - 1))
        text, ok = text[:cut] + draw(interior_space) + text[cut:], False
    text = draw(surrounding_space) + text + draw(surrounding_space)
    return Body(json.dumps(text).encode()), token, ok


@FUZZ
@given(case=shaped_strings())
def test_refresh_answer_shapes(case: tuple[Body, Token, bool]) -> None:
    body, token, ok = case
    reply = Reply(200, body)
    outcome = call([reply], "Pw#x", "refresh", "rid-1", "json")
    label("refresh shape", outcome)
    if ok and token.usable:
        check_issued(outcome, reply, token, None)
    else:
        assert isinstance(outcome.error, InvalidResponse), (outcome.error, outcome.result)
        assert outcome.error.issued_refresh_id is None


@FUZZ
@given(reply=replies(any_bodies | error_body("ECHO")), refresh_id=refresh_ids,
       form=st.sampled_from([None, "json_string", "bare"]))
def test_revoke_answers(reply: Reply, refresh_id: str, form: str | None) -> None:
    reply = echo(reply, refresh_id)
    outcome = call([reply], "Pw#unused", "revoke", refresh_id, form)
    label("revoke", outcome)
    assert len(outcome.seen) == 1
    seen = outcome.seen[0]
    assert (seen.method, seen.path, seen.content_type) == (
        "DELETE", "/v1/tokens/refresh-token", "application/json")
    assert seen.body == (refresh_id.encode() if form == "bare" else json.dumps(refresh_id).encode())
    assert outcome.result is None
    if outcome.error is not None:
        assert_no_secret(outcome.error, refresh_id)
    status = reply.status
    if 200 <= status < 300:
        assert outcome.error is None, outcome.error
    elif 300 <= status < 400:
        check_failure(outcome, reply, InvalidResponse)
    else:
        check_failure(outcome, reply, TransientError)


def echo(reply: Reply, secret: str) -> Reply:
    """Put the secret wherever the upstream may echo it: an Error message, a header."""
    data = reply.body.data.replace(b"ECHO", json.dumps(secret)[1:-1].encode())
    location = reply.location.replace("ECHO", secret) if reply.location else reply.location
    return Reply(reply.status, Body(data, reply.body.token, reply.body.refresh_id), reply.retry_after,
                 reply.date, location, reply.content_type)


# -- broken HTTP ---------------------------------------------------------------------------------


@st.composite
def raw_responses(draw: st.DrawFn) -> bytes:
    """Bytes on the wire that are HTTP only in part, or not at all."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(max_size=400))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2", b"HTTP/1.1 ", b"http/1.1",
                                    b""]))
    status = draw(st.integers(0, 1000).map(lambda n: str(n).encode()) | st.binary(max_size=4)
                  | st.sampled_from([b"100", b"101", b"103", b"200", b"201", b"204", b"-1"]))
    reason = draw(st.binary(max_size=10).filter(lambda b: b"\n" not in b))
    lines = draw(st.lists(
        st.sampled_from([b"Content-Length: 5", b"Content-Length: -1", b"Content-Length: 99999",
                         b"Content-Length: x", b"Transfer-Encoding: chunked",
                         b"Transfer-Encoding: gzip", b"Content-Encoding: gzip",
                         b"Content-Encoding: br", b"Retry-After: \xc2\xb2", b"Date: \xff\xfe",
                         b"Retry-After: \xff", b"Connection: close", b"Location: //evil",
                         b" folded", b"Bad Header", b":", b"X: \x00"])
        | st.binary(max_size=30).filter(lambda b: b"\n" not in b and b"\r" not in b),
        max_size=6))
    body = draw(st.binary(max_size=200) | st.sampled_from(
        [b'{"accessToken": 1}', b"5\r\nhello\r\n0\r\n\r\n", b"zz\r\n", b"\x1f\x8b\x08\x00junk"]))
    newline = draw(st.sampled_from([b"\r\n", b"\n"]))
    head = version + b" " + status + (b" " + reason if reason else b"") + newline
    return head + b"".join(line + newline for line in lines) + newline + body


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(wire=raw_responses(), operation=st.sampled_from(["login", "refresh", "revoke"]),
       password=passwords, refresh_id=refresh_ids)
def test_broken_http_only_raises_upstream_errors(wire: bytes, operation: str, password: str,
                                                refresh_id: str) -> None:
    async def run() -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                writer.write(wire)
                await writer.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = UpstreamClient(target(f"http://127.0.0.1:{port}", password))
        try:
            if operation == "login":
                await client.login("administrator@vsphere.local", Secret(password))
            elif operation == "refresh":
                await client.refresh(refresh_id)
            else:
                await client.revoke(refresh_id)
        except UpstreamError as exc:
            assert_no_secret(exc, password, refresh_id)
        finally:
            await client.close()
            server.close()
            await server.wait_closed()

    asyncio.run(run())


# -- the paths the fuzzing above does not reach cheaply --------------------------------------------


async def test_no_answer_is_a_timeout() -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response()

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", slow)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    client = UpstreamClient(target(f"http://127.0.0.1:{runner.addresses[0][1]}", "Pw#x", 0.3))
    try:
        with pytest.raises(TransientError) as exc:
            await client.login("u", Secret("Pw#x"))
        assert exc.value.outcome == "timeout"
    finally:
        await client.close()
        await runner.cleanup()


async def test_nobody_listening_is_a_network_error(unused_tcp_port: int) -> None:
    client = UpstreamClient(target(f"http://127.0.0.1:{unused_tcp_port}", "Pw#x"))
    try:
        with pytest.raises(TransientError) as exc:
            await client.refresh("rid-1")
        assert exc.value.outcome == "network_error"
        assert "rid-1" not in str(exc.value)
    finally:
        await client.close()


@pytest.mark.parametrize("size", [MAX_BODY, MAX_BODY + 1])
def test_body_size_limit(size: int) -> None:
    token = jwt.encode({"exp": 2_000_000_000, "iat": 1_999_996_400}, "k" * 32, algorithm="HS256")
    body = json.dumps({"accessToken": token, "refreshToken": {"id": "rid-1"}}).encode()
    body += b" " * (size - len(body))
    outcome = call([Reply(201, Body(body))], "Pw#x", "login")
    if size > MAX_BODY:
        assert isinstance(outcome.error, InvalidResponse), outcome.error
        assert "larger than" in outcome.error.message
    else:
        assert outcome.error is None and outcome.result is not None


async def test_a_body_in_several_pieces_is_read_whole() -> None:
    """A TokenPair that arrives in two TCP segments is one answer, not two halves."""
    token = jwt.encode({"exp": 2_000_000_000, "iat": 1_999_996_400, "pad": "x" * 3000}, "k" * 32,
                       algorithm="HS256")
    body = json.dumps({"accessToken": token, "refreshToken": {"id": "rid-1"}}).encode()

    async def split(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(status=201, headers={"Content-Length": str(len(body))})
        await response.prepare(request)
        await response.write(body[:100])
        await asyncio.sleep(0.05)
        await response.write(body[100:])
        return response

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", split)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    client = UpstreamClient(target(f"http://127.0.0.1:{runner.addresses[0][1]}", "Pw#x"))
    try:
        issued = await client.login("u", Secret("Pw#x"))
        assert issued.access_token == token and issued.refresh_id == "rid-1"
    finally:
        await client.close()
        await runner.cleanup()


@pytest.mark.parametrize("operation", ["login", "refresh"])
@pytest.mark.parametrize("status", [200, 400, 500])
def test_deeply_nested_json_is_an_upstream_error(operation: str, status: int) -> None:
    body = Body(b"[" * 100_000 + b"]" * 100_000)
    outcome = call([Reply(status, body)], "Pw#x", operation, "rid-1", form="json_string")
    assert outcome.error is not None
    expected = {200: InvalidResponse, 500: TransientError,
                400: CredentialsRejected if operation == "login" else RefreshTokenGone}[status]
    assert type(outcome.error) is expected


@pytest.mark.parametrize("value", ["²", "٣", "Fri, 31 Dec 9999 23:59:59 -0000"])
def test_odd_retry_after_is_ignored(value: str) -> None:
    outcome = call([Reply(503, Body(b"{}"), retry_after=Header(value))], "Pw#x", "login")
    assert isinstance(outcome.error, TransientError)
    assert outcome.error.retry_after is None or outcome.error.retry_after >= 0


async def serve(handler: Any) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def assert_login_rejected(handler: Any, timeout: float) -> None:
    """A login against ``handler`` raises CredentialsRejected."""
    runner, url = await serve(handler)
    client = UpstreamClient(target(url, "Pw#x", timeout))
    try:
        with pytest.raises(CredentialsRejected):
            await client.login("u", Secret("Pw#x"))
    finally:
        await client.close()
        await runner.cleanup()


async def test_a_rejected_login_with_a_body_over_the_limit_is_still_a_rejection() -> None:
    body = json.dumps({"errorCode": "INVALID_CREDENTIALS", "message": "x" * (MAX_BODY + 100)})

    async def huge(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=401, text=body, content_type="application/json")

    await assert_login_rejected(huge, TIMEOUT)


async def test_a_rejected_login_whose_body_never_ends_is_still_a_rejection() -> None:
    async def slow_body(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(status=401, headers={"Content-Length": "1000"})
        await response.prepare(request)
        await response.write(b'{"errorCode": "INVALID_CREDENTIALS", ')
        await asyncio.sleep(5)
        return response

    await assert_login_rejected(slow_body, 0.6)


# -- every status on its own: what a fuzzer may or may not draw in a given run --------------------

REJECTION_BODY = Body(json.dumps({"errorCode": "UNAUTHORIZED", "message": "Bad credentials"}).encode())


@pytest.mark.parametrize("api_key", [False, True], ids=["password", "api-key"])
@pytest.mark.parametrize("status", [400, 401, 403])
def test_login_answered_with_a_credential_status_is_a_rejection_never_transient(
        status: int, api_key: bool) -> None:
    # A 403 taken as transient would retry a wrong password on the backoff schedule, towards the
    # account's lockout, instead of counting it as a rejection for the lockout guard.
    reply = Reply(status, REJECTION_BODY)
    outcome = call([reply], "Pw#wrong", "login", api_key=api_key)
    check_failure(outcome, reply, CredentialsRejected)
    assert len(outcome.seen) == 1


@pytest.mark.parametrize("status", [402, 404, 405, 407, 408, 409, 429, 500, 502, 503, 504])
def test_login_answered_with_another_error_status_is_transient(status: int) -> None:
    reply = Reply(status, REJECTION_BODY)
    outcome = call([reply], "Pw#right", "login")
    check_failure(outcome, reply, TransientError)


@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_refresh_answered_with_a_refused_status_means_the_refresh_token_is_gone(status: int) -> None:
    reply = Reply(status, REJECTION_BODY)
    outcome = call([reply], "Pw#unused", "refresh", "rid-dead", form="json")
    check_failure(outcome, reply, RefreshTokenGone)
    assert len(outcome.seen) == 1
