"""The SDDC Manager facade of SPEC §9.3-9.7 on the real daemon: local logins on the HTTPS listener
and the Unix socket, local tokens, who may forward over TCP, and hostile input with its answer."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from multidict import CIMultiDict

from tests.e2e.facade_fixtures import (
    LOCAL_PASSWORD,
    LOCAL_USER,
    OTHER_PASSWORD,
    OTHER_USER,
    Facaded,
    connect_tcp,
    facaded,
    htpasswd,
    make_facaded,
)
from tests.e2e.proxy_fixtures import assert_catalogued, error_of
from tests.support import Answer, eventually, free_port
from tokend.proxy.localtoken import SessionKeys, issue, verify

__all__ = ["facaded", "make_facaded"]

HEADER_DEADLINE = 10.0  # tokend.server.IDLE_TIMEOUT


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def upstream_logins(facaded: Facaded) -> int:
    count: int = facaded.fake.count("login")
    return count


# -- logging in, refreshing, revoking ----------------------------------------------------------


async def test_a_local_login_refresh_and_revoke_never_reach_the_upstream(facaded: Facaded) -> None:
    fake = facaded.fake
    login = await facaded.login()
    assert login.status == 201, login.body
    assert login.headers["Content-Type"].startswith("application/json")
    assert login.headers["Cache-Control"] == "no-store"
    pair = login.json()
    assert set(pair) == {"accessToken", "refreshToken"} and set(pair["refreshToken"]) == {"id"}
    access, refresh_id = pair["accessToken"], pair["refreshToken"]["id"]
    claims = verify(facaded.keys(), access, target="t1", typ="access", via="tcp", now=time.time())
    assert claims.sub == LOCAL_USER and claims.exp - claims.iat == 3600
    assert jwt.get_unverified_header(access)["alg"] == "HS256"

    # Forwarded with tokend's token: the consumer's Authorization header never goes upstream.
    answer = await facaded.request("GET", "/v1/echo", headers=bearer(access))
    assert answer.status == 200, answer.body
    (echo,) = fake.calls_of("echo")
    sent = {k.lower(): v for k, v in echo.request_headers.items()}
    assert sent["authorization"] == f"Bearer {fake.issued_access_tokens[-1]}"
    assert access not in json.dumps(sent)

    # Refresh: the id as a JSON string (the vendor's clients) or bare (PowerVCF), any type.
    for body, content_type in ((json.dumps(refresh_id).encode(), "application/json"),
                               (refresh_id.encode(), "text/plain"),
                               (refresh_id.encode(), "application/json")):
        refreshed = await facaded.request("PATCH", "/v1/tokens/access-token/refresh", body,
                                          headers={"Content-Type": content_type,
                                                   "Authorization": "Bearer stale"})
        assert refreshed.status == 200, refreshed.body
        new_access = json.loads(refreshed.body)
        assert isinstance(new_access, str) and new_access != refresh_id
        verify(facaded.keys(), new_access, target="t1", typ="access", via="tcp", now=time.time())
        assert (await facaded.request("GET", "/v1/domains", headers=bearer(new_access))).status \
            == 200

    # Revoke: 204, then the id no longer refreshes (404 in the Error shape); tokens already
    # issued stay valid until they expire (they are checked without shared state).
    revoked = await facaded.request("DELETE", "/v1/tokens/refresh-token",
                                    json.dumps(refresh_id).encode(),
                                    headers={"Content-Type": "application/json"})
    assert revoked.status == 204 and revoked.body == b""
    gone = await facaded.request("PATCH", "/v1/tokens/access-token/refresh",
                                 json.dumps(refresh_id).encode(),
                                 headers={"Content-Type": "application/json"})
    assert gone.status == 404 and error_of(gone)["errorCode"] == "REFRESH_TOKEN_NOT_FOUND"
    assert (await facaded.request("GET", "/v1/domains", headers=bearer(access))).status == 200

    # An access token is not a refresh id, nor the other way round.
    wrong_type = await facaded.request("PATCH", "/v1/tokens/access-token/refresh",
                                       json.dumps(access).encode())
    assert wrong_type.status == 404
    refresh_as_access = await facaded.request("GET", "/v1/domains", headers=bearer(refresh_id))
    assert refresh_as_access.status == 401

    # None of it reached the upstream: its one login is the keeper's, its revokes none.
    assert upstream_logins(facaded) == 1
    assert fake.count("refresh") == 0 and fake.count("revoke") == 0
    assert not [c for c in fake.calls if c.operation == "other"]
    (started,) = [e for e in facaded.tokend.events("proxy.started") if e.get("listen")]
    assert started["ca_file"] == str(facaded.ca_file)
    assert_catalogued(facaded.tokend)


async def test_a_unix_socket_login_is_the_peers_uid_whatever_the_body(facaded: Facaded) -> None:
    for body in (None, b"not json", json.dumps({"username": "x", "password": "y"}).encode()):
        login = await facaded.unix("POST", "/v1/tokens", body)
        assert login.status == 201, login.body
    pair = login.json()
    claims = verify(facaded.keys(), pair["accessToken"], target="t1", typ="access", via="unix",
                    now=time.time())
    assert claims.sub == f"uid:{os.geteuid()}"
    # On the Unix socket the allow-lists decide: no token needed, a stale one ignored.
    assert (await facaded.unix("GET", "/v1/domains")).status == 200
    assert (await facaded.unix("GET", "/v1/domains", headers=bearer("stale"))).status == 200
    refreshed = await facaded.unix("PATCH", "/v1/tokens/access-token/refresh",
                                   json.dumps(pair["refreshToken"]["id"]).encode())
    assert refreshed.status == 200
    # Tokens made on the Unix socket are worth nothing on TCP, and the other way round.
    over_tcp = await facaded.request("GET", "/v1/domains", headers=bearer(pair["accessToken"]))
    assert over_tcp.status == 401 and error_of(over_tcp)["errorCode"] == "Unauthorized"
    refresh_over_tcp = await facaded.request("PATCH", "/v1/tokens/access-token/refresh",
                                             json.dumps(pair["refreshToken"]["id"]).encode())
    assert refresh_over_tcp.status == 404
    tcp_pair = (await facaded.login()).json()
    refresh_over_unix = await facaded.unix("PATCH", "/v1/tokens/access-token/refresh",
                                           json.dumps(tcp_pair["refreshToken"]["id"]).encode())
    assert refresh_over_unix.status == 404
    assert upstream_logins(facaded) == 1


# -- bad and hostile input ---------------------------------------------------------------------


async def test_a_wrong_local_password_gets_401_and_a_burst_gets_429_after_5(
        make_facaded: Callable[..., Any]) -> None:
    metrics_port = free_port()
    facaded: Facaded = await make_facaded(metrics={"listen": f"127.0.0.1:{metrics_port}"})
    wrong = await facaded.login(LOCAL_USER, "not-the-password")
    assert wrong.status == 401
    error = error_of(wrong)
    assert error["errorCode"] == "Unauthorized"
    for _ in range(4):
        assert (await facaded.login(LOCAL_USER, "guess")).status == 401
    # Five failures a minute from this address: the sixth is not even checked, nor is the right
    # password from here.
    burst = [await facaded.login(LOCAL_USER, f"guess-{i}") for i in range(3)]
    assert [a.status for a in burst] == [429, 429, 429]
    assert error_of(burst[0])["errorCode"] == "TOO_MANY_REQUESTS"
    assert 1 <= int(burst[0].headers["Retry-After"]) <= 60
    assert (await facaded.login()).status == 429
    # Another address with no failures is checked as ever: nobody locks a user out from elsewhere.
    elsewhere = await login_from(facaded, "127.0.0.2")
    assert elsewhere.status == 201, elsewhere.body
    # An unknown user is refused alike, and never named in the logs (people type passwords there).
    unknown = await login_from(facaded, "127.0.0.3", user="Hunter2-typed-as-a-user")
    assert unknown.status == 401 and error_of(unknown)["errorCode"] == "Unauthorized"

    lines = facaded.tokend.events("proxy.login_rejected")
    assert [(e.get("user"), e["address"], e["reason"]) for e in lines] == [
        (LOCAL_USER, "127.0.0.1", "wrong_password"), (None, "127.0.0.3", "unknown_user")], \
        "at most one line a minute per (user, address)"
    log_text = facaded.tokend.stdout()
    for secret in ("not-the-password", "guess", "Hunter2-typed-as-a-user", LOCAL_PASSWORD):
        assert secret not in log_text
    assert upstream_logins(facaded) == 1
    async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{metrics_port}/metrics") as resp:
        text = await resp.text()
    logins = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
              for line in text.splitlines() if line.startswith("tokend_proxy_logins_total")}
    assert logins == {'tokend_proxy_logins_total{outcome="success",target="t1"}': 1,
                      'tokend_proxy_logins_total{outcome="rejected",target="t1"}': 6,
                      'tokend_proxy_logins_total{outcome="rate_limited",target="t1"}': 4}, logins
    assert_catalogued(facaded.tokend)


async def login_from(facaded: Facaded, source: str, user: str = LOCAL_USER,
                     password: str = LOCAL_PASSWORD) -> Answer:
    """A login from another loopback address (all of 127.0.0.0/8 reaches the listener)."""
    connector = aiohttp.TCPConnector(local_addr=(source, 0), ssl=facaded.ssl_context())
    async with aiohttp.ClientSession(connector=connector) as s, s.post(
            facaded.url + "/v1/tokens", json={"username": user, "password": password}) as r:
        return Answer(r.status, await r.read(), CIMultiDict(r.headers))


async def test_forged_expired_and_other_target_tokens_get_401_and_nothing_is_forwarded(
        facaded: Facaded, workdir: Path) -> None:
    keys = facaded.keys()
    now = time.time()
    good = await facaded.access_token()

    def local(**changes: Any) -> str:
        claims: dict[str, Any] = {"target": "t1", "sub": LOCAL_USER, "via": "tcp",
                                  "typ": "access", "lifetime": 3600, "now": now,
                                  "uh": jwt.decode(good, options={"verify_signature": False})["uh"]}
        claims.update(changes)
        key_set = claims.pop("keys", keys)
        return issue(key_set, **claims)

    other_key = workdir / "other.key"
    other_key.write_text(base64.b64encode(os.urandom(32)).decode())
    other_key.chmod(0o600)
    header, payload, signature = good.split(".")
    payload_claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    none_alg = jwt.encode(payload_claims, key="", algorithm="none")
    tampered = ".".join((header, base64.urlsafe_b64encode(json.dumps(
        {**payload_claims, "sub": OTHER_USER}).encode()).decode().rstrip("="), signature))
    hostile = {
        "no token": {},
        "Basic credentials": {"Authorization": "Basic " + base64.b64encode(
            f"{LOCAL_USER}:{LOCAL_PASSWORD}".encode()).decode()},
        "garbage": bearer("not-a-jwt"),
        "signed with another key": bearer(local(keys=SessionKeys.load(other_key, "t"))),
        "alg none": bearer(none_alg),
        "claims changed after signing": bearer(tampered),
        "expired": bearer(local(now=now - 3 * 3600, lifetime=1500)),
        "issued in the future": bearer(local(now=now + 3600)),
        "for another target": bearer(local(target="t2")),
        "a refresh id": bearer(local(typ="refresh")),
        "issued on a Unix socket": bearer(local(via="unix")),
        "of a user who does not exist": bearer(local(sub="ghost")),
        "two Authorization headers": None,
        "the upstream's own token": bearer(facaded.fake.issued_access_tokens[-1]),
    }
    for why, headers in hostile.items():
        if headers is None:
            answer = await raw_two_authorizations(facaded, good)
        else:
            answer = await facaded.request("GET", "/v1/domains", headers=headers)
        assert answer.status == 401, (why, answer.body)
        error = error_of(answer)
        assert error["errorCode"] == "Unauthorized", (why, error)
    assert facaded.forwarded() == [], "no request without a valid local token reaches the upstream"
    assert (await facaded.request("GET", "/v1/domains", headers=bearer(good))).status == 200

    def outcomes() -> list[str]:
        return [e["outcome"] for e in facaded.tokend.events("proxy.request")
                if e["path"] == "/v1/domains"]

    # A streamed answer is logged once it is sent: the line may come just after the answer.
    await eventually(lambda: "forwarded" in outcomes(), 5, what="the forwarded request's line")
    assert outcomes().count("unauthorized") == len(hostile) and outcomes()[-1] == "forwarded"
    assert_catalogued(facaded.tokend)


async def raw_two_authorizations(facaded: Facaded, token: str) -> Answer:
    """GET /v1/domains carrying the Authorization header twice (aiohttp's client merges them)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", facaded.port,
                                                   ssl=facaded.ssl_context(),
                                                   server_hostname="localhost")
    try:
        writer.write(f"GET /v1/domains HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                     f"Authorization: Bearer {token}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    headers = CIMultiDict(line.split(": ", 1) for line in head.decode().split("\r\n")[1:])
    return Answer(status, body, headers)


async def test_a_changed_password_or_removed_user_voids_their_tokens(facaded: Facaded) -> None:
    tokend = facaded.tokend
    pair = (await facaded.login(OTHER_USER, OTHER_PASSWORD)).json()
    mine = await facaded.access_token()
    assert (await facaded.request("GET", "/v1/domains", headers=bearer(pair["accessToken"]))) \
        .status == 200

    async def reload() -> None:
        count = len(tokend.events("proxy.files_reloaded"))
        tokend.signal(signal.SIGHUP)
        await eventually(lambda: len(tokend.events("proxy.files_reloaded")) > count, 10,
                         what="the users file re-read")

    await asyncio.to_thread(htpasswd, facaded.users_file, OTHER_USER, "a-new-password")
    await reload()
    void = await facaded.request("GET", "/v1/domains", headers=bearer(pair["accessToken"]))
    assert void.status == 401
    refresh = await facaded.request("PATCH", "/v1/tokens/access-token/refresh",
                                    json.dumps(pair["refreshToken"]["id"]).encode())
    assert refresh.status == 404
    assert (await facaded.login(OTHER_USER, OTHER_PASSWORD)).status == 401
    assert (await facaded.login(OTHER_USER, "a-new-password")).status == 201
    # Another user's tokens are untouched.
    assert (await facaded.request("GET", "/v1/domains", headers=bearer(mine))).status == 200

    # A users file that does not parse keeps the last good one (logged once).
    good = facaded.users_file.read_bytes()
    facaded.users_file.write_text(f"{LOCAL_USER}:{{SHA}}plain-sha1-is-refused\n")
    tokend.signal(signal.SIGHUP)
    failed = await eventually(lambda: tokend.events("proxy.files_reload_failed"), 10,
                              what="the failed re-read")
    assert failed[0]["key"] == "proxies[0].users_file" and "line 1" in failed[0]["error"]
    assert (await facaded.request("GET", "/v1/domains", headers=bearer(mine))).status == 200
    facaded.users_file.write_bytes(good)
    await reload()

    subprocess.run(["htpasswd", "-D", str(facaded.users_file), LOCAL_USER], check=True,
                   capture_output=True)
    await reload()
    assert (await facaded.request("GET", "/v1/domains", headers=bearer(mine))).status == 401
    assert upstream_logins(facaded) == 1
    assert_catalogued(tokend)


async def test_oversized_and_malformed_login_bodies(facaded: Facaded) -> None:
    big = await facaded.request("POST", "/v1/tokens", b"{" + b" " * 5000 + b"}",
                                headers={"Content-Type": "application/json"})
    assert big.status == 413 and error_of(big)["errorCode"] == "BAD_REQUEST"
    for body in (b"", b"[]", b'{"username": "automation"}', b'{"apiKey": "k"}',
                 b'{"username": 1, "password": 2}', b"\xff\xfe"):
        answer = await facaded.request("POST", "/v1/tokens", body,
                                       headers={"Content-Type": "application/json"})
        assert answer.status == 401, (body, answer.body)
        assert error_of(answer)["errorCode"] == "Unauthorized"
    long_password = await facaded.login(LOCAL_USER, LOCAL_PASSWORD + "x" * 100)
    assert long_password.status == 401, "bcrypt would ignore what follows 72 bytes"
    assert upstream_logins(facaded) == 1


async def test_no_answer_of_the_tcp_listener_holds_the_upstream_token(facaded: Facaded) -> None:
    fake = facaded.fake
    started = time.monotonic()
    token = await facaded.access_token()
    upstream_token = fake.issued_access_tokens[-1]
    answers = [await facaded.request("GET", "/v1/domains", headers=bearer(token))]
    # An error answer that repeats the upstream token is redacted before it is passed on.
    fake.faults.fail_next("echo", 400, body={"errorCode": "X", "message": f"t {upstream_token}"})
    answers.append(await facaded.request("GET", "/v1/echo", headers=bearer(token)))
    assert answers[-1].status == 400 and b"**redacted**" in answers[-1].body
    # The upstream refusing tokend's token: its 401, which names the token, is redacted too.
    # Consumer-triggered refreshes wait 5 s after a new token (SPEC §4): start after that.
    await asyncio.sleep(max(0.0, started + 5.7 - time.monotonic()))
    fake.revoke_access_tokens()
    fake.faults.echo_secrets_in_errors = True
    answers.append(await facaded.request("PUT", "/v1/sink", os.urandom(100 * 1024),
                                         headers=bearer(token)))
    assert answers[-1].status == 401
    answers.append(await facaded.request("GET", "/v1/echo", headers=bearer(token)))
    assert answers[-1].status == 200
    for answer in answers:
        blob = answer.body + "".join(f"{k}: {v}" for k, v in answer.headers.items()).encode()
        for secret in [*fake.issued_access_tokens, *fake.issued_refresh_ids]:
            assert secret.encode() not in blob


# -- the HTTPS listener ------------------------------------------------------------------------


def hold_connection(port: int, ca_file: Path, mode: str) -> float:
    """Open a connection and dawdle; the seconds until tokend closed it.

    ``silent``: TCP only, no TLS handshake. ``trickle``: TLS, then a request line and one header
    byte a second, never completing the headers.
    """
    started = time.monotonic()
    raw = connect_tcp(port)
    try:
        if mode == "silent":
            raw.settimeout(HEADER_DEADLINE + 10)
            data = raw.recv(1)
            assert data == b"", data
            return time.monotonic() - started
        context = ssl.create_default_context(cafile=str(ca_file))
        sock = context.wrap_socket(raw, server_hostname="localhost")
        started = time.monotonic()
        sock.sendall(b"GET /v1/domains HTTP/1.1\r\nHost: x\r\n")
        sock.settimeout(1.0)
        while time.monotonic() - started < HEADER_DEADLINE + 10:
            try:
                sock.sendall(b"X")
                if sock.recv(1) == b"":
                    return time.monotonic() - started
            except TimeoutError:
                continue
            except (OSError, ssl.SSLError):
                return time.monotonic() - started
        raise AssertionError("the connection was never closed")
    finally:
        raw.close()


async def test_a_slowloris_on_the_tcp_listener_is_closed_at_the_header_deadline(
        facaded: Facaded) -> None:
    holds = [asyncio.create_task(asyncio.to_thread(hold_connection, facaded.port,
                                                   facaded.ca_file, mode))
             for mode in ("silent", "trickle", "trickle")]
    # Meanwhile a well-behaved client is served at once.
    served = []
    while not all(h.done() for h in holds):
        started = time.monotonic()
        token = await facaded.access_token()
        answer = await facaded.request("GET", "/v1/domains", headers=bearer(token))
        assert answer.status == 200
        served.append(time.monotonic() - started)
        await asyncio.sleep(0.5)
    closed_after = [h.result() for h in holds]
    for seconds in closed_after:
        assert HEADER_DEADLINE - 1 <= seconds <= HEADER_DEADLINE + 3, closed_after
    assert max(served) < 2.0, served
    print(f"\nslowloris: closed after {[round(s, 1) for s in closed_after]} s; "
          f"{len(served)} logins and requests served meanwhile, slowest {max(served):.2f} s")


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
async def test_the_listener_speaks_tls_12_or_later_only(facaded: Facaded) -> None:
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.load_verify_locations(str(facaded.ca_file))
    old.minimum_version = ssl.TLSVersion.TLSv1
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("ALL:@SECLEVEL=0")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await asyncio.wait_for(asyncio.open_connection("127.0.0.1", facaded.port, ssl=old,
                                                       server_hostname="localhost"), 10)
    # Plain HTTP on the TLS port is not served either.
    reader, writer = await asyncio.open_connection("127.0.0.1", facaded.port)
    writer.write(b"GET /v1/domains HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    assert b"200" not in await asyncio.wait_for(reader.read(), 15)
    writer.close()
    assert oct(facaded.ca_file.stat().st_mode & 0o777) == "0o644"
    modern = facaded.ssl_context()
    modern.minimum_version = ssl.TLSVersion.TLSv1_2
    for name in ("localhost", "127.0.0.1"):  # the generated certificate covers both
        _, writer = await asyncio.open_connection("127.0.0.1", facaded.port, ssl=modern,
                                                  server_hostname=name)
        writer.close()


async def test_connections_are_limited_per_peer_address(
        make_facaded: Callable[..., Any]) -> None:
    facaded: Facaded = await make_facaded(server={"max_connections_per_uid": 3})
    held = []
    for _ in range(3):
        held.append(await asyncio.open_connection("127.0.0.1", facaded.port,
                                                  ssl=facaded.ssl_context(),
                                                  server_hostname="localhost"))
    reader, writer = await asyncio.open_connection("127.0.0.1", facaded.port,
                                                   ssl=facaded.ssl_context(),
                                                   server_hostname="localhost")
    refused = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert refused.startswith(b"HTTP/1.1 503"), refused[:200]
    assert b"TOO_MANY_CONNECTIONS" in refused and b"127.0.0.1" in refused
    # Another address is not held back by this one.
    assert (await login_from(facaded, "127.0.0.2")).status == 201
    for _, w in held:
        w.close()
    # Closed connections give their slots back.
    async def logged_in_again() -> bool:
        return (await facaded.login()).status == 201
    await eventually(logged_in_again, 10, what="a connection from 127.0.0.1 again")
    await eventually(lambda: facaded.tokend.events("proxy.connection_limit"), 5,
                     what="proxy.connection_limit")
    assert_catalogued(facaded.tokend)


async def test_sighup_restarts_a_listener_whose_address_changed_and_keeps_the_rest(
        facaded: Facaded, workdir: Path) -> None:
    tokend = facaded.tokend
    token = await facaded.access_token()
    document = (workdir / "config.toml").read_text()
    port = free_port()
    (workdir / "config.toml").write_text(document.replace('listen = "127.0.0.1:0"',
                                                          f'listen = "127.0.0.1:{port}"'))
    tokend.signal(signal.SIGHUP)
    await eventually(lambda: any(e.get("listen") == f"127.0.0.1:{port}"
                                 for e in tokend.events("proxy.started")), 10,
                     what="the listener on its new address")
    facaded.port = port
    # The same session key and the same CA: tokens and trust carry over.
    assert (await facaded.request("GET", "/v1/domains", headers=bearer(token))).status == 200
    assert (await facaded.unix("GET", "/v1/domains")).status == 200
    assert upstream_logins(facaded) == 1
    assert not tokend.events("config.reload_failed")
    # A session key file that is readable by others is refused at the next change, the old key
    # stays in force.
    facaded.key_file.chmod(0o644)
    os.utime(facaded.key_file)
    tokend.signal(signal.SIGHUP)
    failed = await eventually(lambda: tokend.events("proxy.files_reload_failed"), 10,
                              what="the refused key file")
    assert failed[0]["key"] == "proxies[0].session_key_file"
    assert (await facaded.request("GET", "/v1/domains", headers=bearer(token))).status == 200
    assert_catalogued(tokend)


async def test_a_listen_address_in_use_fails_start_with_exit_2(
        make_upstream: Callable[..., Any], make_tokend: Callable[..., Any],
        workdir: Path) -> None:
    from tests.e2e.facade_fixtures import facade_table, write_session_key

    htpasswd(workdir / "users.htpasswd", LOCAL_USER, LOCAL_PASSWORD)
    write_session_key(workdir / "facade.key")
    upstream = await make_upstream(access_ttl=60)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        tokend = await make_tokend(upstream.url, upstream.ca_pem, wait=None,
                                   proxies=[facade_table(workdir, listen=f"127.0.0.1:{port}")])
        assert await tokend.wait_exit() == 2
    assert "proxies[0].listen" in tokend.stderr() and "Traceback" not in tokend.stderr()
    assert upstream.fake.count("login") == 0, "it failed before any login"
    assert not (workdir / "t1.api.sock").exists()


async def test_an_operators_certificate_is_re_read_when_it_changes(
        make_facaded: Callable[..., Any], workdir: Path) -> None:
    import trustme

    ca = trustme.CA()
    cert, key = workdir / "proxy.crt", workdir / "proxy.key"

    def install(serial_name: str) -> bytes:
        issued = ca.issue_cert("127.0.0.1", "localhost", organization_name=serial_name)
        issued.private_key_pem.write_to_path(str(key))
        key.chmod(0o600)
        issued.cert_chain_pems[0].write_to_path(str(cert))
        return issued.cert_chain_pems[0].bytes()

    first = install("first")
    facaded: Facaded = await make_facaded(proxy={"tls_cert_file": str(cert),
                                                 "tls_key_file": str(key)})
    ca_file = workdir / "operator-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    facaded.ca_file = ca_file
    assert not (workdir / "state" / "proxy-ca.pem").exists(), "nothing generated"

    async def served() -> bytes:
        _, writer = await asyncio.open_connection("127.0.0.1", facaded.port,
                                                  ssl=facaded.ssl_context(),
                                                  server_hostname="localhost")
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.close()
        return ssl.DER_cert_to_PEM_cert(der).encode()

    assert _same_cert(await served(), first)
    token = await facaded.access_token()
    second = install("second")
    facaded.tokend.signal(signal.SIGHUP)
    await eventually(lambda: facaded.tokend.events("proxy.files_reloaded"), 10,
                     what="the certificate re-read")
    assert _same_cert(await served(), second)
    assert (await facaded.request("GET", "/v1/domains", headers=bearer(token))).status == 200
    assert_catalogued(facaded.tokend)


def _same_cert(a: bytes, b: bytes) -> bool:
    return ssl.PEM_cert_to_DER_cert(a.decode()) == ssl.PEM_cert_to_DER_cert(b.decode())
