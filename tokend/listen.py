"""Creating the consumer socket safely: right mode at creation, never stealing a live one.

Liveness is decided by an ``flock`` on ``<socket>.lock``: a tokend that holds it is alive, whatever
its socket file looks like; a socket file without a lock holder is stale and is replaced.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import stat
from pathlib import Path

from tokend.errors import ConfigError
from tokend.values import group_id


class SocketLock:
    """The ``<socket>.lock`` file, held for the life of the daemon (or of the proxy it guards).

    ``key`` is the config key of the socket, for errors (``server.socket``, ``proxies[0].socket``).
    """

    def __init__(self, socket_path: Path, key: str = "server.socket") -> None:
        self.path = Path(str(socket_path) + ".lock")
        self.key = key
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise ConfigError naming the live tokend's socket."""
        check_directory(self.path, self.key)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise ConfigError(self.key, f"cannot create the lock file {self.path}:"
                              f" {exc.strerror}", "create the directory and make it writable"
                              " by tokend's user") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise ConfigError(self.key, f"another tokend is serving {self.path.with_suffix('')}"
                              f" (it holds {self.path})", "stop it first, or give this one"
                              f" another {self.key}") from None
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (the lock file itself stays: removing it would race a new daemon)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def check_directory(path: Path, key: str = "server.socket") -> None:
    """The socket's directory must exist and be writable: say so clearly before anything else."""
    if not path.parent.is_dir():
        raise ConfigError(key, f"directory {path.parent} does not exist",
                          "create the directory; under systemd, tokend.socket creates /run/tokend")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise ConfigError(key, f"directory {path.parent} is not writable by uid"
                          f" {os.geteuid()}", "fix its owner or mode, or choose another path")


def bind_unix(path: Path, mode: int, group: str | None, backlog: int = 128,
              key: str = "server.socket") -> socket.socket:
    """Bind and listen on ``path`` with ``mode`` applied at creation; replace a stale file.

    The caller holds the :class:`SocketLock`, so any existing file at ``path`` is stale. ``key``
    is the config key of the socket, for errors.
    """
    check_directory(path, key)
    group_key = f"{key}_group"
    gid = group_id(group, group_key) if group is not None else None
    with contextlib.suppress(FileNotFoundError):
        st = os.lstat(path)
        if not stat.S_ISSOCK(st.st_mode):
            raise ConfigError(key, f"{path} exists and is not a socket",
                              "remove it or choose another path")
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o777 & ~mode)
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise ConfigError(key, f"cannot bind {path}: {exc.strerror}",
                          "check the path and its directory's permissions") from None
    finally:
        os.umask(old)
    try:
        if gid is not None:
            os.chown(path, -1, gid)
        os.chmod(path, mode)  # umask cannot grant bits; this only ever removes none
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise ConfigError(group_key, f"cannot give {path} to group {group}:"
                          f" {exc.strerror}", "tokend's user must be a member of that group") from None
    sock.setblocking(False)
    return sock


LISTEN_FDS_START = 3  # SD_LISTEN_FDS_START


def activated_socket() -> socket.socket | None:
    """The socket systemd passed (``LISTEN_FDS``/``LISTEN_PID``), if any: the first one."""
    sockets = activated_sockets()
    return sockets[0][1] if sockets else None


def activated_sockets() -> list[tuple[str, socket.socket]]:
    """Every socket systemd passed, with its ``FileDescriptorName=`` (``LISTEN_FDNAMES``), in order.

    A socket without a name is named ``""``. The environment variables are consumed, so a child
    process does not take the sockets for its own.
    """
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return []
    count_text = os.environ.get("LISTEN_FDS", "0") or "0"
    names = os.environ.get("LISTEN_FDNAMES", "").split(":")
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    count = int(count_text) if count_text.isdigit() else 0
    sockets = []
    for index in range(count):
        sock = socket.socket(fileno=LISTEN_FDS_START + index)
        name = names[index] if index < len(names) else ""
        if sock.family != socket.AF_UNIX:
            raise ConfigError("server.socket", f"the socket systemd passed as {name or 'fd'}"
                              f" {LISTEN_FDS_START + index} is not a Unix socket",
                              "use ListenStream=/run/tokend/NAME.sock in the socket unit")
        sock.setblocking(False)
        sockets.append((name, sock))
    return sockets
