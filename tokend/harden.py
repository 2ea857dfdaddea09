"""Process set-up at start: no core dumps, not dumpable (no ptrace by same-uid processes), and
enough file descriptors for the connection limits."""

from __future__ import annotations

import ctypes
import ctypes.util
import resource

PR_SET_DUMPABLE = 4


def harden_process() -> None:
    """Set RLIMIT_CORE to 0 and PR_SET_DUMPABLE to 0, so secrets never reach a core file."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)


def raise_open_files_limit(wanted: int) -> tuple[int, int]:
    """Raise the soft ``RLIMIT_NOFILE`` to ``wanted`` (the hard limit caps it); (soft, hard) after.

    Never lowers it. The caller logs when the result is short of ``wanted``.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft, hard
