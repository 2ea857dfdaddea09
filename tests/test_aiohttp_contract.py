"""What tokend/gate.py takes from aiohttp beyond its documented API, one test for each.

tokend checks a peer at accept (``_GateProtocol``), then hands the connection to a
``RequestHandler`` it builds itself (``ConnectionHandler``, which also renders parse errors in the
Error shape), on a site of its own (``GatedUnixSite``). That leans on private attributes and on
behaviour aiohttp does not document. When an aiohttp upgrade fails here, the message names what
changed and the part of tokend/gate.py that relies on it: adapt that part, then move the bound in
pyproject.toml.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from tests.support.hub import StubHub
from tokend.gate import GatedUnixSite, PeerGate
from tokend.listen import bind_unix
from tokend.server import socket_app


def require(holds: bool, changed: str, relied_on_by: str) -> None:
    """Fail with one line: which aiohttp, what changed, and what in tokend/gate.py needs it."""
    if not holds:
        pytest.fail(f"aiohttp {aiohttp.__version__}: {changed}. tokend/gate.py relies on it: "
                    f"{relied_on_by}", pytrace=False)


async def ok(request: web.Request) -> web.Response:
    return web.Response(text="ok")


# -- the attributes, by name ---------------------------------------------------------------------


async def test_web_server_keeps_the_request_handler_arguments_in__kwargs() -> None:
    server = web.Server(ok, keepalive_timeout=7.5)

    kwargs = getattr(server, "_kwargs", None)

    require(isinstance(kwargs, dict) and kwargs.get("keepalive_timeout") == 7.5,
            "web.Server no longer keeps the RequestHandler arguments it was given in ._kwargs",
            "ConnectionHandler.__init__ passes server._kwargs on (keepalive_timeout=IDLE_TIMEOUT among them)")


async def test_web_server_builds_a_plain_request_handler_the_way_handler_does() -> None:
    server = web.Server(ok, keepalive_timeout=7.5)

    built = server()
    by_hand = RequestHandler(server, loop=asyncio.get_running_loop(), **server._kwargs)

    require(type(built) is RequestHandler,
            f"web.Server() now builds {type(built).__qualname__}, not RequestHandler",
            "ConnectionHandler subclasses RequestHandler and stands in for what web.Server() would build")
    require(by_hand.keepalive_timeout == built.keepalive_timeout == 7.5,
            "RequestHandler(server, loop=..., **kwargs) no longer takes the server's arguments",
            "ConnectionHandler.__init__ calls it so")


def test_request_handler_handle_error_keeps_its_parameters() -> None:
    parameters = list(inspect.signature(RequestHandler.handle_error).parameters)

    require(parameters == ["self", "request", "status", "exc", "message"],
            f"RequestHandler.handle_error now takes {parameters}",
            "ConnectionHandler.handle_error overrides it (request, status, exc, message) to answer parse"
            " errors and handler failures in the Error shape")


def test_a_request_exposes_its_writer_and_the_bytes_already_written() -> None:
    require(isinstance(inspect.getattr_static(BaseRequest, "writer", None), property),
            "BaseRequest.writer is gone",
            "ConnectionHandler.handle_error reads request.writer.output_size")
    require(isinstance(inspect.getattr_static(AbstractStreamWriter, "output_size", None), int),
            "AbstractStreamWriter.output_size is gone",
            "ConnectionHandler.handle_error closes the connection instead of answering once output began")


def test_base_site_keeps_runner_backlog_and_server_in_its_slots() -> None:
    slots = set(getattr(web.BaseSite, "__slots__", ()))

    require({"_runner", "_backlog", "_server"} <= slots,
            f"web.BaseSite's attributes are now {sorted(slots)}",
            "GatedUnixSite.start reads ._runner and ._backlog and sets ._server, the asyncio server"
            " that BaseSite.stop() closes and BaseRunner.addresses lists")


# -- what they deliver, through tokend's own site ----------------------------------------------------


KEEPALIVE = 0.3


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[tuple[web.AppRunner, Path]]:
    path = tmp_path / "api.sock"
    hub = StubHub()  # healthy, and every peer admitted
    runner = web.AppRunner(socket_app(hub), access_log=None, handle_signals=False,
                           keepalive_timeout=KEEPALIVE)
    await runner.setup()
    await GatedUnixSite(runner, bind_unix(path, 0o600, None), PeerGate(hub)).start()
    try:
        yield runner, path
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def connection(path: Path) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        yield reader, writer
    finally:
        writer.close()


async def exchange(path: Path, data: bytes) -> bytes:
    async with connection(path) as (reader, writer):
        writer.write(data)
        return await asyncio.wait_for(reader.read(), 5)


async def test_the_handler_tokend_builds_is_known_to_the_server_and_carries_its_arguments(
    site: tuple[web.AppRunner, Path],
) -> None:
    runner, path = site
    async with connection(path) as (reader, writer):
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: tokend\r\n\r\n")
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert runner.server is not None
        handlers = runner.server.connections
        require(len(handlers) == 1,
                "RequestHandler.connection_made no longer registers the handler with its server",
                "graceful shutdown (runner.cleanup) finds the connections _GateProtocol handed over"
                " through server.connections")
        require(handlers[0].keepalive_timeout == KEEPALIVE,
                "the handler built from server._kwargs did not get the runner's keepalive_timeout",
                "IDLE_TIMEOUT reaches the handler that way")


async def test_an_idle_connection_is_closed_after_the_keepalive_timeout_counted_from_accept(
    site: tuple[web.AppRunner, Path],
) -> None:
    _, path = site
    started = time.monotonic()

    answer = await exchange(path, b"")  # connects and sends nothing

    waited = time.monotonic() - started
    require(answer == b"" and waited < KEEPALIVE + 3,
            f"a connection that sent nothing was still open {waited:.1f} s after accept"
            f" (keepalive_timeout {KEEPALIVE} s)",
            "IDLE_TIMEOUT: the request line and headers must arrive within it after accept")


async def test_a_malformed_request_reaches_handle_error_with_nothing_written_yet(
    site: tuple[web.AppRunner, Path],
) -> None:
    _, path = site

    answer = await exchange(path, b"NOT HTTP AT ALL\r\n\r\n")

    status_line = answer.split(b"\r\n", 1)[0]
    require(status_line.endswith(b" 400 Bad Request") and b'"errorCode": "BAD_REQUEST"' in answer,
            f"a malformed request got {answer[:60]!r} instead of ConnectionHandler.handle_error's answer",
            "ConnectionHandler.handle_error renders aiohttp's parse errors in the Error shape")


async def test_the_site_lists_its_socket_and_cleanup_closes_it(tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    hub = StubHub()  # healthy, and every peer admitted
    runner = web.AppRunner(socket_app(hub), access_log=None, handle_signals=False)
    await runner.setup()
    await GatedUnixSite(runner, bind_unix(path, 0o600, None), PeerGate(hub)).start()
    try:
        require(runner.addresses == [str(path)],
                f"runner.addresses is {runner.addresses!r} with a GatedUnixSite started",
                "BaseRunner finds the site's asyncio server in ._server")
    finally:
        await runner.cleanup()

    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_unix_connection(str(path))
