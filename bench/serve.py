#!/usr/bin/env python3
"""Benchmark of tokend's socket API against two references, in one run, on one machine.

What runs (all on loopback and Unix sockets, in a temp dir that is removed at the end):

- a fake SDDC Manager, ``tokend fake-sddc --listen 127.0.0.1:0 --access-ttl 43200`` (plain HTTP,
  long-lived tokens, so no refresh happens during the run; its default user, whose password is
  written to a 0600 file that the config names);
- ``tokend run`` against it, one target, the metrics listener on a free loopback port;
- reference (a): a bare aiohttp app on a Unix socket (``web.UnixSite``) answering the same token
  JSON bytes from memory, in a separate process (this file with ``--bare-aiohttp``): the floor
  that the framework sets;
- reference (b): nginx serving the same bytes as a static file on a Unix socket, for context.

The load generator is autocannon (Node), over the Unix socket, with keep-alive connections. By
default it is driven through ``bench/cannon.js`` (the same engine, every response time kept in
microseconds, since the CLI's histogram has whole milliseconds); ``--load-generator cli`` runs the
plain CLI, ``autocannon -c N -d S -j -n -S SOCKET http://localhost/v1/token``, instead.

tokend admits a limited number of connections per uid; a run with more connections than that is
spread over several load-generator processes, each under its own uid, for all three servers alike
(so the sockets are made connectable for other uids: mode 0666 in a 0711 temp dir). Each row also
gives the server's CPU time per request, from schedstat, which moves much less than req/s when
other processes share the machine.

Also measured: ``tokend token`` wall time, idle CPU, peak RSS, start-to-ready. Goals are printed
with PASS/FAIL; nothing here asserts. See bench/README.md.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
FAKE_USER = "administrator@vsphere.local"
FAKE_PASSWORD = "VMware1!"  # the fake's default user; only ever written to a 0600 file
URL = "http://localhost/v1/token"
SERVERS = ("tokend", "bare aiohttp", "nginx")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

# The goals of the issue, compared against (never asserted).
GOAL_RPS_RATIO = 0.9  # tokend req/s >= 0.9 x bare aiohttp at 100 connections
GOAL_P99_RATIO = 1.2  # tokend p99 <= 1.2 x bare aiohttp at 100 connections
GOAL_P99_10_MS = 5.0  # tokend p99 < 5 ms at 10 connections
GOAL_IDLE_CPU = 0.05  # s of CPU per minute, idle
GOAL_PEAK_RSS_MB = 60.0


# -- small helpers ------------------------------------------------------------------------------


def unix_get(sock_path: str | Path, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """One ``GET`` over a Unix socket with ``Connection: close``: (status, body)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(sock_path))
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    data = b"".join(chunks)
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    return status, body


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cpu_ticks(pid: int) -> int:
    """utime + stime of ``pid`` (all its threads), in clock ticks."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])


def sched_ns(pid: int) -> int:
    """Nanoseconds on CPU of every thread of ``pid`` (schedstat: finer than clock ticks)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError):
            total += int((task / "schedstat").read_text().split()[0])
    return total


def proc_status_kb(pid: int, key: str) -> int:
    """A ``kB`` field of /proc/<pid>/status (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (nginx's workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            text = (entry / "stat").read_text()
            if int(text[text.rindex(")") + 2:].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def system_busy_ticks() -> int:
    """Busy clock ticks of all CPUs together, from /proc/stat."""
    parts = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in parts[:8])
    return user + nice + system + irq + softirq + steal


def mb(kb: float) -> float:
    return kb / 1024.0


def ms(us: float | None) -> str:
    return "n/a" if us is None else f"{us / 1000.0:.2f}"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, round(q / 100.0 * len(ordered) + 0.5) - 1))
    return ordered[rank]


# -- processes ----------------------------------------------------------------------------------


@dataclass
class Proc:
    """A process this benchmark started; stopped by its own pid only."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Bench:
    """The run's settings, tools, temp dir and processes."""

    args: argparse.Namespace
    workdir: Path
    server_cpus: set[int] | None
    client_cpus: set[int] | None
    per_uid: int | None = None  # connections tokend admits per uid (None: no limit known)
    procs: list[Proc] = field(default_factory=list)

    def spawn(self, name: str, argv: Sequence[str], *, server: bool) -> Proc:
        """Start ``argv`` with its output in ``<workdir>/<name>.log``, pinned if asked."""
        log = self.workdir / f"{name.replace(' ', '-')}.log"
        cpus = self.server_cpus if server else self.client_cpus

        def pin() -> None:
            if cpus:
                os.sched_setaffinity(0, cpus)

        with log.open("ab") as out:
            popen = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, preexec_fn=pin, cwd=self.workdir)
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


