"""The fault suite: one end-to-end test per upstream or local fault, against the real ``tokend run``.

Every test drives the daemon process through one fault with the fake SDDC Manager over HTTPS and
checks the same three things:

1. the daemon stays up (process alive, ``/healthz`` 200), or, for a start-up fault, exits 2 with one
   clear line on stderr and no traceback;
2. no consumer ever receives an expired token: a background :class:`Consumer` polls ``/v1/token``
   every ~100 ms for the whole test and checks every answer (see there);
3. the upstream calls stay under the bound the backoff implies (SPEC §5.4: full jitter, first retry
   within 1 s, doubling, capped by a tenth of the remaining life with a 1 s floor while a token is
   valid, by 30 s without one, and by ``max_backoff``). Only upper bounds are asserted here, each
   with its derivation; the exact schedules are unit-tested in ``tests/test_schedule.py``.

``expiresIn`` is whole seconds, rounded down: in the last second tokend serves a token it is 0,
which the contract allows (the token is still inside its window); the consumer checks the token's
``exp`` itself against the fake's clock.

Tokens live a few seconds so that a fault spans several refreshes quickly. Timing assertions carry
margins for a loaded machine: a token whose whole-second ``iat`` and ``Date`` each cost up to a
second is served for ``ttl - 2`` to ``ttl - 1`` s (SPEC §5.1), and a scheduled call may start a few
hundred milliseconds late, never early.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import glob
import itertools
import json
import math
import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography import x509

from tests.support import (
    TLS,
    MakeTokend,
    MakeUpstream,
    NotifyListener,
    Tokend,
    Upstream,
    assert_one_line_error,
    eventually,
    in_state,
    last_error,
    state,
    write_config,
)
from tokend.testing.fake_sddc import CallRecord, FakeSddc
from tokend.testing.faults import DropWhen, MalformedKind

# A scheduled call starts late by the event loop's latency and the request's own time (a TLS
# handshake on a fresh connection, a few ms), never early. On a busy CI machine that stays well
# under this; it is only ever added to upper bounds on time.
SLACK = 0.5
# The fake records a call when its body has arrived: after tokend sent it (and started the clocks it
# schedules by), by a TLS handshake at most on a fresh connection. Subtracted from lower bounds.
ARRIVAL = 0.3
# The bounds on call counts hold except with at most this probability (see max_calls).
P_FLAKE = 1e-6
# Refresh early in the token's life, so failures have room before expiry.
EARLY_REFRESH = {"refresh_at": 0.3, "jitter": 0.02}
MID_REFRESH = {"refresh_at": 0.5, "jitter": 0.02}


# -- the daemon ---------------------------------------------------------------------------------


async def assert_up(tokend: Tokend) -> None:
    """(1): the process is alive, ``/healthz`` answers 200, and no bug surfaced in the logs."""
    assert tokend.proc is not None
    assert tokend.proc.poll() is None, f"tokend exited {tokend.proc.returncode}: {tokend.stderr()}"
    assert (await tokend.get("/healthz")).status == 200
    assert not tokend.events("keeper.crashed"), tokend.events("keeper.crashed")
    assert "Traceback" not in tokend.stderr(), tokend.stderr()


# -- (2) the consumer ---------------------------------------------------------------------------


def claims_of(token: str) -> dict[str, Any]:
    """A JWT's claims, without verifying it (as consumers and tokend do)."""
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


class Consumer:
    """A consumer that polls ``GET /v1/token`` every ~100 ms while a fault runs.

    Every 200 answer must carry ``expiresIn >= 0``, an access token the fake issued, and a JWT ``exp``
    later than the fake's clock when the answer arrived (``fake.now()``, injected skew included: the
    instant the upstream itself would refuse the token). Every 503 must be ``TOKEN_UNAVAILABLE`` with a
    ``Retry-After`` of at least a second. Anything else, or no answer at all, is a violation.
    """

    def __init__(self, tokend: Tokend, fake: FakeSddc, *, interval: float = 0.1,
                 trust_fake_signature: bool = False) -> None:
        self.tokend = tokend
        self.fake = fake
        self.interval = interval
        # Tokens the fake signs for a malformed answer are not in issued_access_tokens; a test that
        # expects one to be served checks it against the fake's signing key instead.
        self.trust_fake_signature = trust_fake_signature
        self.answers: list[tuple[float, int]] = []  # (monotonic instant of receipt, status)
        self.longest: dict[str, int] = {}  # the largest expiresIn seen for each access token
        self.violations: list[str] = []
        self.may_vanish = False  # set once tokend is told to stop: then no answer is fine
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._poll())

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def statuses(self, since: float = -math.inf, until: float = math.inf) -> list[int]:
        return [status for at, status in self.answers if since <= at <= until]

    async def _poll(self) -> None:
        while True:
            try:
                answer = await self.tokend.get("/v1/token", timeout=5)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                if not self.may_vanish:
                    self.violations.append(f"no answer: {exc!r}")
            else:
                fake_now = self.fake.now()
                self.answers.append((time.monotonic(), answer.status))
                try:
                    self._check(answer.status, answer.body, answer.headers, fake_now)
                except Exception as exc:  # an answer of the wrong shape
                    self.violations.append(f"unreadable answer {answer.body[:200]!r}: {exc!r}")
            await asyncio.sleep(self.interval)

    def _issued(self, token: str) -> bool:
        if token in self.fake.issued_access_tokens:
            return True
        if not self.trust_fake_signature:
            return False
        try:
            jwt.decode(token, self.fake._secret, algorithms=["HS256"],
                       options={"verify_exp": False, "verify_iat": False, "verify_nbf": False,
                                "verify_aud": False, "verify_iss": False})
        except jwt.PyJWTError:
            return False
        return True

    def _check(self, status: int, body: bytes, headers: Mapping[str, str], fake_now: float) -> None:
        if status == 503:
            code = json.loads(body).get("errorCode")
            retry_after = headers.get("Retry-After", "")
            if code != "TOKEN_UNAVAILABLE" or not retry_after.isdigit() or int(retry_after) < 1:
                self.violations.append(f"bad 503: {code} Retry-After {retry_after!r}")
            return
        if status != 200:
            self.violations.append(f"status {status}: {body[:200]!r}")
            return
        token = json.loads(body)
        access = token["accessToken"]
        if not isinstance(token["expiresIn"], int) or token["expiresIn"] < 0:
            self.violations.append(f"expiresIn {token['expiresIn']}")
        if not self._issued(access):
            self.violations.append(f"a token the fake never issued ({token['fingerprint']})")
            return
        exp = claims_of(access)["exp"]
        if not exp > fake_now:
            self.violations.append(f"an expired token: exp {exp} <= the fake's clock {fake_now:.3f}")
        self.longest[access] = max(self.longest.get(access, 0), token["expiresIn"])

    def assert_clean(self) -> None:
        assert not self.violations, self.violations[:10]
        assert self.statuses().count(200) > 0, "the consumer was never served"


