"""The socket API (SPEC §4) under arbitrary requests, against one real ``tokend run`` process.

The fake SDDC Manager (``tokend fake-sddc``) and the daemon run as processes for the whole
module; hypothesis drives a plain synchronous test that writes raw HTTP/1.1 requests to the Unix
socket, so any path, query string, method and body can be sent, byte for byte. Whatever arrives,
tokend answers in the Error shape, never with a 5xx other than its two documented 503s, and keeps
serving.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import pytest
import yarl  # aiohttp's URL type: the test decodes a query string the way the server does
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.support import (
    DEFAULT_PASSWORD,
    DEFAULT_USER,
    Answer,
    FakeProcess,
    Tokend,
    configured_tokend,
    start_fake_process,
)

TARGET = "t1"
REQUEST_TIMEOUT = 1.0  # tokend's request_timeout: how long a min_ttl/invalidate request may wait
JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
TOKEN_KEYS = {"target", "tokenType", "accessToken", "expiresAt", "expiresIn", "upstreamExp",
              "fingerprint"}
STATUS_KEYS = {"name", "url", "state", "expiresAt", "expiresIn", "lastRefreshAt", "nextRefreshAt",
               "consecutiveFailures", "lastError", "lockout"}
SERVED_503 = {"TOKEN_UNAVAILABLE", "TOKEN_BELOW_MIN_TTL"}


# -- the processes -------------------------------------------------------------------------------


@dataclass
class Daemon:
    """``tokend run`` against ``tokend fake-sddc``, and what the tests saw it serve."""

    tokend: Tokend
    fake: FakeProcess
    served_tokens: set[str] = field(default_factory=set)

    def send(self, raw: bytes, method: str = "GET", timeout: float = 15.0) -> Answer:
        """Write ``raw`` (a whole request) to the socket; read one answer."""
        return self.tokend.client.send_raw(raw, method, timeout)

    def request(self, method: str, target: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> Answer:
        return self.tokend.client.request_blocking(method, target, body, headers=headers)

    def token(self) -> dict[str, Any]:
        answer = self.request("GET", "/v1/token")
        assert answer.status == 200, answer
        data: dict[str, Any] = answer.json()
        self.served_tokens.add(data["accessToken"])
        return data

    def output(self) -> str:
        return self.tokend.stdout() + self.tokend.stderr()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    workdir = tmp_path_factory.mktemp("fz")  # short: a Unix socket path has at most 107 bytes
    fake = start_fake_process(workdir)
    tokend: Tokend | None = None
    try:
        assert fake.url.startswith("http://127.0.0.1:"), fake.url
        tokend = configured_tokend(workdir, fake.url, password=DEFAULT_PASSWORD,
                                   log={"level": "info"},
                                   target={"name": TARGET, "username": DEFAULT_USER,
                                           "request_timeout": f"{REQUEST_TIMEOUT:g}s",
                                           "login_retry_interval": None})
        tokend.start()
        tokend.ready_blocking(20)
        yield Daemon(tokend, fake)
    finally:
        try:
            if tokend is not None:
                tokend.stop_blocking(10)
        finally:
            fake.stop()


# -- requests ------------------------------------------------------------------------------------

# Printable ASCII but space: every such byte is taken as is in a request target.
RAW_CHARS = "".join(chr(c) for c in range(0x21, 0x7F))
CURRENT = "<the fingerprint of the token being served>"

segments = st.one_of(
    st.sampled_from(["..", ".", "%00", "%2e%2e", "%2F", "%2f..%2f", "", "%", "%zz", "%ff", "%C3%A9",
                     "~", ";", "t1;x", "t1%20", "T1", TARGET, "v1", "token", "targets", "invalidate",
                     "status", "healthz", "readyz", "%2e", "\\", "..%5c"]),
    st.text(max_size=12).map(lambda s: quote(s, safe="")),  # unicode, control characters
    st.text(RAW_CHARS.replace("/", "").replace("?", "").replace("#", ""), max_size=12),
    st.integers(min_value=100, max_value=3000).map(lambda n: "a" * n),
)


@st.composite
def paths(draw: st.DrawFn) -> str:
    name = draw(segments)
    return draw(st.sampled_from([
        "/v1/token", f"/v1/targets/{TARGET}/token", f"/v1/targets/{name}/token",
        f"/v1/targets/{TARGET}/invalidate", f"/v1/targets/{name}/invalidate", "/v1/status",
        "/healthz", "/readyz", f"/v1/{name}", f"/{name}/v1/token", f"/v1/token/{name}",
        f"/v1/targets/{'a' * 9000}/token",  # over aiohttp's 8190-byte request line limit
        "/" + "/".join(draw(st.lists(segments, max_size=6))),
    ]))


min_ttls = st.one_of(
    st.text(max_size=8),
    st.integers(min_value=-10**6, max_value=10**30).map(str),
    st.floats().map(repr),
    st.floats(min_value=0, max_value=3500).map(str),  # within the fake's one-hour tokens
    st.sampled_from(["nan", "NaN", "inf", "-inf", "Infinity", "1e309", "-0", "0", "0.0", "1_000",
                     " 5 ", "0x10", "", "9" * 400, "١٢", "3599", "3600", "3598.9", "1e-300", "+5"]),
)
formats = st.sampled_from(["json", "raw", "RAW", "", "text", "raw ", "json\x00"]) | st.text(max_size=6)
query_pairs = st.lists(
    st.one_of(
        st.tuples(st.just("min_ttl"), min_ttls),
        st.tuples(st.just("format"), formats),
        st.tuples(st.just("target"), st.sampled_from([TARGET, "nope", "", "%00"]) | st.text(max_size=6)),
        st.tuples(st.text(max_size=6), st.text(max_size=6)),
    ),
    max_size=4,
)


@st.composite
def queries(draw: st.DrawFn) -> str:
    pairs = draw(query_pairs)
    encoded = draw(st.booleans())
    parts = []
    for key, value in pairs:
        if encoded or not value.isascii() or not value.isprintable() or " " in value:
            parts.append(f"{quote(key, safe='')}={quote(value, safe='')}")
        else:  # as typed, '+', '%', '&', ';' and all
            parts.append(f"{quote(key, safe='')}={value}")
    if draw(st.integers(0, 9)) == 0:
        parts.append(draw(st.sampled_from(["", "min_ttl", "=", "&", "format", "min_ttl=", "a=b=c"])))
    return "?" + "&".join(parts) if parts or draw(st.booleans()) else ""


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
fingerprints = st.one_of(
    st.just(CURRENT),  # a refresh, rate-limited: up to REQUEST_TIMEOUT, then 503
    st.text(max_size=70),
    st.text(max_size=70).map(lambda s: "sha256:" + s),
    st.text("0123456789abcdef", min_size=64, max_size=64).map(lambda h: "sha256:" + h),
    st.sampled_from(["sha256:", "SHA256:00", "sha256:" + "0" * 64, "sha256:\x00"]),
    json_values,
)


fingerprint_bodies = st.builds(
    lambda fp, extra: json.dumps({**extra, "fingerprint": fp}).encode(), fingerprints,
    st.dictionaries(st.text(max_size=6), json_values, max_size=2))
bodies = st.one_of(
    st.none(),
    st.binary(max_size=8192),
    st.integers(min_value=1, max_value=4096).map(lambda n: b"[" * n),  # deeper than json.loads goes
    json_values.map(lambda v: json.dumps(v).encode()),
    fingerprint_bodies,
    st.integers(min_value=4000, max_value=8192).map(
        lambda n: json.dumps({"fingerprint": "sha256:" + "0" * 64, "pad": "x" * n}).encode()),
)
methods = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE",
                           "PROPFIND"])
content_types = st.none() | st.sampled_from([
    "application/json", "text/plain", "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x", "application/json; charset=utf-16"])


# -- what every answer must be -------------------------------------------------------------------


def first(pairs: list[tuple[str, str]], key: str) -> str | None:
    return next((v for k, v in pairs if k == key), None)


def check_answer(daemon: Daemon, method: str, target: str, answer: Answer) -> None:
    status = answer.status
    content_type = answer.headers.get("Content-Type", "")
    assert 200 <= status < 500 or status == 503, (status, answer.body[:300])
    if status == 503:
        retry_after = answer.headers.get("Retry-After", "")
        assert retry_after.isdigit() and int(retry_after) >= 1, dict(answer.headers)
    if status >= 400:
        if method == "HEAD":
            assert answer.body == b""
            return
        assert content_type.startswith("application/json"), (status, content_type, answer.body[:300])
        error = answer.json()
        assert isinstance(error, dict), error
        assert isinstance(error.get("errorCode"), str) and error["errorCode"], error
        assert isinstance(error.get("message"), str) and error["message"], error
        if status == 503:
            assert error["errorCode"] in SERVED_503, error
        return
    assert status == 200, (status, answer.body[:300])
    if method == "HEAD":
        assert answer.body == b""
        return
    check_ok(daemon, target, content_type, answer.body)


def check_ok(daemon: Daemon, target: str, content_type: str, body: bytes) -> None:
    """A 200: the token JSON, the bare token, the status JSON, or a probe's one word."""
    pairs = list(yarl.URL(target, encoded=True).query.items())
    min_ttl, fmt = first(pairs, "min_ttl"), first(pairs, "format")
    if content_type.startswith("text/plain"):
        if body in (b"ok\n", b"ready\n"):
            return
        token = body.decode()
        assert JWT_RE.fullmatch(token), body[:300]
        assert fmt == "raw", target
        daemon.served_tokens.add(token)
        return
    assert content_type.startswith("application/json"), content_type
    data = json.loads(body)
    if "targets" in data:
        assert [t["name"] for t in data["targets"]] == [TARGET]
        assert set(data["targets"][0]) == STATUS_KEYS, data
        return
    assert set(data) == TOKEN_KEYS, data
    assert data["target"] == TARGET and data["tokenType"] == "Bearer"
    assert JWT_RE.fullmatch(data["accessToken"]), data
    assert data["fingerprint"] == "sha256:" + hashlib.sha256(data["accessToken"].encode()).hexdigest()
    assert isinstance(data["expiresIn"], int) and data["expiresIn"] > 0, data
    if "/invalidate" not in target:  # invalidate takes no query parameters
        assert fmt in (None, "json"), target
        if min_ttl is not None:
            assert data["expiresIn"] >= float(min_ttl) - 1, (min_ttl, data["expiresIn"])
    daemon.served_tokens.add(data["accessToken"])


