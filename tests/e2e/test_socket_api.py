"""The consumer API on the Unix socket (SPEC §4), against the real daemon and the fake over HTTPS."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import socket
import subprocess
import time
from calendar import timegm
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support import PASSWORD, Answer, Tokend, Upstream, eventually
from tests.support.peers import peer_python
from tokend.server import IDLE_TIMEOUT

ISO_Z = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
TOKEN_KEYS = {"target", "tokenType", "accessToken", "expiresAt", "expiresIn", "upstreamExp",
              "fingerprint"}
# Consumer-triggered refreshes are refused within 5 s of a new token (SPEC §4).
QUIET_AFTER_NEW_TOKEN = 5.0


def jwt_claims(token: str) -> dict[str, Any]:
    """The payload of a JWT, without checking its signature."""
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return claims


def iso_to_epoch(text: str) -> int:
    assert ISO_Z.fullmatch(text), text
    return timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ"))


def assert_error_shape(answer: Answer, status: int, code: str | None = None) -> dict[str, Any]:
    """``answer`` is ``status`` with a JSON body in the upstream's Error shape."""
    assert answer.status == status, (answer.status, answer.body)
    assert answer.headers.get("Content-Type", "").startswith("application/json"), answer.headers
    body: dict[str, Any] = answer.json()
    assert {"errorCode", "message", "remediationMessage"} <= set(body), body
    assert set(body) <= {"errorCode", "message", "remediationMessage", "referenceToken"}, body
    assert isinstance(body["errorCode"], str) and re.fullmatch(r"[A-Z][A-Z_]+", body["errorCode"])
    assert isinstance(body["message"], str) and body["message"]
    assert isinstance(body["remediationMessage"], str)
    if code is not None:
        assert body["errorCode"] == code, body
    if status == 503:
        retry_after = answer.headers.get("Retry-After")
        assert retry_after is not None and retry_after.isdigit() and int(retry_after) >= 1, \
            answer.headers
    return body


async def sleep_until_quiet_period_over(token: dict[str, Any], since: float) -> None:
    """Wait until a consumer may trigger a refresh of ``token`` (obtained before ``since``)."""
    await asyncio.sleep(max(0.0, since + QUIET_AFTER_NEW_TOKEN + 0.7 - time.monotonic()))


# -- 1 -----------------------------------------------------------------------------------------


async def test_token_json_has_the_contract_shape(upstream: Upstream, tokend: Tokend) -> None:
    answer = await tokend.get("/v1/token")
    assert answer.status == 200, answer.body
    assert answer.headers["Content-Type"].startswith("application/json")
    token = answer.json()
    assert set(token) == TOKEN_KEYS
    assert token["target"] == "t1"
    assert token["tokenType"] == "Bearer"
    access = token["accessToken"]
    assert access in upstream.fake.issued_access_tokens
    claims = jwt_claims(access)
    assert token["upstreamExp"] == claims["exp"]
    assert type(token["upstreamExp"]) is type(claims["exp"])
    assert token["fingerprint"] == "sha256:" + hashlib.sha256(access.encode()).hexdigest()
    assert isinstance(token["expiresIn"], int) and token["expiresIn"] > 0
    assert token["expiresIn"] <= claims["exp"] - claims["iat"]
    expires_at = iso_to_epoch(token["expiresAt"])
    assert expires_at <= claims["exp"]
    # expiresAt is the instant on the local clock that expiresIn counts down to.
    assert abs(expires_at - (time.time() + token["expiresIn"])) <= 2

    raw = await tokend.get("/v1/token?format=raw")
    assert raw.status == 200
    assert raw.headers["Content-Type"].startswith("text/plain")
    assert raw.body == access.encode()  # the bare token: no newline, no quotes

    by_name = await tokend.get("/v1/targets/t1/token")
    assert by_name.status == 200
    assert set(by_name.json()) == TOKEN_KEYS
    assert by_name.json()["accessToken"] == access
    raw_by_name = await tokend.get("/v1/targets/t1/token?format=raw")
    assert raw_by_name.status == 200 and raw_by_name.body == access.encode()

    missing = await tokend.get("/v1/targets/nope/token")
    body = assert_error_shape(missing, 404, "TARGET_NOT_FOUND")
    assert "nope" in body["message"]
    assert "t1" in body["remediationMessage"]
    assert access not in missing.body.decode()


# -- 2 -----------------------------------------------------------------------------------------


