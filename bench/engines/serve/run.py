"""One benchmark run: start the fake and tokend, measure start-up, idle CPU and the CLI, start the
references, load all three servers in turn, stop everything, report."""

from __future__ import annotations

import argparse
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.engines.common import announce_command, cpu_split, load_bench, load_rounds, publish
from bench.engines.common import versions as common_versions
from bench.engines.serve.load import LoadResult, run_load
from bench.engines.serve.processes import (
    Bench,
    Proc,
    find_autocannon,
    find_nginx,
    per_uid_limit,
    tokend_argv,
    tool_version,
    workdir,
)
from bench.engines.serve.procfs import (
    children_of,
    loadavg,
    machine_line,
    measure_idle,
    proc_status_kb,
)
from bench.engines.serve.report import Figures, render, to_json
from bench.engines.serve.servers import (
    probe,
    start_bare_aiohttp,
    start_fake,
    start_nginx,
    start_tokend,
    write_tokend_config,
)

SERVERS = ("tokend", "bare aiohttp", "nginx")
CLI_REFERENCES = {
    "cli": [*tokend_argv(), "token", "--socket", "{sock}"],
    "python": [sys.executable, "-c", "pass"],
    "import": [sys.executable, "-c", "import tokend.cli"],
}


def measure_cli(sock: Path, runs: int) -> dict[str, list[float]]:
    """Wall seconds of ``tokend token`` runs; of ``python -c pass`` and of importing the CLI module
    alone, for reference (interpreter start-up, and the imports ``tokend token`` pays for)."""
    cmds = {k: [a.replace("{sock}", str(sock)) for a in v] for k, v in CLI_REFERENCES.items()}
    for cmd in cmds.values():  # warm the page cache
        subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True)
    times: dict[str, list[float]] = {k: [] for k in cmds}
    for _ in range(runs):
        for key, cmd in cmds.items():
            t0 = time.perf_counter()
            subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True)
            times[key].append(time.perf_counter() - t0)
    return times


def start_ready(bench: Bench) -> tuple[Proc, Path, list[float], int, int]:
    """The fake, then ``--start-runs`` fresh starts of ``tokend run``; the last one is left running.

    Returns that process, its socket, the start-to-ready seconds of every start, and its VmRSS and
    VmHWM in kB two seconds after it was ready.
    """
    _fake, url = start_fake(bench)
    config, sock = write_tokend_config(bench, url)
    starts: list[float] = []
    tokend_proc: Proc | None = None
    for i in range(max(1, bench.args.start_runs)):
        tokend_proc, seconds = start_tokend(bench, config, sock)
        starts.append(seconds)
        if i < max(1, bench.args.start_runs) - 1:
            code = tokend_proc.stop()
            bench.procs.remove(tokend_proc)
            if code != 0:
                raise RuntimeError(f"tokend exited {code} on SIGTERM:\n{tokend_proc.tail()}")
    assert tokend_proc is not None
    time.sleep(2.0)  # let start-up work (first status line, GC of start-up garbage) settle
    pid = tokend_proc.pid
    return tokend_proc, sock, starts, proc_status_kb(pid, "VmRSS"), proc_status_kb(pid, "VmHWM")


def run_startup_only(args: argparse.Namespace) -> int:
    """``--startup-only``: start-to-ready, RSS when ready and ``tokend token`` wall time alone.

    No load runs, no idle sample, no nginx or autocannon: the figures to compare two commits by.
    """
    print(f"$ {shlex.join(getattr(sys, 'orig_argv', [sys.executable, *sys.argv]))}\n", flush=True)
    with workdir() as wd:
        bench = Bench(args, wd, None, None, per_uid_limit(args.per_uid))
        try:
            _proc, sock, starts, rss, hwm = start_ready(bench)
            cli = measure_cli(sock, args.cli_runs)["cli"] if args.cli_runs > 0 else []
        finally:
            bench.stop_all()
    ordered = sorted(starts)
    print(f"start-to-ready, {len(starts)} starts: median {statistics.median(ordered) * 1000:.0f} ms,"
          f" min {ordered[0] * 1000:.0f} ms, max {ordered[-1] * 1000:.0f} ms")
    print(f"RSS when ready: {rss / 1024:.1f} MB (VmHWM {hwm / 1024:.1f} MB)")
    if cli:
        print(f"`tokend token` wall time, {len(cli)} runs: median"
              f" {statistics.median(cli) * 1000:.1f} ms")
    return 0


