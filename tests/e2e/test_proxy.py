"""The proxy of SPEC §9 on a Unix socket: the real daemon, real sockets, the fake over HTTPS."""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.proxy_fixtures import (
    PROXY_SOCKET,
    Proxied,
    RssWatch,
    assert_catalogued,
    error_of,
    make_proxied,
    proxied,
    proxy_table,
    rss_kib,
    status_of,
)
from tests.support import PASSWORD, Tokend, eventually, write_config, write_toml
from tokend.proxy.canon import parse_request_target, route_key
from tokend.testing.proxy_routes import stream_bytes

__all__ = ["make_proxied", "proxied"]  # fixtures, used by name

MIB = 1024 * 1024
QUIET_AFTER_NEW_TOKEN = 5.0  # consumer-triggered refreshes wait this long after a new token


def bearer_tokens_seen(proxied: Proxied, operation: str) -> list[str]:
    """The Authorization values the fake received on ``operation`` calls."""
    return [{k.lower(): v for k, v in c.request_headers.items()}.get("authorization", "")
            for c in proxied.fake.calls_of(operation)]


# -- forwarding --------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_curl_through_the_unix_proxy_gets_the_fakes_answer(proxied: Proxied) -> None:
    done = await asyncio.to_thread(
        subprocess.run, ["curl", "-sS", "--unix-socket", str(proxied.socket), "-i",
                         "http://x/v1/domains"], capture_output=True, timeout=20, check=False)
    assert done.returncode == 0, done.stderr.decode()
    head, _, body = done.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), done.stdout[:300]
    page = json.loads(body)
    assert page["elements"][0]["name"] == "sfo-m01"
    # The fake got tokend's current token, and nothing of the consumer's.
    (auth,) = bearer_tokens_seen(proxied, "domains")
    assert auth == "Bearer " + proxied.fake.issued_access_tokens[-1]
    assert proxied.fake.issued_access_tokens[-1].encode() not in done.stdout
    # A proxy socket never serves the §4 endpoints: /v1/token is the SDDC Manager's path.
    token_path = await proxied.request("GET", "/v1/token")
    assert token_path.status == 404 and b"No resource at /v1/token" in token_path.body
    assert [c.operation for c in proxied.forwarded()] == ["domains", "other"]
    # Forwarded GETs are logged at debug, with the uid and the canonical path.
    lines = [e for e in proxied.tokend.events("proxy.request") if e["path"] == "/v1/domains"]
    assert lines and lines[0]["level"] == "debug" and lines[0]["who"] == f"uid:{os.geteuid()}"
    assert lines[0]["status"] == 200 and lines[0]["outcome"] == "forwarded"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_curl_uploads_with_expect_100_continue(proxied: Proxied, workdir: Path) -> None:
    upload = workdir / "bundle.bin"
    upload.write_bytes(os.urandom(3 * MIB))  # curl sends Expect: 100-continue above 1 MiB
    done = await asyncio.to_thread(
        subprocess.run, ["curl", "-sS", "-v", "--unix-socket", str(proxied.socket), "-T",
                         str(upload), "http://x/v1/sink"], capture_output=True, timeout=30,
        check=False)
    assert done.returncode == 0, done.stderr.decode()
    assert json.loads(done.stdout) == {"bytes": 3 * MIB,
                                       "sha256": hashlib.sha256(upload.read_bytes()).hexdigest()}
    # tokend answers 100 Continue itself: curl does not sit out its 1 s wait for it.
    assert b"> Expect: 100-continue" in done.stderr
    assert b"< HTTP/1.1 100 Continue" in done.stderr


