"""The facade's users file (SPEC §9.3): bcrypt entries only, checked in a thread pool, re-read on change.

Entries are made by the real ``htpasswd -B -C 10`` (Debian's apache2-utils) where it is installed,
else by the bcrypt library with the same ``$2y$`` prefix. Each bcrypt check at cost 10 takes tens
of milliseconds of CPU, so tests that only count checks use a spy executor that does not hash.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from tokend.errors import ConfigError
from tokend.proxy.users import POOL_WORKERS, UsersFile, shared_pool

KEY = "proxies[0].users_file"
HTPASSWD = shutil.which("htpasswd")
FAKE_COST_12 = "$2b$12$" + "A" * 53  # well-formed, for tests that never hash


def entry(user: str, password: str, *, cost: int = 10) -> str:
    """An htpasswd line for ``user``, as ``htpasswd -B -C cost`` writes it."""
    if HTPASSWD:
        out = subprocess.run([HTPASSWD, "-nbB", "-C", str(cost), user, password],
                             check=True, capture_output=True, text=True).stdout
        return out.strip()
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(cost)).decode()
    return f"{user}:$2y${hashed[4:]}"


_stamp = [0]


def write(path: Path, *lines: str) -> Path:
    """Replace the file (new inode, distinct mtime), as an operator's editor would."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_text("".join(line + "\n" for line in lines))
    os.replace(tmp, path)
    _stamp[0] += 1
    os.utime(path, ns=(10**18 + _stamp[0], 10**18 + _stamp[0]))
    return path


class SpyExecutor(Executor):
    """Records each bcrypt call instead of running it; answers ``answer``."""

    def __init__(self, answer: bool = False) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.answer = answer

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.calls.append(args)
        future: Future[Any] = Future()
        future.set_result(self.answer)
        return future


@pytest.fixture(scope="module")
def alice() -> str:
    return entry("alice", "correct horse")


@pytest.fixture
def users_path(tmp_path: Path, alice: str) -> Path:
    return write(tmp_path / "users.htpasswd", "# facade users", "", alice)


def load(path: Path, executor: Executor | None = None) -> UsersFile:
    return UsersFile.load(path, KEY, executor=executor)


# --- Checking passwords ------------------------------------------------------------------------


async def test_right_password_is_accepted_and_a_wrong_one_refused(users_path: Path) -> None:
    users = load(users_path)
    assert await users.check("alice", "correct horse") is True
    assert await users.check("alice", "Correct horse") is False
    assert users.exists("alice") and not users.exists("bob")


async def test_unknown_user_costs_one_hash_of_the_files_usual_cost(tmp_path: Path) -> None:
    path = write(tmp_path / "u", f"a:{FAKE_COST_12}", f"b:{FAKE_COST_12}", f"c:{'$2b$10$' + 'B' * 53}")
    spy = SpyExecutor(answer=True)
    users = load(path, spy)
    assert await users.check("mallory", "anything") is False
    [(password, hashed)] = spy.calls
    assert password == b"anything"
    assert hashed.startswith(b"$2b$12$")
    assert bcrypt.checkpw(b"", hashed) is False  # the dummy is well formed and matches nothing


async def test_unknown_user_in_an_empty_file_still_costs_a_hash(tmp_path: Path) -> None:
    spy = SpyExecutor()
    users = load(write(tmp_path / "u", "# nobody yet"), spy)
    assert await users.check("alice", "pw") is False
    assert [h[:7] for _, h in spy.calls] == [b"$2b$10$"]
    assert len(users) == 0


@pytest.mark.parametrize("password", ["a" * 73, "é" * 37, "pass\0word", "\ud800"])
async def test_password_bcrypt_cannot_check_whole_is_refused_without_hashing(
        users_path: Path, password: str) -> None:
    spy = SpyExecutor(answer=True)
    users = load(users_path, spy)
    assert await users.check("alice", password) is False
    assert await users.check("nobody", password) is False
    assert spy.calls == []


async def test_password_of_exactly_72_bytes_is_checked_whole(tmp_path: Path) -> None:
    password = "é" * 36
    users = load(write(tmp_path / "u", entry("bob", password)))
    assert await users.check("bob", password) is True
    assert await users.check("bob", password[:-1] + "e") is False


async def test_event_loop_keeps_running_while_bcrypt_checks(users_path: Path) -> None:
    users = load(users_path)
    ticks = 0
    done = False

    async def ticker() -> None:
        nonlocal ticks
        while not done:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    assert await users.check("alice", "correct horse") is True
    done = True
    await task
    assert ticks > 10


def test_bcrypt_pool_is_shared_and_small() -> None:
    assert shared_pool() is shared_pool()
    assert shared_pool()._max_workers == POOL_WORKERS == 2


@pytest.mark.parametrize("prefix", ["$2a$", "$2b$", "$2y$"])
async def test_every_bcrypt_variant_is_accepted(tmp_path: Path, prefix: str) -> None:
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(10)).decode()
    users = load(write(tmp_path / "u", f"carol:{prefix}{hashed[4:]}"))
    assert await users.check("carol", "pw") is True


# --- What the file may hold --------------------------------------------------------------------


