#!/usr/bin/env python3
"""Watch at scale (SPEC §10.1): 1,000 held watches against a real ``tokend run`` with short tokens.

    python bench/watch.py [--watchers 1000] [--hold 30] [--access-ttl 10]

A fake SDDC Manager (plain HTTP on loopback, in a thread of this process with its own event loop,
so its call count is exact) issues ``--access-ttl`` second tokens; ``tokend run`` keeps them, with
``max_connections_per_uid`` set above the watcher count. Then, in order:

1. *idle*: ``--hold`` seconds with no consumer, for tokend's CPU and RSS without watches;
2. *held*: ``--watchers`` connections each hold ``GET /v1/targets/t1/token?after=<fp>&wait=300``
   for ``--hold`` seconds, and re-watch on the same kept-alive connection with the fingerprint
   they were answered with, after a random pause of up to ``--rewatch-jitter`` s, as
   ``AsyncClient.tokens()`` does (``--rewatch-jitter 0``: at once, the worst case). tokend
   refreshes on its schedule meanwhile.

Reported: tokend's RSS (``VmRSS``) before, during (peak) and after the watches; its CPU seconds
(``utime + stime`` from ``/proc``) in each phase; the fake's calls during each phase and
tokend's ``token.refresh_requested`` lines (consumer-triggered refreshes: must be 0); and for each
refresh, every watcher's latency from tokend's ``token.refreshed`` line (its timestamp is taken
right after the new token is published) to the moment this process had read the whole answer,
as p50/p90/p99/max, and how many watchers were answered per refresh. The exit status is 1 when a
watcher missed a refresh, the watches caused an upstream call, or the max latency is over
``--max-latency-ms`` (default 100).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.engines.serve.procfs import proc_status_kb
from tokend._aclient import REWATCH_JITTER
from tokend.testing.fake_sddc import FakeSddc, start_fake

USER, PASSWORD = "administrator@vsphere.local", "Bench-Passw0rd!"
CLK_TCK = os.sysconf("SC_CLK_TCK")


class FakeThread:
    """The fake SDDC Manager on its own event loop in a thread: watchers never delay it."""

    def __init__(self, access_ttl: float) -> None:
        self.fake = FakeSddc(access_ttl=access_ttl, users={USER: PASSWORD})
        self.loop = asyncio.new_event_loop()
        self.url = ""
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.runner, self.url = self.loop.run_until_complete(start_fake(self.fake))
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(10)

    def calls(self) -> int:
        return sum(self.fake.count(op) for op in ("login", "refresh", "revoke"))

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def proc_rss_kib(pid: int) -> int:
    return proc_status_kb(pid, "VmRSS", missing=0)


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def refreshed_between(stdout: Path, start: float, end: float) -> list[dict[str, Any]]:
    """tokend's token.refreshed lines logged between two wall-clock instants."""
    return [e for e in events(stdout, "token.refreshed")
            if start <= datetime.fromisoformat(e["timestamp"]).timestamp() <= end]


def events(stdout: Path, name: str) -> list[dict[str, Any]]:
    out = []
    for line in stdout.read_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == name:
            out.append(event)
    return out


