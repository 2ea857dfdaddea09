"""The watchdog stops when a keeper is wedged (in-process: a wedge needs a hang injected)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

import tokend.keeper
from tests.support import PASSWORD, USER, eventually, write_config
from tokend.config import load_config
from tokend.daemon import Daemon
from tokend.systemd import Notifier
from tokend.testing.fake_sddc import FakeSddc, start_fake
from tokend.upstream import UpstreamClient


class RecordingNotifier(Notifier):
    def __init__(self, watchdog_interval: float) -> None:
        super().__init__()
        self.watchdog_interval = watchdog_interval
        self.sent: list[tuple[float, str]] = []

    def send(self, *lines: str) -> None:
        self.sent.extend((time.monotonic(), line) for line in lines)


async def test_no_watchdog_while_a_keeper_is_wedged(
        workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    release = asyncio.Event()
    calls = 0

    async def wedged_refresh(self: UpstreamClient, *args: Any) -> Any:
        nonlocal calls
        calls += 1
        await release.wait()  # never set: the keeper is stuck inside one step
        raise AssertionError("unreachable")

    monkeypatch.setattr(UpstreamClient, "refresh", wedged_refresh)
    monkeypatch.setattr(tokend.keeper, "STUCK_GRACE", 0.0)  # stuck after 2 × request_timeout
    fake = FakeSddc(access_ttl=2, users={USER: PASSWORD})
    runner, url = await start_fake(fake)
    config = load_config(write_config(workdir, url, None))
    notifier = RecordingNotifier(watchdog_interval=0.2)
    daemon = Daemon(config, notifier)
    task = asyncio.create_task(daemon.run())
    try:
        # Healthy while the first token is fresh and until the refresh has hung for 2 × 3 s.
        await eventually(lambda: any(line == "WATCHDOG=1" for _, line in notifier.sent), 5,
                         what="a first WATCHDOG=1")
        assert fake.count("login", 201) == 1
        await eventually(lambda: not daemon.healthy(time.monotonic()), 10,
                         what="the wedged keeper to count as stuck")
        stuck_at = time.monotonic()
        await asyncio.sleep(1.0)  # five watchdog ticks
        late = [t for t, line in notifier.sent if line == "WATCHDOG=1" and t > stuck_at + 0.25]
        assert not late, "WATCHDOG=1 was sent while a keeper was wedged"
        assert calls == 1
    finally:
        daemon.stop()
        await task
        await runner.cleanup()
    assert "STOPPING=1" in [line for _, line in notifier.sent]
