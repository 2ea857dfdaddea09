"""The three servers measured (tokend, bare aiohttp, nginx) and the fake upstream tokend uses.

tokend's config is written by the test toolkit, with the benchmark's own settings; readiness is
probed with the toolkit's socket client, one ``Connection: close`` request at a time. tokend runs
as the installed command (what users run), pinned like the references, not through the toolkit's
``Tokend``.
"""

from __future__ import annotations

import http.client
import sys
import time
from pathlib import Path

from bench.engines.serve.processes import Bench, Proc, tokend_argv
from tests.support import (
    DEFAULT_PASSWORD,
    DEFAULT_USER,
    Answer,
    SocketClient,
    configured_tokend,
    free_port,
    start_fake_process,
    wait_until,
)

BARE_AIOHTTP = Path(__file__).resolve().parent / "bare_aiohttp.py"
# tokend logs in as the fake's default user; the password is only ever written to a 0600 file.
TARGET = {"name": "bench", "username": DEFAULT_USER,
          # tokend's defaults, as a deployment has them
          "request_timeout": None, "login_retry_interval": None}


def probe(sock: Path, path: str, timeout: float = 2.0) -> Answer:
    """One ``GET`` over the Unix socket ``sock`` with ``Connection: close``."""
    return SocketClient(sock).request_blocking("GET", path, timeout=timeout)


def wait_serving(proc: Proc, sock: Path, path: str, timeout: float, interval: float) -> None:
    """Wait until ``proc`` answers 200 to ``GET path`` on ``sock``; fail if it exits first."""
    def serving() -> bool:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
        return probe(sock, path, min(timeout, 1.0)).status == 200
    try:
        wait_until(serving, timeout, interval, what=f"{proc.name} {path}",
                   ignore=(OSError, http.client.HTTPException))
    except AssertionError as exc:
        raise RuntimeError(f"{exc}:\n{proc.tail()}") from None


def start_fake(bench: Bench) -> tuple[Proc, str]:
    """``tokend fake-sddc`` on a free loopback port, with tokens that outlive the run; its URL."""
    fake = start_fake_process(bench.workdir, "--access-ttl", "43200", timeout=30.0,
                              preexec_fn=bench.pinning(server=False))
    return bench.adopt(Proc("fake-sddc", fake.proc, fake.log)), fake.url


def write_tokend_config(bench: Bench, url: str) -> tuple[Path, Path]:
    """tokend's config for one target at ``url``: the paths of the config and of its socket."""
    # Socket mode 0666: the load generator may connect under several uids.
    tokend = configured_tokend(bench.workdir, url, password=DEFAULT_PASSWORD,
                               server={"socket_mode": "0666"},
                               metrics={"listen": f"127.0.0.1:{free_port()}"},
                               log={"level": "info"}, target=TARGET)
    return tokend.config_path, tokend.socket


def start_tokend(bench: Bench, config: Path, sock: Path) -> tuple[Proc, float]:
    """Spawn ``tokend run``; seconds from spawn to the first 200 on /readyz (polled every 2 ms)."""
    t0 = time.perf_counter()
    proc = bench.spawn("tokend", [*tokend_argv(), "run", "--config", str(config)], server=True)
    wait_serving(proc, sock, "/readyz", 60.0, 0.002)
    return proc, time.perf_counter() - t0


def start_bare_aiohttp(bench: Bench, body_file: Path) -> tuple[Proc, Path]:
    """Reference (a): ``bare_aiohttp.py`` answering ``body_file``'s bytes."""
    sock = bench.workdir / "aiohttp.sock"
    proc = bench.spawn("bare aiohttp", [sys.executable, str(BARE_AIOHTTP), str(sock), str(body_file)],
                       server=True)
    wait_serving(proc, sock, "/v1/token", 30.0, 0.01)
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
    wait_serving(proc, sock, "/v1/token", 30.0, 0.01)
    return proc, sock
