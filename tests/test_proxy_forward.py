"""The forwarder (tokend/proxy/forward.py) between an aiohttp client and a local upstream: the
paths the end-to-end tests cannot reach cheaply (a full pool, stalls both ways, cut answers,
encoded error answers), with a fake keeper and short timeouts. No daemon, no TLS."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import inspect
import json
import time
import zlib
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import RawTestServer, TestClient, TestServer

from tokend.config import ProxyConfig, TargetConfig
from tokend.held import HeldToken
from tokend.logs import REDACTED, REDACTOR
from tokend.metrics import Metrics
from tokend.proxy.answers import Forwarded, decode_body, redact_body
from tokend.proxy.canon import parse_request_target
from tokend.proxy.forward import MAX_KEPT_BODY, Forwarder
from tokend.secrets import SecretSource
from tokend.serving import ServeError

TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ0b2tlbmQtdGVzdCJ9.c2lnbmF0dXJl"
NEW_TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ0b2tlbmQtbmV3In0.c2lnbmF0dXJl"


def held(token: str) -> HeldToken:
    now = time.monotonic()
    return HeldToken(token, "sha256:" + hashlib.sha256(token.encode()).hexdigest(), 0,
                     now, now + 3600, time.time(), "t")


class FakeKeeper:
    """A keeper holding ``TOKEN``; ``invalidate`` hands out ``NEW_TOKEN`` and counts reports."""

    def __init__(self, token: str | None = TOKEN) -> None:
        self.token = held(token) if token else None
        self.reports: list[str] = []

    def current(self, now: float) -> HeldToken | None:
        return self.token

    def unavailable(self, now: float) -> ServeError:
        return ServeError(503, "TOKEN_UNAVAILABLE", "no valid token for target 't'", "wait",
                          retry_after=7)

    async def invalidate(self, token_fingerprint: str) -> HeldToken:
        self.reports.append(token_fingerprint)
        self.token = held(NEW_TOKEN)
        return self.token


Client = TestClient[Any, Any]


async def start_proxy(upstream: TestServer, keeper: FakeKeeper, *, request_timeout: float = 1.0,
                      pool: int = 4, response_timeout: float = 2.0
                      ) -> tuple[Client, Forwarder, list[Forwarded]]:
    target = TargetConfig(name="t", url=str(upstream.make_url("")).rstrip("/"), username="u",
                          password=SecretSource("env", "X", "targets[0].password_env"),
                          api_key=None, request_timeout=request_timeout)
    proxy = ProxyConfig(index=0, target="t", max_upstream_connections=pool,
                        response_timeout=response_timeout)
    forwarder = Forwarder(target, proxy, Metrics().proxy("t"))
    results: list[Forwarded] = []

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        result = await forwarder.forward(request, parse_request_target(request.raw_path),
                                         keeper)
        results.append(result)
        return result.response

    server = RawTestServer(handle)
    client = TestClient(server)
    await client.start_server()
    return client, forwarder, results


@pytest.fixture
async def cleanup() -> Any:
    things: list[Any] = []
    yield things
    for thing in reversed(things):
        await thing.close()


async def upstream_of(routes: Callable[[web.Application], None], things: list[Any]) -> TestServer:
    app = web.Application()
    routes(app)
    server = TestServer(app)
    await server.start_server()
    things.append(server)
    return server


async def proxy_for(routes: Callable[[web.Application], None], things: list[Any],
                    keeper: FakeKeeper | None = None, **kwargs: Any
                    ) -> tuple[Client, FakeKeeper, list[Forwarded]]:
    keeper = keeper or FakeKeeper()
    upstream = await upstream_of(routes, things)
    client, forwarder, results = await start_proxy(upstream, keeper, **kwargs)
    things.append(forwarder)
    things.append(client)
    return client, keeper, results


# -- pure helpers ------------------------------------------------------------------------------


def test_redact_body_replaces_secrets_and_jwts_and_says_when_nothing_changed() -> None:
    REDACTOR.register('pa"ss\\wörd-for-forward-test')
    assert redact_body(b'{"errorCode": "X", "message": "fine"}') is None
    out = redact_body(f"token {TOKEN} here".encode())
    assert out == f"token {REDACTED} here".encode()
    # A secret written with JSON escapes is found value by value.
    escaped = json.dumps({"message": 'with pa"ss\\wörd-for-forward-test inside'}).encode()
    assert b"pa\\\"ss" in escaped
    cleaned = redact_body(escaped)
    assert cleaned is not None and b"ss\\\\w" not in cleaned
    assert json.loads(cleaned) == {"message": f"with {REDACTED} inside"}
    # Bytes that are not UTF-8 pass through unchanged around a redaction.
    assert redact_body(b"\xff\xfe " + TOKEN.encode()) == b"\xff\xfe " + REDACTED.encode()


def test_decode_reads_gzip_and_both_deflates_and_refuses_the_rest() -> None:
    text = b'{"message": "x"}' * 10
    assert decode_body(text, "identity") == text
    assert decode_body(gzip.compress(text), "gzip") == text
    assert decode_body(zlib.compress(text), "deflate") == text
    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    assert decode_body(raw.compress(text) + raw.flush(), "deflate") == text
    assert decode_body(text, "br") is None
    assert decode_body(b"not gzip", "gzip") is None
    assert decode_body(gzip.compress(b"\0" * (2 << 20)), "gzip") is None  # inflates past 1 MiB
    assert decode_body(gzip.compress(text)[:-10], "gzip") is None  # truncated


# -- against a local upstream ------------------------------------------------------------------


async def test_no_token_sends_nothing_and_answers_503_with_retry_after(cleanup: list[Any]) -> None:
    hits: list[str] = []

    def routes(app: web.Application) -> None:
        async def any_path(request: web.Request) -> web.Response:
            hits.append(request.path)
            return web.Response(text="no")
        app.router.add_route("*", "/{p:.*}", any_path)

    client, _, results = await proxy_for(routes, cleanup, FakeKeeper(token=None))
    resp = await client.get("/v1/domains")
    assert resp.status == 503 and resp.headers["Retry-After"] == "7"
    assert (await resp.json())["errorCode"] == "TOKEN_UNAVAILABLE"
    assert hits == [] and results[0].outcome == "unavailable"


async def test_the_upstream_gets_no_header_the_consumer_did_not_send(cleanup: list[Any]) -> None:
    seen: list[list[tuple[str, str]]] = []

    def routes(app: web.Application) -> None:
        async def echo(request: web.Request) -> web.Response:
            seen.append(list(request.headers.items()))
            return web.Response(text="ok")
        app.router.add_route("*", "/{p:.*}", echo)

    client, _, _ = await proxy_for(routes, cleanup)
    bare = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
    for data in (None, b"a body without a type", b"x" * (MAX_KEPT_BODY + 1)):
        resp = await client.post("/v1/x", data=data, skip_auto_headers=bare)
        assert resp.status == 200
    # No User-Agent, Accept, Accept-Encoding or Content-Type of aiohttp's, kept or streamed body.
    assert [sorted(name.lower() for name, _ in headers) for headers in seen] == [
        ["authorization", "content-length", "host"]] * 3
    resp = await client.get("/v1/x", headers={"User-Agent": "vcf-tool/1", "Accept": "text/plain"},
                            skip_auto_headers=bare)
    assert resp.status == 200
    assert {n: v for n, v in seen[-1] if n in ("User-Agent", "Accept")} == {
        "User-Agent": "vcf-tool/1", "Accept": "text/plain"}


def test_aiohttp_still_has_the_request_hooks_the_forwarder_replaces() -> None:
    """The test above fails if aiohttp adds a header of its own; this one says why: the forwarder's
    ClientRequest (tokend/proxy/forward.py, _AsSent) replaces update_auto_headers and sets the
    _skip_auto_headers that aiohttp reads back when it would add a Content-Type."""
    source = inspect.getsource(aiohttp.ClientRequest)
    assert "def update_auto_headers(self, skip_auto_headers" in source, (
        f"aiohttp {aiohttp.__version__} renamed ClientRequest.update_auto_headers: adapt _AsSent")
    assert "hdrs.CONTENT_TYPE not in self._skip_auto_headers" in source, (
        f"aiohttp {aiohttp.__version__} no longer reads ClientRequest._skip_auto_headers for"
        " Content-Type: adapt _AsSent")


async def test_a_full_pool_answers_503_after_request_timeout(cleanup: list[Any]) -> None:
    release = asyncio.Event()

    def routes(app: web.Application) -> None:
        async def slow(request: web.Request) -> web.Response:
            await release.wait()
            return web.Response(text="late")
        app.router.add_get("/slow", slow)

    client, _, results = await proxy_for(routes, cleanup, pool=1, request_timeout=0.5)
    first = asyncio.create_task(client.get("/slow"))
    await asyncio.sleep(0.2)
    started = time.monotonic()
    second = await client.get("/slow")
    assert second.status == 503 and "Retry-After" in second.headers
    assert (await second.json())["errorCode"] == "UPSTREAM_BUSY"
    assert 0.4 < time.monotonic() - started < 1.5
    release.set()
    assert (await first).status == 200
    assert [r.outcome for r in results] == ["unavailable", "forwarded"]


async def test_a_stalled_answer_is_cut_so_it_never_looks_complete(cleanup: list[Any]) -> None:
    def routes(app: web.Application) -> None:
        async def stall(request: web.Request) -> web.StreamResponse:
            resp = web.StreamResponse()
            if request.query.get("length"):
                resp.content_length = 1000
            await resp.prepare(request)
            await resp.write(b"x" * 100)
            await asyncio.sleep(5)
            return resp
        app.router.add_get("/stall", stall)

    client, _, results = await proxy_for(routes, cleanup, request_timeout=0.5)
    for query in ("", "?length=1"):  # chunked, and with a Content-Length
        resp = await client.get("/stall" + query)
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    assert [r.outcome for r in results] == ["upstream_error", "upstream_error"]


async def test_a_stalled_upload_gets_408_and_a_silent_upstream_504(cleanup: list[Any]) -> None:
    def routes(app: web.Application) -> None:
        async def sink(request: web.Request) -> web.Response:
            await request.read()
            return web.Response(text="ok")

        async def mute(request: web.Request) -> web.Response:
            await asyncio.sleep(5)
            return web.Response(text="late")
        app.router.add_put("/sink", sink)
        app.router.add_get("/mute", mute)

    client, _, results = await proxy_for(routes, cleanup, request_timeout=0.5,
                                         response_timeout=0.8)

    async def trickle() -> Any:
        yield b"x" * 100_000
        await asyncio.sleep(3)
        yield b"x"

    resp = await client.put("/sink", data=trickle(), headers={"Content-Length": "200000"})
    assert resp.status == 408
    assert (await resp.json())["errorCode"] == "BAD_REQUEST"
    started = time.monotonic()
    resp = await client.get("/mute")
    assert resp.status == 504 and (await resp.json())["errorCode"] == "UPSTREAM_TIMEOUT"
    assert 0.7 < time.monotonic() - started < 2
    assert [r.outcome for r in results] == ["refused", "upstream_error"]


async def test_encoded_error_answers_are_redacted_or_passed_byte_for_byte(
        cleanup: list[Any]) -> None:
    def routes(app: web.Application) -> None:
        async def secret(request: web.Request) -> web.Response:
            body = gzip.compress(json.dumps({"message": f"bad {TOKEN}"}).encode())
            return web.Response(status=500, body=body, headers={"Content-Encoding": "gzip",
                                                                "Content-Type": "application/json"})

        async def plain(request: web.Request) -> web.Response:
            return web.Response(status=404, body=gzip.compress(b'{"message": "no such thing"}'),
                                headers={"Content-Encoding": "gzip"})

        async def brotli(request: web.Request) -> web.Response:
            return web.Response(status=400, body=b"\x8b\x00opaque", headers={
                "Content-Encoding": "br", "Retry-After": "3"})
        app.router.add_get("/secret", secret)
        app.router.add_get("/plain", plain)
        app.router.add_get("/br", brotli)

    client, _, _ = await proxy_for(routes, cleanup)
    resp = await client.get("/secret", auto_decompress=False)
    body = await resp.read()
    assert resp.status == 500 and "Content-Encoding" not in resp.headers
    assert json.loads(body) == {"message": f"bad {REDACTED}"}
    resp = await client.get("/plain", auto_decompress=False)
    assert resp.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(await resp.read()) == b'{"message": "no such thing"}'
    resp = await client.get("/br", auto_decompress=False)
    assert resp.status == 400 and resp.headers["Retry-After"] == "3"
    assert (await resp.json())["errorCode"] == "UPSTREAM_ERROR_WITHHELD"


async def test_redirects_pass_cookies_do_not(cleanup: list[Any]) -> None:
    cookies_seen: list[str | None] = []

    def routes(app: web.Application) -> None:
        async def redirect(request: web.Request) -> web.Response:
            cookies_seen.append(request.headers.get("Cookie"))
            return web.Response(status=302, headers={"Location": "https://elsewhere.example/x",
                                                     "Set-Cookie": "SESSION=upstream"})
        app.router.add_get("/redirect", redirect)

    client, _, _ = await proxy_for(routes, cleanup)
    for _ in range(2):
        resp = await client.get("/redirect", allow_redirects=False)
        assert resp.status == 302
        assert resp.headers["Location"] == "https://elsewhere.example/x"
        assert "Set-Cookie" not in resp.headers
    assert cookies_seen == [None, None], "the upstream's cookies are never kept or sent back"


async def test_a_refused_token_is_reported_and_a_kept_body_sent_again(
        cleanup: list[Any]) -> None:
    seen: list[tuple[str, bytes]] = []

    def routes(app: web.Application) -> None:
        async def echo(request: web.Request) -> web.Response:
            body = await request.read()
            seen.append((request.headers["Authorization"], body))
            if request.headers["Authorization"] != f"Bearer {NEW_TOKEN}":
                return web.json_response({"errorCode": "Unauthenticated", "message": "no"},
                                         status=401)
            return web.Response(body=body)
        app.router.add_post("/echo", echo)

    client, keeper, results = await proxy_for(routes, cleanup)
    resp = await client.post("/echo", data=b"small body")
    assert resp.status == 200 and await resp.read() == b"small body"
    assert [auth for auth, _ in seen] == [f"Bearer {TOKEN}", f"Bearer {NEW_TOKEN}"]
    assert results[-1].outcome == "retried_after_401"
    assert len(keeper.reports) == 1

    # A streamed body (no Content-Length) is not kept: the 401 is passed on, the report made.
    keeper.token = held(TOKEN)
    seen.clear()

    async def chunks() -> Any:
        yield b"streamed"

    resp = await client.post("/echo", data=chunks())
    assert resp.status == 401 and (await resp.json())["errorCode"] == "Unauthenticated"
    await asyncio.sleep(0.05)
    assert len(keeper.reports) == 2 and len(seen) == 1


async def test_another_401_is_passed_on_untouched(cleanup: list[Any]) -> None:
    def routes(app: web.Application) -> None:
        async def other(request: web.Request) -> web.Response:
            return web.json_response({"errorCode": "ACCESS_DENIED", "message": "role"},
                                     status=401)
        app.router.add_get("/x", other)

    client, keeper, results = await proxy_for(routes, cleanup)
    resp = await client.get("/x")
    assert resp.status == 401 and (await resp.json())["errorCode"] == "ACCESS_DENIED"
    assert keeper.reports == [] and results[0].outcome == "forwarded"