@contextlib.asynccontextmanager
async def consuming(tokend: Tokend, fake: FakeSddc, **kwargs: Any) -> AsyncIterator[Consumer]:
    """Run a :class:`Consumer` for the duration of the block; its checks apply when it ends."""
    consumer = Consumer(tokend, fake, **kwargs)
    consumer.start()
    try:
        yield consumer
    finally:
        await consumer.stop()
    consumer.assert_clean()


async def assert_recovered(tokend: Tokend, consumer: Consumer, since: float) -> None:
    """After a fault: the state is valid again within 3 s, (1) holds, and every consumer request
    since ``since`` was served."""
    await eventually(lambda: in_state(tokend, "valid"), timeout=3, what="state valid")
    await assert_up(tokend)
    assert set(consumer.statuses(since=since)) == {200}


# -- (3) bounds on upstream calls -----------------------------------------------------------------


def max_calls(window: float, caps: Callable[[int], float], p: float = P_FLAKE) -> int:
    """The most upstream calls a failing target makes in ``window`` s, unless with probability < ``p``.

    After a failure the next call waits a delay drawn uniformly from ``[0, c]`` (full jitter), ``c``
    being the cap then in force; ``caps(i)`` must be a lower bound of it for the i-th delay in the
    window. Call k+1 falls in the window only if the k delays before it sum to at most ``window``, and

        P(d_1 + ... + d_k <= window) <= window^k / (k! * c_1 * ... * c_k)

    (the simplex ``{d >= 0, sum d <= window}`` has volume ``window^k / k!``; the joint density of the
    delays is at most ``1 / (c_1 ... c_k)``). The first k where that drops below ``p`` bounds the
    calls. Request durations and ``Retry-After`` only lengthen the gaps, so leaving them out keeps
    the bound safe. For a 1 s cap this allows 10 calls in 1 s, 23 in 5 s, 37 in 10 s (about twice
    the mean); a client that retried without backoff would make hundreds.
    """
    k, bound = 0, 1.0
    while True:
        k += 1
        bound *= window / (k * caps(k))
        if bound < p:
            return k


def one_second(_: int) -> float:
    """The least cap of any delay while a token is held: min(max(1 s, life / 10), 2^(n-1) s) >= 1 s
    for max_backoff >= 1 s (the first retry is "within 1 s", and every later cap is at least that)."""
    return 1.0


def calls_of(fake: FakeSddc, *operations: str) -> list[CallRecord]:
    return [c for c in fake.calls if not operations or c.operation in operations]


def calls_between(fake: FakeSddc, since: float, until: float = math.inf) -> list[CallRecord]:
    return [c for c in fake.calls if since <= c.at <= until]


def summary(calls: list[CallRecord]) -> list[tuple[str, int]]:
    return [(c.operation, c.status) for c in calls]


def successes(fake: FakeSddc) -> list[CallRecord]:
    """The calls that brought a token: logins 201 and refreshes 200 (malformed answers included)."""
    return [c for c in fake.calls if (c.operation, c.status) in (("login", 201), ("refresh", 200))]


def refresh_gap(ttl: float, refresh_at: float, jitter: float) -> tuple[float, float]:
    """The range of the time between two successful token calls when nothing fails.

    The next refresh falls at ``(refresh_at ± jitter) × lifetime`` after the previous request was sent,
    the lifetime being ``ttl - 2`` to ``ttl - 1`` s (whole-second iat and Date). ARRIVAL off the lower
    end (the earlier call's arrival latency), SLACK on the upper end (lateness).
    """
    return ((ttl - 2) * (refresh_at - jitter) - ARRIVAL, (ttl - 1) * (refresh_at + jitter) + SLACK)


def failures(tokend: Tokend) -> list[dict[str, Any]]:
    return tokend.events("token.refresh_failed")


# -- 1-5: outages, 5xx, 429, timeouts, dropped connections ----------------------------------------


