"""Reloads (SPEC §8.7): one at a time, in one task the daemon owns; SIGHUP only asks for one.

A reload is prepare (load and check everything, build the new keepers without starting them, bind
the new proxies' sockets), commit (stop the proxies that go, retire the keepers that go, then
start their successors, then the new proxies) and log. Two rules keep every keeper
accounted for, whenever a reload is interrupted: a keeper is started only in the same step that puts
it into ``keepers``, and one leaves ``keepers`` only once it has stopped. So shutdown, which first
ends the reload task and then stops a snapshot of ``keepers``, stops every keeper that ever ran.

The daemon-wide settings (logging, the open files limit, what needs a restart) are the daemon's
own (:meth:`tokend.daemon.Daemon.adopt`, :meth:`~tokend.daemon.Daemon.fit_open_files`); this
module swaps the keepers and the proxies.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tokend.config import Config, TargetConfig, load_config
from tokend.config.model import ProxyConfig
from tokend.errors import ConfigError
from tokend.logs import get_logger
from tokend.metrics import TargetMetrics
from tokend.names import State
from tokend.preflight import preflight
from tokend.proxy.app import Proxy
from tokend.proxy.forward import Forwarder
from tokend.proxy.tcp import listener_key
from tokend.secrets import read_secret

if TYPE_CHECKING:
    from tokend.daemon import Daemon
    from tokend.keeper import Keeper
    from tokend.proxy.facade import Facade

# A reload under way at SIGTERM may be revoking a retired keeper's refresh token, a call bounded by
# its request_timeout; shutdown waits that long for it, plus this (seconds) for the bookkeeping
# around it.
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


class Reloads:
    """A daemon's reload task: it changes the daemon's ``config``, ``keepers`` and ``proxies``."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        # Keepers a reload is stopping: they stay in ``keepers`` meanwhile, and are not stuck.
        self.retiring: set[Keeper] = set()
        self.closing = False  # shutdown began: no reload starts, no keeper a reload built starts
        self._wanted = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the reload task; needs the running event loop."""
        self._task = asyncio.create_task(self._run(), name="reloads")

    def ask(self) -> None:
        """Ask for a reload of config and secrets; the reload task runs it.

        Asking while a reload runs gets exactly one more reload after it, however often one asks.
        """
        self._wanted.set()

    async def stop(self) -> None:
        """Let a reload under way finish (bounded by the largest request_timeout, in seconds, plus
        :data:`RELOAD_GRACE`), then end the task. Does nothing when the task never started."""
        task, self._task = self._task, None
        if task is None:
            return
        self.closing = True
        if not self._idle.is_set():
            daemon = self.daemon
            timeouts = [t.request_timeout for t in daemon.config.targets]
            timeouts += [k.target.request_timeout for k in daemon.keepers.values()]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), max(timeouts, default=0.0)
                                       + RELOAD_GRACE)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _run(self) -> None:
        """The one task that reloads, one reload at a time, until shutdown ends it."""
        while not self.closing:
            await self._wanted.wait()
            if self.closing:
                return
            self._wanted.clear()
            self._idle.clear()
            try:
                await self._reload()
            except Exception as exc:  # a bug must not end reloading
                self.daemon.metrics.config_reload_ok.set(0)
                log.error("config.reload_failed", key="",
                          error=f"internal error ({type(exc).__name__})",
                          action="see the traceback; send SIGHUP again to retry", exc_info=exc)
            finally:
                self._idle.set()

    async def _reload(self) -> None:
        """Prepare, commit, log: a config that fails to prepare changes nothing."""
        metrics = self.daemon.metrics
        try:
            plan = self._prepare()
        except ConfigError as exc:
            metrics.config_reload_ok.set(0)
            log.error("config.reload_failed", key=exc.key, error=str(exc),
                      action="the running configuration is kept")
            return
        await self._commit(plan)
        metrics.config_reload_ok.set(1)
        log.info("config.reloaded", kept=[t.name for t in plan.kept], restarted=list(plan.fresh),
                 removed=plan.removed, proxies=list(self.daemon.proxies))

    def _prepare(self) -> ReloadPlan:
        """Load and check the config, read every secret, build (not start) the new keepers.

        Raises ConfigError, having changed nothing, when any of it fails.
        """
        daemon = self.daemon
        new = daemon.with_log_override(load_config(daemon.config.path))
        # What check-config checks: the secrets, every file sink, the sockets of new proxies.
        held = {p.config.socket for p in daemon.proxies.values() if p.config.socket is not None}
        preflight(new, start=False, held=held)
        plan = ReloadPlan(new, removed=[n for n in daemon.keepers if new.target(n) is None])
        for index, target in enumerate(new.targets):
            old = daemon.keepers.get(target.name)
            if old is not None and _same_connection(old, target):
                plan.kept.append(target)
                continue
            try:
                plan.fresh[target.name] = daemon.new_keeper(target)
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
        daemon = self.daemon
        new = plan.config
        state_dir = new.server.state_dir
        held = {p.socket_path: name for name, p in daemon.proxies.items() if p.socket_path}
        held_listens = {p.config.listen for p in daemon.proxies.values() if p.listener is not None}
        wanted = {p.target for p in new.proxies}
        plan.proxies_stopped = [name for name in daemon.proxies if name not in wanted]
        try:
            for proxy_config in new.proxies:
                target = new.target(proxy_config.target)
                assert target is not None  # the config refuses a proxy of an unknown target
                old = daemon.proxies.get(proxy_config.target)
                if old is not None and old.config.socket == proxy_config.socket and listener_key(
                        old.config, daemon.config.server.state_dir) == listener_key(
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
                    proxy = daemon.new_proxy(proxy_config, state_dir)
                except ConfigError:
                    if proxy_config.target not in daemon.proxies:
                        daemon.metrics.remove_proxy(proxy_config.target)
                    raise
                plan.proxies_new[proxy.name] = (proxy, proxy.build_forwarder(target))
                if proxy_config.socket in held or (proxy_config.listen is not None
                                                   and proxy_config.listen in held_listens):
                    plan.proxies_deferred.add(proxy.name)  # taken once its holder has stopped
                else:
                    proxy.open(None, daemon.backlog)
        except ConfigError:
            for name, (proxy, _) in plan.proxies_new.items():
                proxy.discard()
                if name not in daemon.proxies:
                    daemon.metrics.remove_proxy(name)  # its series were made for nothing
            raise

    def _discard(self, plan: ReloadPlan) -> None:
        """Undo building ``plan``'s keepers: they never ran; their targets' series go back."""
        daemon = self.daemon
        now = time.monotonic()
        for name in plan.fresh:
            old = daemon.keepers.get(name)
            if old is None:
                daemon.metrics.remove_target(name)
            else:
                _show(old.metrics, old.state, old.current(now) is not None)
        plan.fresh.clear()

    async def _commit(self, plan: ReloadPlan) -> None:
        """Retire the keepers that go, then start their successors; kept ones take new settings.

        A replaced keeper is stopped (revoking, if configured) before its successor starts, so it
        makes no upstream call after that. The retired ones stop together: SIGTERM waits for the
        slowest, not for their sum.
        """
        daemon = self.daemon
        new = plan.config
        daemon.adopt(new)
        for name in plan.fresh:  # SIGHUP clears the lockout records (kept keepers clear their own)
            daemon.ledger.clear(name, time.time())
        daemon.fit_open_files(new)
        # Proxies that go stop before the keepers change: their requests in flight finish with
        # the tokens they started with.
        stopping = [daemon.proxies.pop(name) for name in plan.proxies_stopped]
        await asyncio.gather(*(proxy.stop() for proxy in stopping))
        for name in plan.proxies_stopped:
            if name not in plan.proxies_new:
                daemon.metrics.remove_proxy(name)
        for proxy_config in plan.proxies_kept:
            kept = daemon.proxies[proxy_config.target]
            facade = plan.proxies_facades.get(proxy_config.target)
            kept.reconfigure(proxy_config, plan.proxies_forwarders.get(proxy_config.target),
                             login=facade, authorizer=facade)
            kept.check_files(regenerate=True)  # SIGHUP re-reads users, keys and certificates
        keepers = daemon.keepers
        retiring = [keepers[n] for n in [*plan.removed, *plan.fresh] if n in keepers]
        # Each stays in ``keepers`` (serving what it holds) until it has stopped; a successor then
        # takes its place in the same step as it starts. A stopped keeper is not stuck: health
        # does not look at the retiring ones.
        self.retiring.update(retiring)
        results = await asyncio.gather(*(k.stop(revoke=k.target.revoke_on_exit) for k in retiring),
                                       return_exceptions=True)
        self.retiring.difference_update(retiring)
        for name in plan.removed:
            del keepers[name]
            daemon.metrics.remove_target(name)
        predecessors = {k.name: k for k in retiring}
        for keeper in plan.fresh.values():
            predecessor = predecessors.get(keeper.name)
            if predecessor is not None:  # a new secret or url must not reset the login spacing
                keeper.policy.inherit(predecessor.policy)
            # The retired keeper's last writes to the target's series are not the new one's state.
            _show(keeper.metrics, "starting", False)
            daemon.warn_tls(keeper.target)
            if self.closing:  # SIGTERM came during the reload: no new session at the upstream
                keepers[keeper.name] = keeper
            else:
                daemon.start_keeper(keeper)
        await self._start_new_proxies(plan)
        errors = [r for r in results if isinstance(r, BaseException)]
        for target in plan.kept:  # after the swap: one failing here leaves no target without keeper
            try:
                keepers[target.name].reconfigure(target)
            except Exception as exc:  # e.g. a file sink refused since it was checked
                errors.append(exc)
        if errors:  # the swap is done whatever failed; the failure is a bug to be logged
            raise errors[0]

    async def _start_new_proxies(self, plan: ReloadPlan) -> None:
        """Start the proxies a reload added or moved; one whose socket cannot be taken is logged."""
        daemon = self.daemon
        for name, (proxy, forwarder) in plan.proxies_new.items():
            if name in plan.proxies_deferred:
                try:
                    proxy.open(None, daemon.backlog)
                except ConfigError as exc:
                    log.error("proxy.start_failed", target=name, key=exc.key, error=str(exc))
                    continue
            daemon.proxies[name] = proxy
            await proxy.start(forwarder, daemon.backlog)


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