@pytest.mark.skipif(HTPASSWD is None, reason="needs htpasswd (apache2-utils)")
@pytest.mark.parametrize(("flag", "scheme"), [("-m", "$apr1$"), ("-s", "{SHA}"), ("-p", "plain"),
                                              ("-5", "$6$"), ("-2", "$5$")])
def test_entry_of_another_scheme_is_refused_naming_the_line(tmp_path: Path, alice: str, flag: str,
                                                            scheme: str) -> None:
    assert HTPASSWD is not None
    other = subprocess.run([HTPASSWD, "-nb", flag, "dave", "hunter22"], check=True,
                           capture_output=True, text=True).stdout.strip()
    path = write(tmp_path / "u", alice, "", other)
    with pytest.raises(ConfigError) as info:
        load(path)
    text = str(info.value)
    assert text.startswith(f"{KEY}: {path} line 3: the entry of user 'dave' is not a bcrypt hash")
    assert "htpasswd -B -C 10" in text
    assert other.partition(":")[2] not in text and "hunter22" not in text


def test_cost_below_ten_is_refused(tmp_path: Path, alice: str) -> None:
    path = write(tmp_path / "u", alice, entry("erin", "pw", cost=9))
    with pytest.raises(ConfigError, match=r"line 2: the bcrypt cost of user 'erin' is 9; 10 to 31"):
        load(path)


@pytest.mark.parametrize(("line", "problem"), [
    ("no colon here", "not a 'user:hash' entry"),
    (":$2y$10$" + "D" * 53, "not a 'user:hash' entry"),
    ("frank:$2y$10$" + "D" * 52, "not a bcrypt hash"),
    ("frank:$2y$10$" + "D" * 53 + " ", "not a bcrypt hash"),
    ("fr\x1bank:$2y$10$" + "D" * 53, "control characters"),
])
def test_malformed_line_is_refused_naming_it(tmp_path: Path, line: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=rf"line 1: .*{problem}"):
        load(write(tmp_path / "u", line))


def test_user_listed_twice_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="line 2: user 'gina' is listed twice"):
        load(write(tmp_path / "u", f"gina:{FAKE_COST_12}", f"gina:{FAKE_COST_12}"))


def test_text_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "u"
    path.write_bytes(b"h\xffx:" + FAKE_COST_12.encode() + b"\n")
    with pytest.raises(ConfigError, match="line 1: not UTF-8 text"):
        load(path)


async def test_windows_line_endings_are_accepted(tmp_path: Path, alice: str) -> None:
    path = tmp_path / "u"
    path.write_bytes(alice.encode() + b"\r\n")
    assert await load(path).check("alice", "correct horse") is True


def test_missing_users_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"{KEY}: cannot read users file")):
        load(tmp_path / "absent")


def test_without_bcrypt_installed_the_extra_is_named(users_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "bcrypt", None)
    with pytest.raises(ConfigError, match=r"pip install 'tokend\[facade\]'"):
        load(users_path)


# --- The uh claim and re-reading ---------------------------------------------------------------


def test_entry_hash_changes_with_the_password_and_vanishes_with_the_user(tmp_path: Path,
                                                                         alice: str) -> None:
    path = write(tmp_path / "u", alice, f"bob:{FAKE_COST_12}")
    users = load(path, SpyExecutor())
    before = users.entry_hash("alice")
    assert before is not None and len(before) == 32 and int(before, 16) >= 0
    assert users.entry_hash("nobody") is None
    write(path, f"bob:{FAKE_COST_12}", alice)  # reordered, same entries
    assert users.reload_if_changed() is True
    assert users.entry_hash("alice") == before
    write(path, f"alice:{'$2y$10$' + 'E' * 53}", f"bob:{FAKE_COST_12}")
    users.reload_if_changed()
    assert users.entry_hash("alice") not in (None, before)
    write(path, f"bob:{FAKE_COST_12}")
    users.reload_if_changed()
    assert users.entry_hash("alice") is None


async def test_changed_file_is_read_again_and_an_unchanged_one_is_not(users_path: Path) -> None:
    users = load(users_path)
    assert users.reload_if_changed() is False
    write(users_path, entry("alice", "new password"))
    assert users.reload_if_changed() is True
    assert await users.check("alice", "new password") is True
    assert await users.check("alice", "correct horse") is False


async def test_broken_file_keeps_the_last_good_one_and_is_reported_once(users_path: Path) -> None:
    users = load(users_path)
    write(users_path, "alice:$apr1$x$y")
    with pytest.raises(ConfigError, match="line 1"):
        users.reload_if_changed()
    assert users.reload_if_changed() is False
    assert await users.check("alice", "correct horse") is True
    write(users_path, f"alice:{FAKE_COST_12}")
    assert users.reload_if_changed() is True
    assert users.exists("alice")


def test_importing_the_module_does_not_load_bcrypt() -> None:
    # pyjwt loads cryptography when it is installed, and cryptography's SSH key support loads
    # bcrypt when that is installed: compare with what pyjwt alone loads.
    code = ("import sys, jwt; loaded = 'bcrypt' in sys.modules; import tokend.proxy.users; "
            "assert ('bcrypt' in sys.modules) == loaded")
    subprocess.run([sys.executable, "-c", code], check=True)
