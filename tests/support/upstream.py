"""The fake SDDC Manager: in the test's own event loop over HTTPS, or as a process of its own.

In the event loop (:func:`start_upstream`) a test can inject faults and count calls while the
daemon, a separate process, talks to it. As a process (:func:`start_fake_process`, plain HTTP, the
fake's default user) it serves code that has no event loop running: hypothesis tests, benchmarks.
"""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trustme

from tests.support.daemon import clean_env, tokend_argv
from tests.support.wait import wait_until
from tokend.testing.fake_sddc import DEFAULT_USERS, FakeSddc, start_fake

# The fake's default user, which ``tokend fake-sddc`` accepts unless told otherwise.
[(DEFAULT_USER, DEFAULT_PASSWORD)] = DEFAULT_USERS.items()


class TLS:
    """A test CA (written to ``workdir/ca.pem``) and a server certificate for the loopback names."""

    def __init__(self, workdir: Path) -> None:
        self.ca = trustme.CA()
        self.cert = self.ca.issue_cert("127.0.0.1", "localhost")
        self.ca_pem = workdir / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_pem))

    def server_context(self) -> ssl.SSLContext:
        """A server-side context presenting the certificate."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.cert.configure_cert(ctx)
        return ctx


@dataclass
class Upstream:
    """A fake SDDC Manager running in this event loop."""

    fake: FakeSddc
    url: str
    ca_pem: Path
    runner: Any


# The ``make_upstream`` fixture: ``FakeSddc`` keywords in, a started :class:`Upstream` out.
MakeUpstream = Callable[..., Awaitable[Upstream]]


async def start_upstream(fake: FakeSddc, tls: TLS) -> Upstream:
    """Serve ``fake`` over HTTPS on a free loopback port; ``runner.cleanup()`` stops it."""
    runner, url = await start_fake(fake, "127.0.0.1", 0, tls.server_context())
    return Upstream(fake, url, tls.ca_pem, runner)


@dataclass
class FakeProcess:
    """``tokend fake-sddc`` in a process of its own, and the base URL it printed."""

    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM; the exit status (killed if it does not exit within ``timeout``)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_fake_process(workdir: Path, *args: str, timeout: float = 15.0,
                       preexec_fn: Callable[[], None] | None = None) -> FakeProcess:
    """Start ``tokend fake-sddc --listen 127.0.0.1:0 ARGS``; output in ``workdir/fake-sddc.log``."""
    log = workdir / "fake-sddc.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(tokend_argv("fake-sddc", "--listen", "127.0.0.1:0", *args),
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=clean_env(), cwd=workdir, preexec_fn=preexec_fn)

    def url_printed() -> str | None:
        if proc.poll() is not None:
            raise AssertionError(f"fake-sddc exited {proc.returncode}: {log.read_text()[-2000:]}")
        first, newline, _ = log.read_text().partition("\n")
        return first.strip() if newline and first.startswith("http") else None

    try:
        url: str = wait_until(url_printed, timeout, interval=0.01, what="fake-sddc to print its URL")
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return FakeProcess(proc, url, log)