async def test_fault_upstream_down_longer_than_token_life(
        make_upstream: MakeUpstream, make_tokend: MakeTokend) -> None:
    # 5-second tokens, served 3 to 4 s, refreshed at 30 %. max_backoff 2 s keeps the recovery prompt
    # (without it the no-token cap is 30 s and the test would wait that long after the outage).
    ttl = 5
    upstream = await make_upstream(access_ttl=ttl)
    fake = upstream.fake
    tokend = await make_tokend(upstream.url, upstream.ca_pem, wait="listening",
                               target={**EARLY_REFRESH, "max_backoff": "2s"})
    async with consuming(tokend, fake) as consumer:
        # Down as soon as the first token is out: its refresh (at 30 %, 0.8 s or more later) fails.
        await eventually(lambda: fake.count("login", 201) == 1, timeout=10, interval=0.02,
                         what="the first login")
        assert fake.count("refresh") == 0, "the refresh came before the outage"
        fake.faults.down_mode = "drop"  # connections accepted and closed unanswered
        fake.faults.down = True
        down_at = time.monotonic()

        await eventually(lambda: fake.count("refresh") >= 1, timeout=5, what="a failed refresh")
        await eventually(lambda: in_state(tokend, "expired"), timeout=6, what="state expired")
        expired_seen = time.monotonic()
        answer = await tokend.get("/v1/token")
        assert answer.status == 503, answer.body
        assert answer.json()["errorCode"] == "TOKEN_UNAVAILABLE"
        assert int(answer.headers["Retry-After"]) >= 1
        assert "state expired" in answer.json()["message"]
        await assert_up(tokend)

        # Down for longer than the token's whole life.
        await asyncio.sleep(max(0.0, down_at + ttl + 1 - time.monotonic()))
        fake.faults.down = False
        up_at = time.monotonic()
        assert up_at - down_at > ttl
        assert consumer.statuses(since=expired_seen, until=up_at).count(503) >= 3
        assert all(c.status == 0 for c in calls_between(fake, down_at, up_at))

        # Recovery without a restart: the next attempt is at most max_backoff (2 s) away.
        await eventually(lambda: any(c.status in (200, 201) for c in calls_between(fake, up_at)),
                         timeout=2 + SLACK + 1, what="a successful call after the outage")
        first_after = calls_between(fake, up_at)[0]
        assert first_after.at - up_at <= 2 + SLACK, first_after.at - up_at
        assert first_after.status in (200, 201), summary(calls_between(fake, up_at))
        await eventually(lambda: in_state(tokend, "valid"), timeout=3, what="state valid")
        await tokend.token()
        await eventually(lambda: consumer.statuses(since=time.monotonic() - 0.3).count(200) > 0,
                         timeout=2, what="the consumer served again")
        await assert_up(tokend)

        # (3) While the token was valid every cap is at least 1 s (one_second). Once it had expired
        # every retry came after two or more failures in a row (the refresh at 30 % failed first),
        # so its cap is min(30 s, max_backoff 2 s, 2^(n-1) s) = 2 s; the first delay in that stretch
        # may have been drawn while the token was still valid (cap 1 s).
        valid_calls = calls_between(fake, down_at, expired_seen)
        expired_calls = calls_between(fake, expired_seen, up_at)
        valid_bound = max_calls(expired_seen - down_at, one_second)
        expired_bound = max_calls(up_at - expired_seen, lambda i: 1.0 if i == 1 else 2.0)
        assert len(valid_calls) <= valid_bound, (len(valid_calls), valid_bound)
        assert len(expired_calls) <= expired_bound, (len(expired_calls), expired_bound)
        assert fake.count("login", 201) <= 2
        # The consumer's checks apply when the block ends.


async def test_fault_5xx_storm(make_upstream: MakeUpstream, make_tokend: MakeTokend) -> None:
    # 20 × 503 on whatever comes: three refreshes then a login, five times over. 30-second tokens
    # refreshed at 5 % leave at least 26 s of life when the storm starts; max_backoff 0.5 s makes
    # every delay at most 0.5 s, so 20 failures cannot outlast the token (19 × 0.5 s + the requests'
    # own few ms each) and every consumer request is served throughout.
    upstream = await make_upstream(access_ttl=30)
    fake = upstream.fake
    tokend = await make_tokend(upstream.url, upstream.ca_pem, wait="listening",
                               target={"refresh_at": 0.05, "jitter": 0.01, "max_backoff": "500ms"})
    async with consuming(tokend, fake) as consumer:
        await tokend.ready()
        ready_at = time.monotonic()
        fake.faults.fail_next("any", 503, count=20)
        await eventually(lambda: fake.count("refresh", 200) >= 1, timeout=20,
                         what="the first success after the storm")
        await assert_recovered(tokend, consumer, since=ready_at)

    storm = calls_of(fake)[1:22]
    assert summary(storm) == ([("refresh", 503)] * 3 + [("login", 503)]) * 5 + [("refresh", 200)]
    consecutive = [e["consecutive_failures"] for e in failures(tokend)]
    assert consecutive == list(range(1, 21)), consecutive
    states = {e["new"] for e in tokend.events("target.state_changed")}
    assert "degraded" in states and "expired" not in states, states
    # (3) Rate: the 20 failures took `span` s; each delay is uniform on [0, 0.5 s] (the cap in force
    # with max_backoff 0.5 s), so more than max_calls(span) calls in that span would be a failure of
    # the backoff (20 calls need about 2 s at the very least; the mean is 19 × 0.25 s ≈ 5 s).
    span = storm[19].at - storm[0].at
    assert max_calls(span, lambda _: 0.5) >= 20, span
    # Recovery: no delay exceeds 0.5 s, so the 21 calls (20 failures, then the success) fit in
    # 20 × (0.5 s + 0.1 s for each call's own time and the event loop's latency, generously).
    assert storm[20].at - storm[0].at <= 20 * (0.5 + 0.1), storm[20].at - storm[0].at


