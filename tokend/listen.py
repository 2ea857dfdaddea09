"""Creating the consumer socket safely: right mode at creation, never stealing a live one.

Liveness is decided by an ``flock`` on ``<socket>.lock``: a tokend that holds it is alive, whatever
its socket file looks like; a socket file without a lock holder is stale and is replaced. A tokend
that exits cleanly removes the lock file while it still holds the lock; one that takes the lock
checks that the file it locked is still the one at the path, so a lock taken on a file removed
meanwhile is never mistaken for the live one.

:func:`check_socket_path` is everything :func:`bind_unix` would refuse, asked without creating
anything: ``tokend check-config`` asks it, so it cannot pass a socket ``run`` would refuse.
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
        for _ in range(LOCK_ATTEMPTS):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                             0o600)
            except OSError as exc:
                raise ConfigError(self.key, f"cannot create the lock file {self.path}:"
                                  f" {exc.strerror}", "create the directory and make it writable"
                                  " by tokend's user") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise ConfigError(self.key, f"another tokend is serving"
                                  f" {self.path.with_suffix('')} (it holds {self.path})",
                                  f"stop it first, or give this one another {self.key}") from None
            if _same_file(fd, self.path):
                self._fd = fd
                return
            os.close(fd)  # its holder removed it as we opened it: lock the file there now
        raise ConfigError(self.key, f"the lock file {self.path} keeps being replaced",
                          "another process is starting and stopping tokend on this socket")

    def release(self) -> None:
        """Remove the lock file, then drop the lock: the file goes only while this one holds it,
        so a tokend starting meanwhile either waits for this lock or finds no file."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                if _same_file(self._fd, self.path):
                    os.unlink(self.path)
            os.close(self._fd)
            self._fd = None


LOCK_ATTEMPTS = 10


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open on ``fd``."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    held = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino)


def lock_is_held(socket_path: Path) -> bool:
    """Whether a running tokend holds ``<socket>.lock`` now (asked without creating the file)."""
    try:
        fd = os.open(str(socket_path) + ".lock", os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing drops a shared lock taken just now
    return False


def check_directory(path: Path, key: str = "server.socket") -> None:
    """The socket's directory must exist and be writable: say so clearly before anything else."""
    if not path.parent.is_dir():
        raise ConfigError(key, f"directory {path.parent} does not exist",
                          "create the directory; under systemd, tokend.socket creates /run/tokend")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise ConfigError(key, f"directory {path.parent} is not writable by uid"
                          f" {os.geteuid()}", "fix its owner or mode, or choose another path")


def check_socket_path(path: Path, group: str | None, key: str = "server.socket") -> int | None:
    """What :func:`bind_unix` refuses, asked without creating anything: a missing or unwritable
    directory, a file at ``path`` that is not a socket, a group that does not exist or that
    tokend's user cannot give the socket to. Returns the group's gid (None: no group)."""
    check_directory(path, key)
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise ConfigError(key, f"{path} exists and is not a socket",
                              "remove it or choose another path")
    if group is None:
        return None
    group_key = f"{key}_group"
    gid = group_id(group, group_key)
    check_group_member(gid, group, group_key)
    return gid


def check_group_member(gid: int, group: str, key: str) -> None:
    """tokend's user may give a file it creates to ``gid`` only as root or as a member."""
    if os.geteuid() == 0 or gid == os.getegid() or gid in os.getgroups():
        return
    raise ConfigError(key, f"tokend's user (uid {os.geteuid()}) is not a member of group"
                      f" {group}, so it cannot give files that group",
                      f"add it to the group (usermod -aG {group} USER; under systemd,"
                      " SupplementaryGroups=), or choose one of its groups")


def bind_unix(path: Path, mode: int, group: str | None, backlog: int = 128,
              key: str = "server.socket") -> socket.socket:
    """Bind and listen on ``path`` with ``mode`` applied at creation; replace a stale file.

    The caller holds the :class:`SocketLock`, so any existing file at ``path`` is stale. ``key``
    is the config key of the socket, for errors.
    """
    gid = check_socket_path(path, group, key)
    group_key = f"{key}_group"
    with contextlib.suppress(FileNotFoundError):
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


METRICS_FIX = 'choose a free port and an address of this host, or "" to disable'
LISTEN_FIX = "choose a free port and an address of this host, or stop what holds it"


def bind_tcp(host: str, port: int, key: str, backlog: int = 128,
             fix: str = LISTEN_FIX) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: one the kernel picks), or ConfigError
    naming ``key``: the metrics listener's and each proxy's ``listen`` are bound here."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except (OSError, UnicodeError) as exc:
        raise ConfigError(key, f"cannot resolve {host}: {getattr(exc, 'strerror', None) or exc}",
                          fix) from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise ConfigError(key, f"cannot listen on {shown}: {exc.strerror or exc}", fix) from None
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
