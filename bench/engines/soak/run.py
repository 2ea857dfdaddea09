"""The soak run: the fake, ``tokend run``, consumers and faults for a while, then the report."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import TextIO

from bench.engines.serve.procfs import proc_status_kb
from bench.engines.soak.consumers import Ctx, consumer, judge_candidates, watch_lag
from bench.engines.soak.faults import inject_faults
from bench.engines.soak.params import ACCESS_TTL, DEFAULT_CONSUMERS, DEFAULT_SLACK, TARGET
from bench.engines.soak.report import Report
from bench.engines.soak.tracking import TrackingFake
from tests.support import USER, Tokend, configured_tokend
from tokend.testing.fake_sddc import start_fake

JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _rss_kb(pid: int) -> int:
    return proc_status_kb(pid, "VmRSS", missing=0)


def _fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def _read_log(report: Report, text: str, fake: TrackingFake, password: str) -> None:
    """Count tokend's log events; a traceback, a crash or a secret in ``text`` is a violation."""
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
                   consumers: str = DEFAULT_CONSUMERS, min_ttl: float = 0.5,
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
    tokend: Tokend | None = None
    try:
        # No login_retry_interval: the soak's logins are retried on tokend's own schedule.
        tokend = configured_tokend(wd, url, password=password, log={"level": "info"},
                                   target={"name": TARGET, "max_backoff": "2s",
                                           "login_retry_interval": None})
        tokend.start()
        await tokend.ready(timeout=30)
        proc = tokend.proc
        assert proc is not None
        start_wall, start = time.time(), time.monotonic()
        report.rss_samples.append((0.0, _rss_kb(proc.pid)))
        fds_start = _fds(proc.pid)
        ctx = Ctx(fake, report, tokend.socket, start + seconds, rng, slack)
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
        judge_candidates(ctx)
        if proc.poll() is None:
            report.rss_samples.append((report.elapsed, _rss_kb(proc.pid)))
            report.fds = (fds_start, _fds(proc.pid))
        report.uncovered = _uncovered(fake, start_wall, start_wall + report.elapsed)
        for call in fake.calls:
            report.upstream[f"{call.operation} {call.status}"] += 1
    finally:
        if tokend is not None:
            with contextlib.suppress(AssertionError):  # killed after 15 s: the exit status says so
                await tokend.stop(15)
            report.exit_status = tokend.proc.returncode if tokend.proc is not None else None
        await runner.cleanup()
        if tokend is not None:
            _read_log(report, tokend.stdout() + tokend.stderr(), fake, password)
        if own_dir:
            shutil.rmtree(wd, ignore_errors=True)
    return report
