"""Big bodies both ways: ``PUT /v1/sink`` and ``GET /v1/stream?bytes=N`` through a proxy, timed,
checked byte for byte (sha256) and with the proxy's memory watched while they move.

The client is aiohttp in the benchmark's own process (not tokend's), sending and reading 1 MiB at a
time. The body is the fake's own stream pattern (:func:`tokend.testing.proxy_routes.stream_bytes`),
so one digest, computed while uploading, is the expected value of both directions: the fake
answers the upload with the sha256 of what reached it, and the download is hashed as it arrives.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.engines.serve.procfs import proc_status_kb
from tokend.testing.proxy_routes import stream_bytes

CLIENT_CHUNK = 1024 * 1024
RSS_INTERVAL = 0.005  # s between two samples of the proxy's VmRSS


@dataclass
class StreamResult:
    path: str  # how the request went: "tokend proxy", "bare aiohttp proxy", "direct to the fake"
    direction: str  # "upload" or "download"
    size: int
    seconds: float
    identical: bool  # the sha256 at the other end is the sha256 of what was sent
    rss_start_kb: int | None  # the proxy's VmRSS before; None without a proxy
    rss_peak_kb: int | None  # the largest VmRSS sampled during the transfer
    hwm_before_kb: int | None  # the proxy's VmHWM before and after
    hwm_after_kb: int | None

    @property
    def mb_per_s(self) -> float:
        return self.size / 1e6 / self.seconds

    @property
    def rss_growth_mb(self) -> float | None:
        if self.rss_start_kb is None or self.rss_peak_kb is None:
            return None
        return (self.rss_peak_kb - self.rss_start_kb) / 1024


class RssWatch:
    """The largest VmRSS of ``pid``, sampled from a thread (the event loop is busy moving bytes)."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.start = self.peak = proc_status_kb(pid, "VmRSS") if pid is not None else None
        self.hwm_before = proc_status_kb(pid, "VmHWM") if pid is not None else None
        self.hwm_after: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> RssWatch:
        if self.pid is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pid is None:
            return
        self._stop.set()
        self._thread.join()
        self._observe()
        self.hwm_after = proc_status_kb(self.pid, "VmHWM")

    def _observe(self) -> None:
        assert self.pid is not None and self.peak is not None
        self.peak = max(self.peak, proc_status_kb(self.pid, "VmRSS"))

    def _sample(self) -> None:
        while not self._stop.wait(RSS_INTERVAL):
            self._observe()


def pattern(size: int) -> Iterator[bytes]:
    """The fake's stream pattern, ``size`` bytes, in chunks of CLIENT_CHUNK."""
    pending: list[bytes] = []
    held = 0
    for chunk in stream_bytes(size):
        pending.append(chunk)
        held += len(chunk)
        if held >= CLIENT_CHUNK:
            yield b"".join(pending)
            pending, held = [], 0
    if pending:
        yield b"".join(pending)


def expected_digest(size: int) -> str:
    """The sha256 of ``size`` bytes of the pattern (what both directions must come out as)."""
    digest = hashlib.sha256()
    for chunk in pattern(size):
        digest.update(chunk)
    return digest.hexdigest()


async def _upload(session: aiohttp.ClientSession, base: str, size: int, expected: str) -> bool:
    async def body() -> AsyncIterator[bytes]:
        for chunk in pattern(size):
            yield chunk

    async with session.put(f"{base}/v1/sink", data=body(),
                           headers={"Content-Length": str(size),
                                    "Content-Type": "application/octet-stream"}) as answer:
        if answer.status != 200:
            raise RuntimeError(f"PUT /v1/sink answered {answer.status}: {(await answer.read())[:300]!r}")
        result = await answer.json()
    return bool(result["bytes"] == size and result["sha256"] == expected)


async def _download(session: aiohttp.ClientSession, base: str, size: int, expected: str) -> bool:
    digest = hashlib.sha256()
    received = 0
    async with session.get(f"{base}/v1/stream?bytes={size}&length=1") as answer:
        if answer.status != 200:
            raise RuntimeError(f"GET /v1/stream answered {answer.status}:"
                               f" {(await answer.read())[:300]!r}")
        async for chunk in answer.content.iter_chunked(CLIENT_CHUNK):
            digest.update(chunk)
            received += len(chunk)
    return received == size and digest.hexdigest() == expected


async def _transfer(direction: str, sock: Path | None, base: str, headers: dict[str, str],
                    size: int, expected: str) -> bool:
    connector: aiohttp.BaseConnector = (aiohttp.UnixConnector(path=str(sock)) if sock is not None
                                        else aiohttp.TCPConnector())
    timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
    async with aiohttp.ClientSession(connector=connector, headers=headers, timeout=timeout,
                                     auto_decompress=False) as session:
        if direction == "upload":
            return await _upload(session, base, size, expected)
        return await _download(session, base, size, expected)


def transfer(path: str, direction: str, *, sock: Path | None, base: str, headers: dict[str, str],
             size: int, expected: str, proxy_pid: int | None) -> StreamResult:
    """One timed transfer of ``size`` bytes; ``proxy_pid``'s memory watched while it runs."""
    with RssWatch(proxy_pid) as watch:
        started = time.perf_counter()
        identical = asyncio.run(_transfer(direction, sock, base, headers, size, expected))
        seconds = time.perf_counter() - started
    return StreamResult(path, direction, size, seconds, identical, watch.start, watch.peak,
                        watch.hwm_before, watch.hwm_after)
