"""systemd integration against the real daemon: sd_notify on a socket of the test's own, and
socket activation through Debian's ``systemd-socket-activate``."""

from __future__ import annotations

import asyncio
import itertools
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.harness import Tokend, eventually, write_config


class NotifyListener:
    """A datagram socket standing in for systemd's ``$NOTIFY_SOCKET``; records what arrives."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[tuple[float, str]] = []
        self.started = time.monotonic()
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._read)

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return
            for line in data.decode().splitlines():
                self.messages.append((time.monotonic() - self.started, line))

    def first(self, prefix: str) -> float | None:
        return next((t for t, line in self.messages if line.startswith(prefix)), None)

    def lines(self, prefix: str) -> list[tuple[float, str]]:
        return [(t, line) for t, line in self.messages if line.startswith(prefix)]

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()


async def start_notified(make_tokend: Callable[..., Any], workdir: Path, url: str, ca: Path,
                         env: dict[str, str] | None = None, **config: Any,
                         ) -> tuple[Tokend, NotifyListener]:
    listener = NotifyListener(workdir / "notify.sock")
    tokend = await make_tokend(url, ca, wait=None,
                               env={"NOTIFY_SOCKET": str(listener.path), **(env or {})}, **config)
    return tokend, listener


async def test_ready_only_after_the_first_token_when_the_upstream_is_slow(
        make_upstream: Callable[..., Any], make_tokend: Callable[..., Any], workdir: Path) -> None:
    upstream = await make_upstream(access_ttl=60)
    upstream.fake.faults.delays["login"] = 2.0
    tokend, notify = await start_notified(make_tokend, workdir, upstream.url, upstream.ca_pem)
    await eventually(lambda: notify.first("READY=1"), 15, what="READY=1")
    ready_at = notify.first("READY=1")
    assert ready_at is not None and ready_at >= 2.0, notify.messages
    assert upstream.fake.count("login", 201) == 1
    status = notify.lines("STATUS=")
    assert status and "t1: valid" in status[0][1], notify.messages
    assert await tokend.stop() == 0
    await eventually(lambda: notify.first("STOPPING=1"), 5, what="STOPPING=1")
    notify.close()


async def test_ready_within_one_request_timeout_when_the_upstream_hangs(
        make_upstream: Callable[..., Any], make_tokend: Callable[..., Any], workdir: Path) -> None:
    upstream = await make_upstream()
    upstream.fake.faults.delays["login"] = 60.0  # request_timeout is 3 s in the test config
    tokend, notify = await start_notified(make_tokend, workdir, upstream.url, upstream.ca_pem)
    await eventually(lambda: notify.first("READY=1"), 10, what="READY=1")
    ready_at = notify.first("READY=1")
    assert ready_at is not None and ready_at < 3.0 + 2.5, notify.messages  # timeout + start-up
    assert (await tokend.get("/v1/token")).status == 503
    await eventually(lambda: any("t1: expired" in line for _, line in notify.lines("STATUS=")), 10,
                     what="a STATUS line naming the expired state")
    await tokend.stop()
    notify.close()


async def test_watchdog_pings_at_half_the_interval_while_healthy(
        make_upstream: Callable[..., Any], make_tokend: Callable[..., Any], workdir: Path) -> None:
    upstream = await make_upstream(access_ttl=60)
    tokend, notify = await start_notified(make_tokend, workdir, upstream.url, upstream.ca_pem,
                                          env={"WATCHDOG_USEC": "2000000"})
    await eventually(lambda: len(notify.lines("WATCHDOG=1")) >= 4, 15, what="four WATCHDOG=1")
    times = [t for t, _ in notify.lines("WATCHDOG=1")]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(0.5 < gap < 1.5 for gap in gaps), gaps  # WATCHDOG_USEC/2 = 1 s
    await tokend.stop()
    notify.close()


@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None,
                    reason="systemd-socket-activate (Debian package systemd) is not installed")
async def test_socket_activation_serves_through_the_passed_socket(
        upstream: Any, workdir: Path, fakes: Any) -> None:
    config = write_config(workdir, upstream.url, upstream.ca_pem)
    sock = workdir / "activated.sock"
    proc = subprocess.Popen(
        ["systemd-socket-activate", "-l", str(sock), sys.executable, "-m", "tokend", "run",
         "--config", str(config)],
        stdout=open(workdir / "stdout.log", "ab"), stderr=open(workdir / "stderr.log", "ab"))
    daemon = Tokend(workdir, config, sock)
    try:
        await eventually(sock.exists, 10, what="the activation socket")

        async def token() -> bool:
            try:
                answer = await daemon.get("/v1/token", timeout=5)
            except (aiohttp.ClientError, OSError):
                return False
            return answer.status == 200
        await eventually(token, 20, what="a token through the activated socket")
        # tokend did not create its own socket: the configured path stays unused.
        assert not (workdir / "tokend.sock").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    assert proc.returncode == 0, (workdir / "stderr.log").read_text()
    out = (workdir / "stdout.log").read_text()
    assert "daemon.started" in out
    for fake in fakes:
        for secret in fake.issued_access_tokens:
            assert secret not in out
    # socket_mode is set in the config, but the activated socket is the unit's business.
    assert '"event": "config.ignored"' in out
