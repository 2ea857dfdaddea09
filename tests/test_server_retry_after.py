"""Every 503 tokend generates carries Retry-After (SPEC §8.6), on the socket API and the TCP listener.

The servers run against a stub hub whose keepers and probes fail on purpose: no daemon, no upstream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.support.hub import StubHub
from tokend.config import ServerConfig
from tokend.gate import GatedUnixSite, PeerGate
from tokend.listen import bind_unix
from tokend.server import metrics_app, socket_app
from tokend.serving import ServeError

Client = TestClient[web.Request, web.Application]
ClientFactory = Callable[[web.Application], Awaitable[Client]]


class DownKeeper:
    """A keeper with no token to give."""

    name = "t1"

    async def token(self, min_ttl: float | None = None) -> Any:
        if min_ttl is not None:
            raise ServeError(503, "TOKEN_BELOW_MIN_TTL", "no token valid that long")
        raise ServeError(503, "TOKEN_UNAVAILABLE", "no valid token")  # no retry_after of its own

    async def invalidate(self, fingerprint: str) -> Any:
        raise ServeError(503, "TOKEN_UNAVAILABLE", "no valid token")


def failing_hub() -> StubHub:
    """A hub whose every probe fails."""
    return StubHub(up=False, keepers={"t1": DownKeeper()},
                   targets=[{"name": "t1", "state": "expired"}])


def assert_retry_after(status: int, headers: Any, where: str) -> None:
    assert status == 503, where
    value = headers.get("Retry-After")
    assert value is not None, f"{where}: a 503 without Retry-After"
    assert value.isdigit() and int(value) >= 1, f"{where}: Retry-After {value!r}"


SOCKET_REQUESTS = [
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/readyz?target=t1"),
    ("GET", "/v1/token"),
    ("GET", "/v1/token?format=raw"),
    ("GET", "/v1/targets/t1/token"),
    ("GET", "/v1/targets/t1/token?min_ttl=30"),
    ("POST", "/v1/targets/t1/invalidate"),
    ("HEAD", "/healthz"),
]


@pytest.mark.parametrize(("method", "path"), SOCKET_REQUESTS)
async def test_every_503_on_the_socket_api_has_retry_after(
        aiohttp_client: ClientFactory, method: str, path: str) -> None:
    client = await aiohttp_client(socket_app(failing_hub()))
    resp = await client.request(method, path, json={"fingerprint": "sha256:" + "0" * 64})
    assert_retry_after(resp.status, resp.headers, f"{method} {path}")


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/readyz?target=t1"])
async def test_every_503_on_the_metrics_listener_has_retry_after(
        aiohttp_client: ClientFactory, path: str) -> None:
    client = await aiohttp_client(metrics_app(failing_hub()))
    resp = await client.get(path)
    assert_retry_after(resp.status, resp.headers, path)
    assert (await resp.text()).strip() in ("unhealthy", "not ready")  # status codes only


@pytest.fixture
def hub() -> StubHub:
    return failing_hub()


@pytest.fixture
async def gated_socket(tmp_path_factory: pytest.TempPathFactory,
                       hub: StubHub) -> AsyncIterator[Path]:
    path = tmp_path_factory.mktemp("s") / "api.sock"
    runner = web.AppRunner(socket_app(hub), access_log=None, handle_signals=False)
    await runner.setup()
    await GatedUnixSite(runner, bind_unix(path, 0o600, None), PeerGate(hub)).start()
    yield path
    await runner.cleanup()


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    status_line, *lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines if line)
    return int(status_line.split()[1]), headers


async def test_the_503_at_accept_for_connection_limits_has_retry_after(
        gated_socket: Path, hub: StubHub) -> None:
    hub.config.server = ServerConfig(max_connections_per_uid=1)
    _, first = await asyncio.open_unix_connection(str(gated_socket))  # holds the uid's one slot
    try:
        reader, writer = await asyncio.open_unix_connection(str(gated_socket))
        status, headers = await read_answer(reader)
        writer.close()
        assert_retry_after(status, headers, "connection over the per-uid limit")
    finally:
        first.close()
