"""Reloads are serialised (SPEC §8.7): the daemon's reload task, with stub keepers and no upstream.

The daemon runs in the test's event loop on a real Unix socket; ``tokend.daemon.Keeper`` is replaced
by :class:`StubKeeper`, which records when each keeper starts and stops and can hold a stop open, so
a test can send SIGHUP (or stop the daemon) while a reload is half done.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.support import eventually, write_config
from tokend import daemon as daemon_module
from tokend import reload as reload_module
from tokend.config import TargetConfig, load_config
from tokend.daemon import Daemon
from tokend.metrics import TargetMetrics
from tokend.secrets import read_secret

URL_A = "http://127.0.0.1:9"
URL_B = "http://127.0.0.1:10"


@dataclass
class Journal:
    """What the stub keepers did, in order, and any broken rule seen on the way."""

    entries: list[tuple[str, StubKeeper]] = field(default_factory=list)
    keepers: list[StubKeeper] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    reload_requests: int = 0
    # When set, the first stop of a keeper waits for this event (a reload held in its commit).
    hold_stops: asyncio.Event | None = None

    def running(self, name: str | None = None) -> list[StubKeeper]:
        return [k for k in self.keepers if k.running and (name is None or k.name == name)]

    def index(self, what: str, keeper: StubKeeper) -> int:
        return self.entries.index((what, keeper))


JOURNAL = Journal()


class StubKeeper:
    """The Keeper interface the daemon relies on, with no upstream behind it."""

    def __init__(self, target: TargetConfig, metrics: TargetMetrics, ledger: object = None) -> None:
        self.target = target
        self.name = target.name
        self.metrics = metrics
        # Like the real keeper: the secret is read once the task runs, not at start().
        self.policy = SimpleNamespace(secret_digest=None, inherit=lambda previous: None)
        self.first_attempt_done = asyncio.Event()
        self.state = "starting"
        self.running = False
        self.stops = 0
        JOURNAL.keepers.append(self)

    def start(self) -> None:
        JOURNAL.entries.append(("start", self))
        if self.stops or self.running:
            JOURNAL.violations.append(f"{self.name} ({self.target.url}) started twice")
        others = JOURNAL.running(self.name)
        if others:
            JOURNAL.violations.append(f"{self.name} ({self.target.url}) started while"
                                      f" {[k.target.url for k in others]} still ran")
        self.running = True
        self.first_attempt_done.set()
        asyncio.get_running_loop().call_soon(self._read_secret)

    def _read_secret(self) -> None:
        self.policy.secret_digest = read_secret(self.target.secret).digest

    async def stop(self, revoke: bool) -> None:
        self.stops += 1
        JOURNAL.entries.append(("stop", self))
        if JOURNAL.hold_stops is not None and self.stops == 1:
            await JOURNAL.hold_stops.wait()
        self.running = False
        JOURNAL.entries.append(("stopped", self))

    def reconfigure(self, target: TargetConfig) -> None:
        self.target = target

    def current(self, now: float) -> Any:
        return None

    def stuck(self, now: float) -> bool:
        return False

    def status(self, now: float, wall: float) -> dict[str, Any]:
        return {"name": self.name, "state": self.state}


@pytest.fixture(autouse=True)
def stub_keepers(monkeypatch: pytest.MonkeyPatch) -> Iterator[Journal]:
    global JOURNAL
    JOURNAL = Journal()
    monkeypatch.setattr(daemon_module, "Keeper", StubKeeper)
    # A reload reconfigures logging, which would end capture_logs.
    monkeypatch.setattr(daemon_module, "configure", lambda *args, **kwargs: None)
    reload = Daemon.reload

    def counted(self: Daemon) -> None:
        JOURNAL.reload_requests += 1
        reload(self)
    monkeypatch.setattr(Daemon, "reload", counted)  # before the SIGHUP handler is installed
    yield JOURNAL


@pytest.fixture
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("d")  # short: a Unix socket path has at most 108 bytes


@dataclass
class Running:
    daemon: Daemon
    task: asyncio.Task[int]
    logs: list[dict[str, Any]]

    def events(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.logs if e["event"] == name]

    async def stop(self) -> int:
        self.daemon.stop()
        return await asyncio.wait_for(self.task, 15)


@pytest.fixture
async def running(workdir: Path) -> AsyncIterator[Running]:
    write_config(workdir, URL_A, None)
    with capture_logs() as logs:
        daemon = Daemon(load_config(workdir / "config.toml"))
        task = asyncio.create_task(daemon.run())
        handle = Running(daemon, task, logs)
        await eventually(lambda: handle.events("daemon.started") or task.done(), 5,
                         what="the daemon to start")
        assert not task.done(), task.result()
        yield handle
        if not task.done():
            await handle.stop()


def rewrite(workdir: Path, url: str, extra: bool = False, **target: Any) -> None:
    """The config at ``url`` with these target settings; with ``extra``, a second target ``t2``."""
    second = {"name": "t2", "url": "http://127.0.0.1:11", "username": "u",
              "password_file": str(workdir / "password")}
    write_config(workdir, url, server={"default_target": "t1"} if extra else {},
                 target=target, extra_targets=[second] if extra else [])


async def test_two_sighups_after_a_url_change_start_one_replacement_and_no_orphan(
        running: Running, workdir: Path, stub_keepers: Journal) -> None:
    journal = stub_keepers
    [original] = journal.keepers
    rewrite(workdir, URL_B)
    journal.hold_stops = asyncio.Event()
    signal.raise_signal(signal.SIGHUP)
    # The first reload is in its commit, stopping the keeper it replaces ...
    await eventually(lambda: ("stop", original) in journal.entries, 5, what="the retirement")
    # ... when two more SIGHUPs arrive: they make exactly one more reload, after this one.
    signal.raise_signal(signal.SIGHUP)
    signal.raise_signal(signal.SIGHUP)
    await eventually(lambda: journal.reload_requests == 3, 5, what="the signals to arrive")
    assert len(running.events("config.reloaded")) == 0
    journal.hold_stops.set()
    await eventually(lambda: len(running.events("config.reloaded")) == 2, 5, what="two reloads")
    assert await running.stop() == 0

    reloaded = running.events("config.reloaded")
    assert len(reloaded) == 2, reloaded
    assert reloaded[0]["restarted"] == ["t1"] and reloaded[1]["kept"] == ["t1"], reloaded
    assert not journal.violations, journal.violations
    original_, replacement = journal.keepers  # one replacement, built once
    assert original_ is original and replacement.target.url == URL_B
    # The replaced keeper had stopped before its successor started.
    assert journal.index("stopped", original) < journal.index("start", replacement)
    assert not journal.running(), "a keeper still runs after the daemon stopped"
    assert not running.events("config.reload_failed")


@pytest.mark.parametrize("when", ["right after the SIGHUP", "while the reload retires a keeper"])
async def test_sighup_adding_a_target_then_stop_leaves_no_running_keeper(
        running: Running, workdir: Path, stub_keepers: Journal, when: str) -> None:
    journal = stub_keepers
    [original] = journal.keepers
    if when == "right after the SIGHUP":
        rewrite(workdir, URL_A, extra=True)
        running.daemon.reload()
        running.daemon.stop()
    else:
        rewrite(workdir, URL_B, extra=True)
        journal.hold_stops = asyncio.Event()
        running.daemon.reload()
        await eventually(lambda: ("stop", original) in journal.entries, 5, what="the retirement")
        running.daemon.stop()
        await eventually(lambda: running.events("daemon.stopping"), 5, what="shutdown to begin")
        journal.hold_stops.set()  # the reload completes: shutdown waited for it
    assert await asyncio.wait_for(running.task, 15) == 0  # no exception

    assert not journal.violations, journal.violations
    assert not journal.running(), [(k.name, k.target.url) for k in journal.running()]
    started = [k for what, k in journal.entries if what == "start"]
    assert all(k.stops for k in started)
    if when != "right after the SIGHUP":
        # SIGTERM came while the reload retired t1: its successor and the new t2 never start,
        # so no new upstream session is opened after daemon.stopping.
        assert started == [original], [(k.name, k.target.url) for k in started]
        assert running.events("config.reloaded")
    assert not running.events("config.reload_failed")


async def test_sigterm_waits_for_a_reload_at_most_its_request_timeout(
        workdir: Path, stub_keepers: Journal) -> None:
    journal = stub_keepers
    write_config(workdir, URL_A, target={"request_timeout": "1s"})
    with capture_logs() as logs:
        daemon = Daemon(load_config(workdir / "config.toml"))
        task = asyncio.create_task(daemon.run())
        await eventually(lambda: any(e["event"] == "daemon.started" for e in logs), 5,
                         what="the daemon to start")
        [original] = journal.keepers
        rewrite(workdir, URL_B, request_timeout="1s")
        journal.hold_stops = asyncio.Event()  # never set: this reload hangs in its commit
        daemon.reload()
        await eventually(lambda: ("stop", original) in journal.entries, 5, what="the retirement")
        stopping = time.monotonic()
        daemon.stop()
        assert await asyncio.wait_for(task, 15) == 0
        took = time.monotonic() - stopping
    assert 1.0 <= took <= 1.0 + reload_module.RELOAD_GRACE + 1.0, took
    # The reload was cut before its swap: the replacement never started, and nothing runs.
    assert [k for what, k in journal.entries if what == "start"] == [original]
    assert not journal.running() and not journal.violations


async def test_what_start_up_built_is_kept_out_of_the_collectors_sight(
        running: Running, stub_keepers: Journal) -> None:
    try:
        assert gc.get_freeze_count() > 0, "gc.freeze() after start-up: full collections are cheaper"
    finally:
        gc.unfreeze()  # this test process goes on
