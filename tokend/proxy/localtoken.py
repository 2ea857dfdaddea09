"""Local tokens of the SDDC Manager facade: session keys, issuing, verifying, revoked refresh ids (SPEC §9.3).

A local token is a JWT signed HS256 with a session key. Its claims are ``iss`` (always ``"tokend"``),
``aud`` (the target), ``sub`` (the local user, or ``uid:<n>`` on a Unix socket), ``iat`` and ``exp``
(integer seconds on the wall clock), ``jti`` (random), ``kid`` (which session key signed; also in the
JWT header), ``typ`` (``access`` or ``refresh``), ``via`` (``unix`` or ``tcp``) and ``uh`` (a truncated
SHA-256 of the user's htpasswd entry, see :meth:`tokend.proxy.users.UsersFile.entry_hash`).

Verification is stateless, so any replica holding the same session key accepts a token:

- at most :data:`MAX_TOKEN_BYTES`, ``alg`` exactly ``HS256`` (never ``none``, never another algorithm);
- a ``kid`` naming one of the loaded keys, and that key's signature;
- every claim present with its type, ``iss`` = ``tokend``, ``aud`` = this target (a string, not a
  list), ``typ`` = what the endpoint takes, ``via`` = the listener's kind (each accepts only its own);
- ``exp`` not passed and ``iat`` not in the future, both with :data:`LEEWAY` seconds of slack.

Comparing ``uh`` with the users file is the caller's job (:attr:`LocalClaims.uh`). Nothing here
reads the clock: ``now`` is always a parameter (seconds since the epoch).

The session key file holds one key per line, each the standard base64 of at least 32 random bytes
(``openssl rand -base64 32``); blank lines and lines starting with ``#`` are ignored. The first key
signs, every key verifies: to rotate, add the new key as a second line on every replica, then move
it to the top, and remove the old one after ``local_token_lifetime`` (24 h if refresh ids must stay
valid). The file must not be accessible to group or others.

This module also holds the small file helpers the facade shares: :func:`read_small_file`,
:class:`Watched` (re-read on change), :func:`private_dir` and :func:`write_atomically`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import heapq
import math
import secrets
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import jwt

from tokend.errors import ConfigError, TokendError
from tokend.secrets import loose_secret_fix
from tokend.statefiles import Watched, os_reason, private_dir, read_small_file, write_atomically

ISSUER = "tokend"
ALGORITHM = "HS256"
#: Seconds of clock slack when checking ``exp`` and ``iat``.
LEEWAY = 60
#: Longest token accepted, in bytes; longer ones are refused before they are parsed.
MAX_TOKEN_BYTES = 4096
#: Lifetime of a local refresh id, in seconds.
REFRESH_LIFETIME = 24 * 3600
#: Shortest session key, in bytes.
MIN_KEY_BYTES = 32
#: Largest session key file read, in bytes.
MAX_KEY_FILE_BYTES = 64 * 1024
#: Revoked refresh ids remembered at most (per replica); beyond it the soonest to expire is dropped.
MAX_REVOKED = 100_000

TokenType = Literal["access", "refresh"]
Via = Literal["unix", "tcp"]
TOKEN_TYPES: tuple[TokenType, ...] = ("access", "refresh")
VIAS: tuple[Via, ...] = ("unix", "tcp")
CLAIMS = ("iss", "aud", "sub", "iat", "exp", "jti", "kid", "typ", "via", "uh")


GENERATED_KEY_NAME = "facade.key"


class LocalTokenRejected(TokendError):
    """A local token failed verification; ``reason`` says why in a few words, never the token."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class LocalClaims:
    """The verified claims of a local token. ``iat`` and ``exp`` are seconds since the epoch."""

    sub: str
    aud: str
    iat: int
    exp: int
    jti: str
    kid: str
    typ: TokenType
    via: Via
    uh: str


@dataclass(frozen=True)
class SessionKey:
    """One session key and its id (the first 16 hex digits of its SHA-256)."""

    kid: str
    secret: bytes = field(repr=False)

    @classmethod
    def from_secret(cls, secret: bytes) -> SessionKey:
        """The key for ``secret`` (at least :data:`MIN_KEY_BYTES`; ValueError otherwise)."""
        if len(secret) < MIN_KEY_BYTES:
            raise ValueError(f"a session key needs at least {MIN_KEY_BYTES} bytes")
        return cls(kid=hashlib.sha256(secret).hexdigest()[:16], secret=secret)