async def test_fault_429_with_retry_after(make_upstream: MakeUpstream, make_tokend: MakeTokend) -> None:
    # 30-second tokens refreshed at 5 % (1.1 to 1.8 s in): a tenth of the remaining life is about
    # 2.6 s then, so a Retry-After of 2 s is within the cap and one of 600 s is beyond it.
    ttl = 30
    upstream = await make_upstream(access_ttl=ttl)
    fake = upstream.fake
    tokend = await make_tokend(upstream.url, upstream.ca_pem, wait="listening",
                               target={"refresh_at": 0.05, "jitter": 0.01})
    fake.faults.fail_next("refresh", 429, headers={"Retry-After": "2"})
    fake.faults.fail_next("refresh", 429, headers={"Retry-After": "600"})
    async with consuming(tokend, fake) as consumer:
        await tokend.ready()
        ready_at = time.monotonic()
        await eventually(lambda: fake.count("refresh", 200) >= 1, timeout=12,
                         what="the refresh after two 429s")
        await assert_recovered(tokend, consumer, since=ready_at)

    login, first, second, third = calls_of(fake)[:4]
    assert summary([login, first, second, third]) == [
        ("login", 201), ("refresh", 429), ("refresh", 429), ("refresh", 200)]
    events = failures(tokend)
    assert [(e["status"], e["outcome"]) for e in events] == [(429, "http_error")] * 2, events
    # The token is served until login_sent + lifetime, with lifetime in [ttl - 2, ttl - 1] and
    # login_sent in [login.at - ARRIVAL, login.at]; a failure is handled at some instant `now` after
    # the call's arrival (within 1 s, however loaded the machine), and the cap is then
    # max(1 s, (login_sent + lifetime - now) / 10).
    def cap(now: float, lifetime: float, send_delay: float) -> float:
        return max(1.0, (login.at - send_delay + lifetime - now) / 10)

    # Retry-After 2 s, within the cap: the delay is max(jitter draw, 2 s) = 2 s, counted from the
    # answer to `first`, which came after `first.at`; so no sooner than 2 s.
    assert 2.0 <= second.at - first.at <= 2.0 + SLACK, second.at - first.at
    # Retry-After 600 s, beyond the cap: the delay is exactly the cap, no sooner and far from 600 s.
    # (The jitter draw is at most min(cap, 2 s), so it cannot exceed the Retry-After term.)
    low, high = cap(second.at + 1.0, ttl - 2, ARRIVAL), cap(second.at, ttl - 1, 0.0)
    assert low - 0.01 <= third.at - second.at <= high + SLACK, (third.at - second.at, low, high)
    assert fake.count("login") == 1


async def test_fault_timeouts(make_upstream: MakeUpstream, make_tokend: MakeTokend) -> None:
    # request_timeout 1 s; the fake waits 2 s before every answer while the fault lasts. 15-second
    # tokens (served 13 s or more) refreshed at 10 %: three timed-out attempts (1 s each plus a delay
    # of at most 1.3 s) and the recovery fit well inside the token's life.
    timeout = 1.0
    upstream = await make_upstream(access_ttl=15)
    fake = upstream.fake
    tokend = await make_tokend(upstream.url, upstream.ca_pem, wait="listening",
                               target={"request_timeout": "1s", "refresh_at": 0.1, "jitter": 0.02})
    async with consuming(tokend, fake) as consumer:
        await tokend.ready()
        ready_at = time.monotonic()
        fake.faults.delay = 2.0
        on_at = time.monotonic()

        error = await eventually(lambda: last_error(tokend), timeout=6, what="lastError")
        assert error["message"] == f"refresh: no answer within {timeout:g}s", error
        await eventually(lambda: len(failures(tokend)) >= 3, timeout=10, what="three timeouts")
        await assert_up(tokend)
        fake.faults.delay = 0.0
        off_at = time.monotonic()
        await eventually(lambda: any(c.status in (200, 201) for c in calls_between(fake, off_at)),
                         timeout=2 * timeout + 1.5 + SLACK * 2, what="a success after the fault")
        await assert_recovered(tokend, consumer, since=ready_at)

    events = failures(tokend)
    assert {e["outcome"] for e in events} == {"timeout"}, events
    operations = [e["operation"] for e in events]
    # Three refreshes time out, then a login is due; it succeeds unless it went out before the fault
    # was lifted.
    assert operations[:3] == ["refresh"] * 3 and operations[3:4] in ([], ["login"]), operations
    # (3) Each attempt lasts the whole request_timeout (the fake answers only after 2 s) and the next
    # one starts only after it gave up: calls arrive at least 1 s apart, less the arrival latency of
    # the earlier one (ARRIVAL). Hence at most window / request_timeout + 1 calls in the fault
    # window, whatever the jitter.
    window_calls = calls_between(fake, on_at, off_at)
    gaps = [b.at - a.at for a, b in itertools.pairwise(window_calls)]
    assert all(gap >= timeout - ARRIVAL for gap in gaps), gaps
    assert len(window_calls) <= (off_at - on_at) / timeout + 1, (len(window_calls), off_at - on_at)


@pytest.mark.parametrize("when", ["headers", "no_response"])
async def test_fault_connection_dropped_mid_response(
        when: DropWhen, make_upstream: MakeUpstream, make_tokend: MakeTokend) -> None:
    # "headers": a 200 status line, headers and part of the body, then the connection closes;
    # "no_response": closed without a byte. Four in a row: three refreshes, then the login they lead to.
    upstream = await make_upstream(access_ttl=10)
    fake = upstream.fake
    tokend = await make_tokend(upstream.url, upstream.ca_pem, wait="listening", target=EARLY_REFRESH)
    async with consuming(tokend, fake) as consumer:
        await tokend.ready()
        ready_at = time.monotonic()
        fake.faults.drop_next("any", count=4, when=when)
        await eventually(lambda: fake.count("refresh", 200) >= 1, timeout=12,
                         what="a refresh after the drops")
        await assert_recovered(tokend, consumer, since=ready_at)

    calls = calls_of(fake)[1:6]
    assert summary(calls) == [("refresh", 0)] * 3 + [("login", 0), ("refresh", 200)], summary(calls)
    events = failures(tokend)
    assert [(e["operation"], e["outcome"]) for e in events] == \
        [("refresh", "network_error")] * 3 + [("login", "network_error")], events
    # (3) Exactly one call per failure (no hidden retry of a half-read answer) and one more that
    # succeeds. Refreshed at 30 % of an 8-to-9-s life, the remaining life is under 10 s, so every cap
    # is the 1 s floor: the four delays add up to at most 4 s.
    assert calls[4].at - calls[0].at <= 4 * 1.0 + SLACK, calls[4].at - calls[0].at


