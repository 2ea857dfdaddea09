#!/usr/bin/env python3
"""Soak: ``tokend run`` against 2-second access tokens and random upstream faults, for minutes.

An in-process fake SDDC Manager (``FakeSddc(access_ttl=2)``, plain HTTP on loopback) issues tokens
and misbehaves at random (errors, 429 with Retry-After, dropped connections, outages, malformed
answers, revoked refresh tokens, redirects, delays) while several consumers poll tokend's socket:
plain ``GET /v1/token``, ``?format=raw``, ``?min_ttl=...`` and ``invalidate``. Every answer is checked
against what the fake issued. The report ends with the numbers that must be zero; the exit status is
1 when one of them is not, or when tokend's RSS grew more than ``--max-rss-growth-mb``.

Definitions (also printed with the report):

* A token's *window* is the span in which tokend must and may serve it, by SPEC §5.1 applied to what
  the fake sent: from the moment the fake finished answering with it (``delivered``) to
  ``received + span``, where ``received`` is when the fake received the request (tokend sent it no
  later) and ``span = min(exp - iat - 1, exp - Date - 1)`` (whole-second ``iat``; the ``Date``
  header is whole seconds too). With 2-second tokens the span is 1 s: tokend stops serving a token
  between ~0 and ~1 s before its ``exp``, which is why "the fake had issued an unexpired token" is not
  the test: a token in its last second is rightly not served.
* *Expired token served*: a 200 whose token's ``exp`` (on the fake's clock) had passed when the
  consumer sent the request, whose ``expiresIn`` is negative or not an integer, or that was served
  when its window had closed before the request was sent (certain violations: tokend answered after
  the request was sent). ``exp`` passing while the answer was in flight is counted apart
  (``expired in flight``), as is ``expiresIn == 0``: that is the whole seconds left, so a token with
  under a second left reads 0, and with 1-second windows nearly every answer does.
* *Consumer error while a valid token existed*: a non-200 answer to a request although some token
  was inside its window, shrunk at both ends by a ``--slack`` (default 0.1 s) plus the longest stall
  seen within 2 s (this process's loop lag, or tokend's slowest plain answer), for delivery and
  measurement latency: for a plain GET over the whole request; for a waiting request (``min_ttl``,
  ``invalidate``) at some instant of the request at which the token still had more than ``min_ttl``
  to go. Only a token tokend could answer with counts: not one superseded by a newer token before
  the request, and for ``invalidate`` only a token newer than the reported one.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import email.utils
import hashlib
import json
import os
import random
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import aiohttp
from aiohttp import web

from tokend.testing.fake_sddc import FakeSddc, start_fake
from tokend.testing.faults import FaultTarget

USER = "administrator@vsphere.local"
TARGET = "soak"
ACCESS_TTL = 2
DEFAULT_SLACK = 0.1
JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# Per-request storage for the tracking middleware (web.RequestKey where aiohttp has it).
_RequestKey: Any = getattr(web, "RequestKey", None)
TOKENS_KEY: Any = _RequestKey("soak_tokens", list) if _RequestKey is not None else "soak_tokens"
MALFORMED_KINDS = ("not_json", "not_jwt", "no_exp", "expired", "iat_future", "missing_fields",
                   "wrong_types")


# -- what the fake issued ----------------------------------------------------------------------


def _claims(token: str) -> dict[str, Any] | None:
    """The JWT payload, unverified; None for anything that is not a JWT with a JSON payload."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


@dataclass
class Issued:
    """An access token the fake sent in a 200/201 answer, and its SPEC §5.1 window."""

    token: str
    fingerprint: str
    exp: float | None
    iat: float | None
    iat_whole: bool
    received: float  # wall clock: the fake got the request (tokend sent it no later)
    date: float | None = None  # the answer's Date header
    delivered: float | None = None  # wall clock: the answer was being written; None if never

    @property
    def span(self) -> float | None:
        """SPEC §5.1 tracked lifetime, or None when tokend must refuse the token."""
        if self.exp is None:
            return None
        spans = []
        if self.iat is not None:
            spans.append(self.exp - self.iat - (1.0 if self.iat_whole else 0.0))
        if self.date is not None:
            spans.append(self.exp - self.date - 1.0)
        if not spans:
            return None
        span = min(spans)
        return span if span > 0 else None

    @property
    def end(self) -> float | None:
        """Wall-clock instant after which tokend may no longer serve it (an upper bound)."""
        span = self.span
        return None if span is None else self.received + span


