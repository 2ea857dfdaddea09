"""The consumer API on the Unix socket, and the TCP listener for metrics and probes.

Peers are checked once, when the connection is accepted: a denied peer gets one 403 and is closed
before any of its request is read. Token answers are pre-rendered per token (see ServedToken), so
the hot path is a dict lookup, a clock read and a byte concatenation.
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, Protocol

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from prometheus_client.aiohttp import make_aiohttp_handler

from tokend.config import Config
from tokend.errbody import error_body, error_response, raw_http_error
from tokend.keeper import Keeper
from tokend.logs import get_logger
from tokend.metrics import Metrics
from tokend.names import ERROR_OUTCOME, RequestOutcome
from tokend.peers import Peer, admits, denial_message, peer_of
from tokend.serving import ServeError
from tokend.watch import Watches, parse_after, parse_wait

MAX_BODY = 4096
DENIAL_LOG_INTERVAL = 60.0
# The request line and headers must arrive within this, and an idle keep-alive connection is closed
# after it (aiohttp's keep-alive timer runs from accept and between requests).
IDLE_TIMEOUT = 10.0
# Open connections of one uid, and in all, are [server] max_connections_per_uid and max_connections:
# one uid cannot starve another, nor tokend of descriptors (SPEC §8).
# Every 503 tokend generates says when to ask again (SPEC §8.6); a probe's answer can change at the
# keepers' next step, and the systemd STATUS= lines are sent at this interval too.
PROBE_RETRY_AFTER = 5
log = get_logger()


class Hub(Protocol):
    """What the servers need from the daemon."""

    config: Config
    keepers: dict[str, Keeper]
    metrics: Metrics

    def healthy(self, now: float) -> bool:
        """True while the loop and every keeper make progress."""

    def ready(self, now: float, target: str | None) -> bool:
        """True when every target (or ``target``) holds a valid token."""

    def status(self) -> dict[str, Any]:
        """The ``GET /v1/status`` document."""


HUB = web.AppKey("hub", Hub)
WATCHES = web.AppKey("watches", Watches)


# -- the Unix-socket API -----------------------------------------------------------------------
#
# No middleware: each route is wrapped once, at start, by _api, which checks the method and renders
# errors. aiohttp's middleware chain would add a few microseconds to every request.

Route = Callable[[web.Request, Hub], Awaitable[web.Response]]


def socket_app(hub: Hub) -> web.Application:
    """The consumer API of SPEC §4."""
    app = web.Application(client_max_size=MAX_BODY)
    app[HUB] = hub
    watches = app[WATCHES] = Watches()

    async def answer_watches(app: web.Application) -> None:
        # aiohttp runs on_shutdown after the listener closed and before it waits (up to the
        # shutdown grace) for in-flight requests: held watches are answered now, not cut then.
        watches.close()

    app.on_shutdown.append(answer_watches)
    routes: list[tuple[str, str, Route]] = [
        ("GET", "/v1/token", _default_token),
        ("GET", "/v1/targets/{name}/token", _target_token),
        ("POST", "/v1/targets/{name}/invalidate", _invalidate),
        ("POST", "/v1/invalidate", _default_invalidate),
        ("GET", "/v1/status", _status),
        ("GET", "/healthz", _healthz),
        ("GET", "/readyz", _readyz_socket),
    ]
    for method, path, route in routes:
        app.router.add_route("*", path, _api(hub, method, route))
    app.router.add_route("*", "/{anything:.*}", _api(hub, "", _not_found))
    return app


def _api(hub: Hub, method: str, route: Route) -> Callable[[web.Request], Awaitable[web.Response]]:
    """``route`` for ``method`` (GET also answers HEAD), with errors in the Error shape."""
    methods = {method, "HEAD"} if method == "GET" else {method}
    counts = hub.metrics.requests.counts

    async def handle(request: web.Request) -> web.Response:
        if method and request.method not in methods:
            return error_response(405, "METHOD_NOT_ALLOWED",
                                  f"{request.method[:20]} is not allowed here",
                                  f"Use {method}", headers={"Allow": ", ".join(sorted(methods))})
        try:
            return await route(request, hub)
        except ServeError as err:
            counts[ERROR_OUTCOME[err.code]] += 1
            return error_response(err.status, err.code, err.message, err.remediation,
                                  err.reference_token, err.retry_after)
        except web.HTTPException as exc:  # 413 from reading an oversized body
            if exc.status < 400:
                raise
            counts["bad_request"] += 1
            code = "PAYLOAD_TOO_LARGE" if exc.status == 413 else "BAD_REQUEST"
            return error_response(exc.status, code, exc.reason)

    return handle


async def _not_found(request: web.Request, hub: Hub) -> web.Response:
    raise ServeError(404, "NOT_FOUND", f"no such endpoint: {request.path[:100]}",
                     "See GET /v1/token, /v1/targets/NAME/token, /v1/status; POST /v1/invalidate")


def _keeper(hub: Hub, name: str) -> Keeper:
    keeper = hub.keepers.get(name)
    if keeper is None:
        names = ", ".join(sorted(hub.keepers))
        raise ServeError(404, "TARGET_NOT_FOUND", f"no target named '{name[:100]}'",
                         f"Use one of: {names}")
    return keeper


class Watch(NamedTuple):
    """``?after=FP&wait=S`` of a token request (SPEC §10.1)."""

    after: str
    wait: float


def _query(request: web.Request) -> tuple[bool, float | None, Watch | None]:
    """(raw?, min_ttl, watch) from the query string; 400 on a bad value."""
    if not request.query_string:
        return False, None, None  # the common case: no parsing at all
    query = request.query
    fmt = query.get("format", "json")
    if fmt not in ("json", "raw"):
        raise ServeError(400, "BAD_REQUEST", f"format must be 'json' or 'raw', not {fmt[:40]!r}")
    min_ttl: float | None = None
    if "min_ttl" in query:
        text = query["min_ttl"]
        try:
            min_ttl = float(text)
        except ValueError:
            min_ttl = math.nan
        if not math.isfinite(min_ttl) or min_ttl < 0:
            raise ServeError(400, "BAD_REQUEST",
                             f"min_ttl must be a number of seconds >= 0, not {text[:40]!r}")
    watch: Watch | None = None
    if "after" in query:
        if min_ttl is not None:
            raise ServeError(400, "BAD_REQUEST", "min_ttl and after cannot be combined",
                             "Watch with after, then ask for min_ttl if the new token is short")
        watch = Watch(parse_after(query["after"]), parse_wait(query.get("wait")))
    elif "wait" in query:
        raise ServeError(400, "BAD_REQUEST", "wait is only meaningful with after",
                         "Add after=<the fingerprint you hold>, or drop wait")
    return fmt == "raw", min_ttl, watch


async def _answer_token(request: web.Request, hub: Hub, keeper: Keeper) -> web.Response:
    raw, min_ttl, watch = _query(request)
    if watch is None:
        served = await keeper.token(min_ttl)
    else:
        served = await request.app[WATCHES].watch(keeper, watch.after, watch.wait)
    hub.metrics.requests.counts["served"] += 1
    if raw:
        return web.Response(body=served.raw, content_type="text/plain")
    return web.Response(body=served.json(time.monotonic()), content_type="application/json")


async def _default_token(request: web.Request, hub: Hub) -> web.Response:
    return await _answer_token(request, hub, _keeper(hub, hub.config.default_target))


async def _target_token(request: web.Request, hub: Hub) -> web.Response:
    return await _answer_token(request, hub, _keeper(hub, request.match_info["name"]))


async def _invalidate(request: web.Request, hub: Hub) -> web.Response:
    return await _answer_invalidate(request, hub, _keeper(hub, request.match_info["name"]))


async def _default_invalidate(request: web.Request, hub: Hub) -> web.Response:
    return await _answer_invalidate(request, hub, _keeper(hub, hub.config.default_target))


async def _answer_invalidate(request: web.Request, hub: Hub, keeper: Keeper) -> web.Response:
    try:
        # Headers are bounded by the keep-alive timer; a body trickled in byte by byte is not.
        body = await asyncio.wait_for(request.read(), IDLE_TIMEOUT)
    except TimeoutError:
        raise ServeError(408, "BAD_REQUEST", f"the request body did not arrive within"
                         f" {IDLE_TIMEOUT:g} s") from None
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: deep nesting
        data = None
    fp = data.get("fingerprint") if isinstance(data, dict) else None
    if not isinstance(fp, str) or not fp.startswith("sha256:"):
        raise ServeError(400, "BAD_REQUEST",
                         'the body must be {"fingerprint": "sha256:<hex>"} of the refused token',
                         "Send the fingerprint field of the token JSON you were served")
    served = await keeper.invalidate(fp)
    hub.metrics.requests.counts["served"] += 1
    return web.Response(body=served.json(time.monotonic()), content_type="application/json")


async def _status(request: web.Request, hub: Hub) -> web.Response:
    return web.json_response(hub.status())


def _probe_answer(ok: bool, good: str, bad: str) -> web.Response:
    """A probe's plain-text answer: 200 ``good``, or 503 ``bad`` with ``Retry-After``."""
    if ok:
        return web.Response(text=good)
    return web.Response(status=503, text=bad, headers={"Retry-After": str(PROBE_RETRY_AFTER)})


