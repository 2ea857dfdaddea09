"""``tokend demo``: the embedded fake SDDC Manager and the daemon against it, in a temp dir.

Short token lifetimes make refreshes visible within seconds. Nothing leaves loopback, and the
password is random, written to a 0600 file, never put on a command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path

from tokend.config import load_config
from tokend.daemon import Daemon
from tokend.logs import configure
from tokend.testing.fake_sddc import CALLS_KEPT, FakeSddc, start_fake
from tokend.testing.tls import ensure_tls_dir

ACCESS_TTL = 10.0
USER = "administrator@vsphere.local"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _write_config(workdir: Path, url: str, ca: Path, metrics_port: int) -> Path:
    password_file = workdir / "password"
    config = workdir / "config.toml"
    (workdir / "state").mkdir(mode=0o700, exist_ok=True)
    config.write_text(f"""\
[server]
socket = "{workdir / 'tokend.sock'}"
socket_mode = "0600"
state_dir = "{workdir / 'state'}"

[metrics]
listen = "127.0.0.1:{metrics_port}"

[log]
level = "info"
format = "console"

[[targets]]
name = "demo"
url = "{url}"
username = "{USER}"
password_file = "{password_file}"
ca_file = "{ca}"
refresh_at = 0.7
jitter = 0.05
request_timeout = "5s"
""")
    return config


def _banner(workdir: Path, url: str, ca: Path, metrics_port: int) -> str:
    argv0 = Path(sys.argv[0])
    exe = str(argv0.resolve()) if argv0.name == "tokend" else (
        shutil.which("tokend") or f"{sys.executable} -m tokend")
    sock = workdir / "tokend.sock"
    return f"""
tokend demo: a fake SDDC Manager at {url} issues {ACCESS_TTL:g}-second tokens; tokend keeps one.
socket: {sock}

Try, in another terminal:
  export TOKEND_SOCKET={sock}
  {exe} token
  {exe} token --header | curl -sS --cacert {ca} -H @- {url}/v1/domains
  {exe} status
  curl --unix-socket {sock} http://tokend/v1/token
  curl -s http://127.0.0.1:{metrics_port}/metrics | grep ^tokend_

Simulate an upstream outage: kill -USR1 {os.getpid()} (again to end it), then watch
'tokend status' go degraded and, once the token runs out, expired.
Ctrl-C stops both and removes {workdir}.
"""


def _toggle_outage(fake: FakeSddc) -> None:
    fake.faults.down = not fake.faults.down
    state = "DOWN: every token call answers 503" if fake.faults.down else "back up"
    print(f"demo: the fake SDDC Manager is {state}", flush=True)


async def run_demo(duration: float | None) -> int:
    """Run the demo until Ctrl-C or ``duration`` seconds; clean up; return the exit status."""
    workdir = Path(tempfile.mkdtemp(prefix="tokend-demo-"))
    runner = None
    try:
        ssl_context = ensure_tls_dir(workdir / "tls")
        password = secrets.token_urlsafe(18)
        fake = FakeSddc(access_ttl=ACCESS_TTL, users={USER: password}, calls_kept=CALLS_KEPT)
        runner, url = await start_fake(fake, "127.0.0.1", 0, ssl_context)
        (workdir / "password").touch(mode=0o600)
        (workdir / "password").write_text(password + "\n")
        metrics_port = _free_port()
        ca = workdir / "tls" / "ca.pem"
        config = load_config(_write_config(workdir, url, ca, metrics_port))
        configure(config.log.level, config.log.format)
        print(_banner(workdir, url, ca, metrics_port), flush=True)
        daemon = Daemon(config)
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, _toggle_outage, fake)
        task = asyncio.create_task(daemon.run())
        if duration is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), duration)
            daemon.stop()
        return await task
    finally:
        if runner is not None:
            await runner.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)
