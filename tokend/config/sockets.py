"""The settings of a Unix socket tokend serves, in ``[server]`` and in each ``[[proxies]]`` table.

Its path (absolute, and short enough for ``sun_path``), its mode and group, and the allow-lists of
uids and gids. Every error is a :class:`~tokend.errors.ConfigError` naming the key
(``server.socket_mode``, ``proxies[0].allowed_gids[1]``) and the fix.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from tokend.errors import ConfigError
from tokend.values import as_abs_path, as_group_name, as_id_set, as_mode

# The longest a Unix socket path can be (sun_path is 108 bytes including the terminating NUL).
MAX_SOCKET_PATH = 107


def socket_path(value: object, key: str, example: str) -> Path:
    """The socket path at ``key``: absolute, at most MAX_SOCKET_PATH bytes; ``example`` is a path
    the error's fix suggests. Raises ConfigError."""
    path = as_abs_path(value, key)
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise ConfigError(key, f"longer than {MAX_SOCKET_PATH} bytes, the limit of a Unix socket",
                          f"use a shorter path, e.g. {example}")
    return path


def mode_and_group(data: Mapping[str, object], prefix: str,
                   default_mode: int) -> tuple[int, str | None]:
    """``socket_mode`` (else ``default_mode``) and ``socket_group`` (else None) of the table at
    ``prefix``. Raises ConfigError."""
    mode = as_mode(data["socket_mode"], f"{prefix}.socket_mode") if "socket_mode" in data \
        else default_mode
    group = as_group_name(data["socket_group"], f"{prefix}.socket_group") \
        if "socket_group" in data else None
    return mode, group


def allow_lists(data: Mapping[str, object], prefix: str, uids: frozenset[int],
                gids: frozenset[int]) -> tuple[frozenset[int], frozenset[int]]:
    """``allowed_uids`` and ``allowed_gids`` of the table at ``prefix``, each absent one
    ``uids``/``gids``; names are looked up now. Raises ConfigError."""
    if "allowed_uids" in data:
        uids = as_id_set(data["allowed_uids"], f"{prefix}.allowed_uids", "uid")
    if "allowed_gids" in data:
        gids = as_id_set(data["allowed_gids"], f"{prefix}.allowed_gids", "gid")
    return uids, gids
