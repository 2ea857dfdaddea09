"""Reference of the proxy benchmark: a bare aiohttp reverse proxy on a Unix socket (the framework floor).

``python bare_proxy.py SOCKET UPSTREAM TOKEN_FILE POOL``: every request goes to UPSTREAM with
``Authorization: Bearer <the token in TOKEN_FILE>``, through one pool of POOL connections, bodies
streamed both ways in 64 KiB chunks, as tokend's forwarder does. Nothing else: no peer check, no
path canonicalisation, no header filter beyond the hop-by-hop ones, no retry, no metrics, no logs.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import aiohttp
from aiohttp import web

# Run as a file: the repository root on the path, for the serving part both references share.
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from bench.engines.unix_serve import serve_until_signal

CHUNK = 64 * 1024
DROPPED = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "proxy-connection",
           "host", "authorization", "content-length"}


async def serve(sock: str, upstream: str, token_file: str, pool: int) -> None:
    """Forward everything on ``sock`` to ``upstream`` until SIGTERM or SIGINT."""
    bearer = f"Bearer {Path(token_file).read_text().strip()}"
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=pool), auto_decompress=False)

    async def forward(request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in DROPPED}
        headers["Authorization"] = bearer
        if request.content_length is not None:
            headers["Content-Length"] = str(request.content_length)
        body = request.content.iter_chunked(CHUNK) if request.body_exists else None
        async with session.request(request.method, upstream + request.raw_path, headers=headers,
                                   data=body, allow_redirects=False) as answer:
            out = web.StreamResponse(status=answer.status, headers={
                k: v for k, v in answer.headers.items() if k.lower() not in DROPPED})
            out.content_length = answer.content_length
            await out.prepare(request)
            async for chunk in answer.content.iter_chunked(CHUNK):
                await out.write(chunk)
            await out.write_eof()
            return out

    app = web.Application()
    app.router.add_route("*", "/{path:.*}", forward)
    await serve_until_signal(app, sock)
    await session.close()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
