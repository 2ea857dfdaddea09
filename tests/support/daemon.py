"""The real ``tokend run`` process: start it, wait for it, talk to it, signal it, stop it, read it.

Output goes to ``stdout.log`` and ``stderr.log`` in the work directory (appended: a second daemon
started there adds to them). A command prefix runs the daemon under another program, e.g.
``systemd-socket-activate -l SOCKET`` (then :attr:`Tokend.socket` is that socket) or ``faketime``.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.client import Answer, SocketClient
from tests.support.config import PASSWORD, socket_of, tokend_config, write_secret, write_toml
from tests.support.logs import LogFile
from tests.support.wait import eventually, wait_until

# tokend reads these when no option names a socket or a config: a test must not inherit them.
TOKEND_VARIABLES = ("TOKEND_SOCKET", "TOKEND_CONFIG")


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without tokend's own variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in TOKEND_VARIABLES}
    env.update(extra)
    return env


def tokend_argv(*args: str) -> list[str]:
    """The command line of ``tokend ARGS`` with this interpreter."""
    return [sys.executable, "-m", "tokend", *args]


def run_cli(*args: str, env: dict[str, str] | None = None,
            timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run ``tokend ARGS`` to completion, output captured as text (blocking: in a thread from
    async code, so that an upstream in the event loop keeps answering)."""
    return subprocess.run(tokend_argv(*args), capture_output=True, text=True, timeout=timeout,
                          env=env or clean_env(), check=False)