async def request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                  path: str) -> tuple[int, bytes]:
    writer.write(f"GET {path} HTTP/1.1\r\nHost: tokend\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return status, await reader.readexactly(length)


class Watcher(asyncio.Protocol):
    """One connection that holds a watch, and re-watches with what it was answered.

    A protocol rather than a stream reader: the answer's arrival is stamped in the event loop's
    own callback, without a task switch, so this process adds as little as it can to what it
    measures.
    """

    def __init__(self, fingerprint: str, jitter: float, until: float) -> None:
        self.fingerprint = fingerprint
        self.jitter = jitter
        self.until = until
        self.answers: list[tuple[str, float]] = []  # (new fingerprint, wall time read)
        self.errors: list[str] = []
        self.same = 0  # answers with the fingerprint it held (a wait that ran out)
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.done = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.send()

    def send(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if time.monotonic() >= self.until:
            self.transport.close()
            return
        self.transport.write(f"GET /v1/targets/t1/token?after={self.fingerprint}&wait=300"
                             " HTTP/1.1\r\nHost: tokend\r\n\r\n".encode())

    def data_received(self, data: bytes) -> None:
        at = time.time()
        self.buffer += data
        head, sep, body = self.buffer.partition(b"\r\n\r\n")
        if not sep:
            return
        length = int(head.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
        if len(body) < length:
            return
        self.buffer = body[length:]
        if not head.startswith(b"HTTP/1.1 200"):
            self.errors.append(f"{head[:12]!r} {body[:200]!r}")
            assert self.transport is not None
            self.transport.close()
            return
        fingerprint = body.split(b'"fingerprint": "', 1)[1].split(b'"', 1)[0].decode()
        if fingerprint == self.fingerprint:
            self.same += 1
        else:
            self.answers.append((fingerprint, at))
            self.fingerprint = fingerprint
        # As AsyncClient.tokens() does: re-watch after a random pause.
        asyncio.get_running_loop().call_later(self.jitter * random.random(), self.send)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--watchers", type=int, default=1000)
    parser.add_argument("--hold", type=float, default=30.0, help="seconds each phase lasts")
    parser.add_argument("--access-ttl", type=float, default=10.0,
                        help="the fake's token lifetime, s (refreshed at ~70 %%)")
    parser.add_argument("--max-latency-ms", type=float, default=100.0)
    parser.add_argument("--rewatch-jitter", type=float, default=REWATCH_JITTER,
                        help="a watcher re-watches after a random pause of up to this many s, as"
                        f" AsyncClient.tokens() does (default {REWATCH_JITTER:g}); 0: at once")
    args = parser.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.watchers + 256)), hard))
    fake = FakeThread(args.access_ttl)
    work = Path(tempfile.mkdtemp(prefix="tokend-watch-"))
    (work / "password").write_text(PASSWORD)
    (work / "password").chmod(0o600)
    per_uid = args.watchers + 100
    config = work / "config.toml"
    config.write_text(textwrap.dedent(f"""\
        [server]
        socket = "{work / 'tokend.sock'}"
        socket_mode = "0600"
        max_connections = {max(4096, per_uid)}
        max_connections_per_uid = {per_uid}

        [metrics]
        listen = ""

        [log]
        level = "info"
        format = "json"

        [[targets]]
        name = "t1"
        url = "{fake.url}"
        username = "{USER}"
        password_file = "{work / 'password'}"
        """))
    stdout = work / "stdout.log"
    with open(stdout, "wb") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen([sys.executable, "-m", "tokend", "run", "--config", str(config)],
                                stdout=log, stderr=subprocess.STDOUT,
                                cwd=Path(__file__).resolve().parent.parent)
    sock = str(work / "tokend.sock")
    try:
        deadline = time.monotonic() + 20
        fingerprint = ""
        while not fingerprint:
            if time.monotonic() > deadline or proc.poll() is not None:
                print(stdout.read_text()[-3000:], file=sys.stderr)
                return 2
            with contextlib.suppress(OSError, asyncio.IncompleteReadError, ValueError):
                reader, writer = await asyncio.open_unix_connection(sock)
                status, body = await request(reader, writer, "/v1/targets/t1/token")
                writer.close()
                if status == 200:
                    fingerprint = json.loads(body)["fingerprint"]
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # past start-up

        print(f"tokend pid {proc.pid}; {args.watchers} watchers; phases of {args.hold:g} s;"
              f" {args.access_ttl:g} s tokens; max_connections_per_uid = {per_uid}"
              f" (default 1024); re-watch jitter {args.rewatch_jitter:g} s;"
              f" load {os.getloadavg()[0]:.2f}")

        # 1. idle
        idle_wall = time.time()
        rss_idle0, cpu0, calls0 = proc_rss_kib(proc.pid), proc_cpu_s(proc.pid), fake.calls()
        await asyncio.sleep(args.hold)
        rss_idle1, cpu1, calls1 = proc_rss_kib(proc.pid), proc_cpu_s(proc.pid), fake.calls()
        refreshes_idle = len(refreshed_between(stdout, idle_wall, time.time()))

        # 2. held
        reader, writer = await asyncio.open_unix_connection(sock)
        status, body = await request(reader, writer, "/v1/targets/t1/token")
        writer.close()
        fingerprint = json.loads(body)["fingerprint"]
        started_wall, calls_start = time.time(), fake.calls()
        settle = min(2.0, args.hold / 4)  # to open every watch before measuring
        until = time.monotonic() + settle + args.hold
        loop = asyncio.get_running_loop()
        watchers = []
        for _ in range(args.watchers):
            _, watcher = await loop.create_unix_connection(
                lambda: Watcher(fingerprint, args.rewatch_jitter, until), sock)
            watchers.append(watcher)
        await asyncio.sleep(settle)
        rss_held0, cpu2, _ = proc_rss_kib(proc.pid), proc_cpu_s(proc.pid), fake.calls()
        rss_peak = rss_held0
        while time.monotonic() < until:
            await asyncio.sleep(0.5)
            rss_peak = max(rss_peak, proc_rss_kib(proc.pid))
        cpu3, calls3, ended_wall = proc_cpu_s(proc.pid), fake.calls(), time.time()
        held_for = args.hold
        # Watchers still holding end when they are closed.
        await asyncio.sleep(0.2)
        for watcher in watchers:
            if watcher.transport is not None:
                watcher.transport.close()
        await asyncio.gather(*(w.done for w in watchers))
        await asyncio.sleep(1.0)
        rss_after = proc_rss_kib(proc.pid)

        refreshed = refreshed_between(stdout, started_wall, ended_wall)
        consumer = events(stdout, "token.refresh_requested")
        at_refresh = {e["fingerprint"]: datetime.fromisoformat(e["timestamp"]).timestamp()
                      for e in events(stdout, "token.refreshed")}
        latencies: list[float] = []
        per_refresh: dict[str, int] = {e["fingerprint"]: 0 for e in refreshed}
        unknown = 0
        for w in watchers:
            for fp, at in w.answers:
                if fp in at_refresh:
                    latencies.append((at - at_refresh[fp]) * 1000)
                    if fp in per_refresh:
                        per_refresh[fp] += 1
                else:
                    unknown += 1
        errors = [e for w in watchers for e in w.errors]
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        fake.stop()

    mib = 1024
    print()
    print(f"{'phase':<8} {'s':>5} {'tokend CPU s':>13} {'CPU %':>6} {'RSS MiB':>18}"
          f" {'upstream calls':>15} {'refreshes':>10}")
    print(f"{'idle':<8} {args.hold:>5g} {cpu1 - cpu0:>13.2f} {100 * (cpu1 - cpu0) / args.hold:>6.2f}"
          f" {f'{rss_idle0 / mib:.1f} -> {rss_idle1 / mib:.1f}':>18} {calls1 - calls0:>15}"
          f" {refreshes_idle:>10}")
    print(f"{'held':<8} {held_for:>5g} {cpu3 - cpu2:>13.2f} {100 * (cpu3 - cpu2) / held_for:>6.2f}"
          f" {f'{rss_held0 / mib:.1f} (peak {rss_peak / mib:.1f})':>18} {calls3 - calls_start:>15}"
          f" {len(refreshed):>10}")
    print(f"RSS growth with {args.watchers} watches held: {(rss_peak - rss_idle1) / mib:+.1f} MiB"
          f" ({(rss_peak - rss_idle1) / args.watchers:.1f} KiB a watch); after they closed:"
          f" {rss_after / mib:.1f} MiB")
    print(f"upstream calls while held: {calls3 - calls_start}, all scheduled refreshes"
          f" ({len(refreshed)} token.refreshed lines); consumer-triggered refreshes"
          f" (token.refresh_requested): {len(consumer)}")
    print(f"answers per refresh: {sorted(per_refresh.values())} (of {args.watchers} watchers);"
          f" answers without a new token: {sum(w.same for w in watchers)}; errors: {len(errors)};"
          f" answers with a token tokend did not log: {unknown}")
    if latencies:
        print(f"latency from token.refreshed to the answer read, ms, over {len(latencies)} answers:"
              f" p50 {percentile(latencies, 50):.1f}  p90 {percentile(latencies, 90):.1f}"
              f"  p99 {percentile(latencies, 99):.1f}  max {max(latencies):.1f}"
              f"  (mean {statistics.mean(latencies):.1f}, min {min(latencies):.1f})")
    missed = any(n != args.watchers for n in per_refresh.values()) or not per_refresh
    # Every upstream call while the watches were held made one of tokend's scheduled refreshes.
    caused = (calls3 - calls_start) != len(refreshed) or bool(consumer)
    slow = not latencies or max(latencies) > args.max_latency_ms
    for name, bad in (("every watcher answered at every refresh", missed or errors),
                      ("no upstream call caused by the watches", caused),
                      (f"every answer within {args.max_latency_ms:g} ms", slow)):
        print(f"{'FAIL' if bad else 'PASS'}: {name}")
    return 1 if missed or errors or caused or slow else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