# -- 6: a TLS handshake that hangs ----------------------------------------------------------------


class HangingServer:
    """Accepts TCP connections and never answers: a TLS handshake with it hangs."""

    def __init__(self) -> None:
        self.connections: list[list[float]] = []  # [accepted at, closed at] on the monotonic clock
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"https://127.0.0.1:{port}"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        record = [time.monotonic(), math.inf]
        self.connections.append(record)
        self._writers.append(writer)
        try:
            while await reader.read(4096):  # the ClientHello, never answered
                pass
        except OSError:
            pass
        finally:
            record[1] = time.monotonic()
            writer.close()

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()


async def test_fault_tls_handshake_hangs(
        make_upstream: MakeUpstream, make_tokend: MakeTokend, tls: TLS, workdir: Path) -> None:
    hanging = HangingServer()
    url = await hanging.start()
    notify = NotifyListener(workdir / "notify")
    upstream = await make_upstream(access_ttl=30)
    fake = upstream.fake
    timeout = 1.0
    quick = {"request_timeout": "1s"}
    try:
        started_at = time.monotonic()
        tokend = await make_tokend(url, tls.ca_pem, wait="listening", target=quick,
                                   env={"NOTIFY_SOCKET": str(notify.path)})
        async with consuming(tokend, fake) as consumer:
            # READY=1 once the first attempt has given up: the hang does not block start-up.
            await eventually(lambda: notify.first("READY=1") is not None,
                             timeout=timeout + 5, what="READY=1")
            assert time.monotonic() - started_at < timeout + 6  # start-up, then one attempt
            error = await eventually(lambda: last_error(tokend), timeout=3, what="lastError")
            assert error["message"] == f"login: no answer within {timeout:g}s", error
            assert error["errorCode"] == "UPSTREAM_UNAVAILABLE", error
            assert (await state(tokend)) == "expired"
            answer = await tokend.get("/v1/token")
            assert answer.status == 503 and answer.json()["errorCode"] == "TOKEN_UNAVAILABLE"
            await assert_up(tokend)

            # Let it retry for a while, then count.
            await asyncio.sleep(3.0)
            window_end = time.monotonic()
            await assert_up(tokend)
            events = failures(tokend)
            assert events and {e["outcome"] for e in events} == {"timeout"}, events
            assert set(consumer.statuses()) == {503}

            # Repoint at the real fake: SIGHUP with the url changed starts the target afresh.
            write_config(workdir, upstream.url, upstream.ca_pem, target=quick)
            repointed_at = time.monotonic()
            tokend.signal(signal.SIGHUP)
            await tokend.ready(timeout=10)
            reloaded = tokend.events("config.reloaded")
            assert reloaded and reloaded[-1]["restarted"] == ["t1"], reloaded
            await tokend.token()
            await eventually(lambda: consumer.statuses(since=time.monotonic() - 0.3).count(200),
                             timeout=2, what="the consumer served")
            await assert_up(tokend)
        assert fake.count("login") == 1
    finally:
        await hanging.close()
        notify.close()

    # (3) Each attempt holds its connection for the whole request_timeout and the next starts only
    # after it gave up (single flight): connections never overlap, last about request_timeout each,
    # and there are at most window / request_timeout + 1 of them, whatever the jitter. (The attempt
    # under way at the SIGHUP is cancelled when the target restarts: it ends early.)
    connections = [c for c in hanging.connections if c[0] <= window_end]
    assert connections
    for (_, closed), (opened, _) in itertools.pairwise(connections):
        assert opened >= closed - 0.2, hanging.connections  # 0.2 s: this loop's latency
    held = [closed - opened for opened, closed in connections if closed <= repointed_at]
    assert all(timeout - ARRIVAL <= h <= timeout + SLACK for h in held), held
    assert len(connections) <= (window_end - started_at) / timeout + 1, connections


# -- 7-10: answers tokend cannot use ----------------------------------------------------------------


