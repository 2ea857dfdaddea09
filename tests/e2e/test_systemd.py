"""systemd integration against the real daemon: sd_notify on a socket of the test's own, and
socket activation through Debian's ``systemd-socket-activate``."""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support import NotifyListener, Tokend, assert_no_secrets, eventually
from tokend.testing.fake_sddc import FakeSddc


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
        upstream: Any, make_tokend: Callable[..., Any], workdir: Path,
        fakes: list[FakeSddc]) -> None:
    sock = workdir / "activated.sock"
    tokend: Tokend = await make_tokend(upstream.url, upstream.ca_pem, wait=None, socket=sock,
                                       prefix=["systemd-socket-activate", "-l", str(sock)])
    await eventually(sock.exists, 10, what="the activation socket")
    await tokend.ready(timeout=20)
    assert (await tokend.get("/v1/token", timeout=5)).status == 200
    # tokend did not create its own socket: the configured path stays unused.
    assert not (workdir / "tokend.sock").exists()
    assert await tokend.stop() == 0, tokend.stderr()
    out = tokend.stdout()
    assert "daemon.started" in out
    assert_no_secrets(out, fakes, "stdout")
    # socket_mode is set in the config, but the activated socket is the unit's business.
    assert '"event": "config.ignored"' in out
