"""Reference (a) of the benchmark: a bare aiohttp app on a Unix socket answering constant bytes.

Run as a file, ``python bare_aiohttp.py SOCKET BODY_FILE``, by the benchmark: the floor the
framework sets, with nothing of tokend in it.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from aiohttp import web

# Run as a file: the repository root on the path, for the serving part both references share.
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from bench.engines.unix_serve import serve_until_signal


async def serve(sock: str, body_file: str) -> None:
    """Answer ``GET /v1/token`` on ``sock`` with the bytes of ``body_file`` until SIGTERM or SIGINT."""
    body = Path(body_file).read_bytes()

    async def token(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/v1/token", token)
    await serve_until_signal(app, sock)


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], sys.argv[2]))