async def check_unusable_answers(make_upstream: MakeUpstream, make_tokend: MakeTokend, kind: MalformedKind,
                                 message: str) -> None:
    """The first login and the first refresh answer with ``kind``; each costs exactly one retry."""
    upstream = await make_upstream(access_ttl=6)
    fake = upstream.fake
    fake.faults.malformed_next("login", kind)
    fake.faults.malformed_next("refresh", kind)
    tokend = await make_tokend(upstream.url, upstream.ca_pem, wait="listening", target=EARLY_REFRESH)
    async with consuming(tokend, fake) as consumer:
        await tokend.ready()
        ready_at = time.monotonic()
        await eventually(lambda: tokend.events("token.refreshed"), timeout=8,
                         what="a refresh after the unusable one")
        await assert_recovered(tokend, consumer, since=ready_at)
        assert await last_error(tokend) is None

    # A refused login answer that carried a refresh id has that session revoked (SPEC §8.2).
    revokes = calls_of(fake, "revoke")
    assert len(revokes) == (0 if kind in ("not_json", "missing_fields") else 1), summary(revokes)
    calls = [c for c in calls_of(fake) if c.operation != "revoke"][:4]
    assert summary(calls) == [("login", 201)] * 2 + [("refresh", 200)] * 2, summary(calls)
    events = failures(tokend)
    assert [(e["operation"], e["outcome"]) for e in events] == \
        [("login", "invalid_response"), ("refresh", "invalid_response")], events
    assert all(message in e["message"] for e in events), [e["message"] for e in events]
    # Only the good answers' tokens were ever served (the consumer checks each against the ones the
    # fake issued, which leave the unusable ones out).
    assert set(consumer.longest) <= {fake.issued_access_tokens[0], fake.issued_access_tokens[1]}
    # (3) One retry per unusable answer, within 1 s: the first failure's cap is min(cap, 2^0 s) = 1 s,
    # with or without a token.
    assert calls[1].at - calls[0].at <= 1.0 + SLACK, calls[1].at - calls[0].at
    assert calls[3].at - calls[2].at <= 1.0 + SLACK, calls[3].at - calls[2].at


async def test_fault_malformed_json(make_upstream: MakeUpstream, make_tokend: MakeTokend) -> None:
    # An HTML page where the TokenPair (login) and the JSON string (refresh) should be.
    await check_unusable_answers(make_upstream, make_tokend, "not_json", "the answer is not JSON")


async def test_fault_token_not_a_jwt(make_upstream: MakeUpstream, make_tokend: MakeTokend) -> None:
    await check_unusable_answers(make_upstream, make_tokend, "not_jwt", "is not a compact JWS")


async def test_fault_token_without_exp(make_upstream: MakeUpstream, make_tokend: MakeTokend) -> None:
    await check_unusable_answers(make_upstream, make_tokend, "no_exp", "the access token has no 'exp' claim")


async def test_fault_exp_in_the_past(make_upstream: MakeUpstream, make_tokend: MakeTokend) -> None:
    # iat and exp both over a minute in the past: exp − iat alone looks like a normal lifetime, and
    # exp − Date (the upstream's own clock) is what shows the token is already dead.
    await check_unusable_answers(make_upstream, make_tokend, "expired",
                                 "the access token is already expired when issued")


async def test_fault_iat_in_the_future(make_upstream: MakeUpstream, make_tokend: MakeTokend) -> None:
    # The first refresh answers a token with iat (and nbf) an hour ahead and exp = iat + ttl. SPEC
    # §5.1 tracks sent + (exp − iat): the normal lifetime. exp − Date would be an hour longer; tokend
    # must not serve the token for that long, nor refresh it an hour late.
    ttl, refresh_at, jitter = 6, 0.5, 0.02
    upstream = await make_upstream(access_ttl=ttl)
    fake = upstream.fake
    fake.faults.malformed_next("refresh", "iat_future")
    tokend = await make_tokend(upstream.url, upstream.ca_pem, wait="listening", target=MID_REFRESH)
    async with consuming(tokend, fake, trust_fake_signature=True) as consumer:
        await tokend.ready()
        ready_at = time.monotonic()
        await eventually(lambda: fake.count("refresh", 200) >= 2, timeout=12,
                         what="the refresh after the token from the future")
        await assert_up(tokend)
        assert set(consumer.statuses(since=ready_at)) == {200}

    future = [t for t in consumer.longest if claims_of(t)["iat"] > fake.now() + 1800]
    assert len(future) == 1, "the token with the future iat was never served"
    assert consumer.longest[future[0]] <= ttl - 1, consumer.longest[future[0]]
    assert all(expires_in <= ttl - 1 for expires_in in consumer.longest.values()), consumer.longest
    assert not failures(tokend)
    # The refresh after it came on the normal schedule: exp − iat − 1 s = ttl − 1 exactly here.
    first, second = calls_of(fake, "refresh")[:2]
    low, high = (ttl - 1) * (refresh_at - jitter) - ARRIVAL, (ttl - 1) * (refresh_at + jitter) + SLACK
    assert low <= second.at - first.at <= high, (second.at - first.at, low, high)
    assert fake.count("login") == 1


# -- 11-12: clocks -----------------------------------------------------------------------------------


@pytest.mark.parametrize("skew", [600, -600])
async def test_fault_server_clock_skew(
        skew: int, make_upstream: MakeUpstream, make_tokend: MakeTokend) -> None:
    ttl, refresh_at, jitter = 5, 0.5, 0.02
    upstream = await make_upstream(access_ttl=ttl)
    fake = upstream.fake
    fake.faults.clock_skew = skew  # iat, exp and Date all come from the fake's skewed clock
    tokend = await make_tokend(upstream.url, upstream.ca_pem, wait="listening", target=MID_REFRESH)
    async with consuming(tokend, fake) as consumer:
        await tokend.ready()
        ready_at = time.monotonic()
        token = await tokend.token()
        status = await tokend.status()
        assert status["state"] in ("valid", "refreshing"), status
        assert status["lastError"] is None and status["consecutiveFailures"] == 0, status
        assert 0 < token["expiresIn"] <= ttl - 1, token
        # expiresAt is on the local clock, upstreamExp is the JWT's, skew and all.
        expires_at = datetime.datetime.strptime(token["expiresAt"], "%Y-%m-%dT%H:%M:%S%z")
        assert abs(expires_at.timestamp() - (time.time() + token["expiresIn"])) <= 2, token
        assert abs(token["upstreamExp"] - (time.time() + skew + token["expiresIn"])) <= 3, token

        await eventually(lambda: fake.count("refresh", 200) >= 2, timeout=10, what="two refreshes")
        await eventually(lambda: len(consumer.longest) >= 3, timeout=2,
                         what="the consumer served the third token")
        await assert_up(tokend)
        assert set(consumer.statuses(since=ready_at)) == {200}
        status = await tokend.status()
        assert status["lastError"] is None and 0 < status["expiresIn"] <= ttl - 1, status

    # Normal lifetimes: the first answers with each token (every ~100 ms) show ttl - 3 to ttl - 1 s.
    assert all(ttl - 3 <= longest <= ttl - 1 for longest in consumer.longest.values()), consumer.longest
    assert not failures(tokend)
    assert fake.count("login") == 1
    gaps = [b.at - a.at for a, b in itertools.pairwise(successes(fake))]
    low, high = refresh_gap(ttl, refresh_at, jitter)
    assert all(low <= gap <= high for gap in gaps), (gaps, low, high)


