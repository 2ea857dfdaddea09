"""Wires tokend together: start, signals, reload, shutdown.

Start order: lock and bind the socket first (a second tokend must fail before it touches the
upstream), then the keepers, then the listeners; READY=1 once every keeper has a token or has
finished its first attempt. Shutdown runs in reverse: stop accepting, let in-flight requests finish,
stop the keepers (revoking if configured), remove the socket, release the lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from tokend import __version__
from tokend.config import Config, TargetConfig, load_config
from tokend.errors import ConfigError
from tokend.filesink import TokenFile
from tokend.keeper import Keeper
from tokend.listen import SocketLock, activated_socket, bind_unix
from tokend.logs import configure, get_logger
from tokend.metrics import Metrics
from tokend.secrets import read_secret
from tokend.server import IDLE_TIMEOUT, GatedUnixSite, PeerGate, metrics_app, socket_app
from tokend.systemd import Notifier

SHUTDOWN_GRACE = 5.0
STATUS_INTERVAL = 5.0
log = get_logger()


class Daemon:
    """The running daemon: its config, its keepers, its listeners."""

    def __init__(self, config: Config, notifier: Notifier | None = None) -> None:
        self.config = config
        self.metrics = Metrics()
        self.keepers: dict[str, Keeper] = {}
        self.notifier = notifier or Notifier()
        self._stop = asyncio.Event()
        self._socket_path: Path | None = None
        self._lock: SocketLock | None = None
        self._runners: list[web.AppRunner] = []
        self._tasks: list[asyncio.Task[None]] = []

    # -- what the servers read ------------------------------------------------------------------

    def healthy(self, now: float) -> bool:
        """True while no keeper is stuck (a keeper idle on purpose is healthy)."""
        return not any(k.stuck(now) for k in self.keepers.values())

    def ready(self, now: float, target: str | None) -> bool:
        """True when every target (or ``target``) holds a valid token."""
        keepers = [self.keepers[target]] if target is not None else self.keepers.values()
        return all(k.current(now) is not None for k in keepers)

    def status(self) -> dict[str, Any]:
        """The ``GET /v1/status`` document."""
        now, wall = time.monotonic(), time.time()
        return {"targets": [k.status(now, wall) for k in self.keepers.values()]}

    # -- life -----------------------------------------------------------------------------------

    async def run(self) -> int:
        """Serve until SIGTERM/SIGINT; return the exit status."""
        sock = self._open_socket()
        try:
            await self._serve(sock)
        finally:
            await self._shutdown()
        return 0

    def stop(self) -> None:
        """Ask the daemon to shut down (as SIGTERM does)."""
        self._stop.set()

    def _open_socket(self) -> socket.socket:
        server = self.config.server
        activated = activated_socket()
        if activated is not None:
            if server.socket_mode_set:
                log.warning("config.ignored", key="server.socket_mode/socket_group",
                            reason="the socket comes from systemd: set SocketMode=/SocketGroup="
                                   " in tokend.socket instead")
            return activated
        self._lock = SocketLock(server.socket)
        self._lock.acquire()
        try:
            sock = bind_unix(server.socket, server.socket_mode, server.socket_group)
        except BaseException:
            self._lock.release()
            raise
        self._socket_path = server.socket
        return sock

    async def _serve(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        for target in self.config.targets:
            self._start_keeper(target)
        runner = web.AppRunner(socket_app(self), access_log=None, handle_signals=False,
                               shutdown_timeout=SHUTDOWN_GRACE, keepalive_timeout=IDLE_TIMEOUT)
        await runner.setup()
        self._runners.append(runner)
        await GatedUnixSite(runner, sock, PeerGate(self)).start()
        metrics = self.config.metrics
        if metrics.host is not None:
            tcp = web.AppRunner(metrics_app(self), access_log=None, handle_signals=False,
                                shutdown_timeout=1.0)
            await tcp.setup()
            self._runners.append(tcp)
            try:
                await web.TCPSite(tcp, metrics.host, metrics.port).start()
            except OSError as exc:
                raise ConfigError("metrics.listen", f"cannot listen on {metrics.host}:"
                                  f"{metrics.port}: {exc.strerror}",
                                  'choose a free port, or "" to disable') from None
        log.info("daemon.started", version=__version__, socket=str(self.config.server.socket),
                 metrics=f"{metrics.host}:{metrics.port}" if metrics.host else None,
                 targets=[t.name for t in self.config.targets])
        self._tasks.append(asyncio.create_task(self._systemd(), name="systemd"))
        await self._stop.wait()

    async def _shutdown(self) -> None:
        log.info("daemon.stopping")
        self.notifier.send("STOPPING=1")
        for task in self._tasks:
            task.cancel()
        # Sites close first (no new connections), then in-flight requests get SHUTDOWN_GRACE.
        for runner in self._runners:
            await runner.cleanup()
        for keeper in self.keepers.values():
            await keeper.stop(revoke=keeper.target.revoke_on_exit)
        if self._socket_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self._socket_path.unlink()
        if self._lock is not None:
            self._lock.release()
        log.info("daemon.stopped")

    def _start_keeper(self, target: TargetConfig) -> None:
        if not target.verify_tls and not target.tls_fingerprint:
            log.warning("tls.verification_disabled", target=target.name,
                        remediation="set ca_file or tls_fingerprint and remove verify_tls = false")
        keeper = Keeper(target, self.metrics.target(target.name))
        self.keepers[target.name] = keeper
        keeper.start()

    async def _systemd(self) -> None:
        """READY=1 after every first attempt, then STATUS= and WATCHDOG=1 while healthy."""
        await asyncio.gather(*(k.first_attempt_done.wait() for k in list(self.keepers.values())))
        self.notifier.send("READY=1", f"STATUS={self._status_line()}")
        interval = self.notifier.watchdog_interval
        tick = min(STATUS_INTERVAL, interval) if interval else STATUS_INTERVAL
        last_status = ""
        while True:
            await asyncio.sleep(tick)
            lines = []
            status = self._status_line()
            if status != last_status:
                lines.append(f"STATUS={status}")
                last_status = status
            if interval and self.healthy(time.monotonic()):
                lines.append("WATCHDOG=1")
            if lines:
                self.notifier.send(*lines)

    def _status_line(self) -> str:
        now = time.monotonic()
        parts = []
        for keeper in self.keepers.values():
            served = keeper.current(now)
            left = f", expires in {served.expires_in(now)}s" if served else ""
            parts.append(f"{keeper.name}: {keeper.state}{left}")
        return "; ".join(parts)

    # -- SIGHUP ---------------------------------------------------------------------------------

    def reload(self) -> None:
        """Reload config and secrets; keep the running config if the new one fails to load."""
        asyncio.get_running_loop().create_task(self._reload(), name="reload")

    async def _reload(self) -> None:
        try:
            new = load_config(self.config.path)
            for target in new.targets:
                read_secret(target.secret)
                if target.file_sink is not None:  # a sink that would fail must fail the reload
                    TokenFile(target.file_sink, f"file_sink of target '{target.name}'").check()
        except ConfigError as exc:
            self.metrics.config_reload_ok.set(0)
            log.error("config.reload_failed", key=exc.key, error=str(exc),
                      action="the running configuration is kept")
            return
        old = self.config
        if new.server.socket != old.server.socket or new.metrics != old.metrics or (
                new.server.socket_mode, new.server.socket_group) != (
                old.server.socket_mode, old.server.socket_group):
            log.warning("config.restart_needed",
                        reason="socket path, mode, group and the metrics listener change only at"
                               " a restart; the other settings apply now")
        configure(new.log.level, new.log.format)
        self.config = new
        kept, started, removed = [], [], []
        for name in [n for n in self.keepers if new.target(n) is None]:
            keeper = self.keepers.pop(name)
            await keeper.stop(revoke=keeper.target.revoke_on_exit)
            self.metrics.remove_target(name)
            removed.append(name)
        for target in new.targets:
            keeper_or_none = self.keepers.get(target.name)
            if keeper_or_none is not None and _same_connection(keeper_or_none, target):
                keeper_or_none.reconfigure(target)
                kept.append(target.name)
                continue
            if keeper_or_none is not None:
                await keeper_or_none.stop(revoke=keeper_or_none.target.revoke_on_exit)
            self._start_keeper(target)
            started.append(target.name)
        self.metrics.config_reload_ok.set(1)
        log.info("config.reloaded", kept=kept, restarted=started, removed=removed)


def _same_connection(keeper: Keeper, target: TargetConfig) -> bool:
    """Same url, TLS settings, identity and secret: the held token stays good."""
    if keeper.target.connection_key() != target.connection_key():
        return False
    old, new = keeper.target.secret, target.secret
    if (old.kind, old.ref) != (new.kind, new.ref):
        return False
    try:
        return read_secret(new).digest == keeper.policy.secret_digest
    except ConfigError:
        return False
