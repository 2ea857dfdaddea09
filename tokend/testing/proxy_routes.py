"""Routes of the fake for tests of tokend's proxy: what arrived, big bodies both ways, anything else.

They take a valid bearer token like ``GET /v1/domains``: ``/v1/echo`` (any method: what arrived, as
JSON), ``PUT /v1/sink`` (hashes the body as it streams in, never holding it) and
``GET /v1/stream?bytes=N`` (N bytes of a fixed pattern, streamed; with ``&length=1`` a
``Content-Length``). Any other path is recorded (operation ``other``) and answered 404, so a test
sees whatever reached the fake.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import TYPE_CHECKING

from aiohttp import web

from tokend.testing.wire import error_response, json_response

if TYPE_CHECKING:
    from tokend.testing.fake_sddc import FakeSddc

STREAM_CHUNK = 64 * 1024


def add_proxy_routes(app: web.Application, fake: FakeSddc) -> None:
    """Add the routes above to ``app``; the catch-all last."""

    async def echo(request: web.Request) -> web.StreamResponse:
        refused = fake.unauthorized(request)
        if refused is not None:
            return refused
        body = await request.read()
        headers = [[name, value.split(" ")[0] if name.lower() == "authorization" else value]
                   for name, value in request.headers.items()]
        return json_response({
            "method": request.method, "path": request.raw_path, "headers": headers,
            "bytes": len(body), "sha256": hashlib.sha256(body).hexdigest(),
        }, 200)

    async def sink(request: web.Request) -> web.StreamResponse:
        refused = fake.unauthorized(request)
        if refused is not None:
            return refused
        digest = hashlib.sha256()
        size = 0
        async for chunk in request.content.iter_chunked(STREAM_CHUNK):
            digest.update(chunk)
            size += len(chunk)
        fake.sink_digests.append((size, digest.hexdigest()))
        return json_response({"bytes": size, "sha256": digest.hexdigest()}, 200)

    async def stream(request: web.Request) -> web.StreamResponse:
        refused = fake.unauthorized(request)
        if refused is not None:
            return refused
        size = int(request.query.get("bytes", "0"))
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        if request.query.get("length") == "1":
            response.content_length = size
        await response.prepare(request)
        for chunk in stream_bytes(size):
            await response.write(chunk)
        await response.write_eof()
        return response

    async def other(request: web.Request) -> web.StreamResponse:
        return error_response(404, "NOT_FOUND", f"No resource at {request.path[:100]}",
                              "Check the API reference.")

    app.router.add_route("*", "/v1/echo", fake._wrap("echo", echo))
    app.router.add_put("/v1/sink", fake._wrap("sink", sink, read_body=False))
    app.router.add_get("/v1/stream", fake._wrap("stream", stream))
    app.router.add_route("*", "/{anything:.*}", fake._wrap("other", other))


def stream_bytes(size: int) -> Iterable[bytes]:
    """``size`` bytes of a fixed, non-repeating-per-chunk pattern, in chunks of STREAM_CHUNK."""
    sent = 0
    index = 0
    while sent < size:
        block = hashlib.sha256(index.to_bytes(8, "big")).digest() * (STREAM_CHUNK // 32)
        chunk = block[:size - sent]
        sent += len(chunk)
        index += 1
        yield chunk
