"""The facade's users: an htpasswd file of bcrypt entries, checked off the event loop (SPEC §9.3).

Each non-blank line not starting with ``#`` is ``user:hash`` where the hash is bcrypt (``$2y$``,
``$2b$`` or ``$2a$``, as ``htpasswd -B`` writes) with a cost of at least :data:`MIN_COST`. Any other
line is refused at load, naming its number (never its text). A user named twice is refused too.

Password checks run bcrypt in a thread pool of :data:`POOL_WORKERS` threads shared by every users
file, never on the event loop. An unknown user costs one hash against a dummy of the file's usual
cost, so the answer time does not tell which users exist. A password longer than
:data:`MAX_PASSWORD_BYTES` in UTF-8 (bcrypt would silently ignore the rest) or containing NUL is
wrong without hashing.

bcrypt is the optional ``tokend[facade]`` extra, imported when a users file is first loaded.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tokend.errors import ConfigError
from tokend.statefiles import Watched, read_small_file

#: Lowest bcrypt cost accepted (2^10 rounds).
MIN_COST = 10
#: Highest bcrypt cost there is (2^31 rounds).
MAX_COST = 31
#: bcrypt reads at most this many bytes of a password.
MAX_PASSWORD_BYTES = 72
#: Threads that run bcrypt, for all users files together.
POOL_WORKERS = 2
#: Largest users file read, in bytes (about 200 000 entries).
MAX_USERS_FILE_BYTES = 16 * 1024 * 1024
#: Hex digits of SHA-256 kept in :meth:`UsersFile.entry_hash`.
ENTRY_HASH_DIGITS = 32

_BCRYPT = re.compile(r"\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}")
_FIX = "create entries with: htpasswd -B -C 10 FILE USER"

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def shared_pool() -> ThreadPoolExecutor:
    """The thread pool every users file runs bcrypt in, made on first use."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=POOL_WORKERS, thread_name_prefix="tokend-bcrypt")
        return _pool


@dataclass(frozen=True)
class _Entries:
    hashes: dict[str, bytes] = field(repr=False)
    entry_hashes: dict[str, str] = field(repr=False)
    dummy: bytes = field(repr=False)


@dataclass(eq=False, repr=False)
class UsersFile:
    """One proxy's ``users_file``: who may log in to the facade over TCP, and with which password.

    Made by :meth:`load`: the file's ``path`` and ``config_key``, its entries, the watch that tells
    when it changed, bcrypt's ``checkpw`` and the executor that runs it.
    """

    path: Path
    config_key: str
    _entries: _Entries
    _watch: Watched[_Entries]
    _checkpw: Callable[[bytes, bytes], bool]
    _executor: Executor | None

    @classmethod
    def load(cls, path: Path, config_key: str, *, executor: Executor | None = None) -> UsersFile:
        """Read and check the htpasswd file at ``path``.

        ``executor`` runs bcrypt (default: :func:`shared_pool`). Raises ConfigError naming
        ``config_key`` when bcrypt is not installed, the file cannot be read, or a line is not a
        bcrypt entry of cost at least 10 (the line's number is named, never its text).
        """
        checkpw = _bcrypt_checkpw(config_key)
        watch: Watched[_Entries] = Watched(path)
        return cls(path, config_key, _read(path, config_key), watch, checkpw, executor)

    def __len__(self) -> int:
        return len(self._entries.hashes)

    def exists(self, user: str) -> bool:
        """True when ``user`` has an entry."""
        return user in self._entries.hashes

    def entry_hash(self, user: str) -> str | None:
        """The first 32 hex digits of the SHA-256 of ``user``'s entry line, None for an unknown user.

        It is the ``uh`` claim of that user's local tokens: a changed password or a removed user
        changes it, voiding their tokens. The line is hashed as ``user:hash``, without line ending.
        """
        return self._entries.entry_hashes.get(user)

    async def check(self, user: str, password: str) -> bool:
        """True when ``password`` is ``user``'s, checked by bcrypt in the thread pool.

        False without hashing for a password over 72 bytes in UTF-8, with NUL, or not encodable;
        an unknown user is checked against a dummy hash of the usual cost, then False.
        """
        try:
            secret = password.encode("utf-8")
        except UnicodeEncodeError:
            return False
        if len(secret) > MAX_PASSWORD_BYTES or b"\0" in secret:
            return False
        entries = self._entries
        hashed = entries.hashes.get(user)
        loop = asyncio.get_running_loop()
        ok = await loop.run_in_executor(self._executor or shared_pool(), self._checkpw, secret,
                                        entries.dummy if hashed is None else hashed)
        return ok and hashed is not None

    def reload_if_changed(self) -> bool:
        """Re-read the file if it changed since the last read; True when new entries are in force.

        Raises ConfigError when the file changed but cannot be used: the last good entries stay in
        force, and that same version of the file is not reported again.
        """
        path, config_key = self.path, self.config_key
        entries = self._watch.reload(lambda: _read(path, config_key))
        if entries is None:
            return False
        self._entries = entries
        return True