class TrackingFake(FakeSddc):
    """The fake, plus a record of every access token it sent, when, and in which answer."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.issued: dict[str, Issued] = {}
        self.recent: list[Issued] = []  # delivered tokens, pruned as their windows close

    def app(self) -> web.Application:
        app = super().app()
        app.middlewares.append(self._track)
        app.on_response_prepare.append(self._stamp)  # after the fake's own Date hook
        return app

    @web.middleware
    async def _track(self, request: web.Request,
                     handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                     ) -> web.StreamResponse:
        received = time.time()
        tokens: list[Issued] = []
        request[TOKENS_KEY] = tokens
        response = await handler(request)
        if isinstance(response, web.Response) and response.status in (200, 201) and response.body:
            body = response.body
            with contextlib.suppress(ValueError, TypeError):
                data = json.loads(body if isinstance(body, bytes | bytearray) else b"")
                access = data.get("accessToken") if isinstance(data, dict) else data
                if isinstance(access, str):
                    tokens.append(self._record(access, received))
        return response

    def _record(self, token: str, received: float) -> Issued:
        claims = _claims(token) or {}
        iat = _number(claims.get("iat"))
        rec = Issued(token=token, fingerprint="sha256:" + hashlib.sha256(token.encode()).hexdigest(),
                     exp=_number(claims.get("exp")), iat=iat,
                     iat_whole=iat is not None and float(iat).is_integer(), received=received)
        self.issued[token] = rec
        return rec

    async def _stamp(self, request: web.Request, response: web.StreamResponse) -> None:
        tokens: list[Issued] = request.get(TOKENS_KEY) or []
        if not tokens:
            return
        transport = request.transport
        if transport is None or transport.is_closing():
            return  # never reaches tokend
        date_header = response.headers.get("Date")
        date = email.utils.parsedate_to_datetime(date_header).timestamp() if date_header else None
        now = time.time()
        for rec in tokens:
            rec.date, rec.delivered = date, now
            self.recent.append(rec)

    def prune(self, now: float) -> None:
        self.recent = [r for r in self.recent if r.end is not None and r.end > now - 5.0]


# -- the report --------------------------------------------------------------------------------


MUST_BE_ZERO = (
    "expired tokens served",
    "consumer errors while a valid token existed",
    "tokens served outside their window",
    "unexpected consumer answers",
    "tokend internal errors",
    "secrets in tokend's output",
    "tokend exits during the soak",
)


@dataclass
class Report:
    command: str
    planned: float
    seed: int
    slack: float
    min_ttl: float
    elapsed: float = 0.0
    requests: Counter[str] = field(default_factory=Counter)  # by consumer kind
    answers: Counter[str] = field(default_factory=Counter)  # "kind status"
    zero: Counter[str] = field(default_factory=Counter)
    info: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    upstream: Counter[str] = field(default_factory=Counter)  # "operation status" at the fake
    events: Counter[str] = field(default_factory=Counter)  # tokend log events
    refresh_failures: Counter[str] = field(default_factory=Counter)  # by outcome
    rss_samples: list[tuple[float, int]] = field(default_factory=list)  # (s since start, kB)
    fds: tuple[int, int] = (0, 0)
    uncovered: float = 0.0  # seconds without any token inside its window
    max_loop_lag: float = 0.0
    exit_status: int | None = None
    max_rss_growth_mb: float = 10.0

    def violation(self, name: str, detail: str) -> None:
        self.zero[name] += 1
        shown = self.examples.setdefault(name, [])
        if len(shown) < 5:
            shown.append(detail)

    @property
    def consumer_requests(self) -> int:
        return sum(self.requests.values())

    @property
    def rss_start_kb(self) -> int:
        return self.rss_samples[0][1] if self.rss_samples else 0

    @property
    def rss_end_kb(self) -> int:
        return self.rss_samples[-1][1] if self.rss_samples else 0

    @property
    def rss_growth_kb(self) -> int:
        return self.rss_end_kb - self.rss_start_kb

    def must_be_zero(self) -> dict[str, int]:
        return {name: self.zero[name] for name in MUST_BE_ZERO}

    @property
    def passed(self) -> bool:
        return not any(self.must_be_zero().values()) and (
            self.rss_growth_kb < self.max_rss_growth_mb * 1024)

    def render(self) -> str:
        out: list[str] = []
        w = out.append
        w("==================== tokend soak report ====================")
        w(f"command: {self.command}")
        w(f"ran {self.elapsed:.1f} s (planned {self.planned:g} s), seed {self.seed}; access tokens"
          f" {ACCESS_TTL} s, so tokend serves each for 1 s (exp - iat - 1)")
        ok_logins = self.upstream["login 201"]
        ok_refreshes = self.upstream["refresh 200"]
        logins = sum(v for k, v in self.upstream.items() if k.startswith("login "))
        refreshes = sum(v for k, v in self.upstream.items() if k.startswith("refresh "))
        w(f"refreshes: {self.events['token.refreshed']} accepted by tokend"
          f" ({refreshes} calls at the fake, {ok_refreshes} answered 200)")
        w(f"logins:    {self.events['token.acquired']} accepted by tokend"
          f" ({logins} calls at the fake, {ok_logins} answered 201)")
        w("upstream answers by operation and status (0 = dropped): "
          + _counter_line(self.upstream))
        w(f"tokend refresh failures by outcome ({sum(self.refresh_failures.values())}): "
          + _counter_line(self.refresh_failures))
        w(f"faults injected by kind ({sum(self.faults.values())}): " + _counter_line(self.faults))
        w(f"consumer requests: {self.consumer_requests} ("
          + ", ".join(f"{k} {v}" for k, v in sorted(self.requests.items())) + ")")
        w("answers by kind and status: " + _counter_line(self.answers))
        w(f"time without any token inside its window: {self.uncovered:.1f} s"
          f" ({100 * self.uncovered / max(self.elapsed, 1e-9):.1f} %)")
        w("for information: " + _counter_line(self.info)
          + f"; longest soak loop stall {self.max_loop_lag * 1000:.0f} ms")
        samples = ", ".join(f"{t:.0f}s {kb / 1024:.1f}" for t, kb in self.rss_samples)
        w(f"tokend RSS (MB): start {self.rss_start_kb / 1024:.1f}, end {self.rss_end_kb / 1024:.1f},"
          f" max {max((kb for _, kb in self.rss_samples), default=0) / 1024:.1f};"
          f" growth {self.rss_growth_kb / 1024:+.1f} (limit {self.max_rss_growth_mb:g}); samples: {samples}")
        w(f"tokend open fds: start {self.fds[0]}, end {self.fds[1]};"
          f" exit status on SIGTERM: {self.exit_status}")
        w("--- must be zero ---")
        for name, value in self.must_be_zero().items():
            w(f"  {name + ' ':.<50} {value}")
            for example in self.examples.get(name, []):
                w(f"      e.g. {example}")
        growth_ok = self.rss_growth_kb < self.max_rss_growth_mb * 1024
        w(f"  {'RSS growth below the limit ':.<50} {'yes' if growth_ok else 'NO'}")
        w(f"result: {'PASS' if self.passed else 'FAIL'}")
        for line in textwrap.wrap(
                "definitions: a token's window runs from when the fake finished answering with it"
                " to received + min(exp-iat-1, exp-Date-1), received being when the fake got the"
                " request (SPEC 5.1; an upper bound of tokend's own window). 'expired served': a 200"
                " whose token's exp (fake clock) had passed when the request was sent, or whose"
                " expiresIn is negative or not an integer. 'outside their window': a 200 sent after"
                " the token's window had closed. 'error while a valid token existed': a 503 although"
                f" a token was inside its window, shrunk by {self.slack:g} s plus the longest stall"
                " seen within 2 s at both ends, for the whole request (plain GET) or, for a request"
                " that waits (min_ttl, invalidate), at an instant of the request with more than"
                " min_ttl left; only tokens tokend could answer with count (not one superseded"
                " before the request; for invalidate, only tokens newer than the reported one)."
                " 'unexpected"
                " answers': anything else off-contract (unknown token, wrong fingerprint, a min_ttl"
                " answer shorter than asked, an invalidate answering the reported token, a 503"
                " without Retry-After, a status other than 200/503 (400 only for an unmeetable"
                " min_ttl), a failed connection).", 100):
            w(line)
        w("============================================================")
        return "\n".join(out)


def _counter_line(counter: Counter[str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counter.items())) or "none"


# -- consumers ----------------------------------------------------------------------------------


@dataclass
class Candidate:
    """A non-200 answer given while some token seemed to be inside its window; judged at the end."""

    kind: str
    sent: float
    got: float
    waits: bool
    min_ttl: float
    not_fp: str | None
    tokens: list[Issued]
    body: bytes


@dataclass
class Ctx:
    fake: TrackingFake
    report: Report
    sock: Path
    stop_at: float
    rng: random.Random
    slack: float
    stalls: list[tuple[float, float]] = field(default_factory=list)  # (wall time, seconds)
    candidates: list[Candidate] = field(default_factory=list)

    def running(self) -> bool:
        return time.monotonic() < self.stop_at

    def stall_near(self, start: float, stop: float) -> float:
        """The longest stall seen within 2 s of [start, stop]: this loop's lag, or a slow answer."""
        return max((v for t, v in self.stalls if start - 2.0 <= t <= stop + 2.0), default=0.0)