class SessionKeys:
    """The session keys of one proxy: the first signs, all verify; re-read when the file changes."""

    def __init__(self, keys: Sequence[SessionKey], *, path: Path | None = None,
                 config_key: str = "", watch: Watched[list[SessionKey]] | None = None) -> None:
        if not keys:
            raise ValueError("at least one session key is needed")
        self._keys = tuple(keys)
        self.path = path
        self.config_key = config_key
        self._watch = watch

    @property
    def signing(self) -> SessionKey:
        """The key new tokens are signed with."""
        return self._keys[0]

    @property
    def kids(self) -> tuple[str, ...]:
        """The ids of every key that verifies, the signing key first."""
        return tuple(k.kid for k in self._keys)

    def find(self, kid: str) -> SessionKey | None:
        """The key called ``kid``, if loaded."""
        return next((k for k in self._keys if k.kid == kid), None)

    @classmethod
    def load(cls, path: Path, config_key: str) -> SessionKeys:
        """Read the key file at ``path`` (format in the module docstring).

        Raises ConfigError naming ``config_key`` when the file cannot be read, is not a regular
        file, is accessible to group or others, or holds no key or a key that is not the base64 of at
        least 32 bytes (the line is named, never its text).
        """
        watch: Watched[list[SessionKey]] = Watched(path)
        return cls(_read_keys(path, config_key), path=path, config_key=config_key, watch=watch)

    @classmethod
    def generate(cls, state_dir: Path, config_key: str = "server.state_dir") -> SessionKeys:
        """The key in ``<state_dir>/tokend/facade.key``, made (32 random bytes, mode 0600) if missing.

        For a proxy without ``listen`` (SPEC §9.3). The file is created whole or not at all, so
        replicas sharing ``state_dir`` agree on one key. Raises ConfigError naming ``config_key``
        when the folder is unsafe (see :func:`private_dir`) or the file cannot be written or read.
        """
        path = private_dir(state_dir, config_key) / GENERATED_KEY_NAME
        if not path.exists():
            text = base64.b64encode(secrets.token_bytes(MIN_KEY_BYTES)) + b"\n"
            try:
                write_atomically(path, text, 0o600, exclusive=True)
            except OSError as exc:
                raise ConfigError(config_key, f"cannot write {path}: {os_reason(exc)}",
                                  "make the state directory writable by tokend's user") from None
        return cls.load(path, config_key)

    def reload_if_changed(self) -> bool:
        """Re-read the key file if it changed since the last read; True when new keys are in force.

        Raises ConfigError when the file changed but cannot be used; the previous keys stay in force
        and that same version of the file is not reported again. Keys made in memory never change.
        """
        if self._watch is None or self.path is None:
            return False
        path, config_key = self.path, self.config_key
        keys = self._watch.reload(lambda: _read_keys(path, config_key))
        if keys is None:
            return False
        self._keys = tuple(keys)
        return True


def _read_keys(path: Path, config_key: str) -> list[SessionKey]:
    data, st = read_small_file(path, config_key, max_bytes=MAX_KEY_FILE_BYTES,
                               what="session key file", fix=_KEY_FIX)
    if st.st_mode & 0o077:
        where, fix = loose_secret_fix(path, st, group_may_read=False)
        raise ConfigError(config_key, f"session key file {path} is accessible to other users "
                          f"(mode {stat.S_IMODE(st.st_mode):04o}){where}", fix)
    return _parse_keys(data, path, config_key)


_KEY_FIX = "put one key per line, each made by: openssl rand -base64 32"


