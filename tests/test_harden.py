"""Process hardening: no core dumps, not dumpable."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import ctypes, ctypes.util, resource
from tokend.harden import harden_process
libc = ctypes.CDLL(ctypes.util.find_library("c"))
before = libc.prctl(3, 0, 0, 0, 0)  # PR_GET_DUMPABLE
harden_process()
print(before, libc.prctl(3, 0, 0, 0, 0), resource.getrlimit(resource.RLIMIT_CORE))
"""


def test_harden_process_disables_core_dumps_and_ptrace_by_peers() -> None:
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=True)
    before, after, core = out.stdout.split(" ", 2)
    assert before == "1"  # a fresh process is dumpable: the check can tell the difference
    assert after == "0"
    assert core.strip() == "(0, 0)"
