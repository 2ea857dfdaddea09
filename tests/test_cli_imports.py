"""The client commands start fast: they import neither ``ssl``, ``aiohttp`` nor the config package.

``tokend token`` runs once per script step, so what it imports is its start-up time. Each case runs
the command in a fresh interpreter (``sys.modules`` of this one is full of everything) with
durations on its command line, so the duration parser is loaded too, and lists what it imported.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("ssl", "aiohttp", "tokend.config")

PROBE = """
import json, sys
from tokend.cli import main
status = main(sys.argv[1:])
print(json.dumps({"status": status, "modules": sorted(sys.modules)}))
"""


def imported_by(*argv: str) -> tuple[int, set[str]]:
    """Run ``tokend ARGV`` in a fresh interpreter: its exit status and the modules it imported."""
    done = subprocess.run([sys.executable, "-c", PROBE, *argv], cwd=REPO, capture_output=True,
                          text=True, timeout=30)
    result = json.loads(done.stdout.splitlines()[-1])
    return result["status"], set(result["modules"])


@pytest.mark.parametrize("argv", [
    ("token", "--wait", "0s", "--min-ttl", "1m", "--timeout", "500ms"),
    ("token", "--header", "--wait", "1ms"),
    ("token", "--watch", "--wait", "1ms"),
    ("token", "--after", "sha256:" + "0" * 64, "--wait", "1s"),
    ("status", "--timeout", "2s"),
    ("health", "--ready", "--timeout", "2s"),
])
def test_client_commands_import_nothing_heavy(tmp_path: Path, argv: tuple[str, ...]) -> None:
    status, modules = imported_by(*argv, "--socket", str(tmp_path / "absent.sock"))
    assert status == 1  # no tokend there: the command ran to its end
    assert "tokend.values" in modules  # the durations were parsed
    assert not [name for name in HEAVY if name in modules]
