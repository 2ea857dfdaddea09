"""One proxy benchmark run: the fake, tokend with a proxy, the bare proxy; load on all three paths
for each connection count; then the big transfers; stop everything; report."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

from bench.engines.common import announce_command, cpu_split, load_bench, load_rounds, publish
from bench.engines.common import versions as common_versions
from bench.engines.proxy.report import BARE, DIRECT, PATHS, TOKEND, ProxyFigures, render, to_json
from bench.engines.proxy.servers import (
    PATH,
    start_bare_proxy,
    start_tokend,
    token_files,
    write_config,
)
from bench.engines.proxy.streams import StreamResult, expected_digest, transfer
from bench.engines.serve.load import LoadResult, run_load
from bench.engines.serve.processes import Bench, find_autocannon, tool_version
from bench.engines.serve.procfs import loadavg, machine_line, proc_status_kb
from bench.engines.serve.servers import probe, start_fake


def run_benchmark(args: argparse.Namespace) -> int:
    """The whole benchmark for parsed options (see ``bench/proxy.py``); the exit status."""
    autocannon = find_autocannon() if args.conn_list else "autocannon"
    if args.conn_list and (autocannon is None or shutil.which("node") is None):
        print("proxy.py: missing autocannon or node: run bench/setup.sh first (or --connections ''"
              " for the transfers alone)", file=sys.stderr)
        return 2
    assert autocannon is not None
    cpus, server_cpus, client_cpus = cpu_split(args)
    command = announce_command()
    # No split over uids: 100 connections are far below tokend's per-uid limit.
    with load_bench(args, server_cpus, client_cpus, None) as bench:
        figures = measure(bench, autocannon, command, cpus)
    publish(render(figures), to_json(figures), args.json)
    bad = [f"{r.server}@{r.connections}" for r in figures.results if r.bad]
    bad += [f"{s.path} {s.direction}" for s in figures.streams if not s.identical]
    if bad:
        print("\nwarning: errors, non-2xx answers or altered bytes in: " + ", ".join(bad),
              file=sys.stderr)
    return 0


def measure(bench: Bench, autocannon: str, command: str, cpus: list[int] | None) -> ProxyFigures:
    """Every measurement of one run, in order."""
    args = bench.args
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    load_before = loadavg()
    versions = common_versions()
    if args.conn_list:
        versions["autocannon"] = tool_version([autocannon, "--version"]).split()[-1]
        versions["node"] = tool_version(["node", "--version"])

    # 1. the fake, tokend with its proxy, and the bare proxy with tokend's token
    fake, url = start_fake(bench)
    config, api_sock, proxy_sock = write_config(bench, url)
    tokend_proc = start_tokend(bench, config, api_sock, proxy_sock)
    token_file, headers_file = token_files(bench, api_sock)
    bare_proc, bare_sock = start_bare_proxy(bench, url, token_file)
    time.sleep(1.0)  # let start-up settle
    rss_ready = proc_status_kb(tokend_proc.pid, "VmRSS")
    answer = probe(proxy_sock, PATH)
    if answer.status != 200 or probe(bare_sock, PATH).body != answer.body:
        raise RuntimeError(f"the proxies disagree on {PATH}: {answer.status} {answer.body[:300]!r}")

    # 2. load: for each connection count, the three paths back to back
    paths = {TOKEND: ([tokend_proc.pid], proxy_sock, "http://localhost" + PATH, None),
             BARE: ([bare_proc.pid], bare_sock, "http://localhost" + PATH, None),
             DIRECT: ([fake.pid], None, url + PATH, headers_file)}

    def run_one(name: str, conns: int) -> LoadResult:
        pids, sock, target_url, headers = paths[name]
        return run_load(bench, "driver", autocannon, name, pids, sock, conns, target_url, headers)

    rounds, results = load_rounds(args, PATHS, run_one)

    # 3. the big transfers, each way, through each path
    streams: list[StreamResult] = []
    if args.stream_bytes > 0:
        if bench.client_cpus:
            os.sched_setaffinity(0, bench.client_cpus)  # this process is the stream client
        print(f"computing the sha256 of {args.stream_bytes:,} bytes of the fake's pattern ...",
              file=sys.stderr, flush=True)
        expected = expected_digest(args.stream_bytes)
        token = json.loads(headers_file.read_text())
        ways = {TOKEND: (proxy_sock, "http://localhost", {}, tokend_proc.pid),
                BARE: (bare_sock, "http://localhost", {}, bare_proc.pid),
                DIRECT: (None, url, token, None)}
        for direction in ("upload", "download"):
            for name in PATHS if args.stream_references else (TOKEND,):
                sock, base, headers, pid = ways[name]
                print(f"transfer: {args.stream_bytes:,} bytes, {direction}, {name} ...",
                      file=sys.stderr, flush=True)
                streams.append(transfer(name, direction, sock=sock, base=base, headers=headers,
                                        size=args.stream_bytes, expected=expected,
                                        proxy_pid=pid))

    rss_end = proc_status_kb(tokend_proc.pid, "VmRSS")
    hwm_end = proc_status_kb(tokend_proc.pid, "VmHWM")
    load_after = loadavg()
    code = tokend_proc.stop()
    return ProxyFigures(args=args, command=command, started=started, machine=machine_line(),
                        versions=versions, body_bytes=len(answer.body), cpus=cpus,
                        load_before=load_before, load_after=load_after, rounds=rounds,
                        results=results, streams=streams, rss_ready_kb=rss_ready, rss_end_kb=rss_end,
                        hwm_end_kb=hwm_end, exit_code=code)
