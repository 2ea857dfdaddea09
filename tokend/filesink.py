"""The file sink: the current token written atomically to a file, for consumers that only read files.

Every write goes to a fresh temp file in the same directory (``O_CREAT|O_EXCL|O_NOFOLLOW``, final mode
and group set before the token is written), is fsynced, and renamed over the target: a reader sees
the old token or the new one, never a partial or empty file. When the token expires without a
successor the file is removed, so no expired token is left behind.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat

from tokend.config import FileSink
from tokend.errors import ConfigError
from tokend.statefiles import fsync_dir
from tokend.values import group_id


class TokenFile:
    """One target's sink file."""

    def __init__(self, sink: FileSink, key: str) -> None:
        self.sink = sink
        self.key = key
        self._gid = group_id(sink.group, f"{key}.group") if sink.group is not None else -1

    def check(self) -> None:
        """Refuse a missing directory, or one other users may write to (they could swap the file)."""
        directory = self.sink.path.parent
        try:
            st = os.stat(directory)
        except OSError as exc:
            raise ConfigError(f"{self.key}.path", f"directory {directory}: {exc.strerror}",
                              "create it, writable by tokend's user") from None
        if st.st_mode & stat.S_IWOTH:
            raise ConfigError(f"{self.key}.path", f"directory {directory} is writable by other"
                              " users", "use a directory only tokend (and its group) can write,"
                              " e.g. /run/tokend/tokens") from None

    def write(self, content: bytes) -> None:
        """Atomically replace the file with ``content``."""
        path = self.sink.path
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     self.sink.mode)
        try:
            # The mode passed to open() is masked by the umask; these set it exactly, and the
            # group, before a byte of the token is in the file.
            if self._gid != -1:
                os.fchown(fd, -1, self._gid)
            os.fchmod(fd, self.sink.mode)
            view = memoryview(content)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        os.close(fd)
        try:
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        fsync_dir(path.parent)

    def remove(self) -> None:
        """Remove the file (the token it held is no longer valid, or tokend stops)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.sink.path)