async def cli(*args: str, env: dict[str, str] | None = None,
              timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """:func:`run_cli` in a thread, so that an upstream in this event loop keeps answering; the
    configs' :data:`PASSWORD` must not appear in what the command printed."""
    done = await asyncio.to_thread(run_cli, *args, env=env, timeout=timeout)
    assert PASSWORD not in done.stdout + done.stderr, "password printed"
    return done


def assert_one_line_error(stderr: str, *names: str) -> None:
    """An expected failure of a tokend command: one ``tokend: ...`` line on stderr naming every one
    of ``names``, and no traceback."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip("\n").split("\n")
    assert len(lines) == 1 and lines[0].strip(), stderr
    assert lines[0].startswith("tokend: "), stderr
    for name in names:
        assert name in lines[0], (name, stderr)


@dataclass
class Tokend:
    """A ``tokend run`` process with the config at ``config_path``, served on ``socket``."""

    workdir: Path
    config_path: Path
    socket: Path
    prefix: Sequence[str] = ()
    proc: subprocess.Popen[bytes] | None = None
    stdout_path: Path = field(init=False)
    stderr_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.stdout_path = self.workdir / "stdout.log"
        self.stderr_path = self.workdir / "stderr.log"
        self.client = SocketClient(self.socket)
        self.log = LogFile(self.stdout_path)

    # -- the process ---------------------------------------------------------------------------

    def argv(self) -> list[str]:
        """The command that runs the daemon, prefix included."""
        return [*self.prefix, *tokend_argv("run", "--config", str(self.config_path))]

    def start(self, env: dict[str, str] | None = None) -> None:
        """Start the process with this environment (tokend's own variables removed) plus ``env``."""
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(self.argv(), stdout=out, stderr=err,
                                         stdin=subprocess.DEVNULL, env=clean_env(**(env or {})),
                                         cwd=self.workdir)

    @property
    def pid(self) -> int:
        """The process id (of the prefix program when there is one)."""
        assert self.proc is not None, "tokend was not started"
        return self.proc.pid

    def assert_running(self) -> None:
        """Fail, with what tokend wrote on stderr, if the process has exited."""
        assert self.proc is not None, "tokend was not started"
        if self.proc.poll() is not None:
            raise AssertionError(f"tokend exited {self.proc.returncode}: {self.stderr()}")

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the process."""
        assert self.proc is not None, "tokend was not started"
        self.proc.send_signal(sig)

    async def wait_exit(self, timeout: float = 15.0) -> int:
        """The exit status, once the process has exited; fail after ``timeout``."""
        assert self.proc is not None, "tokend was not started"
        proc = self.proc
        await eventually(lambda: proc.poll() is not None, timeout, what="tokend to exit")
        return proc.returncode

    async def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then the exit status; a process still running after ``timeout`` is killed, and
        this fails."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.signal(signal.SIGTERM)
        try:
            return await self.wait_exit(timeout)
        except AssertionError:
            self.proc.kill()
            await asyncio.to_thread(self.proc.wait)
            raise AssertionError(f"tokend did not exit within {timeout:g}s of SIGTERM") from None

    def stop_blocking(self, timeout: float = 15.0) -> int:
        """:meth:`stop` without an event loop."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"tokend did not exit within {timeout:g}s of SIGTERM") from None

    # -- waiting for it ------------------------------------------------------------------------

    async def started(self, timeout: float = 15.0) -> None:
        """Wait until the socket answers ``/healthz``."""
        async def up() -> bool:
            self.assert_running()
            try:
                return (await self.get("/healthz")).status == 200
            except (aiohttp.ClientError, OSError):
                return False
        await eventually(up, timeout, what="tokend to listen")

    async def ready(self, timeout: float = 15.0) -> None:
        """Wait until every target holds a token (``/readyz`` answers 200)."""
        await self.started(timeout)

        async def ready() -> bool:
            return (await self.get("/readyz")).status == 200
        await eventually(ready, timeout, what="tokend to be ready")

    def ready_blocking(self, timeout: float = 15.0) -> None:
        """:meth:`ready` without an event loop."""
        def ready() -> bool:
            self.assert_running()
            return self.client.request_blocking("GET", "/readyz").status == 200
        wait_until(ready, timeout, what="tokend to be ready",
                   ignore=(OSError, http.client.HTTPException))

    # -- talking to it -------------------------------------------------------------------------

    async def request(self, method: str, path: str, body: Any = None,
                      timeout: float = 30.0) -> Answer:
        """One request on a connection of its own (a body that is not bytes is sent as JSON)."""
        return await self.client.request(method, path, body, timeout=timeout)

    async def get(self, path: str, timeout: float = 30.0) -> Answer:
        """``GET path``."""
        return await self.client.get(path, timeout=timeout)

    async def token(self, path: str = "/v1/token") -> dict[str, Any]:
        """The token JSON; fails unless the answer is 200."""
        answer = await self.get(path)
        assert answer.status == 200, answer.body
        data: dict[str, Any] = answer.json()
        return data

    async def status(self) -> dict[str, Any]:
        """The first target's entry of ``/v1/status``."""
        data: dict[str, Any] = (await self.get("/v1/status")).json()["targets"][0]
        return data

    # -- what it wrote -------------------------------------------------------------------------

    def stdout(self) -> str:
        """Everything on stdout so far (the JSON log)."""
        return self.log.text()

    def stderr(self) -> str:
        """Everything on stderr so far."""
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """The log events so far, only those called ``name`` if given."""
        return self.log.events(name)



# The ``make_tokend`` fixture: the upstream's URL and CA in, a started :class:`Tokend` out.
MakeTokend = Callable[..., Awaitable[Tokend]]


def configured_tokend(workdir: Path, url: str, ca_pem: Path | None = None, *,
                      password: str = PASSWORD, prefix: Sequence[str] = (),
                      socket: Path | None = None, **overrides: Any) -> Tokend:
    """A :class:`Tokend` for ``workdir``, not started yet, with ``workdir/config.toml`` written
    (:func:`~tests.support.config.tokend_config` with ``overrides``) and the password file, unless
    there is one. ``socket`` is where to talk to it, if not the configured socket."""
    config = tokend_config(workdir, url, ca_pem, **overrides)
    write_secret(workdir / "password", password)
    path = write_toml(workdir / "config.toml", config)
    return Tokend(workdir, path, socket or socket_of(config), prefix)