def per_uid_limit(option: str) -> int | None:
    """Connections per uid the load generator keeps to: ``--per-uid``, or tokend's own limit."""
    if option != "auto":
        return int(option) or None
    from tokend.config import ServerConfig

    return ServerConfig.max_connections_per_uid


def tokend_argv() -> list[str]:
    exe = Path(sys.executable).parent / "tokend"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "tokend"]


def find_nginx() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None)


def find_autocannon() -> str | None:
    local = HERE / ".npm" / "bin" / "autocannon"
    return shutil.which("autocannon") or (str(local) if os.access(local, os.X_OK) else None)


def node_path_for(autocannon: str) -> str:
    """The node_modules folder holding the autocannon package the CLI belongs to."""
    real = Path(os.path.realpath(autocannon))  # .../node_modules/autocannon/autocannon.js
    for parent in real.parents:
        if parent.name == "node_modules":
            return str(parent)
    return str(real.parent.parent)


def tool_version(argv: Sequence[str]) -> str:
    try:
        out = subprocess.run(list(argv), capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (out.stdout + out.stderr).strip().splitlines()
    return text[0] if text else "?"


def wait_until(check: Any, timeout: float, interval: float, what: str, proc: Proc | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
        with contextlib.suppress(OSError, ValueError, IndexError):
            if check():
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}"
                               + (f":\n{proc.tail()}" if proc else ""))
        time.sleep(interval)


# -- the three servers --------------------------------------------------------------------------


def start_fake(bench: Bench) -> tuple[Proc, str]:
    """``tokend fake-sddc`` on a free loopback port; its base URL (the first line it prints)."""
    proc = bench.spawn("fake-sddc", [*tokend_argv(), "fake-sddc", "--listen", "127.0.0.1:0",
                                     "--access-ttl", "43200"], server=False)
    found: list[str] = []

    def url_printed() -> bool:
        lines = proc.log.read_text().splitlines()
        if lines and lines[0].startswith("http://"):
            found.append(lines[0].strip())
        return bool(found)

    wait_until(url_printed, 30.0, 0.01, "fake-sddc to print its URL", proc)
    return proc, found[0]