def libfaketime() -> str | None:
    """Debian's libfaketime (package ``libfaketime``, pulled in by ``faketime``), if installed."""
    for pattern in ("/usr/lib/*/faketime/libfaketime.so.1", "/usr/lib/faketime/libfaketime.so.1",
                    "/usr/local/lib/faketime/libfaketime.so.1"):
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


def event_offset(event: dict[str, Any]) -> float:
    """How far the wall clock of the process that logged ``event`` was from ours, roughly."""
    logged = datetime.datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()
    return logged - time.time()


async def test_fault_local_wall_clock_jumps(
        make_upstream: MakeUpstream, make_tokend: MakeTokend, tls: TLS, workdir: Path) -> None:
    lib = libfaketime()
    if lib is None:
        pytest.skip("libfaketime is not installed (Debian package faketime; see .ci/faketime-setup)")
    # The wall clock decides certificate validity: trustme's certificates are valid from 2000 to
    # 3000, far wider than the ±1 h jumps.
    now = datetime.datetime.now(datetime.UTC)
    for pem in (tls.ca.cert_pem.bytes(), tls.cert.cert_chain_pems[0].bytes()):
        cert = x509.load_pem_x509_certificate(pem)
        assert cert.not_valid_before_utc < now - datetime.timedelta(hours=2)
        assert cert.not_valid_after_utc > now + datetime.timedelta(hours=2)

    # libfaketime reads the offset from this file at every clock read (FAKETIME_NO_CACHE) and leaves
    # the monotonic clock alone (FAKETIME_DONT_FAKE_MONOTONIC), as a real wall-clock step would.
    # (libfaketime 0.9.10 then makes time.sleep() fail with EINVAL; the daemon sleeps only through
    # asyncio, which waits in epoll with a timeout and is unaffected.)
    offset_file = workdir / "faketime.rc"

    def jump(offset: str) -> None:
        tmp = workdir / "faketime.rc.tmp"
        tmp.write_text(offset + "\n")
        os.replace(tmp, offset_file)  # never a half-written file for the daemon to read

    jump("+0")
    env = {"LD_PRELOAD": lib, "FAKETIME_TIMESTAMP_FILE": str(offset_file), "FAKETIME_NO_CACHE": "1",
           "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
    ttl, refresh_at, jitter = 5, 0.5, 0.02
    upstream = await make_upstream(access_ttl=ttl)
    fake = upstream.fake
    tokend = await make_tokend(upstream.url, upstream.ca_pem, wait="listening", env=env, target=MID_REFRESH)
    # A phase outlasts the longest gap between refreshes by a second, so each sees at least one.
    _, longest_gap = refresh_gap(ttl, refresh_at, jitter)
    async with consuming(tokend, fake) as consumer:
        await tokend.ready()
        ready_at = time.monotonic()
        for offset, seconds in (("+0", 0), ("+1h", 3600), ("-1h", -3600)):
            jump(offset)
            before = len(tokend.events("token.refreshed"))
            await asyncio.sleep(longest_gap + 1.0)
            refreshed = tokend.events("token.refreshed")[before:]
            assert refreshed, f"no refresh after the jump to {offset}"
            # The daemon's clock did jump (its log timestamps show it), so the test is not vacuous.
            assert abs(event_offset(refreshed[-1]) - seconds) < 10, (offset, refreshed[-1])
            await assert_up(tokend)
        assert set(consumer.statuses(since=ready_at)) == {200}

    assert not failures(tokend)
    assert fake.count("login") == 1  # never treated as expired and replaced by a new login
    gaps = [b.at - a.at for a, b in itertools.pairwise(successes(fake))]
    low, high = refresh_gap(ttl, refresh_at, jitter)
    assert len(gaps) >= 3 and all(low <= gap <= high for gap in gaps), (gaps, low, high)


# -- 13-14: signals during a refresh ----------------------------------------------------------------


async def refresh_in_flight(fake: FakeSddc) -> CallRecord:
    """Wait for a refresh the fake has received but not answered yet."""
    def pending() -> CallRecord | None:
        return next((c for c in calls_of(fake, "refresh") if c.status == 0), None)
    record: CallRecord = await eventually(pending, timeout=8, interval=0.02, what="a refresh in flight")
    return record


async def test_fault_sighup_during_refresh(make_upstream: MakeUpstream, make_tokend: MakeTokend) -> None:
    ttl, delay = 10, 2.0  # request_timeout is 3 s: the delayed refresh still succeeds
    upstream = await make_upstream(access_ttl=ttl)
    fake = upstream.fake
    tokend = await make_tokend(upstream.url, upstream.ca_pem, wait="listening", target=EARLY_REFRESH)
    async with consuming(tokend, fake) as consumer:
        await tokend.ready()
        ready_at = time.monotonic()
        before = await tokend.token()
        fake.faults.delays["refresh"] = delay  # every refresh from now on
        delayed_from = time.monotonic()
        in_flight = await refresh_in_flight(fake)
        assert calls_of(fake, "refresh")[0] is in_flight  # the token's first refresh
        tokend.signal(signal.SIGHUP)
        reloaded = await eventually(lambda: tokend.events("config.reloaded"), timeout=delay,
                                    what="config.reloaded")
        assert reloaded[0]["kept"] == ["t1"] and reloaded[0]["restarted"] == [], reloaded
        # The token is kept: the one from before the reload is still served while the refresh is out.
        if time.monotonic() < in_flight.at + delay - 0.2:
            assert (await tokend.token())["fingerprint"] == before["fingerprint"]

        await eventually(lambda: fake.count("refresh", 200) >= 2, timeout=10,
                         what="the in-flight refresh and the next one")
        # Recovered: valid (or already refreshing again, the next refresh being due soon), no error.
        status = await tokend.status()
        assert status["state"] in ("valid", "refreshing"), status
        assert status["lastError"] is None and status["consecutiveFailures"] == 0, status
        await assert_up(tokend)
        assert set(consumer.statuses(since=ready_at)) == {200}

    names = [e["event"] for e in tokend.events()]
    assert names.index("config.reloaded") < names.index("token.refreshed")
    assert fake.count("login") == 1 and not failures(tokend)
    # (3) Single flight across the reload: each call's [arrival, answer] interval (arrival + 2 s for
    # a delayed refresh) ends before the next call arrives, and there is no extra call at all: the
    # login, then one refresh per token.
    spans = [(c.at, c.at + (delay if c.operation == "refresh" and c.at >= delayed_from else 0.0))
             for c in fake.calls]
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end - 0.01, spans
    assert summary(fake.calls[:3]) == [("login", 201), ("refresh", 200), ("refresh", 200)]
    # The refresh after the reload is on the normal schedule, counted from when the delayed one was
    # sent (SPEC §5.1: the lifetime runs from the send).
    second = calls_of(fake, "refresh")[1]
    low, high = refresh_gap(ttl, 0.3, 0.02)
    assert max(low, delay) <= second.at - in_flight.at <= high, second.at - in_flight.at


async def test_fault_sigterm_during_refresh(make_upstream: MakeUpstream, make_tokend: MakeTokend) -> None:
    upstream = await make_upstream(access_ttl=10)
    fake = upstream.fake
    tokend = await make_tokend(upstream.url, upstream.ca_pem, wait="listening", target=EARLY_REFRESH)
    async with consuming(tokend, fake) as consumer:
        await tokend.ready()
        fake.faults.delays["refresh"] = 2.0
        await refresh_in_flight(fake)
        consumer.may_vanish = True
        tokend.signal(signal.SIGTERM)
        signalled_at = time.monotonic()
        # SPEC §5.8: in-flight consumer requests get at most 5 s; a second of margin for the rest.
        assert await tokend.wait_exit(timeout=10) == 0
        took = time.monotonic() - signalled_at
        assert took <= 6.0, took

    assert not tokend.socket.exists()
    assert "Traceback" not in tokend.stderr() + tokend.stdout(), tokend.stderr()
    assert tokend.events("daemon.stopping") and tokend.events("daemon.stopped")
    # Nothing new went upstream once it was told to stop (no login, no revoke: revoke_on_exit off).
    assert not calls_between(fake, signalled_at), summary(calls_between(fake, signalled_at))


# -- 15: the socket's directory ---------------------------------------------------------------------


async def check_socket_directory_refused(make_tokend: MakeTokend, upstream: Upstream,
                                         directory: Path, fix: str) -> None:
    sock = directory / "tokend.sock"
    started = time.monotonic()
    tokend = await make_tokend(upstream.url, upstream.ca_pem, wait=None, server={"socket": str(sock)})
    assert await tokend.wait_exit(timeout=15) == 2
    assert time.monotonic() - started < 10
    assert_one_line_error(tokend.stderr(), "server.socket", str(directory), fix)
    assert "Traceback" not in tokend.stdout()
    assert not sock.exists()
    assert upstream.fake.calls == []  # (3) it failed before any upstream call


async def test_fault_socket_directory_missing(
        upstream: Upstream, make_tokend: MakeTokend, workdir: Path) -> None:
    await check_socket_directory_refused(make_tokend, upstream, workdir / "absent", "create the directory")


@contextlib.contextmanager
def unwritable(directory: Path) -> Iterator[None]:
    """Make ``directory`` unwritable for tokend, which runs as this test's user.

    As an ordinary user, mode 0555 does it. Root ignores modes, so as root the directory is made
    immutable (``chattr +i``), which binds root too; running tokend under another uid instead would
    need the interpreter, the venv and the checkout readable by that uid, which a CI image does not
    promise. A file system without the immutable flag (tmpfs) skips the test, saying so.
    """
    if os.geteuid() != 0:
        directory.chmod(0o555)
        try:
            yield
        finally:
            directory.chmod(0o755)
        return
    chattr = shutil.which("chattr")
    if chattr is None:
        pytest.skip("running as root without chattr: cannot make a directory unwritable for root")
    done = subprocess.run([chattr, "+i", str(directory)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"running as root and chattr +i is not supported here: {done.stderr.strip()}")
    try:
        assert not os.access(directory, os.W_OK)
        yield
    finally:
        subprocess.run([chattr, "-i", str(directory)], check=True)


async def test_fault_socket_directory_not_writable(
        upstream: Upstream, make_tokend: MakeTokend, workdir: Path) -> None:
    directory = workdir / "locked"
    directory.mkdir()
    with unwritable(directory):
        await check_socket_directory_refused(make_tokend, upstream, directory, "writable")
