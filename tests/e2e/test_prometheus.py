"""A real Prometheus scrapes a running tokend: what it stores agrees with what tokend serves.

Prometheus (the Debian package; ``bash .ci/prometheus-setup`` installs it) runs on free loopback
ports with a 1 s scrape interval and the rules of ``deploy/prometheus/tokend.rules.yml``. Every
query and its answer is printed (``pytest -s``) and quoted in assertion messages.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support import Tokend, Upstream, eventually, free_port

PROMETHEUS = shutil.which("prometheus")
RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "tokend.rules.yml"
T1 = 'job="tokend",target="t1"'

pytestmark = pytest.mark.skipif(
    PROMETHEUS is None, reason="prometheus is not installed (bash .ci/prometheus-setup installs it)")


class Prometheus:
    """A running Prometheus server and a transcript of the queries made to it."""

    def __init__(self, proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
        self.proc = proc
        self.url = url
        self.log = log
        self.transcript: list[str] = []
        self._shown: dict[str, str] = {}
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))

    async def wait_ready(self, timeout: float = 30.0) -> None:
        async def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited {self.proc.returncode}:\n{self.log_tail()}")
            try:
                async with self.session.get(self.url + "/-/ready") as r:
                    return r.status == 200
            except aiohttp.ClientError:
                return False
        await eventually(ready, timeout, interval=0.1, what="prometheus to be ready")

    async def query(self, promql: str) -> list[dict[str, Any]]:
        """The instant vector ``promql`` evaluates to now."""
        async with self.session.get(self.url + "/api/v1/query", params={"query": promql}) as r:
            answer = await r.json()
        assert answer.get("status") == "success", f"{promql}: {answer}"
        result: list[dict[str, Any]] = answer["data"]["result"]
        shown = "; ".join(f"{_labels(s['metric'])} {s['value'][1]}" for s in result) or "(empty)"
        line = f"PromQL> {promql}\n    => {shown}"
        self.transcript.append(line)
        if self._shown.get(promql) != shown:  # polling repeats itself: print changes only
            self._shown[promql] = shown
            print(line)
        return result

    async def value(self, promql: str) -> float | None:
        """The one sample ``promql`` evaluates to now, or None when the result is empty."""
        result = await self.query(promql)
        if not result:
            return None
        assert len(result) == 1, f"{promql}: expected one series, got {result}"
        return float(result[0]["value"][1])

    def recent(self, lines: int = 12) -> str:
        """The last queries and answers, for assertion messages."""
        return "\n".join(self.transcript[-lines:])

    def log_tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])

    async def stop(self) -> None:
        await self.session.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                await asyncio.to_thread(self.proc.wait, 15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                await asyncio.to_thread(self.proc.wait)


def _labels(metric: dict[str, str]) -> str:
    name = metric.get("__name__", "")
    rest = ",".join(f'{k}="{v}"' for k, v in sorted(metric.items()) if k != "__name__")
    return f"{name}{{{rest}}}"


@pytest.fixture
def metrics_port() -> int:
    return free_port()


@pytest.fixture
async def prometheus(workdir: Path, metrics_port: int) -> AsyncIterator[Prometheus]:
    """Prometheus scraping tokend's metrics listener at ``metrics_port`` every second."""
    assert PROMETHEUS is not None
    web_port = free_port()
    config = workdir / "prometheus.yml"
    config.write_text(textwrap.dedent(f"""\
        global:
          scrape_interval: 1s
          scrape_timeout: 1s
          evaluation_interval: 1s
        rule_files:
          - {RULES}
        scrape_configs:
          - job_name: tokend
            static_configs:
              - targets: ["127.0.0.1:{metrics_port}"]
        """))
    log = workdir / "prometheus.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--web.listen-address=127.0.0.1:{web_port}",
             f"--storage.tsdb.path={workdir / 'prometheus-data'}"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = Prometheus(proc, f"http://127.0.0.1:{web_port}", log)
    try:
        await server.wait_ready()
        yield server
    finally:
        await server.stop()


async def _scraped(prom: Prometheus) -> None:
    async def up() -> bool:
        return await prom.value('up{job="tokend"}') == 1 and \
            await prom.value(f"tokend_token_valid{{{T1}}}") == 1
    await eventually(up, 20, interval=0.5, what="Prometheus to scrape tokend with a token")