async def test_methods_bodies_and_answers_pass_unchanged(proxied: Proxied) -> None:
    body = os.urandom(3000)
    answer = await proxied.request("POST", "/v1/echo?x=%2F%2e.&y=1", body,
                                   headers={"Content-Type": "application/x-test",
                                            "X-Request-Id": "r1", "Accept-Encoding": "gzip, br"})
    assert answer.status == 200, answer.body
    seen = answer.json()
    assert seen["method"] == "POST"
    assert seen["path"] == "/v1/echo?x=%2F%2e.&y=1", "the query passes exactly as sent"
    assert seen["sha256"] == hashlib.sha256(body).hexdigest() and seen["bytes"] == 3000
    headers = {name.lower(): value for name, value in seen["headers"]}
    assert headers["content-type"] == "application/x-test"
    assert headers["x-request-id"] == "r1"
    assert headers["accept-encoding"] == "gzip", "only codings tokend can read back"
    assert headers["host"] == proxied.upstream.url.removeprefix("https://")
    assert headers["content-length"] == "3000"
    for method in ("PUT", "PATCH", "DELETE", "OPTIONS"):
        answer = await proxied.request(method, "/v1/echo", b"{}" if method != "OPTIONS" else None)
        assert answer.status == 200 and json.loads(answer.body)["method"] == method
    head = await proxied.request("HEAD", "/v1/domains")  # the fake's GET route answers HEAD
    assert head.status == 200 and head.body == b""
    assert int(head.headers["Content-Length"]) > 0, "HEAD keeps the GET's length"
    # A mutating method is logged at info (the upstream's audit log sees only tokend's account).
    posts = [e for e in proxied.tokend.events("proxy.request") if e["method"] == "POST"]
    assert posts and posts[0]["level"] == "info" and posts[0]["path"] == "/v1/echo"
    assert "?" not in posts[0]["path"], "the query is not logged"


# -- who may forward ---------------------------------------------------------------------------

PEER_SCRIPT = r"""
import base64, json, socket, sys
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.settimeout(5)
sock.connect(sys.argv[1])
try:
    sock.sendall(b"GET /v1/domains HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
except OSError:
    pass
data = b""
try:
    while chunk := sock.recv(65536):
        data += chunk
except (ConnectionResetError, TimeoutError):
    pass
print(base64.b64encode(data).decode())
"""


def request_as(workdir: Path, uid: int, groups: list[int]) -> bytes:
    """GET /v1/domains on the proxy socket from a process with ``uid`` (and ``groups``)."""
    python = next((p for p in ("/usr/bin/python3", "/usr/local/bin/python3")
                   if os.path.exists(p) and os.stat(p).st_mode & 0o001), None)
    if python is None:
        pytest.skip("no world-executable python3 to run a peer as another uid")
    done = subprocess.run([python, "-I", "-c", PEER_SCRIPT, PROXY_SOCKET], cwd=workdir,
                          user=uid, group=uid, extra_groups=groups, capture_output=True,
                          timeout=20, env={"PATH": "/usr/bin:/bin"}, check=False)
    assert done.returncode == 0, done.stderr.decode()
    return base64.b64decode(done.stdout)


