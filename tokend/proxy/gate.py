"""The door of a proxy's listeners: who may connect, and who sent a request (SPEC §9.4).

A proxy's Unix socket is gated like the API socket (:class:`tokend.gate.PeerGate`) with the
proxy's own allow-lists and counters and the daemon's shared connection slots; its TCP listener
(the facade's) counts connections per address instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from tokend.gate import ConnectionSlots, PeerGate, peer_of_request
from tokend.logs import get_logger
from tokend.peers import Peer, admits, denial_message
from tokend.proxy.seams import Caller
from tokend.server import Hub

if TYPE_CHECKING:
    from tokend.proxy.app import Proxy

LIMIT_LOG_INTERVAL = 60.0  # proxy.connection_limit: at most once a minute per address
log = get_logger()


class ProxyGate(PeerGate):
    """The gate of a proxy's socket: its own allow-lists and counters, the daemon's slots."""

    def __init__(self, hub: Hub, proxy: Proxy, slots: ConnectionSlots) -> None:
        super().__init__(hub, slots)
        self.proxy = proxy
        self._limit_logged_by_address: dict[str, float] = {}

    def admit(self, peer: Peer) -> bool:
        """This proxy's allow-lists, as currently loaded."""
        return admits(self.proxy.config, peer)

    def denial(self, peer: Peer) -> tuple[str, str]:
        """The 403 names this proxy's keys."""
        return denial_message(peer, f"proxies[{self.proxy.config.index}]")

    def count(self, outcome: str) -> None:
        """Answers at the door: a 503 over the connection limits, else refused."""
        self.proxy.metrics.request("unavailable" if outcome == "unavailable" else "refused")

    def log_fields(self) -> dict[str, Any]:
        """Lines of a proxy's gate name its target and socket."""
        return {"target": self.proxy.name, "socket": str(self.proxy.socket_path)}

    def take_address(self, address: str,
                     transport: asyncio.BaseTransport) -> tuple[str, str] | None:
        """A TCP connection from ``address``: counted, or (message, remediation) why not."""
        server = self.hub.config.server
        why = self.slots.take_address(address, transport, server.max_connections_per_uid,
                                      server.max_connections)
        if why is None:
            return None
        self.count("unavailable")
        now = time.monotonic()
        logged = self._limit_logged_by_address
        if now - logged.get(address, -math.inf) >= LIMIT_LOG_INTERVAL:
            if len(logged) > 4096:  # bounded, whatever addresses come and go
                logged.clear()
            logged[address] = now
            log.warning("proxy.connection_limit", target=self.proxy.name, address=address,
                        message=why)
        return why, "Reuse one connection, or close idle ones; retry after Retry-After"


def caller_of(request: web.BaseRequest) -> Caller:
    """Who sent ``request``: set by the listener on its connection handler (``caller``), or, on a
    gated Unix socket, the admitted peer."""
    protocol = request.protocol
    caller = getattr(protocol, "caller", None)
    if isinstance(caller, Caller):
        return caller
    caller = Caller("unix", peer=peer_of_request(request))
    with contextlib.suppress(AttributeError):  # aiohttp's own handler has __slots__
        protocol.caller = caller  # type: ignore[attr-defined]  # once per connection
    return caller
