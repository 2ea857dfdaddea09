"""The lockout ledger (SPEC §8.9): what it keeps, for how long, and what it never keeps."""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tokend.ledger import KEY_NAME, LEDGER_NAME, RECORD_LIFETIME, Ledger
from tokend.secrets import Secret

WALL = 1_795_000_000.0
PASSWORD = "Wr0ng-Passw0rd!"


def test_the_ledger_holds_neither_the_secret_nor_its_plain_hash(tmp_path: Path) -> None:
    ledger = Ledger.open(tmp_path, WALL)
    secret_id = ledger.secret_id(Secret(PASSWORD))
    ledger.rejected("t1", secret_id, 1, WALL)

    text = (tmp_path / "tokend" / LEDGER_NAME).read_text()
    assert PASSWORD not in text
    assert hashlib.sha256(PASSWORD.encode()).hexdigest() not in text
    assert hashlib.sha256(PASSWORD.encode()).hexdigest()[:32] not in text
    assert json.loads(text)["targets"]["t1"]["rejections"] == 1


def test_the_key_and_the_ledger_are_private(tmp_path: Path) -> None:
    ledger = Ledger.open(tmp_path, WALL)
    ledger.rejected("t1", ledger.secret_id(Secret(PASSWORD)), 1, WALL)

    assert stat.S_IMODE((tmp_path / "tokend").stat().st_mode) == 0o700
    for name in (KEY_NAME, LEDGER_NAME):
        assert stat.S_IMODE((tmp_path / "tokend" / name).stat().st_mode) == 0o600


def test_ids_differ_between_installs_and_agree_within_one(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    one = Ledger.open(tmp_path / "a", WALL)
    again = Ledger.open(tmp_path / "a", WALL)
    other = Ledger.open(tmp_path / "b", WALL)

    assert one.secret_id(Secret(PASSWORD)) == again.secret_id(Secret(PASSWORD))
    assert one.secret_id(Secret(PASSWORD)) != other.secret_id(Secret(PASSWORD))
    assert one.secret_id(Secret(PASSWORD)) != one.secret_id(Secret(PASSWORD + "x"))


def test_a_record_survives_a_reopen_and_expires_after_fifteen_minutes(tmp_path: Path) -> None:
    ledger = Ledger.open(tmp_path, WALL)
    secret_id = ledger.secret_id(Secret(PASSWORD))
    ledger.rejected("t1", secret_id, 3, WALL)

    reopened = Ledger.open(tmp_path, WALL + 60)
    record = reopened.lookup("t1", secret_id, WALL + 60)
    assert record is not None and record.rejections == 3
    assert reopened.lookup("t1", secret_id, WALL + RECORD_LIFETIME - 1) is not None
    assert reopened.lookup("t1", secret_id, WALL + RECORD_LIFETIME) is None
    assert Ledger.open(tmp_path, WALL + RECORD_LIFETIME + 1).record("t1") is None


def test_a_record_of_another_secret_does_not_count(tmp_path: Path) -> None:
    ledger = Ledger.open(tmp_path, WALL)
    ledger.rejected("t1", ledger.secret_id(Secret(PASSWORD)), 3, WALL)

    assert ledger.lookup("t1", ledger.secret_id(Secret("fixed")), WALL + 1) is None


def test_clear_forgets_the_target_on_disk(tmp_path: Path) -> None:
    ledger = Ledger.open(tmp_path, WALL)
    secret_id = ledger.secret_id(Secret(PASSWORD))
    ledger.rejected("t1", secret_id, 2, WALL)
    ledger.rejected("t2", secret_id, 1, WALL)

    ledger.clear("t1", WALL + 1)

    reopened = Ledger.open(tmp_path, WALL + 2)
    assert reopened.record("t1") is None and reopened.record("t2") is not None


@pytest.mark.parametrize("content", [b"{not json", b"\xe4\xff", b"[]", b'{"targets": {"t1": 5}}',
                                     b'{"targets": {"t1": {"secret_id": 1, "rejections": 2,'
                                     b' "last_attempt": 3}}}', b'{"targets": {"t1": {"secret_id":'
                                     b' "a", "rejections": true, "last_attempt": 3}}}'])
def test_a_corrupt_ledger_is_replaced_with_a_warning_never_a_crash(
    tmp_path: Path, content: bytes,
) -> None:
    Ledger.open(tmp_path, WALL)
    (tmp_path / "tokend" / LEDGER_NAME).write_bytes(content)

    with capture_logs() as logs:
        ledger = Ledger.open(tmp_path, WALL)
        ledger.rejected("t1", "ab" * 16, 1, WALL)

    assert [e["event"] for e in logs] == ["lockout.ledger_replaced"]
    assert json.loads((tmp_path / "tokend" / LEDGER_NAME).read_text())["targets"]["t1"]


def test_an_unreadable_ledger_is_replaced_with_a_warning(tmp_path: Path) -> None:
    Ledger.open(tmp_path, WALL)
    (tmp_path / "tokend" / LEDGER_NAME).mkdir()  # not a regular file

    with capture_logs() as logs:
        ledger = Ledger.open(tmp_path, WALL)

    assert [e["event"] for e in logs] == ["lockout.ledger_replaced"]
    assert ledger.record("t1") is None


def test_a_state_dir_that_is_a_file_makes_the_ledger_memory_only(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.write_text("not a folder")

    with capture_logs() as logs:
        ledger = Ledger.open(state_dir, WALL)
        ledger.rejected("t1", "ab" * 16, 1, WALL)

    assert ledger.path is None
    assert [e["event"] for e in logs] == ["lockout.ledger_unavailable"]
    assert ledger.lookup("t1", "ab" * 16, WALL) is not None  # still counted in memory
