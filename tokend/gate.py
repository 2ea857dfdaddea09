"""Accepting a connection on a consumer listener: the peer check, the connection limits, the handler.

Peers are checked once, when the connection is accepted (:class:`PeerGate`): a denied peer gets one
403 and is closed before any of its request is read, one over the limits of :class:`ConnectionSlots`
a 503. An admitted connection is handed to :class:`ConnectionHandler`, aiohttp's handler answering
what its parser refuses in the Error shape too. A proxy's listeners build on the same pieces.
"""

from __future__ import annotations

import asyncio
import math
import socket
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from tokend.errbody import error_body, raw_http_error
from tokend.logs import get_logger
from tokend.names import RequestOutcome
from tokend.peers import Peer, admits, denial_message, peer_of
from tokend.server import PROBE_RETRY_AFTER

if TYPE_CHECKING:
    from tokend.server import Hub

DENIAL_LOG_INTERVAL = 60.0
log = get_logger()


def refuse(transport: asyncio.BaseTransport, status: int, reason: str, body: bytes) -> None:
    """Answer a connection ``status`` ``reason`` with the Error ``body``, before any request is
    read, and close it."""
    assert isinstance(transport, asyncio.WriteTransport)
    transport.write(raw_http_error(status, reason, body))
    transport.close()


def hand_over(transport: asyncio.BaseTransport, handler: RequestHandler) -> None:
    """Make ``handler`` (aiohttp's) the protocol of an admitted connection from now on."""
    transport.set_protocol(handler)
    handler.connection_made(transport)


def runner_server(runner: web.BaseRunner) -> web.Server:
    """The aiohttp server of a set-up ``runner``, whose handlers the gate hands connections to."""
    server = runner.server
    assert server is not None
    return server


class ConnectionSlots:
    """The open connections of every consumer listener of one daemon, by uid (Unix sockets) or by
    peer address (a proxy's TCP listener): the total is shared.

    A connection is added at accept and removed when aiohttp's handler loses it, so counting
    costs O(1) however many are open (a thousand held watches, say).
    """

    def __init__(self) -> None:
        self._open: dict[int | str, set[asyncio.BaseTransport]] = {}
        self._total = 0

    def take(self, uid: int, transport: asyncio.BaseTransport, per_uid: int,
             total: int) -> str | None:
        """Count ``transport`` against ``uid`` and the total, or say why not (limits reached)."""
        return self._take(uid, "uid", "server.max_connections_per_uid", transport, per_uid, total)

    def take_address(self, address: str, transport: asyncio.BaseTransport, per_address: int,
                     total: int) -> str | None:
        """Count a TCP ``transport`` against its peer ``address`` and the total, or say why not."""
        return self._take(address, "address", "server.max_connections_per_uid, per address on TCP",
                          transport, per_address, total)

    def release(self, uid: int, transport: asyncio.BaseTransport) -> None:
        """``transport`` of ``uid`` is closed: its slot is free."""
        self._release(uid, transport)

    def release_address(self, address: str, transport: asyncio.BaseTransport) -> None:
        """A TCP ``transport`` from ``address`` is closed: its slot is free."""
        self._release(address, transport)

    def _take(self, who: int | str, kind: str, setting: str, transport: asyncio.BaseTransport,
              per_peer: int, total: int) -> str | None:
        mine = self._open.get(who, set())
        if len(mine) >= per_peer:
            return (f"{kind} {who} already has {len(mine)} connections open to tokend, the most"
                    f" one {kind} may have ({setting})")
        if self._total >= total:
            return (f"tokend already has {self._total} connections open, the most it accepts"
                    " (server.max_connections)")
        self._open.setdefault(who, mine).add(transport)
        self._total += 1
        return None

    def _release(self, who: int | str, transport: asyncio.BaseTransport) -> None:
        mine = self._open.get(who)
        if mine is not None and transport in mine:
            mine.remove(transport)
            self._total -= 1
            if not mine:
                del self._open[who]