async def _get(session: aiohttp.ClientSession, method: str, path: str,
               body: bytes | None = None) -> tuple[int, bytes, dict[str, str], float, float]:
    sent = time.time()
    headers = {"Content-Type": "application/json"} if body is not None else None
    async with session.request(method, "http://tokend" + path, data=body, headers=headers) as r:
        data = await r.read()
        return r.status, data, dict(r.headers), sent, time.time()


def _check_ok(ctx: Ctx, kind: str, token: str, doc: dict[str, Any] | None, sent: float,
              got: float, min_ttl: float = 0.0, not_fp: str | None = None) -> str | None:
    """Check a 200; return its fingerprint (None if it is not a known token)."""
    report = ctx.report
    rec = ctx.fake.issued.get(token)
    if rec is None:
        report.violation("unexpected consumer answers", f"{kind}: a token the fake never sent")
        return None
    if doc is not None:
        expires_in = doc.get("expiresIn")
        if doc.get("fingerprint") != rec.fingerprint or doc.get("tokenType") != "Bearer" \
                or doc.get("target") != TARGET:
            report.violation("unexpected consumer answers", f"{kind}: token JSON fields wrong: "
                             f"{ {k: v for k, v in doc.items() if k != 'accessToken'} }")
        if isinstance(expires_in, bool) or not isinstance(expires_in, int) or expires_in < 0:
            report.violation("expired tokens served", f"{kind}: expiresIn {expires_in!r}")
        elif expires_in == 0:
            report.info["expiresIn == 0 (under a second left)"] += 1
    skew = ctx.fake.faults.clock_skew
    if rec.exp is None:
        report.violation("expired tokens served", f"{kind}: served a token without exp")
    elif rec.exp <= sent + skew:
        report.violation("expired tokens served",
                         f"{kind}: exp {rec.exp:.3f} <= sent {sent + skew:.3f}")
    elif rec.exp <= got + skew:
        report.info["expired in flight (exp between send and receipt)"] += 1
    end = rec.end
    if end is None or rec.delivered is None:
        report.violation("tokens served outside their window",
                         f"{kind}: a token tokend must refuse (span {rec.span})")
    elif sent > end + 0.02:
        report.violation("tokens served outside their window",
                         f"{kind}: sent {sent - end:.3f} s after the window closed")
    elif min_ttl > 0 and end - sent < min_ttl - 0.02:
        report.violation("unexpected consumer answers",
                         f"{kind}: min_ttl={min_ttl:g} answered with {end - sent:.3f} s left")
    if not_fp is not None and rec.fingerprint == not_fp:
        report.violation("unexpected consumer answers", f"{kind}: answered the invalidated token")
    return rec.fingerprint