def _epoch(iso: str) -> float:
    return datetime.strptime(iso, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


async def test_prometheus_holds_the_served_tokens_expiry_and_counts_every_refresh(
        make_upstream: Callable[..., Any], make_tokend: Callable[..., Any],
        prometheus: Prometheus, metrics_port: int) -> None:
    upstream: Upstream = await make_upstream(access_ttl=6)  # served 5 s, refreshed every ~3.5 s
    fake = upstream.fake
    tokend: Tokend = await make_tokend(upstream.url, upstream.ca_pem,
                                       metrics={"listen": f"127.0.0.1:{metrics_port}"})
    prom = prometheus
    await _scraped(prom)

    # (a) The stored expiry is the served token's: expiresAt is that instant truncated to the second.
    # Tokens change every few seconds, so compare a scrape taken while one token stayed current.
    match: tuple[dict[str, Any], float] | None = None
    deadline = time.monotonic() + 20
    while match is None and time.monotonic() < deadline:
        before = await tokend.token()
        stored = await prom.value(f"tokend_token_expiry_timestamp_seconds{{{T1}}}")
        after = await tokend.token()
        print(f"    served: expiresAt={before['expiresAt']} expiresIn={before['expiresIn']}"
              f" ({_epoch(before['expiresAt']):.0f})")
        if stored is not None and before["fingerprint"] == after["fingerprint"] and \
                _epoch(before["expiresAt"]) <= stored < _epoch(before["expiresAt"]) + 1:
            match = before, stored
        else:
            await asyncio.sleep(0.3)
    assert match is not None, \
        f"Prometheus never held the served token's expiry (expiresAt)\n{prom.recent()}"
    token, stored = match
    assert abs(stored - time.time() - token["expiresIn"]) < 2, (token, stored, prom.recent())

    # The recording rule the alerts and the dashboard use: seconds left on a 5-second token.
    async def seconds_left() -> bool:
        left = await prom.value(f"tokend:token_seconds_left{{{T1}}}")
        return left is not None and 0 < left <= 5
    await eventually(seconds_left, 10, interval=0.5, what=f"tokend:token_seconds_left\n{prom.recent()}")

    # (b) The refresh counter moves with the tokens the fake issues, at most one scrape behind.
    refreshes = (f'tokend_upstream_requests_total{{{T1},operation="refresh",outcome="success"}}')
    first = await prom.value(refreshes)
    assert first is not None, prom.recent()

    async def two_more() -> bool:
        now = await prom.value(refreshes)
        return now is not None and now >= first + 2
    await eventually(two_more, 20, interval=0.5, what=f"two more refreshes in Prometheus\n{prom.recent()}")
    for _ in range(3):
        issued_before = fake.count("refresh", 200)
        stored_count = await prom.value(refreshes)
        issued_after = fake.count("refresh", 200)
        print(f"    fake issued {issued_before}..{issued_after} refreshed tokens")
        assert stored_count is not None and issued_before - 1 <= stored_count <= issued_after, (
            f"Prometheus counts {stored_count} refreshes, the fake answered {issued_before}.."
            f"{issued_after} with 200\n{prom.recent()}")
        await asyncio.sleep(1.2)
    logins = await prom.value(f'tokend_upstream_requests_total{{{T1},operation="login",outcome="success"}}')
    assert logins == fake.count("login", 201) == 1, (logins, fake.count("login", 201), prom.recent())


async def test_prometheus_shows_upstream_failures_and_the_recovery(
        make_upstream: Callable[..., Any], make_tokend: Callable[..., Any],
        prometheus: Prometheus, metrics_port: int) -> None:
    upstream: Upstream = await make_upstream(access_ttl=6)
    fake = upstream.fake
    tokend: Tokend = await make_tokend(upstream.url, upstream.ca_pem,
                                       metrics={"listen": f"127.0.0.1:{metrics_port}"})
    prom = prometheus
    await _scraped(prom)

    # (c) Two refreshes answered 500: counted as http_error, exactly as often as the fake failed.
    http_errors = f'tokend_upstream_requests_total{{{T1},operation="refresh",outcome="http_error"}}'
    assert await prom.value(http_errors) == 0, prom.recent()
    fake.faults.fail_next("refresh", 500, count=2)

    async def two_errors() -> bool:
        return await prom.value(http_errors) == 2 and fake.count("refresh", 500) == 2
    await eventually(two_errors, 20, interval=0.5, what=f"two http_error refreshes\n{prom.recent()}")

    async def recovered() -> bool:
        return await prom.value(f"tokend_token_valid{{{T1}}}") == 1 and \
            await prom.value(f"tokend_refresh_consecutive_failures{{{T1}}}") == 0
    await eventually(recovered, 20, interval=0.5, what=f"recovery\n{prom.recent()}")

    # The upstream down: Prometheus sees the target degrade (failures in a row, state not valid).
    fake.faults.down = True
    failing = (f"tokend_refresh_consecutive_failures{{{T1}}} >= 2 and on (target)"
               f' tokend_target_state{{{T1},state=~"degraded|expired"}} == 1')

    async def degraded() -> bool:
        return fake.count("refresh", 503) + fake.count("login", 503) >= 2 and \
            bool(await prom.query(failing))
    try:
        await eventually(degraded, 20, interval=0.5, what=f"a failing target\n{prom.recent()}")
    finally:
        fake.faults.down = False

    # Back up: a token again, no failures, and every 5xx the fake sent is counted once.
    await eventually(recovered, 45, interval=0.5, what=f"recovery\n{prom.recent()}")

    by_operation = f'sum by (operation) (tokend_upstream_requests_total{{{T1},outcome="http_error"}})'

    async def counted() -> bool:
        stored = {s["metric"]["operation"]: float(s["value"][1]) for s in await prom.query(by_operation)}
        sent = {op: fake.count(op, 500) + fake.count(op, 503) for op in ("login", "refresh", "revoke")}
        print(f"    fake answered 5xx: {sent}")
        return stored == sent
    await eventually(counted, 10, interval=0.5,
                     what=f"http_error counts equal to the fake's 5xx answers\n{prom.recent()}")
    status = await tokend.status()
    assert status["state"] in ("valid", "refreshing"), status
