"""The SDDC Manager facade: local logins on a proxy's listeners, and who may forward (SPEC §9.3, §9.4).

One :class:`Facade` per proxy is both its :class:`~tokend.proxy.seams.LocalLogin` and its
:class:`~tokend.proxy.seams.Authorizer`. What it promises:

- No local login ever reaches the upstream: the three token endpoints are answered here, with
  local tokens (:mod:`~tokend.proxy.localtoken`) signed by the proxy's session key, and the
  consumer's ``Authorization`` header is never looked at on them.
- ``POST /v1/tokens`` on a Unix socket: the peer's uid decides (the gate admitted it), the body is
  ignored, ``sub`` is ``uid:<n>``. On TCP: the body's ``username``/``password`` are checked
  against ``users_file`` (bcrypt, in the thread pool) under the brute-force limits of
  :class:`~tokend.proxy.bruteforce.LoginLimiter`; 401 when wrong, 429 with ``Retry-After`` past
  the limits.
- ``PATCH /v1/tokens/access-token/refresh``: a valid, unrevoked local refresh id (a JSON string
  or bare, under any ``Content-Type``) gets a new local access token as a JSON string; else 404.
  ``DELETE /v1/tokens/refresh-token``: 204, the id revoked on this replica until it expires.
- Forwarding: on a Unix socket the allow-lists decided at accept; on TCP every request needs a
  valid local access token for this target issued on TCP, else 401 ``Unauthorized``.
- A token of a user whose users-file entry changed or went (``uh``) is void everywhere.

Time comes from the clocks given to the constructor (wall clock for tokens, monotonic for limits).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from tokend.config import ProxyConfig
from tokend.errbody import error_response
from tokend.errors import ConfigError
from tokend.logs import get_logger
from tokend.metrics import ProxyMetrics
from tokend.proxy.bruteforce import Attempt, LoginLimiter, LogLimiter, Refused
from tokend.proxy.localtoken import (
    REFRESH_LIFETIME,
    LocalClaims,
    LocalTokenRejected,
    RevokedIds,
    SessionKey,
    SessionKeys,
    TokenType,
    Via,
    issue,
    verify,
)
from tokend.proxy.seams import Caller, LoginBodyRefused, read_login_body
from tokend.proxy.users import UsersFile
from tokend.statefiles import InsecureStateDir

#: The ``uh`` claim of a token issued on a Unix socket: no users-file entry stands behind it (the
#: peer's credentials are checked again at every connection).
UNIX_UH = ""
_NO_STORE = {"Cache-Control": "no-store"}
_LOGIN_FIX = ("Log in with POST /v1/tokens and the username and password of a user of this"
              " proxy's users_file")
log = get_logger()


class Facade:
    """One proxy's local logins and forwarding checks."""

    def __init__(self, config: ProxyConfig, keys: SessionKeys, users: UsersFile | None,
                 metrics: ProxyMetrics, *, state_dir: Path | None = None,
                 limiter: LoginLimiter | None = None, log_limiter: LogLimiter | None = None,
                 revoked: RevokedIds | None = None, wall: Callable[[], float] = time.time,
                 mono: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.keys = keys
        self.users = users
        self.metrics = metrics
        self.state_dir = state_dir  # where a generated session key lives (no session_key_file)
        # Not ``or``: these define __len__, and an empty one is falsy.
        self.limiter = limiter if limiter is not None else LoginLimiter()
        self.log_limiter = log_limiter if log_limiter is not None else LogLimiter()
        self.revoked = revoked if revoked is not None else RevokedIds()
        self._wall = wall
        self._mono = mono
        self._checks: set[asyncio.Future[bool]] = set()

    # -- building and reloading -----------------------------------------------------------------

    @classmethod
    def load(cls, config: ProxyConfig, state_dir: Path, metrics: ProxyMetrics) -> Facade:
        """The facade of ``config``: its session keys and users file read now.

        Raises ConfigError naming the key of a file that cannot be used.
        """
        keys = _load_keys(config, state_dir)
        users = _load_users(config)
        return cls(config, keys, users, metrics,
                   state_dir=None if config.session_key_file else state_dir)

    def successor(self, config: ProxyConfig, state_dir: Path) -> Facade:
        """The facade for ``config`` after a SIGHUP: files whose path is unchanged are kept (and
        re-read by :meth:`check_files`), others read now; the brute-force counts and revoked ids
        carry over. Raises ConfigError naming a new file that cannot be used."""
        old = self.config
        if config.session_key_file is not None:
            same_keys = config.session_key_file == old.session_key_file
        else:
            same_keys = old.session_key_file is None and self.state_dir == state_dir
        keys = self.keys if same_keys else _load_keys(config, state_dir)
        users = self.users if config.users_file == old.users_file else _load_users(config)
        return Facade(config, keys, users, self.metrics,
                      state_dir=None if config.session_key_file else state_dir,
                      limiter=self.limiter, log_limiter=self.log_limiter, revoked=self.revoked,
                      wall=self._wall, mono=self._mono)

    def check_files(self, regenerate: bool = False) -> None:
        """Re-read the session key file and the users file if they changed (every 30 s, SIGHUP).

        A file that changed but cannot be used is logged once; the last good version stays.
        """
        watched: list[tuple[str, Callable[[], bool]]] = [
            ("session_key_file", self.keys.reload_if_changed)]
        if self.users is not None:
            watched.append(("users_file", self.users.reload_if_changed))
        for name, reload in watched:
            try:
                changed = reload()
            except ConfigError as exc:
                log.error("proxy.files_reload_failed", target=self.config.target, key=exc.key,
                          error=str(exc), action="the last good version stays in force")
                continue
            if changed:
                log.info("proxy.files_reloaded", target=self.config.target,
                         key=self.config.key(name))

    # -- LocalLogin -----------------------------------------------------------------------------

    async def create(self, request: web.BaseRequest, caller: Caller) -> web.StreamResponse:
        """``POST /v1/tokens``: 201 and a TokenPair of local tokens, or 401/429."""
        try:
            body = await read_login_body(request)
        except LoginBodyRefused as exc:
            return _body_refused(exc)
        if caller.via == "unix":
            if caller.peer is None:
                self.metrics.login("rejected")
                return _unauthorized("the peer's credentials are unknown")
            return self._token_pair(f"uid:{caller.peer.uid}", "unix", UNIX_UH)
        return await self._tcp_login(body, caller.address or "unknown")

    async def refresh(self, request: web.BaseRequest, caller: Caller) -> web.StreamResponse:
        """``PATCH /v1/tokens/access-token/refresh``: 200 and a new local access token as a JSON
        string, or 404."""
        try:
            body = await read_login_body(request)
        except LoginBodyRefused as exc:
            return _body_refused(exc)
        claims = self._valid(_refresh_id(body), "refresh", caller.via)
        if claims is None:
            return error_response(404, "REFRESH_TOKEN_NOT_FOUND",
                                  "the refresh token is unknown, expired or revoked",
                                  "Log in again with POST /v1/tokens")
        try:
            access = self._issue(claims.sub, claims.via, claims.uh, "access")
        except ValueError:
            return error_response(404, "REFRESH_TOKEN_NOT_FOUND", "the refresh token is unusable",
                                  "Log in again with POST /v1/tokens")
        return web.Response(body=json.dumps(access).encode(), content_type="application/json",
                            headers=_NO_STORE)

    async def revoke(self, request: web.BaseRequest, caller: Caller) -> web.StreamResponse:
        """``DELETE /v1/tokens/refresh-token``: 204; a valid local refresh id is revoked here.

        An id that is not one (or no longer) has nothing to revoke: 204 all the same. The
        upstream's session is never touched.
        """
        try:
            body = await read_login_body(request)
        except LoginBodyRefused as exc:
            return _body_refused(exc)
        claims = self._valid(_refresh_id(body), "refresh", caller.via)
        if claims is not None:
            self.revoked.revoke(claims, self._wall())
        return web.Response(status=204)

    # -- Authorizer -----------------------------------------------------------------------------

    async def authorize(self, request: web.BaseRequest, caller: Caller) -> str | None:
        """``uid:N`` of an admitted Unix peer; on TCP the ``sub`` of a valid local access token
        sent as ``Authorization: Bearer``; None otherwise (401)."""
        if caller.via == "unix":
            return caller.who if caller.peer is not None else None
        values = request.headers.getall("Authorization", [])
        if len(values) != 1:
            return None
        scheme, _, token = values[0].strip().partition(" ")
        if scheme.lower() != "bearer":
            return None
        claims = self._valid(token.strip(), "access", "tcp")
        return claims.sub if claims is not None else None

    # -- the parts ------------------------------------------------------------------------------

    async def _tcp_login(self, body: bytes, address: str) -> web.StreamResponse:
        credentials = _credentials(body)
        users = self.users
        if credentials is None or users is None:
            self.metrics.login("rejected")
            self._log_rejected(None, address, "malformed")
            return _unauthorized('the body must be {"username": ..., "password": ...}')
        user, password = credentials
        admitted = self.limiter.admit(user, address, self._mono())
        if isinstance(admitted, Refused):
            self.metrics.login("rate_limited")
            return error_response(
                429, "TOO_MANY_REQUESTS", f"too many failed logins from {address} in the last"
                " minute", "Wait for the Retry-After interval, then log in with the right"
                " password", headers={"Retry-After": str(admitted.retry_after)})
        ok = await self._check(users, user, password, admitted)
        uh = users.entry_hash(user) if ok else None
        if uh is None:
            self.metrics.login("rejected")
            self._log_rejected(user if users.exists(user) else None, address,
                               "wrong_password" if users.exists(user) else "unknown_user")
            return _unauthorized("wrong user name or password")
        return self._token_pair(user, "tcp", uh)

    async def _check(self, users: UsersFile, user: str, password: str, attempt: Attempt) -> bool:
        """bcrypt in the pool; the limiter hears the outcome even if the consumer goes away."""
        check = asyncio.ensure_future(users.check(user, password))
        self._checks.add(check)

        def finished(done: asyncio.Future[bool]) -> None:
            self._checks.discard(done)
            ok = not done.cancelled() and done.exception() is None and done.result()
            self.limiter.finish(attempt, ok=ok, now=self._mono())

        check.add_done_callback(finished)
        return await asyncio.shield(check)

    def _token_pair(self, sub: str, via: Via, uh: str) -> web.StreamResponse:
        try:
            access = self._issue(sub, via, uh, "access")
            refresh = self._issue(sub, via, uh, "refresh")
        except ValueError:  # a user name too long for a token
            self.metrics.login("rejected")
            return _unauthorized("the user name is too long")
        self.metrics.login("success")
        return web.json_response({"accessToken": access, "refreshToken": {"id": refresh}},
                                 status=201, headers=_NO_STORE)

    def _issue(self, sub: str, via: Via, uh: str, typ: TokenType) -> str:
        lifetime = self.config.local_token_lifetime if typ == "access" else REFRESH_LIFETIME
        return issue(self.keys, target=self.config.target, sub=sub, via=via, typ=typ, uh=uh,
                     lifetime=lifetime, now=self._wall())

    def _valid(self, token: str | None, typ: TokenType, via: Via) -> LocalClaims | None:
        """The claims of ``token`` if it is a valid, current ``typ`` token of this listener kind."""
        if not token:
            return None
        now = self._wall()
        try:
            claims = verify(self.keys, token, target=self.config.target, typ=typ, via=via, now=now)
        except LocalTokenRejected as exc:
            log.debug("proxy.local_token_rejected", target=self.config.target, typ=typ,
                      reason=exc.reason)
            return None
        reason = None
        if typ == "refresh" and self.revoked.is_revoked(claims.jti, now):
            reason = "revoked"
        elif via == "tcp" and (self.users is None or self.users.entry_hash(claims.sub) != claims.uh):
            reason = "the user's users_file entry changed or was removed"
        elif via == "unix" and claims.uh != UNIX_UH:
            reason = "not issued on a Unix socket"
        if reason is not None:
            log.debug("proxy.local_token_rejected", target=self.config.target, typ=typ,
                      reason=reason)
            return None
        return claims

    def _log_rejected(self, user: str | None, address: str, reason: str) -> None:
        """``proxy.login_rejected``, at most once a minute per (user, address); the user is named
        only if it exists (people type passwords into the user field)."""
        if not self.log_limiter.allow(user or f"\0{reason}", address, self._mono()):
            return
        fields: dict[str, Any] = {"target": self.config.target, "address": address,
                                  "reason": reason}
        if user is not None:
            fields["user"] = user
        log.warning("proxy.login_rejected", **fields)


def _load_keys(config: ProxyConfig, state_dir: Path) -> SessionKeys:
    """The session keys: ``session_key_file``, or a key generated under ``state_dir``; a
    ``state_dir`` that cannot be written gives a key in memory, with a warning."""
    if config.session_key_file is not None:
        return SessionKeys.load(config.session_key_file, config.key("session_key_file"))
    try:
        return SessionKeys.generate(state_dir)
    except InsecureStateDir:
        raise  # another user could plant a key and forge tokens: refuse (exit 2)
    except ConfigError as exc:
        log.warning("proxy.session_key_unsaved", target=config.target, error=str(exc),
                    action="local tokens of this proxy are signed with a key kept in memory: a"
                           " restart voids them")
        return SessionKeys([SessionKey.from_secret(secrets.token_bytes(32))])


def _load_users(config: ProxyConfig) -> UsersFile | None:
    if config.users_file is None:
        return None
    return UsersFile.load(config.users_file, config.key("users_file"))


def _credentials(body: bytes) -> tuple[str, str] | None:
    """``username`` and ``password`` of a TokenCreationSpec, or None."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    user, password = data.get("username"), data.get("password")
    if not isinstance(user, str) or not isinstance(password, str) or not user:
        return None
    return user, password


def _refresh_id(body: bytes) -> str | None:
    """The refresh id of a refresh or revoke body: a JSON string, or the bare id."""
    try:
        text = body.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None
    if text.startswith('"'):
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            return None
        return value if isinstance(value, str) else None
    return text


def _unauthorized(message: str) -> web.Response:
    return error_response(401, "Unauthorized", message, _LOGIN_FIX)


def _body_refused(exc: LoginBodyRefused) -> web.Response:
    return error_response(exc.status, "BAD_REQUEST", exc.message,
                          "Send the token endpoints' small JSON bodies whole")