async def test_invalidate_from_20_concurrent_consumers_causes_exactly_one_refresh(
        make_upstream: Callable[..., Any], make_tokend: Callable[..., Any]) -> None:
    upstream: Upstream = await make_upstream(access_ttl=60)  # no scheduled refresh in this test
    tokend: Tokend = await make_tokend(upstream.url, upstream.ca_pem)
    fake = upstream.fake
    first = await tokend.token()
    await sleep_until_quiet_period_over(first, time.monotonic())
    assert fake.count("refresh") == 0 and fake.count("login") == 1

    answers = await asyncio.gather(*(
        tokend.request("POST", "/v1/targets/t1/invalidate", {"fingerprint": first["fingerprint"]})
        for _ in range(20)))
    assert [a.status for a in answers] == [200] * 20, [a.body for a in answers if a.status != 200]
    tokens = [a.json() for a in answers]
    assert {t["fingerprint"] for t in tokens} != {first["fingerprint"]}
    assert len({t["accessToken"] for t in tokens}) == 1, "every consumer gets the same new token"
    new = tokens[0]
    assert set(new) == TOKEN_KEYS
    assert new["fingerprint"] != first["fingerprint"]
    assert new["accessToken"] == fake.issued_access_tokens[-1]
    assert fake.count("refresh") == 1
    assert fake.count("login") == 1
    assert (await tokend.token())["fingerprint"] == new["fingerprint"]

    # A consumer that reports the old token gets the current one at once, with no refresh.
    started = time.monotonic()
    late = await tokend.request("POST", "/v1/targets/t1/invalidate",
                                {"fingerprint": first["fingerprint"]})
    assert late.status == 200, late.body
    assert late.json()["fingerprint"] == new["fingerprint"]
    assert time.monotonic() - started < 1.0
    await asyncio.sleep(0.3)
    assert fake.count("refresh") == 1
    assert fake.count("login") == 1


# -- 3 -----------------------------------------------------------------------------------------


async def test_min_ttl_answers_a_fresh_token_and_400_when_impossible(
        make_upstream: Callable[..., Any], make_tokend: Callable[..., Any]) -> None:
    access_ttl = 30  # served for ~29 s; the scheduled refresh comes at ~20 s, after this test
    upstream: Upstream = await make_upstream(access_ttl=access_ttl)
    tokend: Tokend = await make_tokend(upstream.url, upstream.ca_pem)
    fake = upstream.fake
    first = await tokend.token()
    await sleep_until_quiet_period_over(first, time.monotonic())

    # A min_ttl the current token meets: the same token, no upstream call.
    same = await tokend.token("/v1/token?min_ttl=5")
    assert same["fingerprint"] == first["fingerprint"]
    assert fake.count("refresh") == 0

    current = await tokend.token()
    min_ttl = 25
    assert current["expiresIn"] < min_ttl  # so the request below needs a new token
    answer = await tokend.get(f"/v1/token?min_ttl={min_ttl}")
    assert answer.status == 200, answer.body
    fresh = answer.json()
    assert set(fresh) == TOKEN_KEYS
    assert fresh["fingerprint"] != first["fingerprint"]
    assert fresh["expiresIn"] >= min_ttl
    assert fake.count("refresh") == 1
    assert fake.count("login") == 1

    # The same holds on the per-target path, and raw output obeys min_ttl too.
    raw = await tokend.get(f"/v1/targets/t1/token?min_ttl={min_ttl - 5}&format=raw")
    assert raw.status == 200 and raw.body == fresh["accessToken"].encode()
    assert fake.count("refresh") == 1

    impossible = await tokend.get("/v1/token?min_ttl=100")
    body = assert_error_shape(impossible, 400, "BAD_REQUEST")
    lifetimes = [int(n) for n in re.findall(r"(\d+) s\b", body["message"])]
    assert any(access_ttl - 3 <= n <= access_ttl for n in lifetimes), body["message"]
    assert "100" in body["message"]

    for bad in ("abc", "-1", "nan", "inf", ""):
        answer = await tokend.get(f"/v1/token?min_ttl={bad}")
        assert_error_shape(answer, 400, "BAD_REQUEST")
    assert_error_shape(await tokend.get("/v1/token?format=xml"), 400, "BAD_REQUEST")
    await asyncio.sleep(0.3)
    assert fake.count("refresh") == 1, "a refused request must not cause a refresh"


# -- 4 -----------------------------------------------------------------------------------------

