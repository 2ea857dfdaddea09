"""Process hardening at start: no core dumps, not dumpable (no ptrace by same-uid processes)."""

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
