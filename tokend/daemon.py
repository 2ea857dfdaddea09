"""Wires tokend together: start, signals, reload, shutdown.

Start order: lock and bind the sockets first, the API socket's and every proxy's (a second tokend
must fail before it touches the upstream), then the keepers, then the listeners, the proxies last
(they forward with the keepers' tokens); READY=1 once every keeper has a token or has finished its
first attempt. Shutdown runs in reverse: stop accepting and let in-flight requests finish while a
reload under way completes, stop the proxies (their requests in flight get the same grace), stop
the keepers (revoking if configured), remove the socket, release the lock.

Reloads (SPEC §8.7) run one at a time in one task the daemon owns; SIGHUP only asks for one. A
reload is prepare (load and check everything, build the new keepers without starting them, bind
the new proxies' sockets), commit (stop the proxies that go, retire the keepers that go, then
start their successors, then the new proxies) and log. Two rules keep every keeper
accounted for, whenever a reload is interrupted: a keeper is started only in the same step that puts
it into ``keepers``, and one leaves ``keepers`` only once it has stopped. So shutdown, which first
ends the reload task and then stops a snapshot of ``keepers``, stops every keeper that ever ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from tokend import __version__
from tokend.config import Config, TargetConfig, load_config
from tokend.config.model import ProxyConfig
from tokend.errors import ConfigError
from tokend.filesink import TokenFile
from tokend.harden import raise_open_files_limit
from tokend.keeper import Keeper
from tokend.ledger import Ledger
from tokend.listen import SocketLock, activated_sockets, bind_unix
from tokend.logs import configure, get_logger
from tokend.metrics import Metrics, TargetMetrics
from tokend.names import State
from tokend.proxy.app import Proxy, descriptors_needed
from tokend.proxy.forward import Forwarder
from tokend.proxy.tcp import TcpListener, listener_key
from tokend.secrets import read_secret
from tokend.server import (
    IDLE_TIMEOUT,
    ConnectionSlots,
    GatedUnixSite,
    PeerGate,
    metrics_app,
    socket_app,
)
from tokend.systemd import Notifier

if TYPE_CHECKING:
    from tokend.proxy.facade import Facade

SHUTDOWN_GRACE = 5.0
STATUS_INTERVAL = 5.0
# A reload under way at SIGTERM may be revoking a retired keeper's refresh token, a call bounded by
# its request_timeout; shutdown waits that long for it, plus this for the bookkeeping around it.
RELOAD_GRACE = 0.5
log = get_logger()


@dataclass
class ReloadPlan:
    """What a reload will do, decided before anything changes."""

    config: Config
    kept: list[TargetConfig] = field(default_factory=list)  # same connection: keep the token
    fresh: dict[str, Keeper] = field(default_factory=dict)  # built, not started
    removed: list[str] = field(default_factory=list)  # names no longer configured
    # Proxies, by target name: kept ones (same socket) get their new settings, and a new
    # forwarder when their target's connection or their pool settings changed; new ones have
    # their socket bound already, unless a proxy that stops first holds its path (deferred).
    proxies_kept: list[ProxyConfig] = field(default_factory=list)
    proxies_forwarders: dict[str, Forwarder] = field(default_factory=dict)
    proxies_facades: dict[str, Facade] = field(default_factory=dict)  # kept proxies' successors
    proxies_new: dict[str, tuple[Proxy, Forwarder]] = field(default_factory=dict)
    proxies_deferred: set[str] = field(default_factory=set)
    proxies_stopped: list[str] = field(default_factory=list)  # removed, or moving to a new socket


class Daemon:
    """The running daemon: its config, its keepers, its listeners."""

    def __init__(self, config: Config, notifier: Notifier | None = None) -> None:
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
        self._reload_wanted = asyncio.Event()
        self._reload_idle = asyncio.Event()
        self._reload_idle.set()
        self._reload_task: asyncio.Task[None] | None = None
        self._closing = False
        self._retiring: set[Keeper] = set()
        self._activated: dict[str, socket.socket] = {}  # systemd's proxy sockets, by target

    # -- what the servers read ------------------------------------------------------------------

    def healthy(self, now: float) -> bool:
        """True while no keeper is stuck (a keeper idle on purpose is healthy)."""
        return not any(k.stuck(now) for k in self.keepers.values() if k not in self._retiring)

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
        self._fit_open_files(self.config)
        sock = self._open_socket()
        try:
            # After the socket lock (a second tokend fails first), before any keeper logs in.
            self.ledger = Ledger.open(self.config.server.state_dir, time.time())
            self._open_proxies()
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

    def _fit_open_files(self, config: Config) -> None:
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
            proxy = self._new_proxy(proxy_config, self.config.server.state_dir)
            self.proxies[proxy.name] = proxy  # stopped (socket removed, lock released) at shutdown
            proxy.open(self._activated.pop(proxy.name, None), self.backlog)

    def _new_proxy(self, proxy_config: ProxyConfig, state_dir: Path) -> Proxy:
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
        self._reload_task = asyncio.create_task(self._reloads(), name="reloads")
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        for target in self.config.targets:
            self._warn_tls(target)
            self._start(Keeper(target, self.metrics.target(target.name), ledger=self.ledger))
        runner = web.AppRunner(socket_app(self), access_log=None, handle_signals=False,
                               shutdown_timeout=SHUTDOWN_GRACE, keepalive_timeout=IDLE_TIMEOUT)
        await runner.setup()
        self._runners.append(runner)
        await GatedUnixSite(runner, sock, PeerGate(self, self.slots), self.backlog).start()
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
        await self._start_proxies()
        log.info("daemon.started", version=__version__, socket=str(self.config.server.socket),
                 metrics=f"{metrics.host}:{metrics.port}" if metrics.host else None,
                 targets=[t.name for t in self.config.targets], proxies=list(self.proxies))
        self._tasks.append(asyncio.create_task(self._systemd(), name="systemd"))
        await self._stop.wait()

    async def _shutdown(self) -> None:
        log.info("daemon.stopping")
        self.notifier.send("STOPPING=1")
        for task in self._tasks:
            task.cancel()
        # The listeners close while a reload under way finishes: neither touches the other, and
        # the keepers are stopped only when no reload can change ``keepers`` any more.
        await asyncio.gather(self._close_listeners(), self._stop_reloads())
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
        if self._lock is not None:
            self._lock.release()
        log.info("daemon.stopped")

    async def _close_listeners(self) -> None:
        """Sites close first (no new connections), then in-flight requests get SHUTDOWN_GRACE."""
        for runner in self._runners:
            await runner.cleanup()

    def _start(self, keeper: Keeper) -> None:
        """Make ``keeper`` its target's keeper and start it, in one step (nothing runs unlisted)."""
        self.keepers[keeper.name] = keeper
        keeper.start()

    @staticmethod
    def _warn_tls(target: TargetConfig) -> None:
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
        self._reload_wanted.set()

    async def _reloads(self) -> None:
        """The one task that reloads, one reload at a time, until shutdown ends it."""
        while not self._closing:
            await self._reload_wanted.wait()
            if self._closing:
                return
            self._reload_wanted.clear()
            self._reload_idle.clear()
            try:
                await self._reload()
            except Exception as exc:  # a bug must not end reloading
                self.metrics.config_reload_ok.set(0)
                log.error("config.reload_failed", key="",
                          error=f"internal error ({type(exc).__name__})",
                          action="see the traceback; send SIGHUP again to retry", exc_info=exc)
            finally:
                self._reload_idle.set()

    async def _stop_reloads(self) -> None:
        """Let a reload under way finish (bounded by the largest request_timeout), then end the task."""
        task, self._reload_task = self._reload_task, None
        if task is None:
            return
        self._closing = True
        if not self._reload_idle.is_set():
            timeouts = [t.request_timeout for t in self.config.targets]
            timeouts += [k.target.request_timeout for k in self.keepers.values()]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reload_idle.wait(), max(timeouts, default=0.0)
                                       + RELOAD_GRACE)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _reload(self) -> None:
        """Prepare, commit, log: a config that fails to prepare changes nothing."""
        try:
            plan = self._prepare()
        except ConfigError as exc:
            self.metrics.config_reload_ok.set(0)
            log.error("config.reload_failed", key=exc.key, error=str(exc),
                      action="the running configuration is kept")
            return
        await self._commit(plan)
        self.metrics.config_reload_ok.set(1)
        log.info("config.reloaded", kept=[t.name for t in plan.kept], restarted=list(plan.fresh),
                 removed=plan.removed, proxies=list(self.proxies))

    def _prepare(self) -> ReloadPlan:
        """Load and check the config, read every secret, build (not start) the new keepers.

        Raises ConfigError, having changed nothing, when any of it fails.
        """
        new = load_config(self.config.path)
        for target in new.targets:
            read_secret(target.secret)
            if target.file_sink is not None:  # a sink that would fail must fail the reload
                TokenFile(target.file_sink, f"file_sink of target '{target.name}'").check()
        plan = ReloadPlan(new, removed=[n for n in self.keepers if new.target(n) is None])
        for index, target in enumerate(new.targets):
            old = self.keepers.get(target.name)
            if old is not None and _same_connection(old, target):
                plan.kept.append(target)
                continue
            try:
                plan.fresh[target.name] = Keeper(target, self.metrics.target(target.name),
                                                 ledger=self.ledger)
            except (ConfigError, OSError, ValueError) as exc:
                self._discard(plan)
                key = exc.key if isinstance(exc, ConfigError) else f"targets[{index}]"
                raise ConfigError(key, f"cannot set up target '{target.name}': {exc}",
                                  "fix it and send SIGHUP again") from None
        try:
            self._prepare_proxies(plan)
        except ConfigError:
            self._discard(plan)
            raise
        return plan

    def _prepare_proxies(self, plan: ReloadPlan) -> None:
        """Decide each proxy's fate; build the forwarders and bind the new sockets now.

        Raises ConfigError (after closing what it bound) when a socket or a TLS setting fails.
        """
        new = plan.config
        state_dir = new.server.state_dir
        held = {p.socket_path: name for name, p in self.proxies.items() if p.socket_path}
        held_listens = {p.config.listen for p in self.proxies.values() if p.listener is not None}
        wanted = {p.target for p in new.proxies}
        plan.proxies_stopped = [name for name in self.proxies if name not in wanted]
        try:
            for proxy_config in new.proxies:
                target = new.target(proxy_config.target)
                assert target is not None  # the config refuses a proxy of an unknown target
                old = self.proxies.get(proxy_config.target)
                if old is not None and old.config.socket == proxy_config.socket and listener_key(
                        old.config, self.config.server.state_dir) == listener_key(
                        proxy_config, state_dir):
                    plan.proxies_kept.append(proxy_config)
                    current = old.forwarder
                    if current is None or current.settings_key() != Forwarder.key_for(
                            target, proxy_config):
                        plan.proxies_forwarders[old.name] = old.build_forwarder(target, proxy_config)
                    facade = _facade_of(old)
                    if facade is not None:
                        plan.proxies_facades[old.name] = facade.successor(proxy_config, state_dir)
                    continue
                if old is not None:
                    plan.proxies_stopped.append(old.name)  # a changed socket or listener: restarted
                try:
                    proxy = self._new_proxy(proxy_config, state_dir)
                except ConfigError:
                    if proxy_config.target not in self.proxies:
                        self.metrics.remove_proxy(proxy_config.target)
                    raise
                plan.proxies_new[proxy.name] = (proxy, proxy.build_forwarder(target))
                if proxy_config.socket in held or (proxy_config.listen is not None
                                                   and proxy_config.listen in held_listens):
                    plan.proxies_deferred.add(proxy.name)  # taken once its holder has stopped
                else:
                    proxy.open(None, self.backlog)
        except ConfigError:
            for name, (proxy, _) in plan.proxies_new.items():
                proxy.discard()
                if name not in self.proxies:
                    self.metrics.remove_proxy(name)  # its series were made for nothing
            raise

    def _discard(self, plan: ReloadPlan) -> None:
        """Undo building ``plan``'s keepers: they never ran; their targets' series go back."""
        now = time.monotonic()
        for name in plan.fresh:
            old = self.keepers.get(name)
            if old is None:
                self.metrics.remove_target(name)
            else:
                _show(old.metrics, old.state, old.current(now) is not None)
        plan.fresh.clear()

    async def _commit(self, plan: ReloadPlan) -> None:
        """Retire the keepers that go, then start their successors; kept ones take new settings.

        A replaced keeper is stopped (revoking, if configured) before its successor starts, so it
        makes no upstream call after that. The retired ones stop together: SIGTERM waits for the
        slowest, not for their sum.
        """
        old = self.config
        new = plan.config
        if new.server.socket != old.server.socket or new.metrics != old.metrics or (
                new.server.socket_mode, new.server.socket_group) != (
                old.server.socket_mode, old.server.socket_group):
            log.warning("config.restart_needed",
                        reason="socket path, mode, group and the metrics listener change only at"
                               " a restart; the other settings apply now")
        configure(new.log.level, new.log.format)
        self.config = new
        for name in plan.fresh:  # SIGHUP clears the lockout records (kept keepers clear their own)
            self.ledger.clear(name, time.time())
        self._fit_open_files(new)
        # Proxies that go stop before the keepers change: their requests in flight finish with
        # the tokens they started with.
        stopping = [self.proxies.pop(name) for name in plan.proxies_stopped]
        await asyncio.gather(*(proxy.stop() for proxy in stopping))
        for name in plan.proxies_stopped:
            if name not in plan.proxies_new:
                self.metrics.remove_proxy(name)
        for proxy_config in plan.proxies_kept:
            kept = self.proxies[proxy_config.target]
            facade = plan.proxies_facades.get(proxy_config.target)
            kept.reconfigure(proxy_config, plan.proxies_forwarders.get(proxy_config.target),
                             login=facade, authorizer=facade)
            kept.check_files(regenerate=True)  # SIGHUP re-reads users, keys and certificates
        retiring = [self.keepers[n] for n in [*plan.removed, *plan.fresh] if n in self.keepers]
        # Each stays in ``keepers`` (serving what it holds) until it has stopped; a successor then
        # takes its place in the same step as it starts. A stopped keeper is not stuck: health
        # does not look at the retiring ones.
        self._retiring.update(retiring)
        results = await asyncio.gather(*(k.stop(revoke=k.target.revoke_on_exit) for k in retiring),
                                       return_exceptions=True)
        self._retiring.difference_update(retiring)
        for name in plan.removed:
            del self.keepers[name]
            self.metrics.remove_target(name)
        predecessors = {k.name: k for k in retiring}
        for keeper in plan.fresh.values():
            predecessor = predecessors.get(keeper.name)
            if predecessor is not None:  # a new secret or url must not reset the login spacing
                keeper.policy.inherit(predecessor.policy)
            # The retired keeper's last writes to the target's series are not the new one's state.
            _show(keeper.metrics, "starting", False)
            self._warn_tls(keeper.target)
            if self._closing:  # SIGTERM came during the reload: no new session at the upstream
                self.keepers[keeper.name] = keeper
            else:
                self._start(keeper)
        await self._start_new_proxies(plan)
        errors = [r for r in results if isinstance(r, BaseException)]
        for target in plan.kept:  # after the swap: one failing here leaves no target without keeper
            try:
                self.keepers[target.name].reconfigure(target)
            except Exception as exc:  # e.g. a file sink refused since it was checked
                errors.append(exc)
        if errors:  # the swap is done whatever failed; the failure is a bug to be logged
            raise errors[0]

    async def _start_new_proxies(self, plan: ReloadPlan) -> None:
        """Start the proxies a reload added or moved; one whose socket cannot be taken is logged."""
        for name, (proxy, forwarder) in plan.proxies_new.items():
            if name in plan.proxies_deferred:
                try:
                    proxy.open(None, self.backlog)
                except ConfigError as exc:
                    log.error("proxy.start_failed", target=name, key=exc.key, error=str(exc))
                    continue
            self.proxies[name] = proxy
            await proxy.start(forwarder, self.backlog)


def _facade_of(proxy: Proxy) -> Facade | None:
    """The facade serving ``proxy``'s token endpoints, if it has one."""
    from tokend.proxy.facade import Facade

    return proxy.login if isinstance(proxy.login, Facade) else None


def _show(metrics: TargetMetrics, state: State, valid: bool) -> None:
    """Set a target's state and validity series."""
    metrics.set_state(state)
    metrics.valid.set(1 if valid else 0)


def _same_connection(keeper: Keeper, target: TargetConfig) -> bool:
    """Same url, TLS settings, identity and secret: the held token stays good."""
    if keeper.target.connection_key() != target.connection_key():
        return False
    old, new = keeper.target.secret, target.secret
    if (old.kind, old.ref) != (new.kind, new.ref):
        return False
    held = keeper.policy.secret_digest
    if held is None:
        # Not read yet (a keeper started by the reload just before this one): it reads the
        # current secret before its first login, so restarting it would only lose its place.
        return True
    try:
        return read_secret(new).digest == held
    except ConfigError:
        return False