def _inside(rec: Issued, sent: float, got: float, waits: bool, min_ttl: float, slack: float) -> bool:
    """Whether tokend had to answer with ``rec`` during [sent, got] (see the module docstring)."""
    end = rec.end
    if end is None or rec.delivered is None:
        return False
    start = rec.delivered + slack
    if not waits:
        return start <= sent and got <= end - slack
    instant = max(sent, start)
    return instant <= got and instant <= end - slack - min_ttl


def _check_error(ctx: Ctx, kind: str, status: int, body: bytes, headers: dict[str, str],
                 sent: float, got: float, waits: bool, min_ttl: float = 0.0,
                 not_fp: str | None = None) -> None:
    report = ctx.report
    if status == 400 and min_ttl >= 1.0 and b"BAD_REQUEST" in body:
        report.info[f"min_ttl={min_ttl:g} answered 400 (the 1 s lifetime cannot meet it)"] += 1
        return
    if status != 503:
        report.violation("unexpected consumer answers", f"{kind}: status {status} {body[:160]!r}")
        return
    if "Retry-After" not in headers:
        report.violation("unexpected consumer answers", f"{kind}: 503 without Retry-After")
    tokens = [r for r in _eligible(ctx, sent, not_fp) if _inside(r, sent, got, waits, min_ttl, ctx.slack)]
    if tokens:
        ctx.candidates.append(Candidate(kind, sent, got, waits, min_ttl, not_fp, tokens, body[:120]))
    else:
        report.info["503 with no valid token"] += 1


