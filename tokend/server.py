"""The consumer API on the Unix socket, and the TCP listener for metrics and probes.

Peers are checked once, when the connection is accepted (:mod:`tokend.gate`), before any of their
request is read. Token answers are pre-rendered per token (see ServedToken), so
the hot path is a dict lookup, a clock read and a byte concatenation.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, Protocol

from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

from tokend.config import Config
from tokend.errbody import error_response
from tokend.keeper import Keeper
from tokend.logs import get_logger
from tokend.metrics import Metrics
from tokend.names import ERROR_OUTCOME
from tokend.serving import ServeError
from tokend.watch import Watches, parse_after, parse_wait

MAX_BODY = 4096
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