def run_benchmark(args: argparse.Namespace) -> int:
    """The whole benchmark for parsed options (see ``bench/serve.py``); the exit status."""
    nginx, autocannon = find_nginx(), find_autocannon()
    missing = [n for n, v in (("nginx", nginx), ("autocannon", autocannon)) if v is None]
    if args.load_generator == "driver" and shutil.which("node") is None:
        missing.append("node")
    if missing:
        print(f"serve.py: missing {', '.join(missing)}: run bench/setup.sh first", file=sys.stderr)
        return 2
    assert nginx is not None and autocannon is not None
    cpus, server_cpus, client_cpus = cpu_split(args)
    announce_command()
    with load_bench(args, server_cpus, client_cpus, per_uid_limit(args.per_uid)) as bench:
        figures = measure(bench, nginx, autocannon, cpus)
    publish(render(figures), to_json(figures), args.json)
    bad = [r for r in figures.results if r.bad]
    if bad:
        print("\nwarning: errors or non-2xx answers in: "
              + ", ".join(f"{r.server}@{r.connections}" for r in bad), file=sys.stderr)
    return 0


def measure(bench: Bench, nginx: str, autocannon: str, cpus: list[int] | None) -> Figures:
    """Every measurement of one run, in order."""
    args = bench.args
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    load_before = loadavg()
    versions = {
        **common_versions(),
        "nginx": tool_version([nginx, "-v"]).replace("nginx version: ", ""),
        "autocannon": tool_version([autocannon, "--version"]).split()[-1],
        "node": tool_version(["node", "--version"]),
    }

    # 1. the fake and tokend; start-to-ready over several fresh starts
    tokend_proc, sock, starts, rss_ready, hwm_ready = start_ready(bench)
    pid = tokend_proc.pid

    # 2. idle CPU, before any consumer request
    idle_ticks = idle_sched = None
    if args.idle_seconds > 0:
        print(f"measuring idle CPU for {args.idle_seconds:g} s ...", file=sys.stderr, flush=True)
        idle_ticks, idle_sched = measure_idle(pid, args.idle_seconds)

    # 3. the token JSON bytes all three servers answer with
    token = probe(sock, "/v1/token")
    if token.status != 200:
        raise RuntimeError(f"tokend answered {token.status} to /v1/token: {token.body[:300]!r}")
    body_file = bench.workdir / "token.json"
    body_file.write_bytes(token.body)
    body_file.chmod(0o644)

    # 4. `tokend token` wall time
    cli_times = measure_cli(sock, args.cli_runs) if args.cli_runs > 0 else {}

    # 5. the references
    aio_proc, aio_sock = start_bare_aiohttp(bench, body_file)
    ngx_proc, ngx_sock = start_nginx(bench, nginx, body_file, args.nginx_workers)
    ngx_pids = [ngx_proc.pid, *children_of(ngx_proc.pid)]
    targets = {"tokend": ([pid], sock), "bare aiohttp": ([aio_proc.pid], aio_sock),
               "nginx": (ngx_pids, ngx_sock)}

    # 6. load: for each connection count, the three servers back to back

    def run_one(server: str, conns: int) -> LoadResult:
        pids, path = targets[server]
        return run_load(bench, args.load_generator, autocannon, server, pids, path, conns)

    rounds, results = load_rounds(args, SERVERS, run_one)
    status_after = probe(sock, "/v1/token").status
    rss_after = proc_status_kb(pid, "VmRSS")
    hwm_after = proc_status_kb(pid, "VmHWM")
    aio_hwm = proc_status_kb(aio_proc.pid, "VmHWM")
    load_after = loadavg()
    code = tokend_proc.stop()
    return Figures(args=args, started=started, machine=machine_line(), versions=versions,
                   body_bytes=len(token.body), cpus=cpus, per_uid=bench.per_uid,
                   load_before=load_before, load_after=load_after, rounds=rounds, results=results,
                   idle_ticks=idle_ticks, idle_sched=idle_sched, cli_times=cli_times, starts=starts,
                   rss_ready=rss_ready, hwm_ready=hwm_ready, rss_after=rss_after,
                   hwm_after=hwm_after, aio_hwm=aio_hwm, status_after=status_after, exit_code=code)