def write_tokend_config(bench: Bench, url: str) -> tuple[Path, Path]:
    password = bench.workdir / "password"
    fd = os.open(password, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(FAKE_PASSWORD + "\n")
    sock = bench.workdir / "tokend.sock"
    config = bench.workdir / "config.toml"
    config.write_text(f"""\
[server]
socket = "{sock}"
socket_mode = "0666"  # the load generator may connect under several uids

[metrics]
listen = "127.0.0.1:{free_port()}"

[log]
level = "info"
format = "json"

[[targets]]
name = "bench"
url = "{url}"
username = "{FAKE_USER}"
password_file = "{password}"
""")
    config.chmod(0o600)
    return config, sock


def start_tokend(bench: Bench, config: Path, sock: Path) -> tuple[Proc, float]:
    """Spawn ``tokend run``; seconds from spawn to the first 200 on /readyz (polled every 2 ms)."""
    t0 = time.perf_counter()
    proc = bench.spawn("tokend", [*tokend_argv(), "run", "--config", str(config)], server=True)
    wait_until(lambda: unix_get(sock, "/readyz", 1.0)[0] == 200, 60.0, 0.002, "tokend /readyz", proc)
    return proc, time.perf_counter() - t0


def start_bare_aiohttp(bench: Bench, body_file: Path) -> tuple[Proc, Path]:
    sock = bench.workdir / "aiohttp.sock"
    proc = bench.spawn("bare aiohttp", [sys.executable, str(Path(__file__).resolve()),
                                        "--bare-aiohttp", str(sock), str(body_file)], server=True)
    wait_until(lambda: unix_get(sock, "/v1/token")[0] == 200, 30.0, 0.01, "bare aiohttp", proc)
    return proc, sock


def start_nginx(bench: Bench, nginx: str, body_file: Path, workers: str) -> tuple[Proc, Path]:
    root = bench.workdir / "nginx"
    (root / "tmp").mkdir(parents=True)
    sock = root / "nginx.sock"
    conf = root / "nginx.conf"
    conf.write_text(f"""\
# Minimal static-file server for the benchmark; runs in the foreground with its own paths.
user root;
worker_processes {workers};
daemon off;
master_process on;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {root}/tmp/body;
    proxy_temp_path {root}/tmp/proxy;
    fastcgi_temp_path {root}/tmp/fastcgi;
    uwsgi_temp_path {root}/tmp/uwsgi;
    scgi_temp_path {root}/tmp/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    server {{
        listen unix:{sock};
        location = /v1/token {{
            default_type application/json;
            alias {body_file};
        }}
    }}
}}
""")
    proc = bench.spawn("nginx", [nginx, "-c", str(conf), "-p", f"{root}/", "-e", str(root / "error.log")],
                       server=True)
    wait_until(lambda: unix_get(sock, "/v1/token")[0] == 200, 30.0, 0.01, "nginx", proc)
    return proc, sock


async def _serve_bare(sock: str, body_file: str) -> None:
    from aiohttp import web

    body = Path(body_file).read_bytes()

    async def token(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/v1/token", token)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.UnixSite(runner, sock).start()
    os.chmod(sock, 0o666)  # the load generator may connect under several uids
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


# -- load ---------------------------------------------------------------------------------------


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


def load_command(gen: str, autocannon: str, driver: Path, sock: Path, connections: int,
                 duration: float, warmup: float, latencies: Path | None) -> list[str]:
    if gen == "cli":
        return [autocannon, "-c", str(connections), "-d", f"{duration:g}", "-j", "-n",
                "-S", str(sock), URL]
    argv = ["node", str(driver), "-c", str(connections), "-d", f"{duration:g}",
            "-w", f"{warmup:g}", "-S", str(sock), "--url", URL]
    return argv + (["--latencies", str(latencies)] if latencies is not None else [])


def run_load(bench: Bench, gen: str, autocannon: str, server: str, server_pids: list[int],
             sock: Path, connections: int) -> LoadResult:
    """One measured run: ``connections`` keep-alive connections for ``--duration`` seconds.

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
        warm = [subprocess.Popen(load_command(gen, autocannon, driver, sock, c, args.warmup, 0, None),
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
                                            lat_files[i] if gen == "driver" else None),
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


def children_ticks() -> int:
    """CPU ticks of this process's reaped children so far."""
    times = os.times()
    return round((times.children_user + times.children_system) * CLK_TCK)


# -- the run ------------------------------------------------------------------------------------


def machine_line() -> str:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model} x {os.cpu_count()} CPUs, Linux {platform.release()}"


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    # Unix socket paths are limited to 107 bytes: a short directory under /tmp.
    path = Path(tempfile.mkdtemp(prefix="tkb-", dir="/tmp"))
    path.chmod(0o711)  # the load generator may run under other uids: they may enter, not list
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def measure_idle(pid: int, seconds: float) -> tuple[float, float]:
    """(s of CPU per minute from utime+stime, the same from schedstat) over ``seconds`` idle."""
    t0, n0 = cpu_ticks(pid), sched_ns(pid)
    start = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - start
    t1, n1 = cpu_ticks(pid), sched_ns(pid)
    per_min = 60.0 / elapsed
    return (t1 - t0) / CLK_TCK * per_min, (n1 - n0) / 1e9 * per_min


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


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Benchmark tokend's GET /v1/token against a bare aiohttp"
                                " app and nginx, over Unix sockets, with autocannon.")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per load run (default 10)")
    p.add_argument("--connections", default="1,10,100",
                   help="comma-separated keep-alive connection counts (default 1,10,100)")
    p.add_argument("--warmup", type=float, default=1.0,
                   help="seconds of unmeasured load before each run (default 1; 0: none)")
    p.add_argument("--idle-seconds", type=float, default=60.0,
                   help="idle CPU sample length (default 60; 0 skips it)")
    p.add_argument("--cli-runs", type=int, default=20, help="`tokend token` runs (default 20)")
    p.add_argument("--start-runs", type=int, default=5,
                   help="start-to-ready samples, each a fresh `tokend run` (default 5)")
    p.add_argument("--nginx-workers", default="1",
                   help="nginx worker_processes (default 1, like tokend's one event loop; or auto)")
    p.add_argument("--load-generator", choices=("driver", "cli"), default="driver",
                   help="driver: bench/cannon.js, autocannon with microsecond latencies (default);"
                        " cli: the autocannon command (latencies in whole milliseconds)")
    p.add_argument("--rounds", type=int, default=1,
                   help="repeat the load sweep; each cell shows its best round by req/s, the one"
                        " least disturbed on a shared machine (default 1)")
    p.add_argument("--per-uid", default="auto",
                   help="connections one load-generator uid may open; more are spread over extra"
                        " uids (65534, 65533, ...). auto: tokend's own per-uid limit; 0: never split")
    p.add_argument("--no-pin", action="store_true",
                   help="do not pin the servers to the last CPU and the load generator to the others")
    p.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    p.add_argument("--bare-aiohttp", nargs=2, metavar=("SOCKET", "BODY_FILE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        args.conn_list = [int(c) for c in args.connections.split(",") if c.strip()]
    except ValueError:
        p.error("--connections: expected numbers like 1,10,100")
    if not args.conn_list or min(args.conn_list) < 1:
        p.error("--connections: expected numbers like 1,10,100")
    if args.duration <= 0:
        p.error("--duration must be > 0")
    if args.nginx_workers != "auto" and not args.nginx_workers.isdigit():
        p.error("--nginx-workers: a number or auto")
    if args.per_uid != "auto" and not args.per_uid.isdigit():
        p.error("--per-uid: a number or auto")
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.bare_aiohttp:
        asyncio.run(_serve_bare(*args.bare_aiohttp))
        return 0
    nginx, autocannon = find_nginx(), find_autocannon()
    missing = [n for n, v in (("nginx", nginx), ("autocannon", autocannon)) if v is None]
    if args.load_generator == "driver" and shutil.which("node") is None:
        missing.append("node")
    if missing:
        print(f"serve.py: missing {', '.join(missing)}: run bench/setup.sh first", file=sys.stderr)
        return 2
    assert nginx is not None and autocannon is not None
    cpus = sorted(os.sched_getaffinity(0))
    pin = not args.no_pin and len(cpus) >= 2
    server_cpus = {cpus[-1]} if pin else None
    client_cpus = set(cpus[:-1]) if pin else None

    command = shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    print(f"$ {command}\n", flush=True)
    with workdir() as wd:
        bench = Bench(args, wd, server_cpus, client_cpus, per_uid_limit(args.per_uid))
        shutil.copy(HERE / "cannon.js", wd / "cannon.js")
        (wd / "cannon.js").chmod(0o644)
        try:
            return run(bench, nginx, autocannon, pin, cpus)
        finally:
            bench.stop_all()


def run(bench: Bench, nginx: str, autocannon: str, pin: bool, cpus: list[int]) -> int:
    args = bench.args
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    load_before = loadavg()
    import aiohttp

    import tokend

    versions = {
        "tokend": tokend.__version__,
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "nginx": tool_version([nginx, "-v"]).replace("nginx version: ", ""),
        "autocannon": tool_version([autocannon, "--version"]).split()[-1],
        "node": tool_version(["node", "--version"]),
    }

    # 1. the fake and tokend; start-to-ready over several fresh starts
    _fake, url = start_fake(bench)
    config, sock = write_tokend_config(bench, url)
    starts: list[float] = []
    tokend_proc: Proc | None = None
    for i in range(max(1, args.start_runs)):
        tokend_proc, seconds = start_tokend(bench, config, sock)
        starts.append(seconds)
        if i < max(1, args.start_runs) - 1:
            code = tokend_proc.stop()
            bench.procs.remove(tokend_proc)
            if code != 0:
                raise RuntimeError(f"tokend exited {code} on SIGTERM:\n{tokend_proc.tail()}")
    assert tokend_proc is not None
    pid = tokend_proc.pid
    time.sleep(2.0)  # let start-up work (first status line, GC of start-up garbage) settle
    rss_ready = proc_status_kb(pid, "VmRSS")
    hwm_ready = proc_status_kb(pid, "VmHWM")

    # 2. idle CPU, before any consumer request
    idle_ticks = idle_sched = None
    if args.idle_seconds > 0:
        print(f"measuring idle CPU for {args.idle_seconds:g} s ...", file=sys.stderr, flush=True)
        idle_ticks, idle_sched = measure_idle(pid, args.idle_seconds)

    # 3. the token JSON bytes all three servers answer with
    status, body = unix_get(sock, "/v1/token")
    if status != 200:
        raise RuntimeError(f"tokend answered {status} to /v1/token: {body[:300]!r}")
    body_file = bench.workdir / "token.json"
    body_file.write_bytes(body)
    body_file.chmod(0o644)

    # 4. `tokend token` wall time
    cli_times = measure_cli(sock, args.cli_runs) if args.cli_runs > 0 else {}
    cli = cli_times.get("cli", [])

    # 5. the references
    aio_proc, aio_sock = start_bare_aiohttp(bench, body_file)
    ngx_proc, ngx_sock = start_nginx(bench, nginx, body_file, args.nginx_workers)
    ngx_pids = [ngx_proc.pid, *children_of(ngx_proc.pid)]
    targets = {"tokend": ([pid], sock), "bare aiohttp": ([aio_proc.pid], aio_sock),
               "nginx": (ngx_pids, ngx_sock)}

    # 6. load: for each connection count, the three servers back to back
    rounds: dict[tuple[str, int], list[LoadResult]] = {}
    for round_no in range(args.rounds):
        for conns in args.conn_list:
            for server in SERVERS:
                pids, path = targets[server]
                print(f"load: round {round_no + 1}/{args.rounds}, {server}, {conns} connections,"
                      f" {args.duration:g} s ...", file=sys.stderr, flush=True)
                rounds.setdefault((server, conns), []).append(
                    run_load(bench, args.load_generator, autocannon, server, pids, path, conns))
    results = [max(rounds[(server, conns)], key=lambda r: r.rps)
               for conns in args.conn_list for server in SERVERS]
    status_after, _ = unix_get(sock, "/v1/token")
    rss_after = proc_status_kb(pid, "VmRSS")
    hwm_after = proc_status_kb(pid, "VmHWM")
    aio_hwm = proc_status_kb(aio_proc.pid, "VmHWM")
    load_after = loadavg()
    code = tokend_proc.stop()

    # -- report --
    out: list[str] = []
    w = out.append
    w("# tokend socket benchmark")
    w("")
    w(f"- started {started}; {machine_line()}")
    w("- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    if args.load_generator == "driver":
        w(f"- load generator: autocannon {versions['autocannon']} engine via bench/cannon.js"
          " (per-response latencies in microseconds); the plain CLI equivalent of each run is"
          f" `autocannon -c N -d {args.duration:g} -j -n -S SOCKET {URL}`")
    else:
        w(f"- load generator: `autocannon -c N -d {args.duration:g} -j -n -S SOCKET {URL}`"
          " (its latencies are whole milliseconds)")
    w(f"- keep-alive connections, no pipelining; {args.duration:g} s per run after"
      f" {args.warmup:g} s of unmeasured warm-up; body {len(body)} bytes of token JSON, the same"
      " bytes from all three (tokend's own answer, captured once)")
    if pin:
        w(f"- CPU pinning: servers on CPU {cpus[-1]}, load generator on CPU"
          f" {','.join(map(str, cpus[:-1]))} (one core each side)")
    else:
        w("- no CPU pinning")
    w(f"- nginx: worker_processes {args.nginx_workers}, static file (`alias`), access_log off,"
      " keepalive_requests 1000000; bare aiohttp: one handler returning constant bytes, access log"
      " off, `web.UnixSite`, separate process; tokend: `tokend run`, one target, against"
      " `tokend fake-sddc` on loopback (43200 s tokens: no refresh during the run)")
    w(f"- load average before {load_before}, after {load_after}; 'other CPU' is the CPU time of"
      " processes outside this benchmark during each run, in % of one core (noise indicator)")
    w("")
    if bench.per_uid:
        w(f"- tokend admits {bench.per_uid} connections per uid: a run with more connections spreads"
          " them evenly over several load-generator processes, each under its own uid (root, 65534,"
          " 65533, ...), for all three servers alike; the 'uids' column says how many")
    if args.rounds > 1:
        w(f"- {args.rounds} rounds; each row is its best round by req/s; 'req/s over rounds' shows all")
    w("")
    w("| connections | server | req/s | p50 ms | p99 ms | server CPU µs/req | requests | errors+non-2xx"
      " | uids | other CPU % |" + (" req/s over rounds |" if args.rounds > 1 else ""))
    w("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---|" if args.rounds > 1 else ""))
    for r in results:
        cpu = "n/a" if r.cpu_us_per_req is None else f"{r.cpu_us_per_req:.0f}"
        line = (f"| {r.connections} | {r.server} | {r.rps:,.0f} | {ms(r.p50_us)} | {ms(r.p99_us)} |"
                f" {cpu} | {r.requests:,} | {r.bad} | {r.uids} | {r.other_cpu:.0f} |")
        if args.rounds > 1:
            line += " " + ", ".join(f"{x.rps:,.0f}" for x in rounds[(r.server, r.connections)]) + " |"
        w(line)
    w("")

    def find(server: str, conns: int) -> LoadResult | None:
        return next((r for r in results if r.server == server and r.connections == conns), None)

    w("| figure | value | goal | result |")
    w("|---|---:|---|---|")
    t100, a100 = find("tokend", 100), find("bare aiohttp", 100)
    if t100 and a100 and a100.rps > 0:
        ratio = t100.rps / a100.rps
        w(f"| req/s tokend / bare aiohttp, 100 conns | {ratio:.2f} ({t100.rps:,.0f} / {a100.rps:,.0f})"
          f" | >= {GOAL_RPS_RATIO} | {verdict(ratio >= GOAL_RPS_RATIO)} |")
    if t100 and a100 and t100.p99_us and a100.p99_us:
        ratio = t100.p99_us / a100.p99_us
        w(f"| p99 tokend / bare aiohttp, 100 conns | {ratio:.2f} ({ms(t100.p99_us)} /"
          f" {ms(a100.p99_us)} ms) | <= {GOAL_P99_RATIO} | {verdict(ratio <= GOAL_P99_RATIO)} |")
    t10 = find("tokend", 10)
    if t10 and t10.p99_us is not None:
        w(f"| p99 tokend, 10 conns | {ms(t10.p99_us)} ms | < {GOAL_P99_10_MS:g} ms |"
          f" {verdict(t10.p99_us / 1000 < GOAL_P99_10_MS)} |")
    if idle_ticks is not None and idle_sched is not None:
        w(f"| idle CPU, {args.idle_seconds:g} s without requests | {idle_ticks:.3f} s/min"
          f" (utime+stime; schedstat {idle_sched:.4f} s/min) | < {GOAL_IDLE_CPU} s/min |"
          f" {verdict(idle_ticks < GOAL_IDLE_CPU)} |")
    w(f"| peak RSS (VmHWM) after the load | {mb(hwm_after):.1f} MB | < {GOAL_PEAK_RSS_MB:g} MB |"
      f" {verdict(mb(hwm_after) < GOAL_PEAK_RSS_MB)} |")
    w("")
    w("| other figure | value |")
    w("|---|---:|")
    if cli:
        w(f"| `tokend token` wall time, {len(cli)} runs | median {statistics.median(cli) * 1000:.1f} ms,"
          f" p90 {pct(cli, 90) * 1000:.1f} ms, min {min(cli) * 1000:.1f} ms |")
        py, imp = cli_times["python"], cli_times["import"]
        w(f"| `python -c pass` wall time (interpreter start-up, for reference) |"
          f" median {statistics.median(py) * 1000:.1f} ms |")
        w(f"| `python -c 'import tokend.cli'` wall time (start-up + the CLI's imports) |"
          f" median {statistics.median(imp) * 1000:.1f} ms |")
    w(f"| start-to-ready (spawn `tokend run` to first 200 on /readyz), {len(starts)} starts |"
      f" median {statistics.median(starts) * 1000:.0f} ms, min {min(starts) * 1000:.0f} ms,"
      f" max {max(starts) * 1000:.0f} ms |")
    w(f"| tokend RSS when ready / VmHWM when ready | {mb(rss_ready):.1f} MB / {mb(hwm_ready):.1f} MB |")
    w(f"| tokend RSS after the load | {mb(rss_after):.1f} MB |")
    w(f"| bare aiohttp VmHWM after the load (context) | {mb(aio_hwm):.1f} MB |")
    w(f"| tokend /v1/token after the load; exit status on SIGTERM | {status_after}; {code} |")
    if t100 and (n100 := find("nginx", 100)) and n100.rps > 0:
        w(f"| req/s tokend / nginx, 100 conns (context) | {t100.rps / n100.rps:.2f} |")
    cpu_ratios = [f"{c}: {t.cpu_us_per_req / a.cpu_us_per_req:.2f}" for c in args.conn_list
                  if (t := find("tokend", c)) and (a := find("bare aiohttp", c))
                  and t.cpu_us_per_req and a.cpu_us_per_req]
    if cpu_ratios:
        w(f"| server CPU per request, tokend / bare aiohttp, by connections (insensitive to other"
          f" load) | {'; '.join(cpu_ratios)} |")
    print("\n".join(out), flush=True)
    if args.json:
        args.json.write_text(json.dumps({
            "command": shlex.join(getattr(sys, "orig_argv", sys.argv)),
            "versions": versions,
            "results": [r.__dict__ for rs in rounds.values() for r in rs],
            "idle_cpu_s_per_min": idle_ticks, "idle_cpu_schedstat_s_per_min": idle_sched,
            "peak_rss_kb": hwm_after, "rss_ready_kb": rss_ready, "rss_after_kb": rss_after,
            "cli_seconds": cli_times, "start_to_ready_seconds": starts,
        }, indent=2))
    bad = [r for r in results if r.bad]
    if bad:
        print("\nwarning: errors or non-2xx answers in: "
              + ", ".join(f"{r.server}@{r.connections}" for r in bad), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