def _eligible(ctx: Ctx, sent: float, not_fp: str | None) -> list[Issued]:
    """Tokens tokend could answer a request sent at ``sent`` with.

    Not one superseded by a newer servable token delivered (by more than the slack) before the
    request: tokend serves its current token only. For ``invalidate``, only tokens newer than the
    reported one (which tokend had, since it served it): an older one is not an answer.
    """
    servable = sorted((r for r in ctx.fake.recent if r.end is not None and r.delivered is not None),
                      key=lambda r: r.delivered or 0.0)
    reported = next((r for r in servable if r.fingerprint == not_fp), None)
    out = []
    for i, rec in enumerate(servable):
        newer = servable[i + 1] if i + 1 < len(servable) else None
        assert rec.delivered is not None
        if newer is not None and newer.delivered is not None and newer.delivered < sent - ctx.slack:
            continue
        if not_fp is not None and (rec.fingerprint == not_fp or (
                reported is not None and reported.delivered is not None
                and rec.delivered <= reported.delivered)):
            continue
        out.append(rec)
    return out


def _judge_candidates(ctx: Ctx) -> None:
    """Judge the 503s given while a token seemed valid, with margins widened by nearby stalls."""
    for c in ctx.candidates:
        stall = ctx.stall_near(c.sent, c.got)
        slack = ctx.slack + stall
        rec = next((r for r in c.tokens if _inside(r, c.sent, c.got, c.waits, c.min_ttl, slack)), None)
        if rec is None:
            ctx.report.info["503 within a stall's reach of a window edge (not counted)"] += 1
            continue
        assert rec.delivered is not None and rec.end is not None
        ctx.report.violation(
            "consumer errors while a valid token existed",
            f"{c.kind}: 503 over [{c.sent:.3f}, {c.got:.3f}] while {rec.fingerprint[:15]} was in"
            f" its window [{rec.delivered:.3f}, {rec.end:.3f}] (margin {slack:.3f} s): {c.body!r}")


async def watch_lag(ctx: Ctx) -> None:
    """Record this event loop's stalls: they delay the fake's time stamps and the consumers'."""
    while ctx.running():
        t0 = time.monotonic()
        await asyncio.sleep(0.01)
        lag = time.monotonic() - t0 - 0.01
        ctx.report.max_loop_lag = max(ctx.report.max_loop_lag, lag)
        if lag > 0.01:
            ctx.stalls.append((time.time(), lag))
            ctx.report.info["soak loop stalls > 10 ms"] += 1


async def consumer(ctx: Ctx, kind: str) -> None:
    """One consumer with its own keep-alive connection, polling until the end."""
    connector = aiohttp.UnixConnector(path=str(ctx.sock), limit=1)
    timeout = aiohttp.ClientTimeout(total=15)
    rng = random.Random(ctx.rng.random())
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        while ctx.running():
            try:
                await _one(ctx, session, kind, rng)
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                ctx.report.violation("unexpected consumer answers",
                                     f"{kind}: {type(exc).__name__}: {exc}")
                await asyncio.sleep(0.5)
            await asyncio.sleep(rng.uniform(*_PAUSE[kind]))


_PAUSE = {"poll": (0.005, 0.03), "raw": (0.01, 0.05), "min_ttl": (0.02, 0.1),
          "invalidate": (0.2, 1.0)}


