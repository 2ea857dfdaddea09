"""What the proxy benchmark starts: tokend with a ``[[proxies]]`` socket, and the bare reference.

The fake comes from the socket benchmark (:func:`bench.engines.serve.servers.start_fake`: plain
HTTP on loopback, tokens that outlive the run); tokend's config is written by the test toolkit.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.engines.serve.processes import Bench, Proc, tokend_argv
from bench.engines.serve.servers import TARGET, probe, wait_serving
from tests.support import DEFAULT_PASSWORD, configured_tokend, free_port

BARE_PROXY = Path(__file__).resolve().parent / "bare_proxy.py"
PATH = "/v1/domains"
# tokend's default max_upstream_connections: the bare proxy gets a pool of the same size.
POOL = 64


def write_config(bench: Bench, url: str) -> tuple[Path, Path, Path]:
    """tokend's config for one target at ``url`` with a proxy: (config, API socket, proxy socket)."""
    proxy_sock = bench.workdir / "proxy.sock"
    # Sockets mode 0666: the load generator may connect under several uids.
    tokend = configured_tokend(bench.workdir, url, password=DEFAULT_PASSWORD,
                               server={"socket_mode": "0666"},
                               metrics={"listen": f"127.0.0.1:{free_port()}"},
                               log={"level": "info"}, target=TARGET,
                               proxies=[{"target": TARGET["name"], "socket": str(proxy_sock),
                                         "socket_mode": "0666",
                                         "max_upstream_connections": POOL}])
    return tokend.config_path, tokend.socket, proxy_sock


def start_tokend(bench: Bench, config: Path, api_sock: Path, proxy_sock: Path) -> Proc:
    """``tokend run``, ready when its proxy answers ``GET /v1/domains`` with 200."""
    proc = bench.spawn("tokend", [*tokend_argv(), "run", "--config", str(config)], server=True)
    wait_serving(proc, api_sock, "/readyz", 60.0, 0.01)
    wait_serving(proc, proxy_sock, PATH, 30.0, 0.01)
    return proc


def token_files(bench: Bench, api_sock: Path) -> tuple[Path, Path]:
    """tokend's current access token, for the two references that inject it themselves: a file with
    the bare token (the bare proxy's) and a JSON headers file (the load generator's, direct runs).

    Both 0644 in the run's 0711 temp dir: the load generator may run under other uids."""
    answer = probe(api_sock, "/v1/token")
    if answer.status != 200:
        raise RuntimeError(f"tokend answered {answer.status} to /v1/token: {answer.body[:300]!r}")
    token = json.loads(answer.body)["accessToken"]
    raw = bench.workdir / "token.txt"
    raw.write_text(token)
    headers = bench.workdir / "headers.json"
    headers.write_text(json.dumps({"Authorization": f"Bearer {token}"}))
    for path in (raw, headers):
        path.chmod(0o644)
    return raw, headers


def start_bare_proxy(bench: Bench, upstream: str, token_file: Path) -> tuple[Proc, Path]:
    """The reference: ``bare_proxy.py`` forwarding to ``upstream`` with the token of ``token_file``."""
    sock = bench.workdir / "bare.sock"
    proc = bench.spawn("bare proxy", [sys.executable, str(BARE_PROXY), str(sock), upstream,
                                      str(token_file), str(POOL)], server=True)
    wait_serving(proc, sock, PATH, 30.0, 0.01)
    return proc, sock
