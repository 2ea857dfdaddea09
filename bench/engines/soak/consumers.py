"""The consumers: each polls tokend's socket its own way and checks every answer against what the
fake issued; 503s given while a token seemed valid are judged at the end, with the stalls seen."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.engines.soak.params import TARGET
from bench.engines.soak.report import Report
from bench.engines.soak.tracking import Issued, TrackingFake
from tests.support import Session, SocketClient


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


async def _get(session: Session, method: str, path: str, body: bytes | None = None
               ) -> tuple[int, bytes, Mapping[str, str], float, float]:
    """(status, body, headers, wall time sent, wall time the answer was read)."""
    sent = time.time()
    headers = {"Content-Type": "application/json"} if body is not None else None
    answer = await session.request(method, path, body, headers=headers)
    return answer.status, answer.body, answer.headers, sent, time.time()


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


def _check_error(ctx: Ctx, kind: str, status: int, body: bytes, headers: Mapping[str, str],
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


def judge_candidates(ctx: Ctx) -> None:
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
    rng = random.Random(ctx.rng.random())
    async with SocketClient(ctx.sock).session(limit=1, timeout=15) as session:
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


def _judge(ctx: Ctx, kind: str, status: int, body: bytes, headers: Mapping[str, str], sent: float,
           got: float, waits: bool, min_ttl: float = 0.0, not_fp: str | None = None) -> str | None:
    """A JSON answer: a 200 checked as a token (its fingerprint returned), any other as an error."""
    if status == 200:
        doc = json.loads(body)
        return _check_ok(ctx, kind, doc.get("accessToken", ""), doc, sent, got, min_ttl=min_ttl,
                         not_fp=not_fp)
    _check_error(ctx, kind, status, body, headers, sent, got, waits=waits, min_ttl=min_ttl,
                 not_fp=not_fp)
    return None


async def _one(ctx: Ctx, session: Session, kind: str, rng: random.Random) -> None:
    report = ctx.report
    report.requests[kind] += 1
    if kind in ("poll", "raw"):
        path = "/v1/token" if kind == "poll" else "/v1/token?format=raw"
        status, body, headers, sent, got = await _get(session, "GET", path)
        report.answers[f"{kind} {status}"] += 1
        if got - sent > 0.01:
            ctx.stalls.append((got, got - sent))
        if status == 200 and kind == "raw":
            _check_ok(ctx, kind, body.decode(errors="replace"), None, sent, got)
        else:
            _judge(ctx, kind, status, body, headers, sent, got, waits=False)
    elif kind == "min_ttl":
        # Mostly the configured min_ttl; one request in ten asks for 1 s, which a 1-second
        # lifetime cannot meet: SPEC §4 answers that with 400 naming the lifetime.
        min_ttl = 1.0 if rng.random() < 0.1 else ctx.report.min_ttl
        status, body, headers, sent, got = await _get(session, "GET", f"/v1/token?min_ttl={min_ttl:g}")
        report.answers[f"min_ttl={min_ttl:g} {status}"] += 1
        _judge(ctx, kind, status, body, headers, sent, got, waits=True, min_ttl=min_ttl)
    else:  # invalidate the token just received, as a consumer does after a 401
        status, body, headers, sent, got = await _get(session, "GET", "/v1/token")
        report.answers[f"invalidate-get {status}"] += 1
        fp = _judge(ctx, kind, status, body, headers, sent, got, waits=False)
        if fp is None:
            return
        payload = json.dumps({"fingerprint": fp}).encode()
        status, body, headers, sent, got = await _get(
            session, "POST", f"/v1/targets/{TARGET}/invalidate", payload)
        report.answers[f"invalidate {status}"] += 1
        _judge(ctx, kind, status, body, headers, sent, got, waits=True, not_fp=fp)


# -- faults -------------------------------------------------------------------------------------