async def _one(ctx: Ctx, session: aiohttp.ClientSession, kind: str, rng: random.Random) -> None:
    report = ctx.report
    report.requests[kind] += 1
    if kind in ("poll", "raw"):
        path = "/v1/token" if kind == "poll" else "/v1/token?format=raw"
        status, body, headers, sent, got = await _get(session, "GET", path)
        report.answers[f"{kind} {status}"] += 1
        if got - sent > 0.01:
            ctx.stalls.append((got, got - sent))
        if status == 200:
            if kind == "raw":
                _check_ok(ctx, kind, body.decode(errors="replace"), None, sent, got)
            else:
                doc = json.loads(body)
                _check_ok(ctx, kind, doc.get("accessToken", ""), doc, sent, got)
        else:
            _check_error(ctx, kind, status, body, headers, sent, got, waits=False)
    elif kind == "min_ttl":
        # Mostly the configured min_ttl; one request in ten asks for 1 s, which a 1-second
        # lifetime cannot meet: SPEC §4 answers that with 400 naming the lifetime.
        min_ttl = 1.0 if rng.random() < 0.1 else ctx.report.min_ttl
        status, body, headers, sent, got = await _get(session, "GET", f"/v1/token?min_ttl={min_ttl:g}")
        report.answers[f"min_ttl={min_ttl:g} {status}"] += 1
        if status == 200:
            doc = json.loads(body)
            _check_ok(ctx, kind, doc.get("accessToken", ""), doc, sent, got, min_ttl=min_ttl)
        else:
            _check_error(ctx, kind, status, body, headers, sent, got, waits=True, min_ttl=min_ttl)
    else:  # invalidate the token just received, as a consumer does after a 401
        status, body, headers, sent, got = await _get(session, "GET", "/v1/token")
        report.answers[f"invalidate-get {status}"] += 1
        if status != 200:
            _check_error(ctx, kind, status, body, headers, sent, got, waits=False)
            return
        doc = json.loads(body)
        fp = _check_ok(ctx, kind, doc.get("accessToken", ""), doc, sent, got)
        if fp is None:
            return
        payload = json.dumps({"fingerprint": fp}).encode()
        status, body, headers, sent, got = await _get(
            session, "POST", f"/v1/targets/{TARGET}/invalidate", payload)
        report.answers[f"invalidate {status}"] += 1
        if status == 200:
            doc = json.loads(body)
            _check_ok(ctx, kind, doc.get("accessToken", ""), doc, sent, got, not_fp=fp)
        else:
            _check_error(ctx, kind, status, body, headers, sent, got, waits=True, not_fp=fp)


# -- faults -------------------------------------------------------------------------------------


async def inject_faults(ctx: Ctx, url: str, gap: tuple[float, float]) -> None:
    """Every ``gap`` seconds (uniform), one random misbehaviour of the fake."""
    faults = ctx.fake.faults
    rng = ctx.rng
    await asyncio.sleep(rng.uniform(*gap))
    while ctx.running():
        kind = rng.choices(
            ["fail", "429", "drop", "down", "malformed", "revoke", "delay", "redirect"],
            weights=[5, 2, 3, 2, 3, 2, 2, 1])[0]
        op: FaultTarget = rng.choice(["refresh", "refresh", "login", "any"])
        if kind == "fail":
            status = rng.choice([500, 502, 503])
            faults.fail_next(op, status, count=rng.randint(1, 3))
            ctx.report.faults[f"fail {op} {status}"] += 1
        elif kind == "429":
            faults.fail_next(op, 429, headers={"Retry-After": str(rng.randint(1, 3))})
            ctx.report.faults[f"429+Retry-After {op}"] += 1
        elif kind == "drop":
            when = rng.choice(["headers", "no_response"])
            faults.drop_next(op, count=rng.randint(1, 2), when=when)  # type: ignore[arg-type]
            ctx.report.faults[f"drop {op} {when}"] += 1
        elif kind == "down":
            mode = rng.choice(["503", "drop"])
            spell = rng.uniform(0.5, 3.0)
            faults.down_mode = mode  # type: ignore[assignment]
            faults.down = True
            ctx.report.faults[f"down ({mode})"] += 1
            await asyncio.sleep(spell)
            faults.down = False
            ctx.report.info["seconds down"] += round(spell)
        elif kind == "malformed":
            bad = rng.choice(MALFORMED_KINDS)
            faults.malformed_next(op if op != "any" else "refresh", bad)  # type: ignore[arg-type]
            ctx.report.faults[f"malformed {bad}"] += 1
        elif kind == "revoke":
            faults.revoke_all_refresh_tokens()
            ctx.report.faults["revoke all refresh tokens"] += 1
        elif kind == "delay":
            # Below request_timeout (3 s), so every token the fake sends reaches tokend.
            delay = rng.uniform(0.05, 0.4)
            spell = rng.uniform(1.0, 4.0)
            faults.delays[op if op != "any" else "refresh"] = delay
            ctx.report.faults["delay"] += 1
            await asyncio.sleep(spell)
            faults.delays.clear()
        else:
            faults.redirect_next(op, url + "/elsewhere")
            ctx.report.faults[f"redirect {op}"] += 1
        await asyncio.sleep(rng.uniform(*gap))


