"""The lockout ledger: credential rejections outlive a restart (SPEC §8.9).

An operator who restarts tokend five times while debugging a wrong password must not lock the
account (vCenter SSO: 5 failures in 180 s lock it for 15 minutes). So each target's rejections and
the time of its last rejected login are kept in ``<state_dir>/tokend/lockout.json``, written whole or
not at all. The secret they were made with is identified by a truncated HMAC-SHA256 under a random
per-install key kept beside it (``lockout.key``, 0600): never the secret, never a plain hash of it,
which a short password would give away to anyone who can read the file. Records older than 15
minutes, the lock time of vCenter SSO, are dropped.

A ``state_dir`` that cannot be used makes the ledger memory-only (one warning at start); a ledger
file that cannot be parsed is replaced (one warning), never a crash.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tokend.errors import ConfigError
from tokend.logs import get_logger
from tokend.secrets import Secret
from tokend.statefiles import (
    InsecureStateDir,
    os_reason,
    private_dir,
    read_small_file,
    write_atomically,
)

LEDGER_NAME = "lockout.json"
KEY_NAME = "lockout.key"
RECORD_LIFETIME = 900.0  # seconds: vCenter SSO's default lock time
KEY_BYTES = 32
ID_BYTES = 16  # of the HMAC, in hex: enough to tell secrets apart, too little to test guesses fast
MAX_LEDGER_BYTES = 1 << 20

log = get_logger()


@dataclass(frozen=True)
class Record:
    """One target's rejections: which secret (its HMAC id), how many, and the last one's time."""

    secret_id: str
    rejections: int
    last_attempt: float  # epoch seconds on the wall clock

    def expires_at(self) -> float:
        """When the record is dropped (epoch seconds)."""
        return self.last_attempt + RECORD_LIFETIME

    def live(self, now_wall: float) -> bool:
        """True until 15 minutes after the last rejected login."""
        return now_wall < self.expires_at()


class Ledger:
    """The records of every target, in memory and, when possible, on disk."""

    def __init__(self, key: bytes, path: Path | None = None,
                 records: dict[str, Record] | None = None) -> None:
        self._key = key
        self.path = path  # None: memory only
        self._records: dict[str, Record] = dict(records or {})

    @classmethod
    def open(cls, state_dir: Path | None, now_wall: float) -> Ledger:
        """The ledger under ``state_dir``; memory-only (with a warning) if it cannot be used.

        Raises InsecureStateDir (a ConfigError) when ``<state_dir>/tokend`` is writable by others
        or belongs to another user.
        """
        if state_dir is None:
            return cls(secrets.token_bytes(KEY_BYTES))
        try:
            directory = private_dir(state_dir)
            key = _install_key(directory / KEY_NAME)
        except InsecureStateDir:
            raise  # another user could forge records: refuse to start (exit 2)
        except (ConfigError, OSError) as exc:
            log.warning("lockout.ledger_unavailable", state_dir=str(state_dir),
                        error=str(exc) if isinstance(exc, ConfigError) else os_reason(exc),
                        action="rejections are counted in memory only: a restart forgets them")
            return cls(secrets.token_bytes(KEY_BYTES))
        path = directory / LEDGER_NAME
        return cls(key, path, _read_records(path, now_wall))

    def secret_id(self, secret: Secret) -> str:
        """The HMAC id of ``secret`` under this install's key (hex)."""
        mac = hmac.new(self._key, secret.reveal().encode("utf-8", "surrogatepass"), hashlib.sha256)
        return mac.hexdigest()[:2 * ID_BYTES]

    def lookup(self, target: str, secret_id: str, now_wall: float) -> Record | None:
        """The live record of ``target`` made with the secret ``secret_id``, if any."""
        record = self._records.get(target)
        if record is None or record.secret_id != secret_id or not record.live(now_wall):
            return None
        return record

    def record(self, target: str) -> Record | None:
        """Whatever is recorded for ``target`` (for ``status``)."""
        return self._records.get(target)

    def rejected(self, target: str, secret_id: str, rejections: int, now_wall: float) -> None:
        """A login of ``target`` with ``secret_id`` was rejected; it is the ``rejections``-th."""
        self._records[target] = Record(secret_id, rejections, now_wall)
        self._save(now_wall)

    def clear(self, target: str, now_wall: float) -> None:
        """A login succeeded, the secret changed, or SIGHUP: forget ``target``'s record."""
        if self._records.pop(target, None) is not None:
            self._save(now_wall)

    def _save(self, now_wall: float) -> None:
        self._records = {t: r for t, r in self._records.items() if r.live(now_wall)}
        if self.path is None:
            return
        data = json.dumps({"version": 1, "targets": {t: asdict(r) for t, r in
                                                      sorted(self._records.items())}},
                          indent=1).encode()
        try:
            write_atomically(self.path, data, 0o600)
        except OSError as exc:
            log.warning("lockout.ledger_unavailable", state_dir=str(self.path.parent.parent),
                        error=os_reason(exc),
                        action="rejections are counted in memory only: a restart forgets them")
            self.path = None


def _install_key(path: Path) -> bytes:
    """This install's HMAC key, made on first use."""
    if not path.exists():
        write_atomically(path, secrets.token_bytes(KEY_BYTES), 0o600, exclusive=True)
    key = path.read_bytes()
    if len(key) < KEY_BYTES:
        raise ConfigError("server.state_dir", f"{path} is shorter than {KEY_BYTES} bytes",
                          "remove it: tokend makes a new one (recorded rejections are then lost)")
    return key


def _read_records(path: Path, now_wall: float) -> dict[str, Record]:
    """The live records in ``path``; a file that cannot be used is replaced at the next write."""
    if not path.exists():
        return {}
    try:
        raw, _ = read_small_file(path, "server.state_dir", max_bytes=MAX_LEDGER_BYTES,
                                 what="the lockout ledger", fix="remove it")
        data = json.loads(raw)
        records = {name: _record(entry) for name, entry in data["targets"].items()}
    except (ConfigError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        # UnicodeDecodeError is a ValueError: any bytes at all are survivable.
        log.warning("lockout.ledger_replaced", path=str(path), error=type(exc).__name__,
                    action="starting with no recorded rejections; the file is rewritten")
        return {}
    return {t: r for t, r in records.items() if r.live(now_wall)}


def _record(entry: Any) -> Record:
    secret_id, rejections, last = entry["secret_id"], entry["rejections"], entry["last_attempt"]
    if not (isinstance(secret_id, str) and type(rejections) is int and rejections >= 0
            and isinstance(last, int | float) and not isinstance(last, bool) and math.isfinite(last)):
        raise ValueError("malformed record")
    return Record(secret_id, rejections, float(last))
