"""The config file into a :class:`Config`: reading the TOML, its top-level tables, the list of
targets. Every error names its key path and the fix.

:func:`load_config` validates the file only; the secrets it names are read by
:func:`check_secrets` (and before every login), so a reload can be validated on its own.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import cast

from tokend.config.keys import LOG_KEYS, METRICS_KEYS, SERVER_KEYS, TOP_KEYS, check_keys
from tokend.config.model import (
    LOG_FORMATS,
    LOG_LEVELS,
    Config,
    LogConfig,
    MetricsConfig,
    ServerConfig,
    TargetConfig,
)
from tokend.config.target import parse_target
from tokend.errors import ConfigError
from tokend.secrets import read_secret
from tokend.values import (
    as_abs_path,
    as_choice,
    as_group_name,
    as_id_set,
    as_int,
    as_mode,
    as_string,
    quoted,
    type_name,
)

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_HOSTNAME_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
# The longest a Unix socket path can be (sun_path is 108 bytes including the terminating NUL).
_MAX_SOCKET_PATH = 107
# Connections are file descriptors: beyond this, the limit is a typo (tokend raises its own
# RLIMIT_NOFILE soft limit to fit max_connections, up to the hard limit).
MAX_CONNECTIONS_LIMIT = 1_000_000


def load_config(path: str | Path) -> Config:
    """Read and validate the TOML config at ``path``. Secrets are not read (see check_secrets)."""
    path = Path(path)
    where = str(path)
    try:
        with open(path, "rb") as fh:
            file_mode = stat.S_IMODE(os.fstat(fh.fileno()).st_mode)
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(
            where, "config file not found",
            "create it (config.example.toml documents every key) or pass --config PATH",
        ) from None
    except IsADirectoryError:
        raise ConfigError(where, "is a directory, not a config file", "pass the file") from None
    except OSError as exc:
        raise ConfigError(
            where, f"cannot read the config file: {exc.strerror or exc}",
            "make it readable by tokend's user",
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(where, f"invalid TOML: {exc}", "fix the syntax at that line") from None
    except UnicodeDecodeError:
        raise ConfigError(where, "the config file is not UTF-8 text", "save it as UTF-8") from None
    return parse_config(data, path, file_mode=file_mode)


def parse_config(data: Mapping[str, object], path: Path, *, file_mode: int) -> Config:
    """Validate already-parsed TOML ``data``; ``file_mode`` is the config file's permission bits.

    ``file_mode`` decides whether literal ``password``/``api_key`` values are accepted.
    """
    check_keys(data, "", TOP_KEYS)
    server_data = _table(data, "server")
    metrics_data = _table(data, "metrics")
    log_data = _table(data, "log")
    check_keys(server_data, "server", SERVER_KEYS)
    check_keys(metrics_data, "metrics", METRICS_KEYS)
    check_keys(log_data, "log", LOG_KEYS)
    targets = _targets(data.get("targets"), path, file_mode)
    return Config(
        path=path,
        targets=targets,
        server=_server(server_data, targets),
        metrics=_metrics(metrics_data),
        log=_log(log_data),
    )


def check_secrets(config: Config) -> None:
    """Read every target's secret source once; raises ConfigError naming the first that fails."""
    for target in config.targets:
        read_secret(target.secret)


def _table(data: Mapping[str, object], key: str) -> Mapping[str, object]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(key, f"expected a table, got {type_name(value)}",
                          f"write it as a [{key}] table")
    return cast(Mapping[str, object], value)


def _server(data: Mapping[str, object], targets: Sequence[TargetConfig]) -> ServerConfig:
    socket = ServerConfig.socket
    if "socket" in data:
        socket = as_abs_path(data["socket"], "server.socket")
        if len(os.fsencode(socket)) > _MAX_SOCKET_PATH:
            raise ConfigError(
                "server.socket", f"longer than {_MAX_SOCKET_PATH} bytes, the limit of a Unix socket",
                "use a shorter path, e.g. /run/tokend/tokend.sock",
            )
    socket_mode = as_mode(data["socket_mode"], "server.socket_mode") if "socket_mode" in data \
        else ServerConfig.socket_mode
    group = as_group_name(data["socket_group"], "server.socket_group") \
        if "socket_group" in data else None
    uids = as_id_set(data.get("allowed_uids", []), "server.allowed_uids")
    gids = as_id_set(data.get("allowed_gids", []), "server.allowed_gids")
    names = [t.name for t in targets]
    default: str | None = None
    if "default_target" in data:
        default = as_string(data["default_target"], "server.default_target")
        if default not in names:
            raise ConfigError("server.default_target", f"no target is named {default!r}",
                              f"use one of {quoted(names)}")
    elif len(targets) > 1:
        raise ConfigError("server.default_target", "required when there are two or more targets",
                          f"set it to one of {quoted(names)}")
    total = _limit(data, "max_connections", ServerConfig.max_connections)
    per_uid = _limit(data, "max_connections_per_uid", ServerConfig.max_connections_per_uid)
    if per_uid > total:
        raise ConfigError("server.max_connections_per_uid",
                          f"{per_uid} is more than server.max_connections ({total})",
                          "make it at most max_connections")
    return ServerConfig(
        socket=socket, socket_mode=socket_mode, socket_group=group, allowed_uids=uids,
        allowed_gids=gids, default_target=default, max_connections=total,
        max_connections_per_uid=per_uid,
        socket_mode_set="socket_mode" in data or "socket_group" in data,
    )


