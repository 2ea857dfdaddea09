"""Under an abusive local client the token keeps being served to well-behaved ones.

Real child processes under other uids: one floods the socket with connections it is not allowed
to make, one holds a hundred slowloris connections and sends an oversized body; meanwhile a
well-behaved client (root, allowed) keeps asking for the token.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support import Tokend, Upstream
from tests.support.peers import peer_python

DENIED_FLOOD = """
import json, socket, sys
statuses = {}
for _ in range(int(sys.argv[1])):
    s = socket.socket(socket.AF_UNIX)
    s.connect("tokend.sock")
    data = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    s.close()
    key = data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/1.1 ") else "none"
    statuses[key] = statuses.get(key, 0) + 1
print(json.dumps(statuses))
"""

SLOWLORIS = """
import json, socket, sys, time
count, seconds = int(sys.argv[1]), float(sys.argv[2])
# An oversized body on a connection of its own.
big = socket.socket(socket.AF_UNIX)
big.connect("tokend.sock")
body = b"x" * 100000
try:
    big.sendall(b"POST /v1/targets/t1/invalidate HTTP/1.1\\r\\nHost: tokend\\r\\n"
                b"Content-Type: application/json\\r\\nContent-Length: 100000\\r\\n\\r\\n" + body)
except OSError:
    pass
big_answer = big.recv(4096)
big.close()
socks = []
for _ in range(count):
    s = socket.socket(socket.AF_UNIX)
    s.connect("tokend.sock")
    s.sendall(b"GET /v1/token HTTP/1.1\\r\\nHost: tokend\\r\\n")
    socks.append(s)
end = time.monotonic() + seconds
open_at_end = 0
while time.monotonic() < end:
    for s in socks:
        try:
            s.sendall(b"X")  # one header byte a second: never completes the request
        except OSError:
            pass
    time.sleep(1)
closed = 0
for s in socks:
    s.setblocking(False)
    try:
        data = s.recv(4096)
        closed += data == b"" or data.startswith(b"HTTP/1.1 503")
    except BlockingIOError:
        pass
    except OSError:
        closed += 1
print(json.dumps({"big": big_answer.split(b"\\r\\n", 1)[0].decode(), "closed": closed}))
"""


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def run_as(workdir: Path, uid: int, script: str, *args: str, timeout: float) -> Any:
    done = subprocess.run([peer_python(), "-I", "-c", script, *args], cwd=workdir, user=uid,
                          group=uid, capture_output=True, timeout=timeout, env={"PATH": "/usr/bin"},
                          check=False)
    assert done.returncode == 0, done.stderr.decode()
    return json.loads(done.stdout)


async def test_well_behaved_client_is_served_under_abuse(
        upstream: Upstream, make_tokend: Callable[..., Any], workdir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run peers as other uids")
    tokend: Tokend = await make_tokend(upstream.url, upstream.ca_pem,
                                       server={"allowed_uids": [0, 4242]},
                                       log={"level": "info"})
    tokend.socket.chmod(0o666)
    workdir.chmod(0o711)
    assert tokend.proc is not None
    rss_before = rss_kib(tokend.proc.pid)
    seconds = 13.0  # longer than the 10 s header deadline
    flood = asyncio.create_task(asyncio.to_thread(run_as, workdir, 4343, DENIED_FLOOD, "400",
                                                  timeout=60))
    slow = asyncio.create_task(asyncio.to_thread(run_as, workdir, 4242, SLOWLORIS, "100",
                                                 str(seconds), timeout=60))
    latencies: list[float] = []
    while not (flood.done() and slow.done()):
        started = time.monotonic()
        answer = await tokend.get("/v1/token", timeout=5)
        latencies.append(time.monotonic() - started)
        assert answer.status == 200, answer.body
        await asyncio.sleep(0.05)
    denied, slowloris = flood.result(), slow.result()
    assert denied == {"403": 400}, denied
    assert slowloris["big"] == "HTTP/1.1 413 Request Entity Too Large", slowloris
    # Every one was closed: by the header deadline although a byte kept arriving every second, or,
    # past the per-uid limit, refused at accept.
    assert slowloris["closed"] == 100, slowloris
    assert len(latencies) > 50
    assert max(latencies) < 1.0, f"slowest token request took {max(latencies):.3f}s"
    growth_kib = rss_kib(tokend.proc.pid) - rss_before
    assert growth_kib < 20 * 1024, f"RSS grew by {growth_kib} KiB"
    denials = tokend.events("consumer.denied")
    assert len(denials) == 1, "consumer.denied is logged at most once per uid per minute"
    print(f"\nabuse: {len(latencies)} token requests, slowest {max(latencies) * 1000:.1f} ms,"
          f" RSS {rss_before} -> {rss_before + growth_kib} KiB, denied {denied}, slow {slowloris}")
