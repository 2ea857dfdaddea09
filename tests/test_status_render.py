"""``tokend status`` for a person: what each block shows."""

from __future__ import annotations

from tokend.status import render_status


def test_a_lockout_record_is_shown_with_its_expiry() -> None:
    text = render_status({"targets": [{
        "name": "t1", "state": "credentials_rejected", "expiresIn": None, "expiresAt": None,
        "consecutiveFailures": 0, "lastError": None,
        "lockout": {"rejections": 3, "expiresAt": "2026-11-30T03:00:00Z"}}]})

    assert "lockout record  3 rejected login(s), kept until 2026-11-30T03:00:00Z" in text


def test_no_lockout_line_without_a_record() -> None:
    text = render_status({"targets": [{"name": "t1", "state": "valid", "lockout": None}]})

    assert "lockout" not in text