def _limit(data: Mapping[str, object], name: str, default: int) -> int:
    """A connection limit of [server]: a whole number from 1 to MAX_CONNECTIONS_LIMIT."""
    value = as_int(data.get(name, default), f"server.{name}")
    if not 1 <= value <= MAX_CONNECTIONS_LIMIT:
        raise ConfigError(f"server.{name}", f"{value} is not between 1 and {MAX_CONNECTIONS_LIMIT}",
                          f"use a number of connections from 1 to {MAX_CONNECTIONS_LIMIT}")
    return value


def _metrics(data: Mapping[str, object]) -> MetricsConfig:
    if "listen" not in data:
        return MetricsConfig()
    key = "metrics.listen"
    listen = as_string(data["listen"], key)
    if listen == "":
        return MetricsConfig(host=None)
    fix = 'write HOST:PORT, e.g. "127.0.0.1:9464" or "[::1]:9464"; "" disables metrics'
    if listen.startswith("["):
        host, sep, port_text = listen[1:].partition("]:")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(key, f"{listen!r} is not [IPV6]:PORT", fix) from None
        if not sep:
            raise ConfigError(key, f"{listen!r} has no port", fix)
    else:
        host, sep, port_text = listen.rpartition(":")
        if not sep or not host:
            raise ConfigError(key, f"{listen!r} is not HOST:PORT", fix)
        if ":" in host:
            raise ConfigError(key, f"{listen!r}: an IPv6 address needs brackets", fix)
        if not _is_ip(host) and not _HOSTNAME_RE.fullmatch(host):
            raise ConfigError(key, f"{host!r} is not a host name or IP address", fix)
    if not port_text.isascii() or not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError(key, f"{port_text!r} is not a port number (0 to 65535)", fix)
    return MetricsConfig(host=host, port=int(port_text))


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _log(data: Mapping[str, object]) -> LogConfig:
    return LogConfig(
        level=as_choice(data.get("level", LogConfig.level), "log.level", LOG_LEVELS),
        format=as_choice(data.get("format", LogConfig.format), "log.format", LOG_FORMATS),
    )


def _targets(value: object, path: Path, file_mode: int) -> tuple[TargetConfig, ...]:
    if value is None or value == []:
        raise ConfigError("targets", "at least one [[targets]] table is required",
                          "add a [[targets]] table for each SDDC Manager")
    if isinstance(value, dict):
        raise ConfigError("targets", "expected an array of tables, got table",
                          "write [[targets]], with double brackets")
    if not isinstance(value, list):
        raise ConfigError("targets", f"expected an array of tables, got {type_name(value)}",
                          "write a [[targets]] table for each SDDC Manager")
    targets: list[TargetConfig] = []
    seen_names: dict[str, str] = {}
    seen_sinks: dict[Path, str] = {}
    for i, item in enumerate(value):
        prefix = f"targets[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(prefix, f"expected a table, got {type_name(item)}",
                              "write each target as a [[targets]] table")
        target = parse_target(item, prefix, path, file_mode)
        if target.name in seen_names:
            raise ConfigError(f"{prefix}.name",
                              f"{target.name!r} is already the name of {seen_names[target.name]}",
                              "give every target a unique name")
        seen_names[target.name] = prefix
        if target.file_sink is not None:
            sink = target.file_sink.path
            if sink in seen_sinks:
                raise ConfigError(f"{prefix}.file_sink.path",
                                  f"{sink} is already the file sink of {seen_sinks[sink]}",
                                  "give every target its own token file")
            seen_sinks[sink] = prefix
        targets.append(target)
    return tuple(targets)