async def test_a_peer_outside_the_proxys_allow_lists_gets_403_and_nothing_is_forwarded(
        make_proxied: Callable[..., Any], workdir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to connect as other uids")
    # The [server] lists do not apply: the proxy has its own.
    proxied: Proxied = await make_proxied(
        {"access_ttl": 60}, proxy={"allowed_uids": [0, 4242], "allowed_gids": [5555]},
        server={"allowed_uids": [0, 4343]})
    proxied.socket.chmod(0o666)
    workdir.chmod(0o711)

    denied = await asyncio.to_thread(request_as, workdir, 4343, [])
    assert status_of(denied) == 403, denied
    error = json.loads(denied.partition(b"\r\n\r\n")[2])
    assert error["errorCode"] == "FORBIDDEN" and "4343" in error["message"]
    assert "proxies[0].allowed_uids" in error["remediationMessage"]
    assert proxied.forwarded() == [], "a denied peer's request never reaches the upstream"

    admitted = await asyncio.to_thread(request_as, workdir, 4242, [])
    assert status_of(admitted) == 200, admitted
    by_group = await asyncio.to_thread(request_as, workdir, 4343, [5555])
    assert status_of(by_group) == 200, by_group
    assert [c.operation for c in proxied.forwarded()] == ["domains", "domains"]
    denials = proxied.tokend.events("consumer.denied")
    assert denials and denials[0]["uid"] == 4343 and denials[0]["target"] == "t1"
    assert_catalogued(proxied.tokend)


# -- the token the upstream refuses ------------------------------------------------------------


async def test_a_revoked_token_is_refreshed_once_for_50_concurrent_requests(
        proxied: Proxied) -> None:
    fake = proxied.fake
    started = time.monotonic()
    assert (await proxied.request("GET", "/v1/domains")).status == 200
    # Consumer-triggered refreshes wait 5 s after a new token (SPEC §4): start after that.
    await asyncio.sleep(max(0.0, started + QUIET_AFTER_NEW_TOKEN + 0.7 - time.monotonic()))
    old = fake.issued_access_tokens[-1]
    fake.revoke_access_tokens()
    small = os.urandom(10_000)
    answers = await asyncio.gather(
        *(proxied.request("GET", "/v1/domains") for _ in range(50)),
        *(proxied.request("POST", "/v1/echo", small) for _ in range(5)))
    assert [a.status for a in answers] == [200] * 55, [a.body[:200] for a in answers
                                                       if a.status != 200]
    for echo in answers[50:]:  # a small body was kept and sent again, whole
        assert json.loads(echo.body)["sha256"] == hashlib.sha256(small).hexdigest()
    assert fake.count("refresh") == 1, "one refresh however many requests saw the 401"
    assert fake.count("login") == 1
    new = fake.issued_access_tokens[-1]
    assert new != old
    assert set(bearer_tokens_seen(proxied, "domains")[1:]) <= {f"Bearer {old}", f"Bearer {new}"}
    assert bearer_tokens_seen(proxied, "domains")[-1] == f"Bearer {new}"
    refused = proxied.tokend.events("proxy.token_refused")
    assert len(refused) == 1 and refused[0]["retry"] is True
    outcomes = [e["outcome"] for e in proxied.tokend.events("proxy.request")]
    assert outcomes.count("retried_after_401") >= 1
    assert_catalogued(proxied.tokend)


async def test_a_streamed_request_gets_the_401_redacted_and_the_next_one_a_new_token(
        proxied: Proxied) -> None:
    fake = proxied.fake
    started = time.monotonic()
    await asyncio.sleep(max(0.0, started + QUIET_AFTER_NEW_TOKEN + 0.7 - time.monotonic()))
    old = fake.issued_access_tokens[-1]
    fake.revoke_access_tokens()
    fake.faults.echo_secrets_in_errors = True  # the fake's 401 repeats the Authorization header
    big = os.urandom(100 * 1024)  # over 64 KiB: streamed, not kept, so not retried
    answer = await proxied.request("PUT", "/v1/sink", big)
    assert answer.status == 401
    assert old.encode() not in answer.body, "an error answer is redacted before it is passed on"
    body = json.loads(answer.body)
    assert body["errorCode"] == "Unauthorized" and "**redacted**" in body["message"]
    # The refused token was reported all the same: the next request has the new one.
    await eventually(lambda: fake.count("refresh") == 1, 10, what="the refresh")
    again = await proxied.request("PUT", "/v1/sink", big)
    assert again.status == 200, again.body
    assert json.loads(again.body)["sha256"] == hashlib.sha256(big).hexdigest()


# -- streaming in bounded memory ---------------------------------------------------------------


async def test_64_mib_up_and_down_pass_byte_identical_in_bounded_memory(proxied: Proxied) -> None:
    assert proxied.tokend.proc is not None
    pid = proxied.tokend.proc.pid
    size = 64 * MIB
    await proxied.request("GET", "/v1/stream?bytes=1000000")  # warm up pools and buffers

    sent = hashlib.sha256()

    async def upload() -> AsyncIterator[bytes]:
        for chunk in stream_bytes(size):
            sent.update(chunk)
            yield chunk

    hwm_before = rss_kib(pid)[1]
    async with RssWatch(pid) as watch:
        answer = await proxied.request("PUT", "/v1/sink", upload(),  # type: ignore[arg-type]
                                       headers={"Content-Length": str(size)}, timeout=120)
    assert answer.status == 200, answer.body
    assert json.loads(answer.body) == {"bytes": size, "sha256": sent.hexdigest()}
    assert_memory_bounded(watch, pid, hwm_before, "upload")

    for length in ("0", "1"):  # chunked, then with a Content-Length
        got = hashlib.sha256()
        count = 0
        hwm_before = rss_kib(pid)[1]
        async with RssWatch(pid) as watch:
            connector = aiohttp.UnixConnector(path=str(proxied.socket))
            async with aiohttp.ClientSession(connector=connector) as session, session.get(
                    f"http://x/v1/stream?bytes={size}&length={length}",
                    timeout=aiohttp.ClientTimeout(total=120)) as resp:
                assert resp.status == 200
                if length == "1":
                    assert resp.headers["Content-Length"] == str(size)
                else:
                    assert resp.headers.get("Transfer-Encoding") == "chunked"
                async for chunk in resp.content.iter_chunked(1 << 20):
                    got.update(chunk)
                    count += len(chunk)
        assert count == size
        assert got.hexdigest() == hashlib.sha256(b"".join(stream_bytes(size))).hexdigest()
        assert_memory_bounded(watch, pid, hwm_before, f"download (length={length})")


def assert_memory_bounded(watch: RssWatch, pid: int, hwm_before: int, what: str) -> None:
    hwm_after = rss_kib(pid)[1]
    peak = max(watch.peak, hwm_after if hwm_after > hwm_before else 0)
    growth = (peak - watch.start) / 1024
    assert growth < 30, f"tokend's RSS grew {growth:.1f} MiB during the {what}"


# -- hostile input -----------------------------------------------------------------------------


async def test_the_consumers_credentials_never_reach_the_upstream(proxied: Proxied) -> None:
    token = proxied.fake.issued_access_tokens[-1]
    for headers in ({"Authorization": "Bearer consumer-own-token"},
                    {"Connection": "Authorization", "Authorization": "Basic Y29uc3VtZXI6cHc="},
                    {"Connection": "Host, X-Forwarded-For", "X-Forwarded-For": "10.0.0.1",
                     "Forwarded": "for=10.0.0.1", "Cookie": "VCFSESSION=stolen",
                     "Proxy-Authorization": "Basic eA=="}):
        answer = await proxied.request("GET", "/v1/echo", headers=headers)
        assert answer.status == 200, answer.body
    for call in proxied.fake.calls_of("echo"):
        seen = {k.lower(): v for k, v in call.request_headers.items()}
        assert seen["authorization"] == f"Bearer {token}"
        assert "consumer" not in json.dumps(seen) and "Y29uc3VtZXI" not in json.dumps(seen)
        for dropped in ("cookie", "x-forwarded-for", "forwarded", "proxy-authorization"):
            assert dropped not in seen, seen
        assert seen["host"] == proxied.upstream.url.removeprefix("https://")


@pytest.mark.parametrize(("request_bytes", "why"), [
    (b"POST /v1/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n"
     b"\r\n0\r\n\r\n", "Transfer-Encoding with Content-Length"),
    (b"GET http://evil.example/v1/domains HTTP/1.1\r\nHost: evil.example\r\n\r\n", "absolute-form"),
    (b"GET https://127.0.0.1/v1/domains HTTP/1.1\r\nHost: x\r\n\r\n", "absolute-form"),
    (b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n", "CONNECT"),
    (b"TRACE /v1/domains HTTP/1.1\r\nHost: x\r\n\r\n", "TRACE"),
    (b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", "OPTIONS *"),
    (b"GET /v1%2Fdomains HTTP/1.1\r\nHost: x\r\n\r\n", "%2F"),
    (b"GET /v1/domains%5C..%5C HTTP/1.1\r\nHost: x\r\n\r\n", "%5C"),
    (b"GET /v1/domains;jsessionid=x HTTP/1.1\r\nHost: x\r\n\r\n", "';'"),
    (b"GET /v1/%2e%2e%252Fdomains HTTP/1.1\r\nHost: x\r\n\r\n", "%25"),
    (b"GET /v1/domains%00 HTTP/1.1\r\nHost: x\r\n\r\n", "NUL"),
    (b"GET /v1/caf%C3%A9 HTTP/1.1\r\nHost: x\r\n\r\n", "non-ASCII"),
    (b"GET /v1/domains#x HTTP/1.1\r\nHost: x\r\n\r\n", "fragment"),
])
async def test_hostile_requests_get_400_and_nothing_is_forwarded(
        proxied: Proxied, request_bytes: bytes, why: str) -> None:
    raw = await proxied.raw(request_bytes)
    assert status_of(raw) == 400, (why, raw[:300])
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"application/json" in head.lower(), raw[:300]
    error = json.loads(body)
    assert error["errorCode"] == "BAD_REQUEST" and error["message"], error
    assert proxied.forwarded() == [], f"{why}: something reached the upstream"


async def test_dot_segments_and_slashes_are_resolved_once_and_token_paths_stay_local(
        proxied: Proxied) -> None:
    answer = await proxied.request("GET", "/v1/x/..//%2e/domains")
    assert answer.status == 200
    assert [c.operation for c in proxied.forwarded()] == ["domains"]
    for path in ("/v1/tokens", "/V1/TOKENS/", "/v1/x/../tokens", "//v1//tokens/refresh-token",
                 "/v1/%74okens/access-token/refresh", "/v1/tokens/anything"):
        for method in ("GET", "POST", "PATCH", "DELETE"):
            local = await proxied.request(method, path, b"{}")
            # The facade answers its three endpoints (a login on a Unix socket needs no body; "{}"
            # is no refresh id); every other token path is unknown here.
            endpoint = {("POST", "/v1/tokens"): 201, ("DELETE", "/v1/tokens/refresh-token"): 204,
                        ("PATCH", "/v1/tokens/access-token/refresh"): 404}.get(
                (method, route_key(parse_request_target(path).path)))
            if endpoint is not None:
                assert local.status == endpoint, (method, path, local.body)
                continue
            assert local.status in (404, 405), (method, path, local.body)
            assert error_of(local)["errorCode"] in ("NOT_FOUND", "METHOD_NOT_ALLOWED")
    raw = await proxied.raw(b"GET /v1/../../v1/tokens HTTP/1.1\r\nHost: x\r\n"
                            b"Connection: close\r\n\r\n")
    assert status_of(raw) in (404, 405)
    assert [c.operation for c in proxied.forwarded()] == ["domains"], "token paths never leave"
    assert all(c.operation != "login" or c.status == 201 for c in proxied.fake.calls)
    assert proxied.fake.count("login") == 1


# -- tokend's own answers ----------------------------------------------------------------------


async def test_no_token_means_503_with_retry_after_and_nothing_sent(
        make_proxied: Callable[..., Any]) -> None:
    proxied: Proxied = await make_proxied({"access_ttl": 60}, password="wrong-password",
                                          wait="listening")
    answer = await proxied.request("GET", "/v1/domains")
    assert answer.status == 503
    assert error_of(answer)["errorCode"] == "TOKEN_UNAVAILABLE"
    assert int(answer.headers["Retry-After"]) >= 1
    assert proxied.forwarded() == []


async def test_unreachable_and_slow_upstreams_get_502_and_504(
        make_proxied: Callable[..., Any]) -> None:
    proxied: Proxied = await make_proxied({"access_ttl": 60}, proxy={"response_timeout": "1s"})
    proxied.fake.faults.delays["domains"] = 3
    started = time.monotonic()
    slow = await proxied.request("GET", "/v1/domains")
    assert slow.status == 504 and error_of(slow)["errorCode"] == "UPSTREAM_TIMEOUT"
    assert time.monotonic() - started < 2.5
    proxied.fake.faults.delays.clear()
    await proxied.upstream.runner.cleanup()  # the SDDC Manager goes away
    gone = await proxied.request("GET", "/v1/domains")
    assert gone.status == 502 and error_of(gone)["errorCode"] == "UPSTREAM_UNREACHABLE"
    assert proxied.tokend.events("proxy.upstream_failed")
    assert_catalogued(proxied.tokend)


async def test_error_answers_tokend_cannot_check_are_withheld(proxied: Proxied) -> None:
    fake = proxied.fake
    fake.faults.fail_next("echo", 500, body="x" * (100 * 1024))
    big = await proxied.request("GET", "/v1/echo")
    assert big.status == 500
    assert error_of(big)["errorCode"] == "UPSTREAM_ERROR_WITHHELD"
    # A small error answer passes as it came (here with the fake's referenceToken).
    fake.faults.fail_next("echo", 503, headers={"Retry-After": "7"})
    small = await proxied.request("GET", "/v1/echo")
    assert small.status == 503 and small.headers["Retry-After"] == "7"
    assert json.loads(small.body)["errorCode"] == "INTERNAL_SERVER_ERROR"
    assert proxied.tokend.events("proxy.error_withheld")
    assert_catalogued(proxied.tokend)


async def test_a_secret_in_an_error_answer_is_redacted(proxied: Proxied) -> None:
    token = proxied.fake.issued_access_tokens[-1]
    proxied.fake.faults.fail_next("echo", 400, body={"errorCode": "X", "message": f"t {token}",
                                                    "nested": {"list": [token]}})
    answer = await proxied.request("GET", "/v1/echo")
    assert answer.status == 400 and token.encode() not in answer.body
    body = json.loads(answer.body)
    assert body["message"] == "t **redacted**" and body["nested"] == {"list": ["**redacted**"]}


# -- life --------------------------------------------------------------------------------------


async def test_sighup_applies_proxy_changes(proxied: Proxied, workdir: Path) -> None:
    tokend = proxied.tokend
    document = tomllib.loads(tokend.config_path.read_text())
    assert document["proxies"] == [proxy_table(workdir / PROXY_SOCKET)]

    def with_proxy(**changes: Any) -> dict[str, Any]:
        changed = copy.deepcopy(document)
        changed["proxies"][0].update(changes)
        return changed

    async def reload(config: dict[str, Any], event: str = "config.reloaded") -> None:
        count = len(tokend.events(event))
        write_toml(tokend.config_path, config)
        tokend.signal(signal.SIGHUP)
        await eventually(lambda: len(tokend.events(event)) > count, 10, what=event)

    # New allow-lists apply at once: root is no longer let in, then is again.
    await reload(with_proxy(allowed_uids=[4242]))
    raw = await proxied.raw(b"")  # answered at accept, before a byte is sent
    assert status_of(raw) == 403 and b"proxies[0].allowed_uids" in raw
    # New pool settings: a new connection pool, the same socket.
    await reload(with_proxy(max_upstream_connections=2))
    assert (await proxied.request("GET", "/v1/domains")).status == 200
    # A config that does not load keeps the running proxy.
    await reload(with_proxy(target="nope"), "config.reload_failed")
    failed = tokend.events("config.reload_failed")[-1]
    assert failed["key"] == "proxies[0].target", failed
    assert (await proxied.request("GET", "/v1/domains")).status == 200
    # A new socket path: the proxy moves.
    moved = workdir / "moved.api.sock"
    await reload(with_proxy(socket=str(moved)))
    assert moved.exists() and not proxied.socket.exists()
    proxied.socket = moved
    assert (await proxied.request("GET", "/v1/domains")).status == 200
    # No proxy: it stops; the keeper is untouched.
    await reload({k: v for k, v in document.items() if k != "proxies"})
    assert not moved.exists()
    assert (await tokend.get("/v1/token")).status == 200
    assert proxied.fake.count("login") == 1
    # And back.
    await reload(document)
    proxied.socket = workdir / PROXY_SOCKET
    assert (await proxied.request("GET", "/v1/domains")).status == 200
    assert [e["socket"] for e in tokend.events("proxy.stopped")] == [
        str(workdir / PROXY_SOCKET), str(moved)]
    assert tokend.proc is not None and tokend.proc.poll() is None
    assert await tokend.stop() == 0
    assert not proxied.socket.exists()
    assert_catalogued(tokend)


async def test_a_proxy_socket_another_tokend_serves_is_never_taken(
        proxied: Proxied, workdir: Path) -> None:
    other = workdir / "other"
    other.mkdir()
    config = write_config(other, proxied.upstream.url, proxied.upstream.ca_pem,
                          proxies=[proxy_table(proxied.socket)])
    second = Tokend(other, config, other / "tokend.sock")
    second.start()
    assert await second.wait_exit() == 2
    assert "proxies[0].socket" in second.stderr() and "another tokend" in second.stderr()
    assert not (other / "tokend.sock").exists(), "the second one removed what it had bound"
    assert (await proxied.request("GET", "/v1/domains")).status == 200


async def test_sigterm_lets_a_request_in_flight_finish_and_removes_the_socket(
        proxied: Proxied) -> None:
    proxied.fake.faults.delays["domains"] = 1.0
    pending = asyncio.create_task(proxied.request("GET", "/v1/domains"))
    await eventually(lambda: proxied.fake.calls_of("domains"), 5, what="the request upstream")
    proxied.tokend.signal(signal.SIGTERM)
    answer = await pending
    assert answer.status == 200
    assert await proxied.tokend.wait_exit() == 0
    assert not proxied.socket.exists()


@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None,
                    reason="systemd-socket-activate (Debian package systemd) is not installed")
async def test_socket_activation_matches_the_proxy_socket_by_its_name(
        make_upstream: Callable[..., Any], workdir: Path, fakes: Any) -> None:
    upstream = await make_upstream(access_ttl=60)
    api, proxy_sock = workdir / "activated.sock", workdir / "activated.api.sock"
    config = write_config(workdir, upstream.url, upstream.ca_pem,
                          proxies=[proxy_table(workdir / PROXY_SOCKET)])
    proc = subprocess.Popen(
        ["systemd-socket-activate", "-l", str(api), "-l", str(proxy_sock),
         "--fdname=tokend.socket:t1", sys.executable, "-m", "tokend", "run", "--config",
         str(config)],
        stdout=open(workdir / "stdout.log", "ab"), stderr=open(workdir / "stderr.log", "ab"))
    daemon = Tokend(workdir, config, api)
    proxied = Proxied(daemon, upstream, proxy_sock)
    try:
        await eventually(proxy_sock.exists, 10, what="the activation sockets")

        async def forwarded() -> bool:
            try:
                return (await proxied.request("GET", "/v1/domains", timeout=5)).status == 200
            except (aiohttp.ClientError, OSError):
                return False
        await eventually(forwarded, 20, what="a request through the activated proxy socket")
        assert (await daemon.get("/v1/token")).status == 200
        assert not (workdir / PROXY_SOCKET).exists(), "the configured path stays unused"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    assert proc.returncode == 0, (workdir / "stderr.log").read_text()
    out = (workdir / "stdout.log").read_text()
    for fake in fakes:
        for secret in [*fake.issued_access_tokens, PASSWORD]:
            assert secret not in out


async def test_proxy_metrics_count_each_outcome(make_proxied: Callable[..., Any]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proxied: Proxied = await make_proxied({"access_ttl": 60},
                                          metrics={"listen": f"127.0.0.1:{port}"})
    assert (await proxied.request("GET", "/v1/domains")).status == 200
    assert status_of(await proxied.raw(b"TRACE / HTTP/1.1\r\nHost: x\r\n\r\n")) == 400
    async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{port}/metrics") as resp:
        text = await resp.text()
    series = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
              for line in text.splitlines() if line.startswith("tokend_proxy_")}
    assert series['tokend_proxy_requests_total{outcome="forwarded",target="t1"}'] == 1
    assert series['tokend_proxy_requests_total{outcome="refused",target="t1"}'] == 1
    for outcome in ("retried_after_401", "unavailable", "unauthorized", "upstream_error"):
        assert series[f'tokend_proxy_requests_total{{outcome="{outcome}",target="t1"}}'] == 0
    assert series['tokend_proxy_request_duration_seconds_count{target="t1"}'] == 1
    for outcome in ("success", "rejected", "rate_limited"):
        assert series[f'tokend_proxy_logins_total{{outcome="{outcome}",target="t1"}}'] == 0
    assert proxied.fake.issued_access_tokens[-1] not in text
