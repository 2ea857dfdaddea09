"""The daemon runs without the ``fake`` extra; ``tokend demo`` and ``tokend fake-sddc`` say how to get it."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import tokend
from tokend.cli import main

# Every module of tokend but the fake SDDC Manager and the demo that runs it.
DAEMON_MODULES = sorted(
    f"tokend.{info.name}" for info in pkgutil.iter_modules([str(Path(tokend.__file__).parent)])
    if info.name not in {"testing", "demo", "__main__"}
)


def test_the_daemon_and_its_commands_import_neither_cryptography_nor_pyjwt() -> None:
    # A fresh interpreter: this one has imported both for the fake.
    check = (f"import sys, {', '.join(DAEMON_MODULES)}\n"
             "loaded = {m.split('.')[0] for m in sys.modules} & {'cryptography', 'jwt'}\n"
             "assert not loaded, f'imported: {sorted(loaded)}'\n")
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "tokend.daemon" in DAEMON_MODULES and "tokend.cli" in DAEMON_MODULES


@pytest.mark.parametrize("argv", [["demo"], ["fake-sddc", "--listen", "127.0.0.1:0"]])
@pytest.mark.parametrize("missing", ["cryptography", "jwt"])
def test_the_fake_commands_without_the_extra_exit_2_naming_the_install_command(
    argv: list[str], missing: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, missing, None)  # what an interpreter without it finds

    assert main(argv) == 2

    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'tokend[fake]'" in err and missing in err
