"""Fixtures and helpers for the proxy's end-to-end tests: tokend with a [[proxies]] table for its
target ``t1``, the fake behind it over HTTPS, and clients that talk to the proxy socket."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from tests.support import Answer, Tokend, Upstream
from tokend.events import CATALOGUE

PROXY_SOCKET = "t1.api.sock"


@dataclass
class Proxied:
    """tokend with a proxy for ``t1``, and the fake SDDC Manager behind it."""

    tokend: Tokend
    upstream: Upstream
    socket: Path

    @property
    def fake(self) -> Any:
        return self.upstream.fake

    def forwarded(self) -> list[Any]:
        """The calls that reached the fake other than tokend's own token calls."""
        return [c for c in self.fake.calls if c.operation not in ("login", "refresh", "revoke")]

    async def request(self, method: str, path: str, body: bytes | None = None,
                      headers: dict[str, str] | None = None, timeout: float = 30.0) -> Answer:
        """One request on the proxy socket (aiohttp's client: well-formed HTTP only)."""
        connector = aiohttp.UnixConnector(path=str(self.socket))
        url = URL("http://sddc" + path, encoded=True)  # sent exactly as written
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                         timeout=aiohttp.ClientTimeout(total=timeout)) as s, \
                s.request(method, url, data=body, headers=headers) as r:
            return Answer(r.status, await r.read(), dict(r.headers))

    async def raw(self, data: bytes, timeout: float = 10.0) -> bytes:
        """Send ``data`` as is on a new connection; everything read until the server closes.

        With no ``data``, only read (a peer denied at accept is answered before it sends).
        """
        reader, writer = await asyncio.open_unix_connection(str(self.socket))
        try:
            if data:
                writer.write(data)
                await writer.drain()
            return await asyncio.wait_for(reader.read(), timeout)
        finally:
            writer.close()


def proxy_table(socket: Path, **settings: Any) -> dict[str, Any]:
    """One ``[[proxies]]`` table for target t1 on ``socket``, with ``settings``."""
    return {"target": "t1", "socket": str(socket), "socket_mode": "0600", **settings}


@pytest.fixture
def make_proxied(make_upstream: Callable[..., Any], make_tokend: Callable[..., Any],
                 workdir: Path) -> Callable[..., Any]:
    async def make(upstream_args: dict[str, Any] | None = None,
                   proxy: dict[str, Any] | None = None, **tokend_args: Any) -> Proxied:
        upstream: Upstream = await make_upstream(**(upstream_args or {}))
        socket = workdir / PROXY_SOCKET
        tokend: Tokend = await make_tokend(upstream.url, upstream.ca_pem,
                                           proxies=[proxy_table(socket, **(proxy or {}))],
                                           **tokend_args)
        return Proxied(tokend, upstream, socket)
    return make


@pytest.fixture
async def proxied(make_proxied: Callable[..., Any]) -> Proxied:
    result: Proxied = await make_proxied({"access_ttl": 60})
    return result


def error_of(answer: Answer) -> dict[str, Any]:
    """The Error-shape body of one of tokend's own answers."""
    assert answer.headers.get("Content-Type", "").startswith("application/json"), answer
    body: dict[str, Any] = json.loads(answer.body)
    assert {"errorCode", "message"} <= set(body), body
    assert body["message"]
    return body


def status_of(raw: bytes) -> int:
    """The status code of the first response in ``raw``."""
    line = raw.split(b"\r\n", 1)[0]
    assert line.startswith(b"HTTP/1."), raw[:200]
    return int(line.split()[1])


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` in KiB."""
    values = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0])
    return values["VmRSS"], values["VmHWM"]


class RssWatch:
    """The largest VmRSS of a process, sampled every few milliseconds while it runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.start = rss_kib(pid)[0]
        self.peak = self.start
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RssWatch:
        self._task = asyncio.create_task(self._sample())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self.peak = max(self.peak, rss_kib(self.pid)[0])

    async def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, rss_kib(self.pid)[0])
            await asyncio.sleep(0.005)

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.start) / 1024


def wait_seconds(since: float, seconds: float) -> float:
    return max(0.0, since + seconds - time.monotonic())


def assert_catalogued(tokend: Tokend) -> None:
    """Every line tokend logged is a catalogue event, at a listed level, with its fields."""
    for line in tokend.events():
        if "logger" in line:
            assert line["level"] not in ("error", "critical"), line
            continue
        entry = CATALOGUE.get(line.get("event", ""))
        assert entry is not None, f"not in the catalogue: {line}"
        assert line["level"] in entry.levels, line
        missing = [f for f in entry.fields if f not in line]
        assert not missing, f"{line['event']} lacks {missing}: {line}"
