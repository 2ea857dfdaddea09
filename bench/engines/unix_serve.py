"""The life of a bare reference's app on its Unix socket, shared by ``serve/bare_aiohttp.py`` and
``proxy/bare_proxy.py``. It imports nothing they do not import already, so their measured memory
stays the framework's alone."""

from __future__ import annotations

import asyncio
import os
import signal

from aiohttp import web


async def serve_until_signal(app: web.Application, sock: str) -> None:
    """Serve ``app`` on the Unix socket ``sock`` (mode 0666) until SIGTERM or SIGINT."""
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
