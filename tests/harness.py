"""End-to-end harness: the real ``tokend run`` process, its real Unix socket, the fake upstream.

The fake SDDC Manager runs in the test's own event loop over HTTPS (a trustme CA), so a test can
inject faults and count calls while the daemon, a separate process, talks to it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import trustme

from tokend.testing.fake_sddc import FakeSddc, start_fake

PASSWORD = "Fake-Passw0rd-for-tests!"
USER = "administrator@vsphere.local"


async def eventually(check: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05,
                     what: str = "condition") -> Any:
    """Poll ``check`` (sync or async) until it returns a truthy value; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = check()
        if isinstance(last, Awaitable):
            last = await last
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
        await asyncio.sleep(interval)


@dataclass
class Upstream:
    """A running fake SDDC Manager."""

    fake: FakeSddc
    url: str
    ca_pem: Path
    runner: Any


@dataclass
class Answer:
    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Tokend:
    """A ``tokend run`` process and its files."""

    workdir: Path
    config_path: Path
    socket: Path
    proc: subprocess.Popen[bytes] | None = None
    stdout_path: Path = field(init=False)
    stderr_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.stdout_path = self.workdir / "stdout.log"
        self.stderr_path = self.workdir / "stderr.log"

    def start(self, env: dict[str, str] | None = None) -> None:
        full_env = {**os.environ, **(env or {})}
        full_env.pop("TOKEND_SOCKET", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tokend", "run", "--config", str(self.config_path)],
            stdout=open(self.stdout_path, "ab"), stderr=open(self.stderr_path, "ab"),
            env=full_env, cwd=self.workdir)

    async def ready(self, timeout: float = 15.0) -> None:
        """Wait until every target holds a token."""
        await self.started(timeout)

        async def ready() -> bool:
            return (await self.get("/readyz")).status == 200
        await eventually(ready, timeout, what="tokend to be ready")

    async def started(self, timeout: float = 15.0) -> None:
        """Wait until the socket answers."""
        async def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"tokend exited {self.proc.returncode}: {self.stderr()}")
            try:
                return (await self.get("/healthz")).status == 200
            except (aiohttp.ClientError, OSError):
                return False
        await eventually(up, timeout, what="tokend to listen")

    async def request(self, method: str, path: str, body: Any = None,
                      timeout: float = 30.0) -> Answer:
        connector = aiohttp.UnixConnector(path=str(self.socket))
        async with aiohttp.ClientSession(connector=connector,
                                         timeout=aiohttp.ClientTimeout(total=timeout)) as s:
            data = json.dumps(body).encode() if body is not None and not isinstance(body, bytes) \
                else body
            async with s.request(method, "http://tokend" + path, data=data) as r:
                return Answer(r.status, await r.read(), dict(r.headers))

    async def get(self, path: str, timeout: float = 30.0) -> Answer:
        return await self.request("GET", path, timeout=timeout)

    async def token(self, path: str = "/v1/token") -> dict[str, Any]:
        answer = await self.get(path)
        assert answer.status == 200, answer.body
        data: dict[str, Any] = answer.json()
        return data

    async def status(self) -> dict[str, Any]:
        data: dict[str, Any] = (await self.get("/v1/status")).json()["targets"][0]
        return data

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait_exit(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError("tokend did not exit")
            await asyncio.sleep(0.05)
        return self.proc.returncode

    async def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.signal(signal.SIGTERM)
        return await self.wait_exit()

    def stdout(self) -> str:
        return self.stdout_path.read_text() if self.stdout_path.exists() else ""

    def stderr(self) -> str:
        return self.stderr_path.read_text() if self.stderr_path.exists() else ""

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        out = []
        for line in self.stdout().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if name is None or event.get("event") == name:
                out.append(event)
        return out


class TLS:
    """A test CA and a server certificate for the loopback names."""

    def __init__(self, workdir: Path) -> None:
        self.ca = trustme.CA()
        self.cert = self.ca.issue_cert("127.0.0.1", "localhost")
        self.ca_pem = workdir / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_pem))

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.cert.configure_cert(ctx)
        return ctx


async def start_upstream(fake: FakeSddc, tls: TLS) -> Upstream:
    runner, url = await start_fake(fake, "127.0.0.1", 0, tls.server_context())
    return Upstream(fake, url, tls.ca_pem, runner)


def write_config(workdir: Path, url: str, ca_pem: Path | None, *, target: str = "",
                 server: str = "", extra_targets: str = "", password: str = PASSWORD,
                 log_level: str = "debug", metrics_listen: str = "",
                 settings: Mapping[str, str] | None = None) -> Path:
    """A config for one target ``t1`` (and maybe more); ``target``/``server`` add raw TOML lines.

    ``settings`` (key -> TOML value) replaces lines this writes itself, e.g. ``request_timeout``
    (TOML refuses a key given twice).
    """
    secret = workdir / "password"
    if not secret.exists():
        secret.touch(mode=0o600)
        secret.write_text(password + "\n")
    ca_line = f'ca_file = "{ca_pem}"' if ca_pem else ""
    text = textwrap.dedent(f"""\
        [server]
        socket = "{workdir / 'tokend.sock'}"
        socket_mode = "0600"
        {server}

        [metrics]
        listen = "{metrics_listen}"

        [log]
        level = "{log_level}"
        format = "json"

        [[targets]]
        name = "t1"
        url = "{url}"
        username = "{USER}"
        password_file = "{secret}"
        {ca_line}
        request_timeout = "3s"
        login_retry_interval = "1s"
        {target}
        {extra_targets}
        """)
    for key, value in (settings or {}).items():
        line = f"{key} = {value}"
        text, n = re.subn(rf"(?m)^(\s*){re.escape(key)} = .*$", lambda m: m[1] + line, text,
                          count=1)
        assert n == 1, f"{key} is not a line of the harness config"
    path = workdir / "config.toml"
    path.write_text(text)
    path.chmod(0o600)
    return path
