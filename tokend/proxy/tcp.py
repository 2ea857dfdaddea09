"""A proxy's HTTPS listener over TCP, for tools that cannot use a Unix socket (SPEC §9.7).

What it guarantees:

- TLS 1.2 or later (:func:`tokend.proxy.tlsgen.server_context`), with the operator's
  ``tls_cert_file``/``tls_key_file`` or a certificate generated under ``state_dir`` (the CA written
  to ``<state_dir>/proxy-ca.pem``); either is re-read when its files change
  (:class:`~tokend.proxy.tlsgen.CertReloader`), new handshakes get the new certificate.
- The TLS handshake must finish within the header deadline (:data:`tokend.server.IDLE_TIMEOUT`);
  then the request line and headers have that deadline again, as on the Unix sockets.
- Connections count against the daemon's limits per peer address (``max_connections_per_uid``
  applied to each address) and in total, together with the Unix sockets'; one over them is
  answered 503 and closed.
- Each connection's handler carries its :class:`~tokend.proxy.seams.Caller` (``via="tcp"`` and the
  peer's address, never ``X-Forwarded-For``): the facade needs a local token on every request.

The socket is bound in :meth:`TcpListener.open`, with the Unix socket, before any login, so an
address in use fails start-up (exit 2) rather than a running daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from tokend.config import ProxyConfig
from tokend.errbody import error_body
from tokend.errors import ConfigError
from tokend.gate import ConnectionHandler, hand_over, refuse, runner_server
from tokend.listen import bind_tcp
from tokend.logs import get_logger
from tokend.proxy.seams import Caller
from tokend.proxy.tlsgen import CertReloader, TlsFiles, ensure_material
from tokend.server import IDLE_TIMEOUT

if TYPE_CHECKING:
    from tokend.proxy.gate import ProxyGate

#: Seconds a TLS connection may take to close cleanly before it is cut.
TLS_SHUTDOWN_TIMEOUT = 5.0
log = get_logger()


class TcpListener:
    """One proxy's HTTPS listener: its TLS material and its bound socket."""

    def __init__(self, config: ProxyConfig, tls: CertReloader, state_dir: Path,
                 ca_file: Path | None) -> None:
        self.config = config
        self.tls = tls
        self.state_dir = state_dir
        self.ca_file = ca_file  # the CA consumers trust, when tokend made the certificate
        self.address: str | None = None  # HOST:PORT once bound (the port the kernel chose for 0)
        self._sock: socket.socket | None = None

    @classmethod
    def prepare(cls, config: ProxyConfig, state_dir: Path, now: float) -> TcpListener:
        """Load (or make) the certificate of ``config``'s listener; ``now`` is the wall clock.

        Raises ConfigError naming ``tls_cert_file`` (files that do not load) or
        ``server.state_dir`` (material that cannot be made there).
        """
        if config.tls_cert_file is not None and config.tls_key_file is not None:
            tls = CertReloader(config.tls_cert_file, config.tls_key_file,
                               config_key=config.key("tls_cert_file"))
            return cls(config, tls, state_dir, None)
        files = _material(config, state_dir, now)
        tls = CertReloader(files.cert_file, files.key_file, config_key="server.state_dir")
        return cls(config, tls, state_dir, files.ca_file)

    def open(self, backlog: int) -> None:
        """Bind and listen on ``listen``. Raises ConfigError naming ``proxies[N].listen``."""
        assert self.config.listen is not None
        sock = bind_tcp(*self.config.listen, self.config.key("listen"), backlog)
        bound = sock.getsockname()
        self.address = f"[{bound[0]}]:{bound[1]}" if ":" in bound[0] else f"{bound[0]}:{bound[1]}"
        self._sock = sock

    def site(self, runner: web.BaseRunner, gate: ProxyGate, backlog: int) -> TcpSite:
        """The aiohttp site serving the bound socket."""
        assert self._sock is not None, "open the listener first"
        return TcpSite(runner, self._sock, self.tls, gate, backlog)

    def close(self) -> None:
        """Close the socket (a no-op once its server closed it)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def check_files(self, regenerate: bool = False) -> None:
        """Re-read the certificate and key if they changed (every 30 s and on SIGHUP); with
        ``regenerate`` (SIGHUP), generated material close to expiry is made anew first."""
        try:
            if regenerate and self.ca_file is not None:
                _material(self.config, self.state_dir, time.time())
            if self.tls.reload_if_changed():
                log.info("proxy.files_reloaded", target=self.config.target,
                         key=self.tls.config_key)
        except ConfigError as exc:
            log.error("proxy.files_reload_failed", target=self.config.target, key=exc.key,
                      error=str(exc), action="the last good certificate keeps serving")


def listener_key(config: ProxyConfig, state_dir: Path) -> tuple[object, ...]:
    """The settings of a TCP listener; a reload that changes them restarts it (SPEC §9.8)."""
    generated = config.tls_cert_file is None
    return (config.listen, config.tls_cert_file, config.tls_key_file, config.tls_names,
            state_dir if generated and config.listen is not None else None)


def _material(config: ProxyConfig, state_dir: Path, now: float) -> TlsFiles:
    files = ensure_material(state_dir, config.tls_names, now=now, config_key="server.state_dir",
                            names_key=config.key("tls_names"))
    if files.generated:
        log.warning("proxy.tls_generated", target=config.target, ca_file=str(files.ca_file),
                    action="consumers must trust this new CA (SSL_CERT_FILE, --cacert,"
                           " REQUESTS_CA_BUNDLE)")
    return files


class TcpHandler(ConnectionHandler):
    """aiohttp's connection handler for one TCP connection, knowing who is on the other end."""

    def __init__(self, server: web.Server, gate: ProxyGate, caller: Caller) -> None:
        super().__init__(server, gate)
        self.caller = caller  # read by tokend.proxy.gate.caller_of

    def connection_lost(self, exc: BaseException | None) -> None:
        """Free the connection's slot of its address, then let aiohttp clean up."""
        if self.caller.address is not None and self.transport is not None:
            self._gate.slots.release_address(self.caller.address, self.transport)
        super().connection_lost(exc)


