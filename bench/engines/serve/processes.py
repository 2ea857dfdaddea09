"""The benchmark's processes and tools: each process started, pinned and stopped by its own pid."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parents[2]


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
        """SIGTERM, then the exit status; killed if still running after ``timeout``."""
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
        """The last lines of its output."""
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

    def pinning(self, *, server: bool) -> Callable[[], None]:
        """A ``preexec_fn`` that pins a child to the servers' CPUs or to the clients'."""
        cpus = self.server_cpus if server else self.client_cpus

        def pin() -> None:
            if cpus:
                os.sched_setaffinity(0, cpus)
        return pin

    def spawn(self, name: str, argv: Sequence[str], *, server: bool) -> Proc:
        """Start ``argv`` with its output in ``<workdir>/<name>.log``, pinned if asked."""
        log = self.workdir / f"{name.replace(' ', '-')}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, preexec_fn=self.pinning(server=server),
                                     cwd=self.workdir)
        return self.adopt(Proc(name, popen, log))

    def adopt(self, proc: Proc) -> Proc:
        """Stop ``proc`` with the others at the end."""
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    """A temp dir for the run, removed at the end."""
    # Unix socket paths are limited to 107 bytes: a short directory under /tmp.
    path = Path(tempfile.mkdtemp(prefix="tkb-", dir="/tmp"))
    path.chmod(0o711)  # the load generator may run under other uids: they may enter, not list
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def per_uid_limit(option: str) -> int | None:
    """Connections per uid the load generator keeps to: ``--per-uid``, or tokend's own limit."""
    if option != "auto":
        return int(option) or None
    from tokend.config import ServerConfig

    limit = ServerConfig.max_connections_per_uid  # the default of [server] max_connections_per_uid
    return limit if isinstance(limit, int) and limit > 0 else None


def tokend_argv() -> list[str]:
    """The installed ``tokend`` command next to this interpreter (what users run), or ``-m``."""
    exe = Path(sys.executable).parent / "tokend"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "tokend"]


def find_nginx() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None)


def find_autocannon() -> str | None:
    local = BENCH_DIR / ".npm" / "bin" / "autocannon"
    return shutil.which("autocannon") or (str(local) if os.access(local, os.X_OK) else None)


def node_path_for(autocannon: str) -> str:
    """The node_modules folder holding the autocannon package the CLI belongs to."""
    real = Path(os.path.realpath(autocannon))  # .../node_modules/autocannon/autocannon.js
    for parent in real.parents:
        if parent.name == "node_modules":
            return str(parent)
    return str(real.parent.parent)


def tool_version(argv: Sequence[str]) -> str:
    """The first line a tool prints about its version, or "?"."""
    try:
        out = subprocess.run(list(argv), capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (out.stdout + out.stderr).strip().splitlines()
    return text[0] if text else "?"
