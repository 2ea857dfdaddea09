"""Files tokend keeps under ``state_dir`` and files it watches: private folder, atomic writes, stamps.

Shared by the facade (session keys, users file, TLS material) and the lockout ledger (SPEC §8.9,
§9): the folder ``<state_dir>/tokend`` is created 0700 and refused when others could write it;
files are written whole or not at all (temp file, fsync, rename).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from tokend.errors import ConfigError

T = TypeVar("T")

#: What identifies a file's content cheaply: device, inode, size, mtime and ctime in ns.
FileStamp = tuple[int, int, int, int, int]

#: The private folder under ``state_dir``.
PRIVATE_DIR_NAME = "tokend"


def current_stamp(path: Path) -> FileStamp | None:
    """The stamp of the file at ``path`` now (symlinks followed), None if it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class Watched(Generic[T]):
    """When files read before are worth reading again: when they changed, and not to the version
    that failed last time (so a broken file is reported once, not at every check).

    Make it just before the first read: a change during that read is then seen by the next check.
    """

    def __init__(self, *paths: Path) -> None:
        self.paths = paths
        self._seen = self._stamps()
        self._failed: tuple[FileStamp | None, ...] | None = None

    def _stamps(self) -> tuple[FileStamp | None, ...]:
        return tuple(current_stamp(p) for p in self.paths)

    def reload(self, load: Callable[[], T]) -> T | None:
        """``load()`` if a file changed since the last successful call, else None.

        A ConfigError from ``load`` is raised again and remembered with the files' versions; the
        caller keeps what it had.
        """
        stamps = self._stamps()
        if stamps in (self._seen, self._failed):
            return None
        try:
            value = load()
        except ConfigError:
            self._failed = stamps
            raise
        self._seen, self._failed = stamps, None
        return value


def read_small_file(path: Path, config_key: str, *, max_bytes: int, what: str,
                    fix: str) -> tuple[bytes, os.stat_result]:
    """The bytes of the regular file at ``path`` and the stat of the version read.

    Opened non-blocking (a FIFO cannot hang the caller), stat'ed and read through one descriptor.
    Raises ConfigError naming ``config_key`` (and ``what`` the file is, with ``fix``) when it cannot
    be read, is not a regular file, or exceeds ``max_bytes``.
    """
    subject = f"{what} {path}" if what else str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except (OSError, ValueError) as exc:
        raise ConfigError(config_key, f"cannot read {subject}: {os_reason(exc)}", fix) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(config_key, f"{subject} is not a regular file", fix)
        chunks: list[bytes] = []
        size = 0
        while size <= max_bytes:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise ConfigError(config_key, f"cannot read {subject}: {os_reason(exc)}", fix) from None
    finally:
        os.close(fd)
    if size > max_bytes:
        raise ConfigError(config_key, f"{subject} is larger than {max_bytes} bytes", fix)
    return b"".join(chunks), st


class InsecureStateDir(ConfigError):
    """``<state_dir>/tokend`` exists but others could plant files in it: never used (exit 2).

    ``owner`` is the uid it belongs to when that is not this process's (else None).
    """

    owner: int | None = None


def private_dir(state_dir: Path, config_key: str = "server.state_dir") -> Path:
    """``<state_dir>/tokend``, created with mode 0700 if missing, for generated private material.

    ``state_dir`` itself may be shared or even world-writable (an emptyDir). Raises ConfigError
    naming ``config_key`` when ``state_dir`` is missing, the folder cannot be created, is not a
    directory, belongs to another user, or is writable by others (SPEC §9: exit 2).
    """
    directory = state_dir / PRIVATE_DIR_NAME
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise ConfigError(config_key, f"cannot create {directory}: {os_reason(exc)}",
                          f"create {state_dir}, writable by tokend's user") from None
    try:
        st = os.stat(directory)
    except OSError as exc:
        raise ConfigError(config_key, f"cannot use {directory}: {os_reason(exc)}",
                          f"remove {directory}; tokend creates it") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(config_key, f"{directory} is not a directory",
                          f"remove it; tokend creates {directory} itself")
    _refuse_if_others_can_plant(directory, st, config_key)
    return directory


def check_private_dir(state_dir: Path, config_key: str = "server.state_dir") -> str | None:
    """What :func:`private_dir` would say, asked without creating anything.

    Raises InsecureStateDir where it would; returns why the folder cannot be used otherwise (tokend
    then keeps its records in memory, with a warning), or None when it can be.
    """
    directory = state_dir / PRIVATE_DIR_NAME
    try:
        st = os.stat(directory)
    except FileNotFoundError:
        if os.access(state_dir, os.W_OK | os.X_OK):
            return None
        reason = "does not exist" if not state_dir.exists() else "is not writable by tokend's user"
        return f"{state_dir} {reason}, so {directory} cannot be created"
    except OSError as exc:
        return f"cannot use {directory}: {os_reason(exc)}"
    if not stat.S_ISDIR(st.st_mode):
        return f"{directory} is not a directory"
    _refuse_if_others_can_plant(directory, st, config_key)
    return None


def _refuse_if_others_can_plant(directory: Path, st: os.stat_result, config_key: str) -> None:
    if st.st_uid != os.geteuid():
        error = InsecureStateDir(config_key, f"{directory} belongs to another user (uid"
                                 f" {st.st_uid})", "remove it, or chown it to tokend's user;"
                                 " tokend creates it with mode 0700")
        error.owner = st.st_uid
        raise error
    if st.st_mode & stat.S_IWOTH:
        raise InsecureStateDir(config_key, f"{directory} is writable by other users "
                               f"(mode {stat.S_IMODE(st.st_mode):04o})", f"chmod 700 {directory}")


def write_atomically(path: Path, data: bytes, mode: int, *, exclusive: bool = False) -> bool:
    """Write ``data`` to ``path`` with exactly ``mode``, whole or not at all; False if it existed.

    The bytes go to a fresh temp file beside ``path`` (mode set before they are written) that is
    then renamed over ``path``, or, when ``exclusive``, linked to it only if ``path`` does not exist
    yet (then False means another process won and its file stands). Raises OSError.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the mode given to open() was masked by the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        if exclusive:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
        else:
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    fsync_dir(path.parent)
    return True


def fsync_dir(directory: Path) -> None:
    """Make a rename or unlink in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def os_reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)