@dataclass(frozen=True)
class Request:
    method: str
    target: str
    body: bytes | None
    content_type: str | None


@st.composite
def requests(draw: st.DrawFn) -> Request:
    """Mostly requests a consumer could mean (so the handlers run), some anything at all."""
    kind = draw(st.sampled_from(["token", "token", "invalidate", "invalidate", "probe", "any"]))
    name = draw(st.sampled_from([TARGET] * 3 + [""]))  # one-of flattens: weight by hand
    name = name or draw(segments)
    body: bytes | None = None
    if kind == "token":
        method = draw(st.sampled_from(["GET"] * 6 + ["HEAD", "POST", "PUT", "OPTIONS"]))
        path = draw(st.sampled_from(["/v1/token", f"/v1/targets/{name}/token"]))
    elif kind == "invalidate":
        method = draw(st.sampled_from(["POST"] * 6 + ["GET", "PUT", "PATCH", "DELETE"]))
        path = f"/v1/targets/{name}/invalidate"
        body = draw(st.sampled_from([fingerprint_bodies] * 2 + [bodies]).flatmap(lambda b: b))
    elif kind == "probe":
        method = draw(st.sampled_from(["GET"] * 4 + ["HEAD", "POST"]))
        path = draw(st.sampled_from(["/v1/status", "/healthz", "/readyz"]))
    else:
        method, path, body = draw(methods), draw(paths()), draw(bodies)
    return Request(method, path + draw(queries()), body, draw(content_types))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.data_too_large])