class PeerGate:
    """Decides at accept time; remembers whom it denied, to log each uid once a minute.

    The gate of the §4 API socket. A proxy's socket has a gate of its own (a subclass): its own
    allow-lists, messages and counters, the same connection slots.
    """

    def __init__(self, hub: Hub, slots: ConnectionSlots | None = None) -> None:
        self.hub = hub
        self.slots = slots if slots is not None else ConnectionSlots()
        self._last_logged: dict[int, float] = {}
        self._last_limit_logged: dict[int, float] = {}

    def admit(self, peer: Peer) -> bool:
        """Whether ``peer`` may talk to the API (the allow-lists as currently loaded)."""
        return admits(self.hub.config.server, peer)

    def denial(self, peer: Peer) -> tuple[str, str]:
        """The message and remediation of the 403 a denied ``peer`` gets."""
        return denial_message(peer)

    def count(self, outcome: RequestOutcome) -> None:
        """Count a request answered at the door: ``forbidden``, ``unavailable`` or ``bad_request``."""
        self.hub.metrics.requests.counts[outcome] += 1

    def log_fields(self) -> dict[str, Any]:
        """Fields added to this gate's log lines (a proxy names its target)."""
        return {}

    def denied(self, peer: Peer) -> None:
        """Count and (rate-limited) log a denied peer."""
        self.count("forbidden")
        now = time.monotonic()
        if now - self._last_logged.get(peer.uid, -math.inf) >= DENIAL_LOG_INTERVAL:
            self._last_logged[peer.uid] = now
            if len(self._last_logged) > 4096:  # bounded, whatever uids come and go
                self._last_logged = {peer.uid: now}
            message, remediation = self.denial(peer)
            log.warning("consumer.denied", uid=peer.uid, gid=peer.gid, pid=peer.pid,
                        groups=sorted(peer.groups), message=message, remediation=remediation,
                        **self.log_fields())

    def take_slot(self, peer: Peer, transport: asyncio.BaseTransport) -> tuple[str, str] | None:
        """Count ``transport`` against its uid and the total, or say (message, remediation) why not."""
        server = self.hub.config.server
        why = self.slots.take(peer.uid, transport, server.max_connections_per_uid,
                              server.max_connections)
        if why is None:
            return None
        self.count("unavailable")
        now = time.monotonic()
        if now - self._last_limit_logged.get(peer.uid, -math.inf) >= DENIAL_LOG_INTERVAL:
            self._last_limit_logged[peer.uid] = now
            if len(self._last_limit_logged) > 4096:
                self._last_limit_logged = {peer.uid: now}
            log.warning("consumer.connection_limit", uid=peer.uid, pid=peer.pid, message=why,
                        **self.log_fields())
        return why, "Reuse one connection, or close idle ones; retry after Retry-After"


def peer_of_request(request: BaseRequest) -> Peer | None:
    """The peer a gated listener admitted this request's connection for (None elsewhere)."""
    protocol = request.protocol
    return protocol.peer if isinstance(protocol, ConnectionHandler) else None


class ConnectionHandler(RequestHandler):
    """aiohttp's connection handler, answering what its parser refuses in the Error shape too."""

    def __init__(self, server: web.Server, gate: PeerGate, peer: Peer | None = None) -> None:
        kwargs: dict[str, Any] = server._kwargs
        super().__init__(server, loop=asyncio.get_running_loop(), **kwargs)
        self._gate = gate
        self.peer = peer  # whom the gate admitted: the proxy logs the uid and hands it to logins

    def connection_lost(self, exc: BaseException | None) -> None:
        """Free the connection's slot, then let aiohttp clean up."""
        if self.peer is not None and self.transport is not None:
            self._gate.slots.release(self.peer.uid, self.transport)
        super().connection_lost(exc)

    def handle_error(self, request: BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """A request aiohttp could not parse (4xx), or a bug in a handler (500)."""
        if request.writer.output_size > 0:
            raise ConnectionError("the answer had begun; the connection is closed instead")
        if status >= 500:
            log.error("request.failed", path=request.path[:200], exc_info=exc)
            code, text = "INTERNAL_ERROR", "tokend failed to answer this request"
        else:
            # A consumer's malformed request: its problem, not an operator's, so not at error level.
            self._gate.count("bad_request")
            log.debug("request.malformed", status=status, error=str(message or exc)[:200])
            code, text = "BAD_REQUEST", f"malformed HTTP request ({message or exc})"[:300]
        headers = {"Retry-After": str(PROBE_RETRY_AFTER)} if status == 503 else None
        response = web.Response(status=status, body=error_body(code, text),
                                content_type="application/json", headers=headers)
        response.force_close()
        return response


class _GateProtocol(asyncio.Protocol):
    """The first protocol of every connection: admits it to aiohttp, or answers and closes.

    A peer outside the allow-lists gets 403; one over the connection limits gets 503.
    """

    def __init__(self, server: web.Server, gate: PeerGate) -> None:
        self._server = server
        self._gate = gate

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock: socket.socket | None = transport.get_extra_info("socket")
        try:
            peer = peer_of(sock) if sock is not None else None
        except OSError:
            peer = None
        if peer is None or not self._gate.admit(peer):
            if peer is not None:
                self._gate.denied(peer)
                message, remediation = self._gate.denial(peer)
            else:
                message, remediation = "peer credentials unavailable", ""
            refuse(transport, 403, "Forbidden", error_body("FORBIDDEN", message, remediation))
            return
        refused = self._gate.take_slot(peer, transport)
        if refused is not None:
            refuse(transport, 503, "Service Unavailable", error_body("TOO_MANY_CONNECTIONS", *refused))
            return
        hand_over(transport, ConnectionHandler(self._server, self._gate, peer))

    def data_received(self, data: bytes) -> None:
        """A denied peer's bytes: never read into a request."""


class GatedUnixSite(web.BaseSite):
    """Like aiohttp's SockSite for a bound Unix socket, with the peer check at accept."""

    def __init__(self, runner: web.BaseRunner, sock: socket.socket, gate: PeerGate,
                 backlog: int = 128) -> None:
        super().__init__(runner, backlog=backlog)
        self._sock = sock
        self._gate = gate

    @property
    def name(self) -> str:
        """The socket path, for aiohttp's logs."""
        return f"http://unix:{self._sock.getsockname()}:"

    async def start(self) -> None:
        """Listen on the already-bound socket."""
        await super().start()
        server, gate = runner_server(self._runner), self._gate
        self._server = await asyncio.get_running_loop().create_unix_server(
            lambda: _GateProtocol(server, gate), sock=self._sock, backlog=self._backlog)
