"""Reference (a) of the benchmark: a bare aiohttp app on a Unix socket answering constant bytes.

Run as a file, ``python bare_aiohttp.py SOCKET BODY_FILE``, by the benchmark: the floor the
framework sets, with nothing of tokend in it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from aiohttp import web


async def serve(sock: str, body_file: str) -> None:
    """Answer ``GET /v1/token`` on ``sock`` with the bytes of ``body_file`` until SIGTERM or SIGINT."""
    body = Path(body_file).read_bytes()

    async def token(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/v1/token", token)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.UnixSite(runner, sock).start()
    os.chmod(sock, 0o666)  # the load generator may connect under several uids
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], sys.argv[2]))