PEER_SCRIPT = r"""
import base64, json, socket, sys
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.settimeout(float(sys.argv[3]))
sock.connect(sys.argv[1])
if sys.argv[2] == "send":
    try:
        sock.sendall(b"GET /v1/token HTTP/1.1\r\nHost: tokend\r\nConnection: close\r\n\r\n")
    except OSError:
        pass  # already closed by the server: read what it wrote
data, end = b"", "timeout"
try:
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            end = "eof"
            break
        data += chunk
except ConnectionResetError:
    end = "reset"  # closed with our request unread in its buffer
except TimeoutError:
    pass
print(json.dumps({"data": base64.b64encode(data).decode(), "end": end}))
"""


def connect_as(workdir: Path, uid: int, gid: int, groups: list[int], send: bool,
               timeout: float = 5.0) -> tuple[int, dict[str, str], bytes, str]:
    """Connect to ``workdir/tokend.sock`` from a process with these credentials.

    Returns (status, headers, body, how the connection ended: "eof", "reset" (the server closed
    it with our request unread) or "timeout"). The process changes to ``workdir``
    while still root, so it reaches the socket whatever the modes of the directories above.
    """
    done = subprocess.run(
        [peer_python(), "-I", "-c", PEER_SCRIPT, "tokend.sock", "send" if send else "wait",
         str(timeout)],
        cwd=workdir, user=uid, group=gid, extra_groups=groups, capture_output=True,
        timeout=timeout + 10, env={"PATH": "/usr/bin:/bin"}, check=False)
    assert done.returncode == 0, done.stderr.decode()
    out = json.loads(done.stdout)
    data = base64.b64decode(out["data"])
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines[0].startswith("HTTP/1.1 ") else 0
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body, out["end"]