async def _healthz(request: web.Request, hub: Hub) -> web.Response:
    return _probe_answer(hub.healthy(time.monotonic()), "ok\n", "unhealthy\n")


async def _readyz_socket(request: web.Request, hub: Hub) -> web.Response:
    target = request.query.get("target")
    if target is not None and target not in hub.keepers:
        raise ServeError(404, "TARGET_NOT_FOUND", f"no target named '{target[:100]}'")
    if hub.ready(time.monotonic(), target):
        return web.Response(text="ready\n")
    return web.json_response(hub.status(), status=503,
                             headers={"Retry-After": str(PROBE_RETRY_AFTER)})


# -- accepting connections ---------------------------------------------------------------------


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
    return protocol.peer if isinstance(protocol, _Handler) else None


class _Handler(RequestHandler):
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
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(raw_http_error(403, "Forbidden",
                                           error_body("FORBIDDEN", message, remediation)))
            transport.close()
            return
        refused = self._gate.take_slot(peer, transport)
        if refused is not None:
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(raw_http_error(503, "Service Unavailable",
                                           error_body("TOO_MANY_CONNECTIONS", *refused)))
            transport.close()
            return
        handler = _Handler(self._server, self._gate, peer)
        transport.set_protocol(handler)
        handler.connection_made(transport)

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
        server = self._runner.server
        assert server is not None
        gate = self._gate
        self._server = await asyncio.get_running_loop().create_unix_server(
            lambda: _GateProtocol(server, gate), sock=self._sock, backlog=self._backlog)


# -- the TCP listener --------------------------------------------------------------------------


def metrics_app(hub: Hub) -> web.Application:
    """``/metrics``, ``/healthz``, ``/readyz``: status codes and metrics only (SPEC §5.7)."""
    app = web.Application(client_max_size=1024)
    app[HUB] = hub
    app.router.add_get("/metrics", make_aiohttp_handler(hub.metrics.registry))
    app.router.add_get("/healthz", _healthz_tcp)
    app.router.add_get("/readyz", _readyz_tcp)
    return app


async def _healthz_tcp(request: web.Request) -> web.Response:
    return await _healthz(request, request.app[HUB])


async def _readyz_tcp(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    target = request.query.get("target")
    if target is not None and target not in hub.keepers:
        return web.Response(status=404, text="unknown target\n")
    return _probe_answer(hub.ready(time.monotonic(), target), "ready\n", "not ready\n")
