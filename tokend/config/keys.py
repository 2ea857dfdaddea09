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
               "default_target", "state_dir", "max_connections", "max_connections_per_uid")
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


def check_keys(data: Mapping[str, object], prefix: str, known: Sequence[str]) -> None:
    """Refuse a key ``known`` does not list, suggesting the nearest known one."""
    for key in data:
        if key in known:
            continue
        shown = key if _BARE_KEY_RE.fullmatch(key) else json.dumps(key)
        path = f"{prefix}.{shown}" if prefix else shown
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        if close:
            fix = f"did you mean {close[0]!r}?"
        else:
            fix = f"remove it; known keys here: {', '.join(known)}"
        raise ConfigError(path, "unknown key", fix)