def _parse_keys(data: bytes, path: Path, config_key: str) -> list[SessionKey]:
    keys: list[SessionKey] = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        line = raw.strip()
        if not line or line.startswith(b"#"):
            continue
        try:
            secret = base64.b64decode(line, validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(config_key, f"{path} line {number}: not standard base64",
                              _KEY_FIX) from None
        if len(secret) < MIN_KEY_BYTES:
            raise ConfigError(config_key, f"{path} line {number}: the key is {len(secret)} bytes, "
                              f"at least {MIN_KEY_BYTES} random bytes are needed", _KEY_FIX)
        keys.append(SessionKey.from_secret(secret))
    if not keys:
        raise ConfigError(config_key, f"{path} holds no session key", _KEY_FIX)
    return keys


def issue(keys: SessionKeys, *, target: str, sub: str, via: Via, typ: TokenType, uh: str,
          lifetime: float, now: float) -> str:
    """A local token for ``sub`` on ``target``, signed with the signing key.

    ``iat`` is ``now`` (seconds since the epoch) rounded down and ``exp`` is ``iat`` plus ``lifetime``
    seconds rounded down, both integers. Raises ValueError for an unknown ``via`` or ``typ``, a
    lifetime under one second, or a token longer than :data:`MAX_TOKEN_BYTES` (a very long ``sub``).
    """
    if via not in VIAS or typ not in TOKEN_TYPES:
        raise ValueError(f"unknown via {via!r} or typ {typ!r}")
    if lifetime < 1:
        raise ValueError("a local token lives at least one second")
    key = keys.signing
    iat = math.floor(now)
    claims = {"iss": ISSUER, "aud": target, "sub": sub, "iat": iat, "exp": iat + math.floor(lifetime),
              "jti": secrets.token_urlsafe(16), "kid": key.kid, "typ": typ, "via": via, "uh": uh}
    token = jwt.encode(claims, key.secret, algorithm=ALGORITHM, headers={"kid": key.kid})
    if len(token) > MAX_TOKEN_BYTES:
        raise ValueError(f"the local token would be longer than {MAX_TOKEN_BYTES} bytes")
    return token


def verify(keys: SessionKeys, token: str, *, target: str, typ: TokenType, via: Via,
           now: float) -> LocalClaims:
    """The claims of ``token`` if it is a valid local ``typ`` token for ``target`` on a ``via`` listener.

    ``now`` is seconds since the epoch. Raises LocalTokenRejected with a short reason otherwise (the
    rules are in the module docstring).
    """
    if len(token) > MAX_TOKEN_BYTES or not token.isascii():
        raise LocalTokenRejected("too long or not ASCII")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise LocalTokenRejected("malformed") from None
    if header.get("alg") != ALGORITHM:
        raise LocalTokenRejected("wrong algorithm")
    kid = header.get("kid")
    key = keys.find(kid) if isinstance(kid, str) else None
    if key is None:
        raise LocalTokenRejected("unknown key id")
    try:
        # Only the signature is pyjwt's to check: it would read the real clock for exp and iat, and
        # it accepts an aud list; the claims are checked below, against ``now``.
        payload: dict[str, Any] = jwt.decode(
            token, key.secret, algorithms=[ALGORITHM],
            options={"verify_signature": True, "verify_exp": False, "verify_iat": False,
                     "verify_nbf": False, "verify_aud": False, "verify_iss": False,
                     "verify_sub": False, "verify_jti": False, "require": list(CLAIMS)},
        )
    except jwt.MissingRequiredClaimError as exc:
        raise LocalTokenRejected(f"missing claim {exc.claim}") from None
    except jwt.InvalidSignatureError:
        raise LocalTokenRejected("bad signature") from None
    except jwt.PyJWTError:
        raise LocalTokenRejected("malformed") from None
    return _check_claims(payload, kid=key.kid, target=target, typ=typ, via=via, now=now)


def _check_claims(payload: dict[str, Any], *, kid: str, target: str, typ: TokenType, via: Via,
                  now: float) -> LocalClaims:
    for name in ("iat", "exp"):
        if type(payload[name]) is not int:
            raise LocalTokenRejected(f"claim {name} is not an integer")
    for name in ("iss", "aud", "sub", "jti", "kid", "typ", "via", "uh"):
        if not isinstance(payload[name], str):
            raise LocalTokenRejected(f"claim {name} is not a string")
    if payload["iss"] != ISSUER:
        raise LocalTokenRejected("wrong issuer")
    if payload["aud"] != target:
        raise LocalTokenRejected("wrong audience")
    if payload["kid"] != kid:
        raise LocalTokenRejected("key id differs from the header's")
    if payload["typ"] != typ:
        raise LocalTokenRejected(f"not an {typ} token" if typ == "access" else f"not a {typ} token")
    if payload["via"] != via:
        raise LocalTokenRejected(f"issued on another listener ({payload['via'][:8]!r})")
    if not payload["sub"] or not payload["jti"]:
        raise LocalTokenRejected("empty sub or jti")
    if now > payload["exp"] + LEEWAY:
        raise LocalTokenRejected("expired")
    if payload["iat"] > now + LEEWAY:
        raise LocalTokenRejected("issued in the future")
    return LocalClaims(sub=payload["sub"], aud=payload["aud"], iat=payload["iat"],
                       exp=payload["exp"], jti=payload["jti"], kid=kid, typ=typ, via=via,
                       uh=payload["uh"])


class RevokedIds:
    """Local refresh ids revoked on this replica, each remembered until it expires (SPEC §9.3).

    Memory is bounded: an entry is dropped once its token could no longer verify (``exp`` plus
    :data:`LEEWAY`), and beyond ``max_entries`` the entry closest to expiry goes first. ``now`` is
    seconds since the epoch, passed to every call.
    """

    def __init__(self, *, max_entries: int = MAX_REVOKED) -> None:
        self.max_entries = max_entries
        self._until: dict[str, int] = {}
        self._heap: list[tuple[int, str]] = []

    def __len__(self) -> int:
        return len(self._until)

    def revoke(self, claims: LocalClaims, now: float) -> None:
        """Remember ``claims.jti`` as revoked until ``claims.exp`` (plus leeway) has passed."""
        self._prune(now)
        until = claims.exp + LEEWAY
        if until < now or self._until.get(claims.jti, -1) >= until:
            return
        while len(self._until) >= self.max_entries:
            self._drop_first()
        self._until[claims.jti] = until
        heapq.heappush(self._heap, (until, claims.jti))

    def is_revoked(self, jti: str, now: float) -> bool:
        """True when ``jti`` was revoked and its token has not yet expired."""
        self._prune(now)
        return jti in self._until

    def _prune(self, now: float) -> None:
        while self._heap and self._heap[0][0] < now:
            self._drop_first()

    def _drop_first(self) -> None:
        until, jti = heapq.heappop(self._heap)
        if self._until.get(jti) == until:
            del self._until[jti]
