"""Peers under other uids: what a test needs to run a process as someone else."""

from __future__ import annotations

import os

import pytest


def peer_python() -> str:
    """A Python interpreter any uid may run (the test's own may live under /root); skips the test
    when there is none."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3", "/bin/python3"):
        if os.path.exists(candidate) and os.stat(candidate).st_mode & 0o001:
            return candidate
    pytest.skip("no world-executable python3 to run a peer as another uid")