# -- tokend -------------------------------------------------------------------------------------


def _write_config(workdir: Path, url: str, password: str) -> Path:
    secret = workdir / "password"
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")
    config = workdir / "config.toml"
    config.write_text(f"""\
[server]
socket = "{workdir / 'tokend.sock'}"
socket_mode = "0600"

[metrics]
listen = ""

[log]
level = "info"
format = "json"

[[targets]]
name = "{TARGET}"
url = "{url}"
username = "{USER}"
password_file = "{secret}"
request_timeout = "3s"
max_backoff = "2s"
""")
    config.chmod(0o600)
    return config


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


async def _ready(sock: Path, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"tokend exited {proc.returncode} before it was ready")
        with contextlib.suppress(aiohttp.ClientError, OSError):
            async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sock))) as s, \
                    s.get("http://tokend/readyz") as r:
                if r.status == 200:
                    return
        await asyncio.sleep(0.05)
    raise RuntimeError("tokend was not ready in time")


def _read_log(report: Report, log: Path, fake: TrackingFake, password: str) -> None:
    text = log.read_text(errors="replace")
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            if "Traceback" in line:
                report.violation("tokend internal errors", line[:200])
            continue
        if not isinstance(event, dict):
            continue
        name = str(event.get("event"))
        report.events[name] += 1
        if name == "token.refresh_failed":
            report.refresh_failures[str(event.get("outcome"))] += 1
        if name == "keeper.crashed" or "exception" in event:
            report.violation("tokend internal errors", f"{name}: {str(event)[:300]}")
    leaked = {t for t in JWT_RE.findall(text) if t in fake.issued}
    leaked |= {u for u in UUID_RE.findall(text) if u in set(fake.issued_refresh_ids)}
    if password in text:
        leaked.add("the password")
    for item in leaked:
        report.violation("secrets in tokend's output", f"{item[:12]}... appears in the log")


def _uncovered(fake: TrackingFake, start: float, stop: float) -> float:
    """Seconds of [start, stop] in which no token was inside its window."""
    spans = sorted((r.delivered, r.end) for r in fake.issued.values()
                   if r.delivered is not None and r.end is not None and r.end > r.delivered)
    covered, cursor = 0.0, start
    for a, b in spans:
        a, b = max(a, cursor), min(b, stop)
        if b > a:
            covered += b - a
            cursor = b
    return max(0.0, (stop - start) - covered)