class _AddressGate(asyncio.Protocol):
    """The first protocol of every TLS connection, once its handshake is done: admits it to
    aiohttp under the per-address limits, or answers 503 and closes."""

    def __init__(self, server: web.Server, gate: ProxyGate) -> None:
        self._server = server
        self._gate = gate

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"
        refused = self._gate.take_address(address, transport)
        if refused is not None:
            refuse(transport, 503, "Service Unavailable", error_body("TOO_MANY_CONNECTIONS", *refused))
            return
        hand_over(transport, TcpHandler(self._server, self._gate, Caller("tcp", address=address)))

    def data_received(self, data: bytes) -> None:
        """Bytes of a connection refused at the door: never read into a request."""


class TcpSite(web.BaseSite):
    """An aiohttp site for a bound TCP socket, with TLS and the per-address limits."""

    def __init__(self, runner: web.BaseRunner, sock: socket.socket, tls: CertReloader,
                 gate: ProxyGate, backlog: int = 128) -> None:
        super().__init__(runner, backlog=backlog)
        self._sock = sock
        self._tls = tls
        self._gate = gate

    @property
    def name(self) -> str:
        """The listening address, for aiohttp's logs."""
        with contextlib.suppress(OSError):
            host, port = self._sock.getsockname()[:2]
            return f"https://{host}:{port}"
        return "https://(closed)"

    async def start(self) -> None:
        """Serve the socket: TLS first (within the header deadline), then the gate."""
        await super().start()
        server, gate = runner_server(self._runner), self._gate
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _AddressGate(server, gate), sock=self._sock, backlog=self._backlog,
            ssl=self._tls.context, ssl_handshake_timeout=IDLE_TIMEOUT,
            ssl_shutdown_timeout=TLS_SHUTDOWN_TIMEOUT)
