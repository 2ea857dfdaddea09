"""The benchmark's report: a Markdown summary of one run, its goals with PASS/FAIL, and the raw
figures as JSON. Nothing here asserts: the goals are compared against, and printed."""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench.engines.common import cpu_ratios, json_head, ms, over_rounds, ratio_rows, report_head, verdict
from bench.engines.serve.load import URL, LoadResult

# The goals of the issue, compared against (never asserted).
GOAL_RPS_RATIO = 0.9  # tokend req/s >= 0.9 x bare aiohttp at 100 connections
GOAL_P99_RATIO = 1.2  # tokend p99 <= 1.2 x bare aiohttp at 100 connections
GOAL_P99_10_MS = 5.0  # tokend p99 < 5 ms at 10 connections
GOAL_IDLE_CPU = 0.05  # s of CPU per minute, idle
GOAL_PEAK_RSS_MB = 60.0


def mb(kb: float) -> float:
    return kb / 1024.0


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, round(q / 100.0 * len(ordered) + 0.5) - 1))
    return ordered[rank]


@dataclass
class Figures:
    """Everything one run measured, and what the report needs to say how it was measured."""

    args: argparse.Namespace
    started: str
    machine: str
    versions: dict[str, str]
    body_bytes: int  # the token JSON all three servers answer with
    cpus: list[int] | None  # the CPUs, when servers and load generator were pinned apart
    per_uid: int | None
    load_before: str
    load_after: str
    rounds: dict[tuple[str, int], list[LoadResult]]
    results: list[LoadResult]  # each cell's best round by req/s
    idle_ticks: float | None
    idle_sched: float | None
    cli_times: dict[str, list[float]]
    starts: list[float]
    rss_ready: int
    hwm_ready: int
    rss_after: int
    hwm_after: int
    aio_hwm: int
    status_after: int
    exit_code: int | None

    @property
    def cli(self) -> list[float]:
        return self.cli_times.get("cli", [])