def _bcrypt_checkpw(config_key: str) -> Callable[[bytes, bytes], bool]:
    try:
        import bcrypt
    except ImportError:
        raise ConfigError(config_key, "a users file needs the 'bcrypt' package, which is not installed",
                          "pip install 'tokend[facade]'") from None
    return bcrypt.checkpw


def _read(path: Path, config_key: str) -> _Entries:
    data, _ = read_small_file(path, config_key, max_bytes=MAX_USERS_FILE_BYTES, what="users file",
                              fix=_FIX)
    return _parse(data, path, config_key)


def _parse(data: bytes, path: Path, config_key: str) -> _Entries:
    hashes: dict[str, bytes] = {}
    entry_hashes: dict[str, str] = {}
    costs: Counter[int] = Counter()
    for number, raw in enumerate(data.split(b"\n"), start=1):
        line = raw.removesuffix(b"\r")
        if not line.strip() or line.startswith(b"#"):
            continue
        try:
            text, user, hashed, cost = _entry(line)
            if user in hashes:
                raise ValueError(f"user {user!r} is listed twice")
        except ValueError as exc:
            raise ConfigError(config_key, f"{path} line {number}: {exc}", _FIX) from None
        hashes[user] = hashed.encode("ascii")
        entry_hashes[user] = hashlib.sha256(text.encode("utf-8")).hexdigest()[:ENTRY_HASH_DIGITS]
        costs[cost] += 1
    return _Entries(hashes=hashes, entry_hashes=entry_hashes, dummy=_dummy_hash(costs))


def _entry(line: bytes) -> tuple[str, str, str, int]:
    """The text, user, hash and cost of one entry line; ValueError saying what is wrong with it."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    user, colon, hashed = text.partition(":")
    if not colon or not user:
        raise ValueError("not a 'user:hash' entry")
    if not user.isprintable():
        raise ValueError("the user name holds control characters")
    match = _BCRYPT.fullmatch(hashed)
    if match is None:
        raise ValueError(f"the entry of user {user!r} is not a bcrypt hash ($2y$, $2b$ or $2a$); "
                         "other schemes are refused")
    cost = int(match.group(1))
    if not MIN_COST <= cost <= MAX_COST:
        raise ValueError(f"the bcrypt cost of user {user!r} is {cost}; {MIN_COST} to {MAX_COST} "
                         "is accepted")
    return text, user, hashed, cost


def _dummy_hash(costs: Counter[int]) -> bytes:
    # Any well-formed bcrypt string costs a full hash to compare against; this one matches no
    # password. Its cost is the most common one in the file (the higher on a tie).
    cost = max(costs.items(), key=lambda item: (item[1], item[0]))[0] if costs else MIN_COST
    return b"$2b$%02d$" % cost + b"." * 53
