"""Creating the consumer socket safely: right mode at creation, never stealing a live one.

Liveness is decided by an ``flock`` on ``<socket>.lock``: a tokend that holds it is alive, whatever
its socket file looks like; a socket file without a lock holder is stale and is replaced.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import resource
import socket
import stat
from pathlib import Path

from tokend.errors import ConfigError
from tokend.values import group_id


class SocketLock:
    """The ``<socket>.lock`` file, held for the life of the daemon."""

    def __init__(self, socket_path: Path) -> None:
        self.path = Path(str(socket_path) + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise ConfigError naming the live tokend's socket."""
        check_directory(self.path)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise ConfigError("server.socket", f"cannot create the lock file {self.path}:"
                              f" {exc.strerror}", "create the directory and make it writable"
                              " by tokend's user") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise ConfigError("server.socket", f"another tokend is serving {self.path.with_suffix('')}"
                              f" (it holds {self.path})", "stop it first, or give this one"
                              " another server.socket") from None
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (the lock file itself stays: removing it would race a new daemon)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def check_directory(path: Path) -> None:
    """The socket's directory must exist and be writable: say so clearly before anything else."""
    if not path.parent.is_dir():
        raise ConfigError("server.socket", f"directory {path.parent} does not exist",
                          "create the directory; under systemd, tokend.socket creates /run/tokend")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise ConfigError("server.socket", f"directory {path.parent} is not writable by uid"
                          f" {os.geteuid()}", "fix its owner or mode, or choose another path")


def bind_unix(path: Path, mode: int, group: str | None) -> socket.socket:
    """Bind and listen on ``path`` with ``mode`` applied at creation; replace a stale file.

    The caller holds the :class:`SocketLock`, so any existing file at ``path`` is stale.
    """
    check_directory(path)
    gid = group_id(group, "server.socket_group") if group is not None else None
    with contextlib.suppress(FileNotFoundError):
        st = os.lstat(path)
        if not stat.S_ISSOCK(st.st_mode):
            raise ConfigError("server.socket", f"{path} exists and is not a socket",
                              "remove it or choose another path")
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o777 & ~mode)
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise ConfigError("server.socket", f"cannot bind {path}: {exc.strerror}",
                          "check the path and its directory's permissions") from None
    finally:
        os.umask(old)
    try:
        if gid is not None:
            os.chown(path, -1, gid)
        os.chmod(path, mode)  # umask cannot grant bits; this only ever removes none
        sock.listen(128)
    except OSError as exc:
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise ConfigError("server.socket_group", f"cannot give {path} to group {group}:"
                          f" {exc.strerror}", "tokend's user must be a member of that group") from None
    sock.setblocking(False)
    return sock


def activated_socket() -> socket.socket | None:
    """The socket systemd passed (``LISTEN_FDS``/``LISTEN_PID``), if any."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    count = int(os.environ.get("LISTEN_FDS", "0") or 0)
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    if count < 1:
        return None
    sock = socket.socket(fileno=3)
    if sock.family != socket.AF_UNIX:
        raise ConfigError("server.socket", "the socket passed by systemd is not a Unix socket",
                          "use ListenStream=/run/tokend/tokend.sock in tokend.socket")
    sock.setblocking(False)
    return sock


# Descriptors tokend needs besides its consumers' connections: the upstream sessions, the metrics
# listener, log and lock files, the event loop's own.
RESERVED_FILES = 256


def fit_open_files(connections: int) -> tuple[int, int]:
    """Raise the soft ``RLIMIT_NOFILE`` to fit ``connections`` (never above the hard limit).

    Returns (soft, needed): the limit now in force, and what would fit; a soft limit below
    ``needed`` means the connection limits cannot all be reached.
    """
    needed = connections + RESERVED_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(OSError, ValueError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return soft, needed