@given(request=requests())
def test_any_request_gets_a_documented_answer(daemon: Daemon, request: Request) -> None:
    body = request.body
    if body is not None and CURRENT.encode() in body:
        current = daemon.token()["fingerprint"]
        body = body.replace(json.dumps(CURRENT).encode(), json.dumps(current).encode())
    headers = {"Content-Type": request.content_type} if request.content_type else {}
    answer = daemon.request(request.method, request.target, body, headers)
    event(f"{request.method} -> {answer.status}")
    check_answer(daemon, request.method, request.target, answer)


# -- what aiohttp refuses before a handler runs, and what json.loads cannot parse ---------------


def new_log_lines(daemon: Daemon, since: int) -> list[str]:
    time.sleep(0.2)  # for the answer's log lines, if any, to be written: none is waited for
    return daemon.tokend.log.lines_since(since)


def test_a_deeply_nested_invalidate_body_is_a_bad_request(daemon: Daemon) -> None:
    since = daemon.tokend.log.mark()
    answer = daemon.request("POST", f"/v1/targets/{TARGET}/invalidate", b"[" * 4000,
                            {"Content-Type": "application/json"})
    errors = [line for line in new_log_lines(daemon, since) if '"level": "error"' in line]
    assert answer.status == 400, (answer.status, answer.body[:200])
    check_answer(daemon, "POST", f"/v1/targets/{TARGET}/invalidate", answer)
    assert not errors, errors


@pytest.mark.parametrize("request_line", [
    b"GET /v1/targets/" + b"a" * 9000 + b"/token HTTP/1.1",  # longer than the 8190-byte line limit
    b"GET /v1/targets/\xc3\xa9/token HTTP/1.1",  # a raw (not percent-encoded) non-ASCII byte
    b"BREW /v1/token HTTP/1.1",  # not an HTTP method
    b"GET * HTTP/1.1",
], ids=["long-line", "raw-utf8", "unknown-method", "asterisk"])
def test_a_malformed_request_gets_the_error_shape(daemon: Daemon, request_line: bytes) -> None:
    since = daemon.tokend.log.mark()
    answer = daemon.send(request_line + b"\r\nHost: tokend\r\nConnection: close\r\n\r\n")
    errors = [line for line in new_log_lines(daemon, since) if '"level": "error"' in line]
    assert 400 <= answer.status < 500, (answer.status, answer.body[:200])
    check_answer(daemon, "GET", "/", answer)
    assert not errors, errors


def test_the_daemon_is_alive_and_logged_no_request_errors(daemon: Daemon) -> None:
    """After the examples above: still serving, and nothing they sent made tokend log an error."""
    assert daemon.tokend.proc is not None and daemon.tokend.proc.poll() is None, \
        daemon.output()[-3000:]
    token = daemon.token()
    assert token["expiresIn"] > 0
    assert daemon.request("GET", "/healthz").status == 200
    assert daemon.request("GET", "/readyz").status == 200
    output = daemon.output()
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if '"level": "error"' in line]
    assert not errors, errors[:3]
    leaked = [t[:16] + "..." for t in daemon.served_tokens | {DEFAULT_PASSWORD} if t in output]
    assert not leaked, f"secrets in tokend's output: {leaked}"

