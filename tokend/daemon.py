"""Wires tokend together: start, signals, reload, shutdown.

Start order: first :func:`tokend.preflight.preflight`, the checks ``tokend check-config`` makes,
so a config it passes is not refused here and a refused one is refused before anything is opened
or logged; then lock and bind the sockets, the API socket's and every proxy's, and the metrics
listener's (a second tokend must fail before it touches the upstream), then the keepers, then the
listeners, the proxies last (they forward with the keepers' tokens); READY=1 once every keeper has
a token or has finished its first attempt. Shutdown runs in reverse: stop accepting and let
in-flight requests finish while a reload under way completes, stop the proxies (their requests in
flight get the same grace), stop the keepers (revoking if configured), remove the socket, remove
and release the lock.

Reloads run one at a time in one task the daemon owns (:class:`tokend.reload.Reloads`, which
swaps the keepers and the proxies); SIGHUP only asks for one. The daemon-wide settings of a
reloaded config stay here: logging and what needs a restart (:meth:`Daemon.adopt`), the open files
limit (:meth:`Daemon.fit_open_files`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import signal
import socket
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from tokend import __version__
from tokend.config import Config, LogOverride, TargetConfig
from tokend.config.model import ProxyConfig
from tokend.gate import ConnectionSlots, GatedUnixSite, PeerGate
from tokend.harden import raise_open_files_limit
from tokend.keeper import Keeper
from tokend.ledger import Ledger
from tokend.listen import METRICS_FIX, SocketLock, activated_sockets, bind_tcp, bind_unix
from tokend.logs import configure, get_logger
from tokend.metrics import Metrics
from tokend.preflight import activated_names, preflight
from tokend.proxy.app import Proxy, descriptors_needed
from tokend.proxy.tcp import TcpListener
from tokend.reload import Reloads
from tokend.server import IDLE_TIMEOUT, metrics_app, socket_app
from tokend.systemd import Notifier

STATUS_INTERVAL = 5.0
log = get_logger()


class Daemon:
    """The running daemon: its config, its keepers, its listeners."""

    def __init__(self, config: Config, notifier: Notifier | None = None,
                 log_override: LogOverride | None = None) -> None:
        # --log-level/--log-format and TOKEND_LOG_*: they outlive a reload of the file.
        self._log_override = log_override
        config = self.with_log_override(config)
        self.config = config
        self.metrics = Metrics()
        self.keepers: dict[str, Keeper] = {}
        self.proxies: dict[str, Proxy] = {}
        self.slots = ConnectionSlots()  # every Unix listener's connections count together
        self.ledger = Ledger.open(None, time.time())  # the one under state_dir once running
        self.notifier = notifier or Notifier()
        self._stop = asyncio.Event()
        self._socket_path: Path | None = None
        self._lock: SocketLock | None = None
        self._runners: list[web.AppRunner] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._reloads = Reloads(self)
        self._activated: dict[str, socket.socket] = {}  # systemd's proxy sockets, by target
        self._metrics_sock: socket.socket | None = None
        self._started = False  # daemon.started was logged: shutdown logs its own two lines

    # -- what the servers read ------------------------------------------------------------------

    def healthy(self, now: float) -> bool:
        """True while no keeper is stuck (a keeper idle on purpose is healthy)."""
        return not any(k.stuck(now) for k in self.keepers.values() if k not in self._reloads.retiring)

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
        """Serve until SIGTERM/SIGINT; return the exit status.

        Raises the ConfigError of the first check that fails, before anything is opened.
        """
        preflight(self.config, activated=activated_names())
        self.fit_open_files(self.config)
        sock = self._open_socket()
        try:
            self._metrics_sock = self._bind_metrics()
            # After the socket lock (a second tokend fails first), before any keeper logs in.
            self.ledger = Ledger.open(self.config.server.state_dir, time.time())
            self._open_proxies()
            # What start-up built (modules, config, metrics) lives as long as the process: out of
            # the collector's sight, a full collection no longer walks it (bench/proxy.py, 100
            # connections: less CPU per request and a lower p99). Refcounting still frees it.
            gc.collect()
            gc.freeze()
            await self._serve(sock)
        finally:
            await self._shutdown()
        return 0

    def stop(self) -> None:
        """Ask the daemon to shut down (as SIGTERM does)."""
        self._stop.set()

    @property
    def backlog(self) -> int:
        """The listen backlog of every Unix socket: the connection limit (the kernel caps it)."""
        return self.config.server.max_connections

    def fit_open_files(self, config: Config) -> None:
        """Raise RLIMIT_NOFILE to fit the connection limits and the proxies' pools, or say so."""
        wanted = descriptors_needed(config.server.max_connections, list(config.proxies),
                                    len(config.targets))
        soft, hard = raise_open_files_limit(wanted)
        if soft < wanted:
            log.warning("daemon.open_files_limit", wanted=wanted, soft=soft, hard=hard,
                        remediation="raise LimitNOFILE= in the unit (or ulimit -n), or lower"
                                    " server.max_connections or max_upstream_connections")

    def _open_socket(self) -> socket.socket:
        server = self.config.server
        activated = self._take_activated()
        if activated is not None:
            if server.socket_mode_set:
                log.warning("config.ignored", key="server.socket_mode/socket_group",
                            reason="the socket comes from systemd: set SocketMode=/SocketGroup="
                                   " in tokend.socket instead")
            return activated
        self._lock = SocketLock(server.socket)
        self._lock.acquire()
        try:
            sock = bind_unix(server.socket, server.socket_mode, server.socket_group, self.backlog)
        except BaseException:
            self._lock.release()
            raise
        self._socket_path = server.socket
        return sock

    def _bind_metrics(self) -> socket.socket | None:
        """The metrics listener's socket, bound before any keeper starts (None: disabled)."""
        metrics = self.config.metrics
        if metrics.host is None:
            return None
        return bind_tcp(metrics.host, metrics.port, "metrics.listen", 128, METRICS_FIX)

    def with_log_override(self, config: Config) -> Config:
        """``config`` with the log level and format of the command line and environment, if set."""
        if self._log_override is None:
            return config
        return dataclasses.replace(config, log=self._log_override.over(config.log))

    def _take_activated(self) -> socket.socket | None:
        """systemd's sockets: each named after a proxy's target is that proxy's; the first other
        one is the API socket; any more are closed, with a warning."""
        proxies = {p.target for p in self.config.proxies}
        api: socket.socket | None = None
        for name, sock in activated_sockets():
            if name in proxies and name not in self._activated:
                self._activated[name] = sock
            elif api is None:
                api = sock
            else:
                log.warning("config.ignored", key="LISTEN_FDNAMES",
                            reason=f"systemd passed a second socket not named after a proxy's"
                                   f" target ({name or 'unnamed'}): closed")
                sock.close()
        return api

    def _open_proxies(self) -> None:
        """Take every proxy's socket before any keeper starts; the first that fails ends start-up."""
        for proxy_config in self.config.proxies:
            proxy = self.new_proxy(proxy_config, self.config.server.state_dir)
            self.proxies[proxy.name] = proxy  # stopped (socket removed, lock released) at shutdown
            proxy.open(self._activated.pop(proxy.name, None), self.backlog)

    def new_proxy(self, proxy_config: ProxyConfig, state_dir: Path) -> Proxy:
        """A proxy with its facade (session keys and users read now) and, with ``listen``, its
        TLS material; not yet open. Raises ConfigError naming the file or key at fault."""
        # Imported here: the facade's local tokens need pyjwt, which a daemon without a proxy
        # never loads.
        from tokend.proxy.facade import Facade

        metrics = self.metrics.proxy(proxy_config.target)
        facade = Facade.load(proxy_config, state_dir, metrics)
        listener = (TcpListener.prepare(proxy_config, state_dir, time.time())
                    if proxy_config.listen is not None else None)
        return Proxy(proxy_config, self, self.slots, metrics, login=facade, authorizer=facade,
                     listener=listener)

    async def _start_proxies(self) -> None:
        for proxy in list(self.proxies.values()):
            target = self.config.target(proxy.name)
            assert target is not None  # the config refuses a proxy of an unknown target
            await proxy.start(proxy.build_forwarder(target), self.backlog)

    async def _serve(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        self._reloads.start()
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        for target in self.config.targets:
            self.warn_tls(target)
            self.start_keeper(self.new_keeper(target))
        grace = self.config.server.shutdown_timeout
        runner = web.AppRunner(socket_app(self), access_log=None, handle_signals=False,
                               shutdown_timeout=grace, keepalive_timeout=IDLE_TIMEOUT)
        await runner.setup()
        self._runners.append(runner)
        await GatedUnixSite(runner, sock, PeerGate(self, self.slots), self.backlog).start()
        metrics_address = None
        if self._metrics_sock is not None:
            tcp = web.AppRunner(metrics_app(self), access_log=None, handle_signals=False,
                                shutdown_timeout=1.0)
            await tcp.setup()
            self._runners.append(tcp)
            await web.SockSite(tcp, self._metrics_sock).start()
            host, port = self._metrics_sock.getsockname()[:2]
            metrics_address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        await self._start_proxies()
        # The port the kernel picked, for listen = "127.0.0.1:0".
        log.info("daemon.started", version=__version__, socket=str(self.config.server.socket),
                 metrics=metrics_address, targets=[t.name for t in self.config.targets],
                 proxies=list(self.proxies))
        self._started = True
        self._tasks.append(asyncio.create_task(self._systemd(), name="systemd"))
        await self._stop.wait()

    async def _shutdown(self) -> None:
        if self._started:  # a start that failed said so on stderr; it was never "started"
            log.info("daemon.stopping")
        self.notifier.send("STOPPING=1")
        for task in self._tasks:
            task.cancel()
        # The listeners close while a reload under way finishes: neither touches the other, and
        # the keepers are stopped only when no reload can change ``keepers`` any more.
        await asyncio.gather(self._close_listeners(), self._reloads.stop())
        # After the reloads: a reload under way may have started a proxy. Before the keepers: a
        # proxy's requests in flight still need their tokens.
        await asyncio.gather(*(proxy.stop() for proxy in list(self.proxies.values())))
        for sock in self._activated.values():
            sock.close()
        for keeper in list(self.keepers.values()):
            await keeper.stop(revoke=keeper.target.revoke_on_exit)
        if self._socket_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self._socket_path.unlink()
        if self._metrics_sock is not None and not self._runners:  # bound, never served
            self._metrics_sock.close()
        if self._lock is not None:
            self._lock.release()  # and removes <socket>.lock, while it still holds it
        if self._started:
            log.info("daemon.stopped")

    async def _close_listeners(self) -> None:
        """Sites close first (no new connections), then in-flight requests get shutdown_timeout."""
        for runner in self._runners:
            await runner.cleanup()

    def new_keeper(self, target: TargetConfig) -> Keeper:
        """``target``'s keeper, not started. Raises ConfigError, OSError or ValueError when its
        file sink or TLS material is refused."""
        return Keeper(target, self.metrics.target(target.name), ledger=self.ledger)

    def start_keeper(self, keeper: Keeper) -> None:
        """Make ``keeper`` its target's keeper and start it, in one step (nothing runs unlisted)."""
        self.keepers[keeper.name] = keeper
        keeper.start()

    @staticmethod
    def warn_tls(target: TargetConfig) -> None:
        """Log that ``target``'s TLS certificate is not verified, when it is not."""
        if not target.verify_tls and not target.tls_fingerprint:
            log.warning("tls.verification_disabled", target=target.name,
                        remediation="set ca_file or tls_fingerprint and remove verify_tls = false")

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
        """Ask for a reload of config and secrets (SIGHUP); the reload task runs it.

        Asking while a reload runs gets exactly one more reload after it, however often one asks.
        """
        self._reloads.ask()

    def adopt(self, new: Config) -> None:
        """Make a reloaded ``new`` the config: its log settings apply now; a warning names the
        settings that change only at a restart (socket, its mode and group, metrics listener)."""
        old = self.config
        if new.server.socket != old.server.socket or new.metrics != old.metrics or (
                new.server.socket_mode, new.server.socket_group) != (
                old.server.socket_mode, old.server.socket_group):
            log.warning("config.restart_needed",
                        reason="socket path, mode, group and the metrics listener change only at"
                               " a restart; the other settings apply now")
        configure(new.log.level, new.log.format)
        self.config = new
