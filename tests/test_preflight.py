"""The start checks that only a user other than root can meet, as that user would meet them.

``tests/e2e/test_check_matches_run.py`` holds ``check-config`` and ``run`` to one verdict with real
processes; these refusals need an unprivileged user (root may write any directory and give a file
any group), so the process's identity is stubbed here, in the one function both commands call.
"""

from __future__ import annotations

import grp
import os
from pathlib import Path

import pytest

from tests.support import write_config
from tokend.config import load_config
from tokend.errors import ConfigError
from tokend.listen import bind_unix
from tokend.preflight import preflight

URL = "https://127.0.0.1:1"


@pytest.fixture
def unprivileged(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process as uid 4242 in no group but its primary one, which no test file has."""
    monkeypatch.setattr(os, "geteuid", lambda: 4242)
    monkeypatch.setattr(os, "getegid", lambda: 4242)
    monkeypatch.setattr(os, "getgroups", lambda: [])


def other_group() -> str:
    group = next((g for g in grp.getgrall() if g.gr_gid not in (4242, os.getgid())), None)
    if group is None:
        pytest.skip("no second group on this system")
    return group.gr_name


def test_a_socket_group_tokend_is_not_in_is_refused_by_both(tmp_path: Path,
                                                            unprivileged: None) -> None:
    group = other_group()
    config = load_config(write_config(tmp_path, URL, server={"socket_group": group}))
    with pytest.raises(ConfigError) as checked:
        preflight(config)
    assert checked.value.key == "server.socket_group"
    assert f"not a member of group {group}" in str(checked.value)
    assert "usermod -aG" in checked.value.fix
    with pytest.raises(ConfigError) as bound:
        bind_unix(config.server.socket, 0o660, group)
    assert str(bound.value) == str(checked.value)
    assert not config.server.socket.exists()


def test_a_file_sink_group_tokend_is_not_in_is_refused(tmp_path: Path,
                                                        unprivileged: None) -> None:
    tokens = tmp_path / "tokens"
    tokens.mkdir(mode=0o750)
    group = other_group()
    config = load_config(write_config(tmp_path, URL, target={"file_sink": {
        "path": str(tokens / "t1.token"), "mode": "0640", "group": group}}))
    with pytest.raises(ConfigError) as checked:
        preflight(config, sockets=False)
    assert checked.value.key == "targets[0].file_sink.group"


def test_a_directory_tokend_cannot_write_is_refused(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    tokens = tmp_path / "tokens"
    tokens.mkdir(mode=0o750)
    config = load_config(write_config(tmp_path, URL, target={"file_sink": {
        "path": str(tokens / "t1.token")}}))
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, m, **kw: False if Path(p) in (tokens, tmp_path)
                        else real_access(p, m, **kw))
    with pytest.raises(ConfigError) as socket_dir:
        preflight(config)
    assert socket_dir.value.key == "server.socket"
    assert "not writable" in str(socket_dir.value)
    with pytest.raises(ConfigError) as sink_dir:
        preflight(config, sockets=False)
    assert sink_dir.value.key == "targets[0].file_sink.path"
    assert "not writable by tokend's user" in str(sink_dir.value)


def test_preflight_creates_nothing(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, URL, metrics={"listen": "127.0.0.1:0"}))
    before = sorted(p.name for p in tmp_path.rglob("*"))
    found = preflight(config, look_for_live=True)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    assert not found.live and found.notes == []


def test_a_reload_checks_only_what_it_would_open(tmp_path: Path) -> None:
    """SIGHUP keeps the API socket, the state folder and the metrics listener as they are: a
    changed one needs a restart, so a reload does not refuse it."""
    config = load_config(write_config(tmp_path, URL, server={
        "socket": str(tmp_path / "absent" / "tokend.sock")}, metrics={"listen": "192.0.2.1:1"}))
    preflight(config, start=False)
    with pytest.raises(ConfigError):
        preflight(config)
