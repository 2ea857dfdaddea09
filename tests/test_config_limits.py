"""``[server] max_connections`` and ``max_connections_per_uid`` (SPEC §8), and the open-file limit."""

from __future__ import annotations

import resource
from pathlib import Path
from typing import Any

import pytest

from tokend.config import parse_config
from tokend.errors import ConfigError
from tokend.listen import RESERVED_FILES, fit_open_files


def config(tmp_path: Path, **server: Any) -> Any:
    data = {"server": server, "targets": [{"name": "t1", "url": "https://sddc.example",
                                           "username": "u", "password_file": str(tmp_path / "p")}]}
    return parse_config(data, tmp_path / "config.toml", file_mode=0o600)


def test_connection_limits_default_to_the_spec(tmp_path: Path) -> None:
    server = config(tmp_path).server
    assert (server.max_connections, server.max_connections_per_uid) == (4096, 1024)


def test_connection_limits_are_read(tmp_path: Path) -> None:
    server = config(tmp_path, max_connections=2000, max_connections_per_uid=1500).server
    assert (server.max_connections, server.max_connections_per_uid) == (2000, 1500)


@pytest.mark.parametrize(("values", "key", "problem"), [
    ({"max_connections": 0}, "server.max_connections", "not between 1"),
    ({"max_connections_per_uid": -5}, "server.max_connections_per_uid", "not between 1"),
    ({"max_connections": "100"}, "server.max_connections", "expected an integer"),
    ({"max_connections": True}, "server.max_connections", "expected an integer"),
    ({"max_connections": 10, "max_connections_per_uid": 20}, "server.max_connections_per_uid",
     "more than server.max_connections"),
])
def test_bad_connection_limits_name_the_key(tmp_path: Path, values: dict[str, Any], key: str,
                                            problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config(tmp_path, **values)
    assert caught.value.key == key
    assert problem in str(caught.value)


def test_the_open_file_limit_is_raised_to_fit_the_connections() -> None:
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, before[1]))
        soft, needed = fit_open_files(1024)
        assert needed == 1024 + RESERVED_FILES
        assert soft == min(needed, before[1]) == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)
