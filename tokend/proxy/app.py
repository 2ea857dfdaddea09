"""One proxy running: its Unix socket, its gate, its routes, its forwarder, and its life.

The socket is taken like the API socket (:mod:`tokend.listen`: mode at creation, ``flock``, a stale
file replaced; or systemd's, matched by ``FileDescriptorName=`` = the target's name) and guarded
by the same gate (:mod:`tokend.gate`): a peer outside this proxy's allow-lists gets one 403 at
accept, connections count against the daemon's shared limits, the request line and headers must
arrive within the idle deadline. Request bodies are not capped here: forwarded bodies stream.

Every request: the method and the request target are checked and canonicalised
(:mod:`~tokend.proxy.canon`); a path under ``/v1/tokens`` goes to the :class:`LocalLogin` and is
never forwarded; anything else needs an identity from the :class:`Authorizer` and is forwarded
(:mod:`~tokend.proxy.forward`). A proxy socket never serves the §4 endpoints: ``/v1/token`` is
forwarded like any other path (the SDDC Manager answers it).

Life: :meth:`Proxy.open` takes the socket (a second tokend fails here, before any login),
:meth:`Proxy.start` serves, :meth:`Proxy.stop` stops accepting, lets requests in flight finish (at
most :data:`STOP_GRACE`), closes the pool and removes the socket. The facade's HTTPS listener
(:mod:`~tokend.proxy.tcp`) is another site on the same runner, bound and closed with the socket;
its connections carry a TCP :class:`Caller`. Every 30 s (and on SIGHUP, :meth:`Proxy.check_files`)
the files the proxy's parts watch are re-read: the target's ``ca_file``, the session keys, the
users file, the listener's certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from tokend.config import ProxyConfig, TargetConfig
from tokend.errbody import error_response
from tokend.errors import ConfigError
from tokend.gate import ConnectionSlots, GatedUnixSite
from tokend.listen import SocketLock, bind_unix
from tokend.logs import debug_enabled, get_logger
from tokend.metrics import ProxyMetrics
from tokend.proxy.answers import Forwarded
from tokend.proxy.canon import (
    MUTATING_METHODS,
    Refused,
    RequestTarget,
    check_method,
    is_token_path,
    parse_request_target,
    route_key,
)
from tokend.proxy.forward import Forwarder
from tokend.proxy.gate import ProxyGate, caller_of
from tokend.proxy.seams import (
    CREATE,
    REFRESH,
    REVOKE,
    Authorizer,
    Caller,
    FileWatcher,
    LocalLogin,
    NoLocalLogin,
    UnixPeers,
)
from tokend.proxy.tcp import TcpListener
from tokend.server import IDLE_TIMEOUT, Hub
from tokend.trust import read_ca_file
from tokend.values import group_id

STOP_GRACE = 5.0  # the default of [server] shutdown_timeout: requests in flight may finish within it
TRUST_CHECK_INTERVAL = 30.0  # ca_file is re-read like the keeper's (SPEC §8.8); so are the
# facade's files (SPEC §9.3, §9.7)
log = get_logger()


class Proxy:
    """One ``[[proxies]]`` table at work."""

    def __init__(self, config: ProxyConfig, hub: Hub, slots: ConnectionSlots,
                 metrics: ProxyMetrics, login: LocalLogin | None = None,
                 authorizer: Authorizer | None = None,
                 listener: TcpListener | None = None) -> None:
        self.config = config
        self.name = config.target
        self.hub = hub
        self.metrics = metrics
        self.login: LocalLogin = login if login is not None else NoLocalLogin()
        self.authorizer: Authorizer = authorizer if authorizer is not None else UnixPeers()
        self.listener = listener  # the HTTPS listener over TCP, if ``listen`` is set
        self.forwarder: Forwarder | None = None
        self.socket_path: Path | None = None  # the file tokend created (None: systemd's)
        self._slots = slots
        self._sock: socket.socket | None = None
        self._lock: SocketLock | None = None
        self._runner: web.ServerRunner | None = None
        self._retired: list[Forwarder] = []
        self._closing: set[asyncio.Task[None]] = set()
        self._trust_task: asyncio.Task[None] | None = None

    # -- life -----------------------------------------------------------------------------------

    def open(self, activated: socket.socket | None = None, backlog: int = 128) -> None:
        """Take the socket: systemd's ``activated`` one, or lock and bind ``socket``.

        Raises ConfigError naming ``proxies[N].socket`` (a live tokend holds it, the directory is
        missing, the group does not exist) or ``proxies[N].listen`` (the address is taken); what
        was taken before the failure is given back.
        """
        self._open_unix(activated, backlog)
        if self.listener is not None:
            try:
                self.listener.open(backlog)
            except BaseException:
                self.discard()
                raise

    def _open_unix(self, activated: socket.socket | None, backlog: int) -> None:
        if activated is not None:
            if self.config.socket_mode_set:
                log.warning("config.ignored", key=self.config.key("socket_mode/socket_group"),
                            reason="the socket comes from systemd: set SocketMode=/SocketGroup="
                                   " in its socket unit instead")
            self._sock = activated
            return
        path = self.config.socket
        if path is None:
            return  # a TCP-only proxy (the facade's listener)
        key = self.config.key("socket")
        lock = SocketLock(path, key)
        lock.acquire()
        try:
            self._sock = bind_unix(path, self.config.socket_mode, self.config.socket_group,
                                   backlog, key)
        except BaseException:
            lock.release()
            raise
        self._lock = lock
        self.socket_path = path

    def build_forwarder(self, target: TargetConfig, config: ProxyConfig | None = None) -> Forwarder:
        """A forwarder for ``target`` with this proxy's pool settings (or ``config``'s).

        Raises ConfigError naming the target's ``ca_file`` when it cannot be read or loaded.
        """
        ca_pem = None
        if target.ca_file is not None and target.verify_tls and not target.tls_fingerprint:
            ca_pem = read_ca_file(target.ca_file, target.key("ca_file"))
        return Forwarder(target, config or self.config, self.metrics, ca_pem)

    def discard(self) -> None:
        """Give back the sockets :meth:`open` took for a proxy that will never start."""
        if self.listener is not None:
            self.listener.close()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self.socket_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
            self.socket_path = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    async def start(self, forwarder: Forwarder, backlog: int = 128) -> None:
        """Serve on the socket taken by :meth:`open`, forwarding with ``forwarder``."""
        self.forwarder = forwarder
        server = web.Server(self._handle, handler_cancellation=True, access_log=None,
                            keepalive_timeout=IDLE_TIMEOUT)
        runner = web.ServerRunner(server, handle_signals=False,
                                  shutdown_timeout=self.hub.config.server.shutdown_timeout)
        await runner.setup()
        self._runner = runner
        gate = ProxyGate(self.hub, self, self._slots)
        if self._sock is not None:
            await GatedUnixSite(runner, self._sock, gate, backlog).start()
        listener = self.listener
        if listener is not None:
            await self.add_site(lambda r: listener.site(r, gate, backlog))
        self._trust_task = asyncio.create_task(self._check_trust_now_and_then(),
                                               name=f"proxy-trust:{self.name}")
        fields: dict[str, Any] = {"target": self.name, "socket": self._socket_name()}
        if listener is not None:
            fields["listen"] = listener.address
            if listener.ca_file is not None:
                fields["ca_file"] = str(listener.ca_file)
        log.info("proxy.started", **fields)

    async def add_site(self, make_site: Any) -> None:
        """Serve this proxy on one more listener: ``make_site(runner)`` returns an aiohttp site.

        The facade's TCP listener comes in here: a site whose protocol sets ``caller`` (a
        :class:`Caller` with ``via="tcp"``) on each connection's request handler, with this
        proxy's :attr:`authorizer` requiring a local access token on it.
        """
        assert self._runner is not None, "start the proxy first"
        await make_site(self._runner).start()

    async def stop(self) -> None:
        """Stop accepting; let requests in flight finish (STOP_GRACE); close; remove the socket."""
        if self._trust_task is not None:
            self._trust_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._trust_task
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            log.info("proxy.stopped", target=self.name, socket=self._socket_name())
        elif self._sock is not None:
            self._sock.close()  # opened by a reload that never started it
        self._sock = None
        if self.listener is not None:
            self.listener.close()
        for forwarder in [*self._retired, *([self.forwarder] if self.forwarder else [])]:
            await forwarder.close()
        self._retired.clear()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        if self.socket_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def reconfigure(self, config: ProxyConfig, forwarder: Forwarder | None,
                    login: LocalLogin | None = None, authorizer: Authorizer | None = None) -> None:
        """SIGHUP with the same socket path and listener: new allow-lists at once, the socket's
        mode and group set on the file, ``forwarder`` (if new) for the requests from now on, and
        the facade's ``login`` and ``authorizer`` (if given) for the next requests."""
        old = self.config
        self.config = config
        if login is not None:
            self.login = login
        if authorizer is not None:
            self.authorizer = authorizer
        if self.listener is not None:
            self.listener.config = config
        if self.socket_path is not None and (config.socket_mode, config.socket_group) != (
                old.socket_mode, old.socket_group):
            self._set_mode(config)
        if forwarder is not None:
            self.use(forwarder)

    def use(self, forwarder: Forwarder) -> None:
        """Forward with ``forwarder`` from now on; the old one closes once its requests are done."""
        if self.forwarder is not None and self.forwarder is not forwarder:
            self._retired.append(self.forwarder)
        self.forwarder = forwarder
        self._close_idle()

    def _set_mode(self, config: ProxyConfig) -> None:
        assert self.socket_path is not None
        try:
            if config.socket_group is not None:
                os.chown(self.socket_path, -1, group_id(config.socket_group,
                                                        config.key("socket_group")))
            os.chmod(self.socket_path, config.socket_mode)
        except (OSError, ConfigError) as exc:
            log.error("proxy.start_failed", target=self.name, key=config.key("socket_mode"),
                      error=f"cannot set the socket's mode or group: {exc}")

    def _close_idle(self) -> None:
        loop = asyncio.get_running_loop()
        for forwarder in [f for f in self._retired if f.in_flight == 0]:
            self._retired.remove(forwarder)
            task = loop.create_task(forwarder.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def check_files(self, regenerate: bool = False) -> None:
        """Re-read what the login, the authorizer and the listener watch, if it changed; with
        ``regenerate`` (SIGHUP), generated TLS material near its expiry is made anew."""
        seen: list[object] = []
        for part in (self.login, self.authorizer, self.listener):
            if isinstance(part, FileWatcher) and not any(part is s for s in seen):
                seen.append(part)
                part.check_files(regenerate)

    async def _check_trust_now_and_then(self) -> None:
        """Re-read the target's ``ca_file``; a changed one gets a new forwarder (SPEC §8.8).
        The facade's files too (:meth:`check_files`)."""
        while True:
            await asyncio.sleep(TRUST_CHECK_INTERVAL)
            self.check_files()
            self._close_idle()
            current = self.forwarder
            if current is None:
                continue
            target = current.target
            if target.ca_file is None or not target.verify_tls or target.tls_fingerprint:
                continue
            try:
                pem = read_ca_file(target.ca_file, target.key("ca_file"))
                if pem != current.ca_pem:
                    self.use(Forwarder(target, self.config, self.metrics, pem))
            except ConfigError:
                continue  # the keeper reports it (tls.trust_reload_failed); the old one is kept

    def _socket_name(self) -> str:
        if self.socket_path is not None:
            return str(self.socket_path)
        return f"{self.config.socket} (from systemd)" if self._sock is not None else ""

    # -- requests -------------------------------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.monotonic()
        caller = caller_of(request)
        try:
            check_method(request.method)
            # raw_path is the request target exactly as on the request line: aiohttp keeps an
            # absolute-form or authority-form target there (its rel_url would hide it).
            route = parse_request_target(request.raw_path)
        except Refused as exc:
            answer = error_response(400, "BAD_REQUEST", str(exc),
                                    "Send an origin-form request (METHOD /path HTTP/1.1) with one"
                                    " of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS")
            answer.force_close()  # after CONNECT or an odd target, the framing is not to be trusted
            return self._done(request, None, caller.who,
                              Forwarded(answer, 400, "refused", str(exc)), started)
        if is_token_path(route.path):
            return await self._token_endpoint(request, route, caller, started)
        who = await self.authorizer.authorize(request, caller)
        if who is None:
            answer = error_response(401, "Unauthorized", "this request carries no valid local"
                                    " access token for this proxy",
                                    "Log in with POST /v1/tokens and send the access token as"
                                    " Authorization: Bearer")
            return self._done(request, route, caller.who,
                              Forwarded(answer, 401, "unauthorized"), started)
        forwarder = self.forwarder
        assert forwarder is not None
        try:
            result = await forwarder.forward(request, route, self.hub.keepers.get(self.name))
        except asyncio.CancelledError:
            # The consumer went away (or tokend is stopping): what was sent may have been acted on.
            self._log(request, route, who, None, "abandoned", started)
            raise
        finally:
            if forwarder is not self.forwarder:
                self._close_idle()
        return self._done(request, route, who, result, started)

    async def _token_endpoint(self, request: web.BaseRequest, route: RequestTarget,
                              caller: Caller, started: float) -> web.StreamResponse:
        endpoints = {CREATE: self.login.create, REFRESH: self.login.refresh,
                     REVOKE: self.login.revoke}
        key = route_key(route.path)
        methods = [method for path, method in endpoints if path == key]
        if not methods:
            answer = error_response(404, "NOT_FOUND", f"no such token endpoint: {route.path[:100]}",
                                    "The token endpoints are POST /v1/tokens, PATCH"
                                    " /v1/tokens/access-token/refresh and DELETE"
                                    " /v1/tokens/refresh-token")
            return self._done(request, route, caller.who, Forwarded(answer, 404, "refused"),
                              started)
        if request.method not in methods:
            answer = error_response(405, "METHOD_NOT_ALLOWED",
                                    f"{request.method} is not allowed on {route.path[:100]}",
                                    f"Use {methods[0]}", headers={"Allow": methods[0]})
            return self._done(request, route, caller.who, Forwarded(answer, 405, "refused"),
                              started)
        local = await endpoints[(key, request.method)](request, caller)
        self._log(request, route, caller.who, local.status, "local", started)
        return local

    def _done(self, request: web.BaseRequest, route: RequestTarget | None, who: str,
              result: Forwarded, started: float) -> web.StreamResponse:
        self.metrics.request(result.outcome)
        self._log(request, route, who, result.status, result.outcome, started, result.error)
        return result.response

    def _log(self, request: web.BaseRequest, route: RequestTarget | None, who: str,
             status: int | None, outcome: str, started: float, error: str | None = None) -> None:
        """``proxy.request``: debug, mutating methods at info (the upstream's own audit log sees
        only tokend's account). The path is canonical, without the query; bodies never."""
        if request.method not in MUTATING_METHODS and not debug_enabled():
            return  # about 40 µs a request, for a line that would be dropped
        method = request.method if len(request.method) <= 20 else request.method[:20]
        fields: dict[str, Any] = {
            "target": self.name, "method": method,
            "path": route.path[:300] if route is not None else None,
            "status": status, "outcome": outcome, "who": who,
            "duration": round(time.monotonic() - started, 4),
        }
        if error:
            fields["error"] = error
        if method in MUTATING_METHODS:
            log.info("proxy.request", **fields)
        else:
            log.debug("proxy.request", **fields)


def descriptors_needed(max_connections: int, proxies: list[ProxyConfig], targets: int) -> int:
    """File descriptors tokend may need at once: every consumer connection, every proxy's pool,
    a keeper's connections per target, and room for the listeners, logs and lock files."""
    return max_connections + sum(p.max_upstream_connections for p in proxies) + 2 * targets + 64
