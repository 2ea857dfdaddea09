"""The file sink's mode does not depend on the umask tokend runs under.

``open(..., mode)`` is masked by the umask; tokend.service sets ``UMask=0077``, which would turn the
0640 a config asks for into 0600 and lock the consumers' group out. ``TokenFile.write`` sets the
mode exactly with ``fchmod``: these tests run under the production umask and under umasks that
strip the very bits asked for (the suite itself runs under 022, which strips nothing they use).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tokend.config import FileSink
from tokend.filesink import TokenFile

TOKEN = b"eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjF9.c2ln"


@pytest.fixture
def umask() -> Iterator[None]:
    """Put the umask back whatever a test set."""
    old = os.umask(0o022)
    os.umask(old)
    yield
    os.umask(old)


def written_mode(path: Path, mode: int, mask: int, group: str | None = None) -> int:
    os.umask(mask)
    sink = TokenFile(FileSink(path=path, mode=mode, group=group), "targets[0].file_sink")
    sink.check()
    sink.write(TOKEN)
    assert path.read_bytes() == TOKEN
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o400, 0o440], ids=oct)
def test_mode_is_exact_under_the_production_umask_0077(
        tmp_path: Path, umask: None, mode: int) -> None:
    assert written_mode(tmp_path / "t.token", mode, 0o077) == mode


@pytest.mark.parametrize(("mode", "mask"), [(0o640, 0o047), (0o640, 0o777), (0o600, 0o277),
                                            (0o440, 0o377)], ids=lambda m: oct(m))
def test_mode_is_exact_when_the_umask_strips_the_bits_asked_for(
        tmp_path: Path, umask: None, mode: int, mask: int) -> None:
    assert mode & mask, "the umask must strip some of the mode for this test to mean anything"
    assert written_mode(tmp_path / "t.token", mode, mask) == mode


def test_replacing_a_file_keeps_the_configured_mode_and_group_under_umask_0077(
        tmp_path: Path, umask: None) -> None:
    path = tmp_path / "t.token"
    path.write_bytes(b"old")
    path.chmod(0o600)
    group = os.getgroups()[-1] if os.getgroups() else os.getgid()

    assert written_mode(path, 0o640, 0o077, group=str(group)) == 0o640
    assert os.stat(path).st_gid == group
    assert [p.name for p in tmp_path.iterdir()] == ["t.token"]  # no temp file left behind
