"""The keys each table of the config file may hold, and the refusal of any other key.

An unknown key is an error that names its path and suggests the nearest known key, so a typo
such as ``refresh_att`` is caught at load time instead of silently falling back to a default.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping, Sequence

from tokend.errors import ConfigError

TOP_KEYS = ("server", "metrics", "log", "targets", "proxies")
SERVER_KEYS = ("socket", "socket_mode", "socket_group", "allowed_uids", "allowed_gids",
               "default_target", "state_dir", "max_connections", "max_connections_per_uid",
               "shutdown_timeout")
METRICS_KEYS = ("listen",)
LOG_KEYS = ("level", "format")
PASSWORD_KEYS = ("password_file", "password_env", "password_credential", "password")
API_KEY_KEYS = ("api_key_file", "api_key_env", "api_key_credential", "api_key")
SECRET_KEYS = PASSWORD_KEYS + API_KEY_KEYS
TARGET_KEYS = ("name", "url", "username", *SECRET_KEYS, "ca_file", "tls_fingerprint",
               "verify_tls", "refresh_at", "jitter", "request_timeout", "max_backoff",
               "max_login_failures", "login_retry_interval", "revoke_on_exit", "file_sink",
               "max_token_lifetime")
FILE_SINK_KEYS = ("path", "mode", "group", "format", "keep_on_exit")
PROXY_KEYS = ("target", "socket", "socket_mode", "socket_group", "allowed_uids", "allowed_gids",
              "listen", "tls_cert_file", "tls_key_file", "tls_names", "users_file",
              "session_key_file", "local_token_lifetime", "max_upstream_connections",
              "response_timeout")

_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")
_WORD_RE = re.compile(r"[a-z0-9]+")
# Words people write for the words tokend's keys use: a key is compared word by word after these
# are mapped, so ``allowed_groups`` is nearest ``allowed_gids``, not the more alike ``allowed_uids``.
_SYNONYMS = {
    "group": "gid", "groups": "gid", "gids": "gid", "user": "uid", "users": "uid", "uids": "uid",
    "perm": "mode", "perms": "mode", "permission": "mode", "permissions": "mode", "chmod": "mode",
    "path": "file", "filename": "file", "passwd": "password", "pass": "password", "pw": "password",
    "apikey": "api", "certificate": "cert", "timeouts": "timeout", "grace": "timeout",
    "address": "listen", "addr": "listen", "bind": "listen", "host": "url", "endpoint": "url",
    "sock": "socket", "directory": "dir", "folder": "dir", "retries": "failures",
    "attempts": "failures", "pin": "fingerprint", "pins": "fingerprint", "ssl": "tls",
    "fmt": "format", "lvl": "level", "loglevel": "level",
}


def check_keys(data: Mapping[str, object], prefix: str, known: Sequence[str]) -> None:
    """Refuse a key ``known`` does not list, suggesting the nearest known one."""
    for key in data:
        if key in known:
            continue
        shown = key if _BARE_KEY_RE.fullmatch(key) else json.dumps(key)
        path = f"{prefix}.{shown}" if prefix else shown
        close = nearest_key(key, known)
        if close is not None:
            fix = f"did you mean {close!r}?"
        else:
            fix = f"remove it; known keys here: {', '.join(known)}"
        raise ConfigError(path, "unknown key", fix)


def nearest_key(key: str, known: Sequence[str]) -> str | None:
    """The known key ``key`` was most likely meant to be, or None when none is close.

    Keys are compared by their words, each mapped through the synonyms people use (``groups`` is
    ``gid``), and then letter by letter; the word comparison decides, the letters break ties.
    """
    words = _words(key)
    best: tuple[float, float, str] | None = None
    for candidate in known:
        by_words = difflib.SequenceMatcher(None, words, _words(candidate)).ratio()
        by_letters = difflib.SequenceMatcher(None, key.lower(), candidate).ratio()
        score = (max(by_words, by_letters), by_letters, candidate)
        if best is None or score[:2] > best[:2]:
            best = score
    if best is None or best[0] < 0.6:
        return None
    return best[2]


def _words(key: str) -> list[str]:
    return [_SYNONYMS.get(w, w) for w in _WORD_RE.findall(key.lower())]