def render(f: Figures) -> str:
    """The Markdown report."""
    args = f.args
    out = report_head("tokend socket benchmark", f.started, f.machine, f.versions)
    w = out.append
    if args.load_generator == "driver":
        w(f"- load generator: autocannon {f.versions['autocannon']} engine via bench/cannon.js"
          " (per-response latencies in microseconds); the plain CLI equivalent of each run is"
          f" `autocannon -c N -d {args.duration:g} -j -n -S SOCKET {URL}`")
    else:
        w(f"- load generator: `autocannon -c N -d {args.duration:g} -j -n -S SOCKET {URL}`"
          " (its latencies are whole milliseconds)")
    w(f"- keep-alive connections, no pipelining; {args.duration:g} s per run after"
      f" {args.warmup:g} s of unmeasured warm-up; body {f.body_bytes} bytes of token JSON, the same"
      " bytes from all three (tokend's own answer, captured once)")
    if f.cpus:
        w(f"- CPU pinning: servers on CPU {f.cpus[-1]}, load generator on CPU"
          f" {','.join(map(str, f.cpus[:-1]))} (one core each side)")
    else:
        w("- no CPU pinning")
    w(f"- nginx: worker_processes {args.nginx_workers}, static file (`alias`), access_log off,"
      " keepalive_requests 1000000; bare aiohttp: one handler returning constant bytes, access log"
      " off, `web.UnixSite`, separate process; tokend: `tokend run`, one target, against"
      " `tokend fake-sddc` on loopback (43200 s tokens: no refresh during the run)")
    w(f"- load average before {f.load_before}, after {f.load_after}; 'other CPU' is the CPU time of"
      " processes outside this benchmark during each run, in % of one core (noise indicator)")
    w("")
    if f.per_uid:
        w(f"- tokend admits {f.per_uid} connections per uid: a run with more connections spreads"
          " them evenly over several load-generator processes, each under its own uid (root, 65534,"
          " 65533, ...), for all three servers alike; the 'uids' column says how many")
    if args.rounds > 1:
        w(f"- {args.rounds} rounds; each row is its best round by req/s; 'req/s over rounds' shows all")
    w("")
    w("| connections | server | req/s | p50 ms | p99 ms | server CPU µs/req | requests | errors+non-2xx"
      " | uids | other CPU % |" + (" req/s over rounds |" if args.rounds > 1 else ""))
    w("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---|" if args.rounds > 1 else ""))
    for r in f.results:
        cpu = "n/a" if r.cpu_us_per_req is None else f"{r.cpu_us_per_req:.0f}"
        line = (f"| {r.connections} | {r.server} | {r.rps:,.0f} | {ms(r.p50_us)} | {ms(r.p99_us)} |"
                f" {cpu} | {r.requests:,} | {r.bad} | {r.uids} | {r.other_cpu:.0f} |")
        if args.rounds > 1:
            line += over_rounds(f.rounds, r)
        w(line)
    w("")

    def find(server: str, conns: int) -> LoadResult | None:
        return next((r for r in f.results if r.server == server and r.connections == conns), None)

    w("| figure | value | goal | result |")
    w("|---|---:|---|---|")
    t100, a100 = find("tokend", 100), find("bare aiohttp", 100)
    if t100 and a100:
        out += ratio_rows(t100, a100, "bare aiohttp", 100, GOAL_RPS_RATIO, GOAL_P99_RATIO)
    t10 = find("tokend", 10)
    if t10 and t10.p99_us is not None:
        w(f"| p99 tokend, 10 conns | {ms(t10.p99_us)} ms | < {GOAL_P99_10_MS:g} ms |"
          f" {verdict(t10.p99_us / 1000 < GOAL_P99_10_MS)} |")
    if f.idle_ticks is not None and f.idle_sched is not None:
        w(f"| idle CPU, {args.idle_seconds:g} s without requests | {f.idle_ticks:.3f} s/min"
          f" (utime+stime; schedstat {f.idle_sched:.4f} s/min) | < {GOAL_IDLE_CPU} s/min |"
          f" {verdict(f.idle_ticks < GOAL_IDLE_CPU)} |")
    w(f"| peak RSS (VmHWM) after the load | {mb(f.hwm_after):.1f} MB | < {GOAL_PEAK_RSS_MB:g} MB |"
      f" {verdict(mb(f.hwm_after) < GOAL_PEAK_RSS_MB)} |")
    w("")
    w("| other figure | value |")
    w("|---|---:|")
    if f.cli:
        w(f"| `tokend token` wall time, {len(f.cli)} runs | median {statistics.median(f.cli) * 1000:.1f} ms,"
          f" p90 {pct(f.cli, 90) * 1000:.1f} ms, min {min(f.cli) * 1000:.1f} ms |")
        py, imp = f.cli_times["python"], f.cli_times["import"]
        w(f"| `python -c pass` wall time (interpreter start-up, for reference) |"
          f" median {statistics.median(py) * 1000:.1f} ms |")
        w(f"| `python -c 'import tokend.cli'` wall time (start-up + the CLI's imports) |"
          f" median {statistics.median(imp) * 1000:.1f} ms |")
    w(f"| start-to-ready (spawn `tokend run` to first 200 on /readyz), {len(f.starts)} starts |"
      f" median {statistics.median(f.starts) * 1000:.0f} ms, min {min(f.starts) * 1000:.0f} ms,"
      f" max {max(f.starts) * 1000:.0f} ms |")
    w(f"| tokend RSS when ready / VmHWM when ready | {mb(f.rss_ready):.1f} MB / {mb(f.hwm_ready):.1f} MB |")
    w(f"| tokend RSS after the load | {mb(f.rss_after):.1f} MB |")
    w(f"| bare aiohttp VmHWM after the load (context) | {mb(f.aio_hwm):.1f} MB |")
    w(f"| tokend /v1/token after the load; exit status on SIGTERM | {f.status_after}; {f.exit_code} |")
    if t100 and (n100 := find("nginx", 100)) and n100.rps > 0:
        w(f"| req/s tokend / nginx, 100 conns (context) | {t100.rps / n100.rps:.2f} |")
    if cpu := cpu_ratios(find, args.conn_list, "tokend", "bare aiohttp"):
        w(f"| server CPU per request, tokend / bare aiohttp, by connections (insensitive to other"
          f" load) | {'; '.join(cpu)} |")
    return "\n".join(out)


def to_json(f: Figures) -> dict[str, Any]:
    """The raw figures of every round, for ``--json``."""
    return {
        **json_head(f.versions, f.rounds),
        "idle_cpu_s_per_min": f.idle_ticks, "idle_cpu_schedstat_s_per_min": f.idle_sched,
        "peak_rss_kb": f.hwm_after, "rss_ready_kb": f.rss_ready, "rss_after_kb": f.rss_after,
        "cli_seconds": f.cli_times, "start_to_ready_seconds": f.starts,
    }
