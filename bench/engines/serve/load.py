"""Load runs: autocannon (or its driver, cannon.js) against one server over its Unix socket."""

from __future__ import annotations

import array
import json
import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.engines.serve.processes import Bench, node_path_for
from bench.engines.serve.procfs import (
    CLK_TCK,
    children_ticks,
    cpu_ticks,
    sched_ns,
    system_busy_ticks,
)

URL = "http://localhost/v1/token"


@dataclass
class LoadResult:
    server: str
    connections: int
    uids: int  # how many uids the connections came from
    rps: float
    p50_us: float | None
    p99_us: float | None
    requests: int
    bad: int  # errors + timeouts + non-2xx
    cpu_us_per_req: float | None  # the server's CPU time per answered request (warm-up included)
    other_cpu: float  # % of one CPU used by processes outside the benchmark during the run


EXTRA_UIDS = (65534, 65533, 65532, 65531, 65530, 65529, 65528, 65527)


def split_connections(connections: int, per_uid: int | None) -> list[int]:
    """Connections per load-generator process, each under its own uid, none over ``per_uid``."""
    if not per_uid or connections <= per_uid:
        return [connections]
    groups = min(len(EXTRA_UIDS) + 1, -(-connections // per_uid))
    base, extra = divmod(connections, groups)
    return [base + (1 if i < extra else 0) for i in range(groups)]


def load_command(gen: str, autocannon: str, driver: Path, sock: Path | None, connections: int,
                 duration: float, warmup: float, latencies: Path | None, url: str = URL,
                 headers: Path | None = None) -> list[str]:
    """The load generator's command line: over the Unix socket ``sock``, or TCP to ``url`` without.

    ``headers`` (a JSON file of request headers) needs the driver.
    """
    via = ["-S", str(sock)] if sock is not None else []
    if gen == "cli":
        if headers is not None:
            raise ValueError("request headers need the driver (bench/cannon.js)")
        return [autocannon, "-c", str(connections), "-d", f"{duration:g}", "-j", "-n", *via, url]
    argv = ["node", str(driver), "-c", str(connections), "-d", f"{duration:g}",
            "-w", f"{warmup:g}", *via, "--url", url]
    if headers is not None:
        argv += ["--headers", str(headers)]
    return argv + (["--latencies", str(latencies)] if latencies is not None else [])


def run_load(bench: Bench, gen: str, autocannon: str, server: str, server_pids: list[int],
             sock: Path | None, connections: int, url: str = URL,
             headers: Path | None = None) -> LoadResult:
    """One measured run: ``connections`` keep-alive connections for ``--duration`` seconds.

    Over the Unix socket ``sock``, or over TCP to ``url``'s host when ``sock`` is None; ``headers``
    is a JSON file of request headers the driver adds to every request.

    When tokend admits fewer connections per uid than asked for, the connections are spread over
    several load-generator processes, each under its own uid (the same split for every server).
    """
    args = bench.args
    env = {**os.environ, "NODE_PATH": node_path_for(autocannon)}
    groups = split_connections(connections, bench.per_uid)
    driver = bench.workdir / "cannon.js"

    def as_uid(index: int) -> Any:
        def setup() -> None:
            if bench.client_cpus:
                os.sched_setaffinity(0, bench.client_cpus)
            if index > 0:
                uid = EXTRA_UIDS[index - 1]
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
        return setup

    if gen == "cli" and args.warmup > 0:
        warm = [subprocess.Popen(load_command(gen, autocannon, driver, sock, c, args.warmup, 0, None,
                                              url, headers),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                                 preexec_fn=as_uid(i)) for i, c in enumerate(groups)]
        for w in warm:
            w.wait()
    lat_files = [bench.workdir / f"latencies-{i}.f64" for i in range(len(groups))]
    for i, path in enumerate(lat_files):
        path.write_bytes(b"")
        if i > 0:  # written by a load generator under another uid
            os.chown(path, EXTRA_UIDS[i - 1], EXTRA_UIDS[i - 1])
    gen0 = children_ticks()
    busy0 = system_busy_ticks()
    ours0 = sum(cpu_ticks(p) for p in server_pids)
    ns0 = sum(sched_ns(p) for p in server_pids)
    t0 = time.monotonic()
    popens = [subprocess.Popen(load_command(gen, autocannon, driver, sock, c, args.duration, args.warmup,
                                            lat_files[i] if gen == "driver" else None, url,
                                            headers),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=bench.workdir,
                               preexec_fn=as_uid(i)) for i, c in enumerate(groups)]
    outputs = [p.communicate() for p in popens]
    elapsed = time.monotonic() - t0
    ns1 = sum(sched_ns(p) for p in server_pids)
    busy1 = system_busy_ticks()
    ours1 = sum(cpu_ticks(p) for p in server_pids)
    gen_ticks = children_ticks() - gen0  # the load generators' own CPU, known once reaped
    results = []
    for popen, (out, err) in zip(popens, outputs, strict=True):
        if popen.returncode != 0:
            raise RuntimeError(f"load generator failed ({popen.returncode}): {err.decode()[-2000:]}")
        results.append(json.loads(out.decode().strip().splitlines()[-1]))
    other = (busy1 - busy0) - (ours1 - ours0) - gen_ticks
    other_cpu = max(0.0, 100.0 * other / CLK_TCK / elapsed)
    total = sum(int(r["requests"]["total"]) for r in results)
    warm_total = sum(int(r.get("warmupRequests", 0)) for r in results)
    rps = sum(int(r["requests"]["total"]) / float(r.get("duration") or args.duration) for r in results)
    bad = sum(int(r.get("errors", 0)) + int(r.get("timeouts", 0)) + int(r.get("non2xx", 0))
              for r in results)
    p50: float | None
    p99: float | None
    if gen == "cli":
        # Whole milliseconds; with several processes: p50 weighted by requests, p99 the largest.
        p50 = sum(float(r["latency"]["p50"]) * int(r["requests"]["total"]) for r in results) \
            / max(1, total) * 1000
        p99 = max(float(r["latency"]["p99"]) for r in results) * 1000
    else:
        values = array.array("d")
        for path in lat_files:
            values.frombytes(path.read_bytes())
            path.unlink()
        ordered = sorted(values)
        p50 = percentile_us(ordered, 50)
        p99 = percentile_us(ordered, 99)
    cpu_per_req = (ns1 - ns0) / 1000 / (total + warm_total) if total else None
    return LoadResult(server, connections, len(groups), rps, p50, p99, total, bad, cpu_per_req,
                      other_cpu)


def percentile_us(ordered: Sequence[float], q: float) -> float | None:
    """The ``q``th percentile (nearest rank) of millisecond values, in microseconds."""
    if not ordered:
        return None
    rank = min(len(ordered) - 1, max(0, -(-len(ordered) * q // 100) - 1))
    return ordered[int(rank)] * 1000

