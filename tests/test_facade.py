"""The facade's decisions without a daemon: who may forward, which bodies are refresh ids and
credentials, what a reload keeps (tokend/proxy/facade.py)."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from aiohttp.test_utils import make_mocked_request
from structlog.testing import capture_logs

from tokend.config.model import ProxyConfig
from tokend.errors import ConfigError
from tokend.metrics import Metrics
from tokend.peers import Peer
from tokend.proxy.facade import UNIX_UH, Facade, _credentials, _refresh_id
from tokend.proxy.localtoken import issue
from tokend.proxy.seams import Caller

NOW = 1_800_000_000.0
TCP = Caller("tcp", address="192.0.2.7")
UNIX = Caller("unix", peer=Peer(pid=1, uid=1000, gid=1000, groups=frozenset({1000})))


def users_line(user: str, password: str) -> str:
    return f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(10)).decode()}\n"


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    users = tmp_path / "users.htpasswd"
    users.write_text(users_line("alice", "pw-alice") + users_line("bob", "pw-bob"))
    key = tmp_path / "facade.key"
    key.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    key.chmod(0o600)
    state = tmp_path / "state"
    state.mkdir()
    return {"users": users, "key": key, "state": state}


def config(files: dict[str, Path], **changes: Any) -> ProxyConfig:
    settings: dict[str, Any] = {"index": 0, "target": "t1", "listen": ("127.0.0.1", 0),
                                "users_file": files["users"], "session_key_file": files["key"]}
    settings.update(changes)
    return ProxyConfig(**settings)


def facade(files: dict[str, Path], **changes: Any) -> Facade:
    made = Facade.load(config(files, **changes), files["state"], Metrics().proxy("t1"))
    made._wall = lambda: NOW
    return made


def token_for(f: Facade, sub: str = "alice", **changes: Any) -> str:
    claims: dict[str, Any] = {"target": "t1", "sub": sub, "via": "tcp", "typ": "access",
                              "uh": f.users.entry_hash(sub) if f.users else "", "lifetime": 3600,
                              "now": NOW}
    claims.update(changes)
    return issue(f.keys, **claims)


async def authorize(f: Facade, caller: Caller, authorization: str | None) -> str | None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    return await f.authorize(make_mocked_request("GET", "/v1/domains", headers=headers), caller)


async def test_tcp_forwarding_needs_a_current_local_access_token(files: dict[str, Path]) -> None:
    f = facade(files)
    assert await authorize(f, TCP, f"Bearer {token_for(f)}") == "alice"
    assert await authorize(f, TCP, f"bearer   {token_for(f)}  ") == "alice"
    assert await authorize(f, TCP, None) is None
    assert await authorize(f, TCP, f"Basic {token_for(f)}") is None
    assert await authorize(f, TCP, f"Bearer {token_for(f, typ='refresh')}") is None
    assert await authorize(f, TCP, f"Bearer {token_for(f, via='unix')}") is None
    assert await authorize(f, TCP, f"Bearer {token_for(f, target='t2')}") is None
    assert await authorize(f, TCP, f"Bearer {token_for(f, uh='0' * 32)}") is None
    assert await authorize(f, TCP, f"Bearer {token_for(f, sub='carol')}") is None
    expired = token_for(f, now=NOW - 3600 - 61)
    assert await authorize(f, TCP, f"Bearer {expired}") is None
    within_leeway = token_for(f, now=NOW - 3600 - 59)
    assert await authorize(f, TCP, f"Bearer {within_leeway}") == "alice"


async def test_on_a_unix_socket_the_gate_decided(files: dict[str, Path]) -> None:
    f = facade(files)
    assert await authorize(f, UNIX, None) == "uid:1000"
    assert await authorize(f, UNIX, "Bearer anything") == "uid:1000"
    assert await authorize(f, Caller("unix"), None) is None


async def test_a_changed_entry_voids_the_users_tokens_after_a_reload(
        files: dict[str, Path]) -> None:
    f = facade(files)
    alice, bob = token_for(f), token_for(f, sub="bob")
    bob_line = files["users"].read_text().splitlines()[1]
    files["users"].write_text(users_line("alice", "new") + bob_line + "\n")
    with capture_logs() as logs:
        f.check_files()
    assert [e["event"] for e in logs] == ["proxy.files_reloaded"]
    assert logs[0]["key"] == "proxies[0].users_file"
    assert await authorize(f, TCP, f"Bearer {alice}") is None
    assert await authorize(f, TCP, f"Bearer {bob}") == "bob"


def test_a_broken_file_is_logged_once_and_the_last_good_one_kept(files: dict[str, Path]) -> None:
    f = facade(files)
    files["users"].write_text("alice:plain\n")
    with capture_logs() as logs:
        f.check_files()
        f.check_files()
    assert [e["event"] for e in logs] == ["proxy.files_reload_failed"]
    assert "line 1" in logs[0]["error"] and "plain" not in logs[0]["error"]
    assert f.users is not None and f.users.exists("bob")


def test_a_reload_keeps_what_did_not_change_and_carries_the_counts_over(
        files: dict[str, Path], tmp_path: Path) -> None:
    f = facade(files)
    same = f.successor(config(files, local_token_lifetime=1800.0), files["state"])
    assert same.keys is f.keys and same.users is f.users
    assert same.limiter is f.limiter and same.revoked is f.revoked
    other_users = tmp_path / "other.htpasswd"
    other_users.write_text(users_line("carol", "pw"))
    moved = f.successor(config(files, users_file=other_users), files["state"])
    assert moved.users is not f.users and moved.users is not None and moved.users.exists("carol")
    with pytest.raises(ConfigError) as refused:
        f.successor(config(files, users_file=tmp_path / "missing"), files["state"])
    assert refused.value.key == "proxies[0].users_file"


def test_without_listen_the_key_is_generated_in_state_dir_or_kept_in_memory(
        files: dict[str, Path], tmp_path: Path) -> None:
    unix_only = {"listen": None, "users_file": None, "session_key_file": None,
                 "socket": tmp_path / "t1.api.sock"}
    made = facade(files, **unix_only)
    key_file = files["state"] / "tokend" / "facade.key"
    assert key_file.exists() and key_file.stat().st_mode & 0o777 == 0o600
    assert facade(files, **unix_only).keys.kids == made.keys.kids, "one key, reused"
    with capture_logs() as logs:
        in_memory = Facade.load(config(files, **unix_only), tmp_path / "missing",
                                Metrics().proxy("t1"))
    assert [e["event"] for e in logs] == ["proxy.session_key_unsaved"]
    assert in_memory.keys.kids != made.keys.kids


@pytest.mark.parametrize(("body", "expected"), [
    (b'"abc.def.ghi"', "abc.def.ghi"),
    (b"abc.def.ghi", "abc.def.ghi"),
    (b"  abc.def.ghi\n", "abc.def.ghi"),
    (b'"abc', None),
    (b'"\\u0000"', "\0"),
    (b"\xff", None),
    (b"", ""),
])
def test_a_refresh_id_is_a_json_string_or_bare(body: bytes, expected: str | None) -> None:
    assert _refresh_id(body) == expected


@pytest.mark.parametrize(("body", "expected"), [
    (json.dumps({"username": "alice", "password": "pw"}).encode(), ("alice", "pw")),
    (json.dumps({"username": "alice", "password": ""}).encode(), ("alice", "")),
    (json.dumps({"username": "", "password": "pw"}).encode(), None),
    (json.dumps({"apiKey": "k"}).encode(), None),
    (json.dumps(["alice", "pw"]).encode(), None),
    (b"[" * 100_000, None),
    (b"\xff", None),
])
def test_credentials_are_a_token_creation_spec(body: bytes,
                                               expected: tuple[str, str] | None) -> None:
    assert _credentials(body) == expected


def test_unix_tokens_carry_no_users_file_entry() -> None:
    assert UNIX_UH == ""
