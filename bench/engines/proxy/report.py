"""The proxy benchmark's report: Markdown tables of one run, the goals with PASS/FAIL, and JSON.

Nothing here asserts: the goals are compared against, and printed."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from bench.engines.common import cpu_ratios, json_head, ms, over_rounds, ratio_rows, report_head, verdict
from bench.engines.proxy.servers import POOL
from bench.engines.proxy.streams import StreamResult
from bench.engines.serve.load import LoadResult

TOKEND, BARE, DIRECT = "tokend proxy", "bare aiohttp proxy", "direct to the fake"
PATHS = (TOKEND, BARE, DIRECT)
GOAL_RPS_RATIO = 0.9  # tokend req/s >= 0.9 x the bare proxy's
GOAL_P99_RATIO = 1.2  # tokend p99 <= 1.2 x the bare proxy's
GOAL_RSS_GROWTH_MB = 30.0  # tokend's RSS growth during a 1 GiB transfer


@dataclass
class ProxyFigures:
    """Everything one run measured, and what the report needs to say how."""

    args: argparse.Namespace
    command: str
    started: str
    machine: str
    versions: dict[str, str]
    body_bytes: int  # the fake's answer to GET /v1/domains
    cpus: list[int] | None
    load_before: str
    load_after: str
    rounds: dict[tuple[str, int], list[LoadResult]]
    results: list[LoadResult]  # each cell's best round by req/s
    streams: list[StreamResult]
    rss_ready_kb: int
    rss_end_kb: int
    hwm_end_kb: int
    exit_code: int | None


def render(f: ProxyFigures) -> str:
    """The Markdown report."""
    args = f.args
    out = report_head("tokend proxy benchmark", f.started, f.machine, f.versions)
    w = out.append
    w(f"- `GET /v1/domains` ({f.body_bytes}-byte answer) from `tokend fake-sddc` (plain HTTP on"
      " loopback, one process); three ways to it: **tokend proxy** (`tokend run` with a"
      " `[[proxies]]` Unix socket: peer check, canonical path, header filter, token injection,"
      " streaming forwarder, metrics), **bare aiohttp proxy** (`bench/engines/proxy/bare_proxy.py`,"
      " about 30 lines: the same token, the same 64 KiB streaming, nothing else; separate process,"
      " same interpreter and aiohttp), **direct to the fake** (TCP, the load generator sends the"
      " token itself)")
    w(f"- both proxies: a pool of at most {POOL} upstream connections (tokend's default"
      " `max_upstream_connections`)")
    w(f"- load generator: autocannon {f.versions.get('autocannon', '?')} engine via bench/cannon.js"
      f" (per-response latencies in microseconds); keep-alive, no pipelining; {args.duration:g} s per"
      f" run after {args.warmup:g} s of unmeasured warm-up; the three paths back to back for each"
      " connection count")
    if f.cpus:
        w(f"- CPU pinning: the proxies on CPU {f.cpus[-1]}; the fake, the load generator and the"
          f" stream client on CPU {','.join(map(str, f.cpus[:-1]))}")
    else:
        w("- no CPU pinning")
    w(f"- load average before {f.load_before}, after {f.load_after}; 'other CPU' is the CPU time of"
      " processes outside this benchmark during each run, in % of one core (noise indicator)")
    if args.rounds > 1:
        w(f"- {args.rounds} rounds; each row is its best round by req/s; 'req/s over rounds' shows all")
    w("")
    if f.results:
        extra = args.rounds > 1
        w("| connections | path | req/s | p50 ms | p99 ms | proxy CPU µs/req | requests |"
          " errors+non-2xx | other CPU % |" + (" req/s over rounds |" if extra else ""))
        w("|---:|---|---:|---:|---:|---:|---:|---:|---:|" + ("---|" if extra else ""))
        for r in f.results:
            cpu = "n/a" if r.cpu_us_per_req is None else f"{r.cpu_us_per_req:.0f}"
            line = (f"| {r.connections} | {r.server} | {r.rps:,.0f} | {ms(r.p50_us)} | {ms(r.p99_us)}"
                    f" | {cpu} | {r.requests:,} | {r.bad} | {r.other_cpu:.0f} |")
            if extra:
                line += over_rounds(f.rounds, r)
            w(line)
        w("")
        w("'proxy CPU µs/req' is the CPU time of the proxy process per answered request (schedstat,"
          " warm-up included); on the direct rows, the fake's own.")
        w("")
    w("| figure | value | goal | result |")
    w("|---|---:|---|---|")

    def find(path: str, conns: int) -> LoadResult | None:
        return next((r for r in f.results if r.server == path and r.connections == conns), None)

    for conns in args.conn_list:
        t, b = find(TOKEND, conns), find(BARE, conns)
        if t is not None and b is not None:
            out += ratio_rows(t, b, "bare proxy", conns, GOAL_RPS_RATIO, GOAL_P99_RATIO)
    if cpu := cpu_ratios(find, args.conn_list, TOKEND, BARE):
        w(f"| proxy CPU per request, tokend / bare proxy, by connections (context: the steadiest"
          f" figure on a shared machine) | {'; '.join(cpu)} | | |")
    for s in f.streams:
        if s.path == TOKEND and s.rss_growth_mb is not None:
            w(f"| tokend RSS growth during the {s.size / 2**30:g} GiB {s.direction} |"
              f" {s.rss_growth_mb:.1f} MB | < {GOAL_RSS_GROWTH_MB:g} MB |"
              f" {verdict(s.rss_growth_mb < GOAL_RSS_GROWTH_MB)} |")
        if s.path == TOKEND:
            w(f"| {s.direction} byte-identical (sha256) through tokend | {'yes' if s.identical else 'NO'}"
              f" | yes | {verdict(s.identical)} |")
    w("")
    if f.streams:
        w("| transfer | path | MB/s | seconds | sha256 identical | proxy RSS before MB |"
          " proxy RSS peak growth MB | proxy VmHWM before → after MB |")
        w("|---|---|---:|---:|---|---:|---:|---|")
        for s in f.streams:
            growth = "n/a" if s.rss_growth_mb is None else f"{s.rss_growth_mb:.1f}"
            start = "n/a" if s.rss_start_kb is None else f"{s.rss_start_kb / 1024:.1f}"
            hwm = ("n/a" if s.hwm_before_kb is None or s.hwm_after_kb is None
                   else f"{s.hwm_before_kb / 1024:.1f} → {s.hwm_after_kb / 1024:.1f}")
            w(f"| {s.size / 2**30:g} GiB {s.direction} | {s.path} | {s.mb_per_s:,.0f} |"
              f" {s.seconds:.2f} | {'yes' if s.identical else 'NO'} | {start} | {growth} | {hwm} |")
        w("")
        w("MB/s is 10⁶ bytes per second of the whole request, from the first byte sent to the last"
          " received; the client (aiohttp, in the benchmark's process) hashes downloads as they"
          " arrive, and the fake hashes uploads as they arrive. RSS is sampled every"
          " 5 ms from another thread.")
        w("")
    w(f"tokend RSS when ready {f.rss_ready_kb / 1024:.1f} MB, at the end {f.rss_end_kb / 1024:.1f} MB"
      f" (VmHWM {f.hwm_end_kb / 1024:.1f} MB); exit status on SIGTERM: {f.exit_code}")
    return "\n".join(out)


def to_json(f: ProxyFigures) -> dict[str, Any]:
    """The raw figures of every round, for ``--json``."""
    return {
        **json_head(f.versions, f.rounds),
        "streams": [{**s.__dict__, "mb_per_s": s.mb_per_s, "rss_growth_mb": s.rss_growth_mb}
                    for s in f.streams],
        "rss_ready_kb": f.rss_ready_kb, "rss_end_kb": f.rss_end_kb, "hwm_end_kb": f.hwm_end_kb,
    }