async def test_peer_outside_the_allow_lists_gets_403(
        upstream: Upstream, make_tokend: Callable[..., Any], workdir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to connect as other uids")
    # Root stays listed: the test itself talks to the daemon as root.
    tokend: Tokend = await make_tokend(upstream.url, upstream.ca_pem,
                                       server={"allowed_uids": [0, 4242], "allowed_gids": [5555]})
    # The socket is made 0600 by the config; open it to every uid so only the allow-lists decide.
    tokend.socket.chmod(0o666)
    workdir.chmod(0o711)
    current = await tokend.token()

    status, _, body, _ = await asyncio.to_thread(connect_as, workdir, 4242, 4242, [], True)
    assert status == 200, body
    assert json.loads(body)["accessToken"] == current["accessToken"]

    status, headers, body, end = await asyncio.to_thread(connect_as, workdir, 4343, 4343, [], True)
    assert status == 403, body
    assert headers["content-type"].startswith("application/json")
    denial = json.loads(body)
    assert denial["errorCode"] == "FORBIDDEN"
    assert "4343" in denial["message"]
    assert "server.allowed_uids" in denial["remediationMessage"]
    assert current["accessToken"] not in body.decode()
    assert end in ("eof", "reset"), end

    # A supplementary group on the allow-list admits a uid that is not listed.
    status, _, body, _ = await asyncio.to_thread(connect_as, workdir, 4343, 4343, [5555], True)
    assert status == 200, body
    assert json.loads(body)["accessToken"] == current["accessToken"]
    # The primary group counts too.
    status, _, body, _ = await asyncio.to_thread(connect_as, workdir, 4444, 5555, [], True)
    assert status == 200, body

    # A denied peer is answered at accept: it gets the 403 without sending a byte, then EOF.
    status, _, body, end = await asyncio.to_thread(connect_as, workdir, 4343, 4343, [], False)
    assert status == 403, body
    assert json.loads(body)["errorCode"] == "FORBIDDEN"
    assert end == "eof", "the server must answer and close a denied connection at accept"
    # An admitted peer that sends nothing is not answered (so the early answer above is the gate's).
    status, _, body, end = await asyncio.to_thread(connect_as, workdir, 4242, 4242, [], False, 1.0)
    assert (status, body, end) == (0, b"", "timeout")

    denied = await eventually(lambda: [e for e in tokend.events("consumer.denied")
                                       if e.get("uid") == 4343], what="consumer.denied")
    assert "4343" in denied[0]["message"]
    assert not [e for e in tokend.events("consumer.denied") if e.get("uid") in (4242, 4444)]
    assert PASSWORD not in tokend.stdout()


# -- 5 -----------------------------------------------------------------------------------------


async def test_error_answers_use_the_error_shape(
        make_upstream: Callable[..., Any], make_tokend: Callable[..., Any]) -> None:
    upstream: Upstream = await make_upstream(access_ttl=4)
    tokend: Tokend = await make_tokend(upstream.url, upstream.ca_pem)
    token = await tokend.token()

    assert_error_shape(await tokend.get("/v1/nope"), 404)
    assert_error_shape(await tokend.get("/"), 404)
    assert_error_shape(await tokend.request("POST", "/v1/token", b"{}"), 405)
    assert_error_shape(await tokend.get("/v1/targets/t1/invalidate"), 405)
    big = {"fingerprint": "sha256:" + "a" * 5000}
    too_large = await tokend.request("POST", "/v1/targets/t1/invalidate", big)
    assert_error_shape(too_large, 413)
    for bad in (b"{not json", b"[]", b'{"fingerprint": 5}', b'{"fingerprint": "md5:ab"}', b"",
                b"\xff\xfe"):
        answer = await tokend.request("POST", "/v1/targets/t1/invalidate", bad)
        assert_error_shape(answer, 400, "BAD_REQUEST")
    missing = await tokend.request("POST", "/v1/targets/nope/invalidate",
                                   {"fingerprint": token["fingerprint"]})
    assert_error_shape(missing, 404, "TARGET_NOT_FOUND")

    # The upstream goes away; once the token has expired, every token request is a 503.
    upstream.fake.faults.down = True

    async def unavailable() -> bool:
        return (await tokend.get("/v1/token")).status == 503
    await eventually(unavailable, timeout=10, what="the token to expire")

    plain, raw, by_name, min_ttl, invalidate, ready = await asyncio.gather(
        tokend.get("/v1/token"),
        tokend.get("/v1/token?format=raw"),
        tokend.get("/v1/targets/t1/token"),
        tokend.get("/v1/token?min_ttl=1"),
        tokend.request("POST", "/v1/targets/t1/invalidate", {"fingerprint": token["fingerprint"]}),
        tokend.get("/readyz"))
    for answer in (plain, raw, by_name, invalidate):
        body = assert_error_shape(answer, 503, "TOKEN_UNAVAILABLE")
        assert "t1" in body["message"]
    assert_error_shape(min_ttl, 503, "TOKEN_BELOW_MIN_TTL")
    assert ready.status == 503
    assert "Retry-After" in ready.headers
    assert ready.json()["targets"][0]["state"] == "expired"
    for answer in (plain, raw, by_name, min_ttl, invalidate, ready):
        assert token["accessToken"] not in answer.body.decode()


# -- 6 -----------------------------------------------------------------------------------------


async def test_status_and_health_endpoints(upstream: Upstream, tokend: Tokend) -> None:
    answer = await tokend.get("/v1/status")
    assert answer.status == 200
    assert answer.headers["Content-Type"].startswith("application/json")
    document = answer.json()
    assert set(document) == {"targets"}
    assert len(document["targets"]) == 1
    status = document["targets"][0]
    assert set(status) == {"name", "url", "state", "expiresAt", "expiresIn", "lastRefreshAt",
                           "nextRefreshAt", "consecutiveFailures", "lastError", "lockout"}
    assert status["lockout"] is None  # no rejected login on record
    assert status["name"] == "t1"
    assert status["url"] == upstream.url  # SPEC §10.2: the origin the auth hooks send to
    assert status["state"] == "valid"
    assert isinstance(status["expiresIn"], int) and 0 < status["expiresIn"] <= 6
    token = await tokend.token()
    assert abs(iso_to_epoch(status["expiresAt"]) - iso_to_epoch(token["expiresAt"])) <= 6
    now = time.time()
    assert iso_to_epoch(status["lastRefreshAt"]) <= now + 1
    next_refresh = iso_to_epoch(status["nextRefreshAt"])
    assert now - 1 <= next_refresh <= iso_to_epoch(status["expiresAt"]) + 1
    assert status["consecutiveFailures"] == 0
    assert status["lastError"] is None
    assert token["accessToken"] not in answer.body.decode()

    healthz = await tokend.get("/healthz")
    assert healthz.status == 200
    assert (await tokend.get("/readyz")).status == 200
    assert (await tokend.get("/readyz?target=t1")).status == 200
    unknown = await tokend.get("/readyz?target=nope")
    assert_error_shape(unknown, 404, "TARGET_NOT_FOUND")
    for answer in (healthz, unknown):
        assert token["accessToken"] not in answer.body.decode()


# -- connection deadlines and limits -----------------------------------------------------------


async def open_raw(path: Path, payload: bytes = b"") -> socket.socket:
    """A non-blocking connection to the socket that has sent ``payload``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, str(path))
    if payload:
        await loop.sock_sendall(sock, payload)
    return sock


async def read_until_closed(sock: socket.socket, timeout: float) -> bytes | None:
    """Everything the server sends until it closes; None if it is still open after ``timeout``."""
    loop = asyncio.get_running_loop()
    data = b""
    try:
        async with asyncio.timeout(timeout):
            while chunk := await loop.sock_recv(sock, 65536):
                data += chunk
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return data


async def exchange(sock: socket.socket, path: str) -> bytes:
    """One keep-alive request on ``sock``; its whole answer (Content-Length framed)."""
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(sock, f"GET {path} HTTP/1.1\r\nHost: tokend\r\n\r\n".encode())
    data = b""
    async with asyncio.timeout(5):
        while b"\r\n\r\n" not in data:
            data += await loop.sock_recv(sock, 65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
        while len(body) < length:
            body += await loop.sock_recv(sock, 65536)
    return data


async def test_slow_and_idle_connections_are_closed(upstream: Upstream, tokend: Tokend) -> None:
    started = time.monotonic()
    idle = await open_raw(tokend.socket)
    partial_line = await open_raw(tokend.socket, b"GET /v1/tok")
    partial_headers = await open_raw(tokend.socket, b"GET /v1/token HTTP/1.1\r\nHost: tokend\r\n")
    keep_alive = await open_raw(tokend.socket)
    slow = [idle, partial_line, partial_headers]
    try:
        assert (await exchange(keep_alive, "/healthz")).startswith(b"HTTP/1.1 200")
        await asyncio.sleep(1.0)
        # Keep-alive works: a second request on the same connection a second later is answered.
        assert (await exchange(keep_alive, "/v1/token?format=raw")).startswith(b"HTTP/1.1 200")
        for sock in slow:
            assert await read_until_closed(sock, 0.1) is None, "closed too early"
        # Meanwhile the slow connections block nobody.
        assert (await tokend.token())["accessToken"] in upstream.fake.issued_access_tokens

        deadline = started + IDLE_TIMEOUT + 6
        for sock in [*slow, keep_alive]:
            left = await read_until_closed(sock, max(0.1, deadline - time.monotonic()))
            assert left is not None, "a connection outlived the deadline"
            assert b"eyJ" not in left
        assert time.monotonic() - started >= IDLE_TIMEOUT - 1
    finally:
        for sock in [*slow, keep_alive]:
            sock.close()
    assert tokend.proc is not None and tokend.proc.poll() is None
    assert (await tokend.get("/healthz")).status == 200


async def test_one_uid_cannot_take_every_connection(
        upstream: Upstream, make_tokend: Callable[..., Any], workdir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to connect as another uid")
    per_uid = 16
    tokend: Tokend = await make_tokend(upstream.url, upstream.ca_pem,
                                       server={"max_connections_per_uid": per_uid})
    tokend.socket.chmod(0o666)
    workdir.chmod(0o711)
    held: list[socket.socket] = []
    try:
        for _ in range(per_uid):
            held.append(await open_raw(tokend.socket))
        one_more = await open_raw(tokend.socket)  # sends nothing: answered at accept
        refused = await read_until_closed(one_more, 5)
        one_more.close()
        assert refused is not None, "the connection over the limit was left open"
        head, _, body = refused.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503"), refused
        assert re.search(rb"(?i)\r\nretry-after: *\d+\r\n", head + b"\r\n"), head
        error = json.loads(body)
        assert error["errorCode"] == "TOO_MANY_CONNECTIONS"
        assert "uid 0" in error["message"]
        assert error["remediationMessage"]

        # Another uid is still served while this one is at its limit.
        status, _, answer, _ = await asyncio.to_thread(connect_as, workdir, 4242, 4242, [], True)
        assert status == 200, answer
    finally:
        for sock in held:
            sock.close()

    async def served_again() -> bool:
        return (await tokend.get("/v1/token")).status == 200
    await eventually(served_again, what="the uid to be served once it closed its connections")
    assert [e for e in tokend.events("consumer.connection_limit") if e.get("uid") == 0]