async def run_soak(seconds: float, *, seed: int | None = None,
                   consumers: str = "poll:3,raw:1,min_ttl:2,invalidate:1", min_ttl: float = 0.5,
                   slack: float = DEFAULT_SLACK, rss_interval: float = 30.0,
                   fault_gap: tuple[float, float] = (1.0, 4.0), max_rss_growth_mb: float = 10.0,
                   workdir: Path | None = None, command: str = "",
                   progress: TextIO | None = None) -> Report:
    """Run the soak for ``seconds``; the report (see :class:`Report`)."""
    seed = seed if seed is not None else secrets.randbits(32)
    rng = random.Random(seed)
    report = Report(command=command or f"run_soak(seconds={seconds:g})", planned=seconds, seed=seed,
                    slack=slack, min_ttl=min_ttl, max_rss_growth_mb=max_rss_growth_mb)
    own_dir = workdir is None
    wd = Path(tempfile.mkdtemp(prefix="tks-", dir="/tmp")) if workdir is None else workdir
    password = secrets.token_urlsafe(18)
    fake = TrackingFake(access_ttl=ACCESS_TTL, users={USER: password})
    runner, url = await start_fake(fake, "127.0.0.1", 0)
    proc: subprocess.Popen[bytes] | None = None
    log = wd / "tokend.log"
    try:
        config = _write_config(wd, url, password)
        sock = wd / "tokend.sock"
        env = {k: v for k, v in os.environ.items() if k not in ("TOKEND_SOCKET", "TOKEND_CONFIG")}
        with log.open("ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "tokend", "run", "--config", str(config)],
                                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, cwd=wd)
        await _ready(sock, proc)
        start_wall, start = time.time(), time.monotonic()
        report.rss_samples.append((0.0, _rss_kb(proc.pid)))
        fds_start = _fds(proc.pid)
        ctx = Ctx(fake, report, sock, start + seconds, rng, slack)
        kinds = []
        for part in consumers.split(","):
            name, _, count = part.partition(":")
            kinds += [name.strip()] * int(count or 1)
        tasks = [asyncio.create_task(consumer(ctx, k), name=f"consumer:{k}") for k in kinds]
        tasks.append(asyncio.create_task(inject_faults(ctx, url, fault_gap), name="faults"))
        tasks.append(asyncio.create_task(watch_lag(ctx), name="lag"))
        next_sample = start + rss_interval
        while time.monotonic() < ctx.stop_at:
            await asyncio.sleep(min(1.0, max(0.0, ctx.stop_at - time.monotonic())))
            fake.prune(time.time())
            if proc.poll() is not None:
                report.violation("tokend exits during the soak", f"exit status {proc.returncode}")
                break
            if time.monotonic() >= next_sample:
                t = time.monotonic() - start
                report.rss_samples.append((t, _rss_kb(proc.pid)))
                next_sample += rss_interval
                if progress is not None:
                    print(f"soak: {t:.0f}s requests {report.consumer_requests},"
                          f" faults {sum(report.faults.values())},"
                          f" violations {sum(report.zero.values())},"
                          f" RSS {report.rss_samples[-1][1] / 1024:.1f} MB", file=progress, flush=True)
        ctx.stop_at = 0.0  # consumers and the injector finish their current step
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for task, result in zip(tasks, results, strict=True):
            if isinstance(result, BaseException):
                report.violation("unexpected consumer answers",
                                 f"{task.get_name()} failed: {type(result).__name__}: {result}")
        report.elapsed = time.monotonic() - start
        _judge_candidates(ctx)
        if proc.poll() is None:
            report.rss_samples.append((report.elapsed, _rss_kb(proc.pid)))
            report.fds = (fds_start, _fds(proc.pid))
        report.uncovered = _uncovered(fake, start_wall, start_wall + report.elapsed)
        for call in fake.calls:
            report.upstream[f"{call.operation} {call.status}"] += 1
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.to_thread(proc.wait), 15)
            except TimeoutError:
                proc.kill()
                proc.wait()
        if proc is not None:
            report.exit_status = proc.returncode
        await runner.cleanup()
        if log.exists():
            _read_log(report, log, fake, password)
        if own_dir:
            shutil.rmtree(wd, ignore_errors=True)
    return report


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Soak tokend against 2-second tokens and random faults.")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float, default=15.0, help="length (default 15)")
    length.add_argument("--seconds", type=float, help="length in seconds (instead of --minutes)")
    p.add_argument("--seed", type=int, help="random seed for faults and pauses (default: random)")
    p.add_argument("--consumers", default="poll:3,raw:1,min_ttl:2,invalidate:1",
                   help="consumer kinds and counts (default poll:3,raw:1,min_ttl:2,invalidate:1)")
    p.add_argument("--min-ttl", type=float, default=0.5,
                   help="min_ttl the min_ttl consumers ask for (default 0.5; the 1 s lifetime"
                        " cannot meet 1, which one request in ten asks, expecting 400)")
    p.add_argument("--slack", type=float, default=DEFAULT_SLACK,
                   help="seconds a token's window is shrunk at both ends when judging a 503"
                        " (default 0.1), plus the longest stall seen near the answer")
    p.add_argument("--rss-interval", type=float, default=30.0, help="RSS sample interval (default 30)")
    p.add_argument("--fault-gap", default="1,4", help="seconds between faults: MIN,MAX (default 1,4)")
    p.add_argument("--max-rss-growth-mb", type=float, default=10.0,
                   help="fail when tokend's RSS grew more than this (default 10)")
    p.add_argument("--keep", type=Path, help="keep tokend's log and config in this (new) folder")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    seconds = args.seconds if args.seconds is not None else args.minutes * 60
    lo, _, hi = args.fault_gap.partition(",")
    workdir = None
    if args.keep is not None:
        args.keep.mkdir(parents=True)
        workdir = args.keep
    command = shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    print(f"$ {command}", flush=True)
    report = asyncio.run(run_soak(
        seconds, seed=args.seed, consumers=args.consumers, min_ttl=args.min_ttl, slack=args.slack,
        rss_interval=args.rss_interval, fault_gap=(float(lo), float(hi or lo)),
        max_rss_growth_mb=args.max_rss_growth_mb, workdir=workdir, command=command,
        progress=sys.stderr))
    print(report.render(), flush=True)
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
