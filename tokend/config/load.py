"""The config file into a :class:`Config`: reading the TOML, its top-level tables, the list of
targets. Every error names its key path and the fix.

:func:`load_config` validates the file only; the secrets it names are read by
:func:`check_secrets` (and before every login), so a reload can be validated on its own.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path

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
from tokend.config.proxy import parse_proxies
from tokend.config.sockets import allow_lists, mode_and_group, socket_path
from tokend.config.tables import array_of_tables, table
from tokend.config.target import parse_target
from tokend.errors import ConfigError
from tokend.secrets import read_secret
from tokend.values import (
    as_abs_path,
    as_choice,
    as_host_port,
    as_int,
    as_string,
    format_duration,
    parse_duration,
    quoted,
    type_name,
)

# A connection limit beyond this is a typo, not a plan (each connection is a file descriptor).
_MAX_CONNECTIONS_LIMIT = 1_000_000
_MAX_SHUTDOWN_TIMEOUT = 300.0


def load_config(path: str | Path) -> Config:
    """Read and validate the TOML config at ``path``. Secrets are not read (see check_secrets)."""
    path = Path(path)
    where = str(path)
    try:
        with open(path, "rb") as fh:
            file_mode = stat.S_IMODE(os.fstat(fh.fileno()).st_mode)
            text = fh.read().decode("utf-8")
        data = tomllib.loads(text)
    except FileNotFoundError:
        raise ConfigError(
            where, "config file not found",
            f"create it: 'tokend example-config > {where}' writes one that documents every key;"
            " or pass --config PATH",
        ) from None
    except IsADirectoryError:
        raise ConfigError(where, "is a directory, not a config file", "pass the file") from None
    except OSError as exc:
        raise ConfigError(
            where, f"cannot read the config file: {exc.strerror or exc}",
            "make it readable by tokend's user",
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise toml_error(where, text, exc) from None
    except UnicodeDecodeError:
        raise ConfigError(where, "the config file is not UTF-8 text", "save it as UTF-8") from None
    return parse_config(data, path, file_mode=file_mode)


_TOML_WHERE_RE = re.compile(r"\s*\(at (?:line (\d+), column (\d+)|end of document)\)\s*$")
# A file mode written as a bare number: 0660 is not a TOML integer (no leading zeros).
_BARE_MODE_RE = re.compile(r"\s*([A-Za-z0-9_.-]*mode)\s*=\s*(0[0-7]+)\s*(?:#.*)?$")
# A bare word where a value belongs: level = info
_BARE_WORD_RE = re.compile(r"\s*([A-Za-z0-9_.-]+)\s*=\s*([^\s\"'\[{#0-9+-][^\s#]*)\s*(?:#.*)?$")


_TOML_WORDS = ("true", "false", "inf", "nan")


def toml_error(where: str, text: str, exc: tomllib.TOMLDecodeError) -> ConfigError:
    """A TOML syntax error as a ConfigError naming the line, with a hint for the usual mistakes.

    The offending line itself is never quoted: it may hold a literal password.
    """
    message = str(exc)
    match = _TOML_WHERE_RE.search(message)
    reason = message[:match.start()] if match else message
    lines = text.splitlines()
    if match and match.group(1):
        number = int(match.group(1))
        at = f"line {number}, column {match.group(2)}"
        fix = "fix the syntax at that line"
    else:
        number = len(lines)
        at = f"the end of the file (line {number})"
        fix = "fix the syntax at the end of the file"
        if reason.startswith(("Unclosed", "Unterminated", "Expected ']'", "Expected '}'")):
            fix = "a quote, [ or { opened above is never closed: check the lines before it"
    line = lines[number - 1] if 0 < number <= len(lines) else ""
    if (mode := _BARE_MODE_RE.match(line)) is not None:
        fix = f'a file mode is an octal string in quotes: write {mode.group(1)} = "{mode.group(2)}"'
    elif (word := _BARE_WORD_RE.match(line)) is not None and word.group(2) not in _TOML_WORDS:
        fix = f'strings need quotes: write {word.group(1)} = "{word.group(2)}"'
    elif reason.startswith(("Cannot declare", "Cannot overwrite")):
        fix = ("a table or key may appear only once: merge the two; a list of tables is"
               " written [[targets]], with double brackets")
    elif reason.startswith(("Unterminated string", "Illegal character '\\n'")):
        fix = "a string's closing quote is missing on that line"
    elif "{" in line and "}" not in line:
        fix = "an inline table { ... } must be on one line; or write it as a [sub.table]"
    return ConfigError(where, f"invalid TOML at {at}: {reason}", fix)


def parse_config(data: Mapping[str, object], path: Path, *, file_mode: int) -> Config:
    """Validate already-parsed TOML ``data``; ``file_mode`` is the config file's permission bits.

    ``file_mode`` decides whether literal ``password``/``api_key`` values are accepted.
    """
    check_keys(data, "", TOP_KEYS)
    server_data = table(data, "server")
    metrics_data = table(data, "metrics")
    log_data = table(data, "log")
    check_keys(server_data, "server", SERVER_KEYS)
    check_keys(metrics_data, "metrics", METRICS_KEYS)
    check_keys(log_data, "log", LOG_KEYS)
    targets = _targets(data.get("targets"), path, file_mode)
    server = _server(server_data, targets)
    return Config(
        path=path,
        targets=targets,
        server=server,
        metrics=_metrics(metrics_data),
        log=_log(log_data),
        proxies=parse_proxies(data.get("proxies"), server, targets),
    )


def check_secrets(config: Config) -> None:
    """Read every target's secret source once; raises ConfigError naming the first that fails."""
    for target in config.targets:
        read_secret(target.secret)


def _server(data: Mapping[str, object], targets: Sequence[TargetConfig]) -> ServerConfig:
    socket = ServerConfig.socket
    if "socket" in data:
        socket = socket_path(data["socket"], "server.socket", "/run/tokend/tokend.sock")
    socket_mode, group = mode_and_group(data, "server", ServerConfig.socket_mode)
    uids, gids = allow_lists(data, "server", frozenset(), frozenset())
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
    max_connections = _limit(data, "max_connections", ServerConfig.max_connections)
    per_uid = _limit(data, "max_connections_per_uid", ServerConfig.max_connections_per_uid)
    if per_uid > max_connections:
        raise ConfigError("server.max_connections_per_uid",
                          f"{per_uid} is more than server.max_connections ({max_connections})",
                          "lower it, or raise server.max_connections")
    return ServerConfig(
        socket=socket, socket_mode=socket_mode, socket_group=group, allowed_uids=uids,
        allowed_gids=gids, default_target=default,
        socket_mode_set="socket_mode" in data or "socket_group" in data,
        state_dir=_state_dir(data), max_connections=max_connections,
        max_connections_per_uid=per_uid, shutdown_timeout=_shutdown_timeout(data),
    )


def _shutdown_timeout(data: Mapping[str, object]) -> float:
    if "shutdown_timeout" not in data:
        return ServerConfig.shutdown_timeout
    seconds = parse_duration(data["shutdown_timeout"], "server.shutdown_timeout")
    if seconds > _MAX_SHUTDOWN_TIMEOUT:
        raise ConfigError("server.shutdown_timeout", f"{format_duration(seconds)} is longer than"
                          f" {format_duration(_MAX_SHUTDOWN_TIMEOUT)}",
                          'use a few seconds, e.g. "5s"; systemd and Kubernetes kill a process'
                          " that takes longer (TimeoutStopSec=, terminationGracePeriodSeconds)")
    return seconds


def _state_dir(data: Mapping[str, object]) -> Path:
    """``state_dir``; else systemd's ``$STATE_DIRECTORY`` (its first entry); else the default."""
    if "state_dir" in data:
        return as_abs_path(data["state_dir"], "server.state_dir")
    from_systemd = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if from_systemd.startswith("/") and "\0" not in from_systemd:
        return Path(from_systemd.rstrip("/") or "/")
    return ServerConfig.state_dir


def _limit(data: Mapping[str, object], name: str, default: int) -> int:
    key = f"server.{name}"
    if name not in data:
        return default
    value = as_int(data[name], key)
    if not 1 <= value <= _MAX_CONNECTIONS_LIMIT:
        raise ConfigError(key, f"{value} is not between 1 and {_MAX_CONNECTIONS_LIMIT}",
                          f"use a number of connections, e.g. {default}")
    return value


def _metrics(data: Mapping[str, object]) -> MetricsConfig:
    if "listen" not in data:
        return MetricsConfig()
    fix = 'write HOST:PORT, e.g. "127.0.0.1:9464" or "[::1]:9464"; "" disables metrics'
    address = as_host_port(data["listen"], "metrics.listen", fix)
    if address is None:
        return MetricsConfig(host=None)
    return MetricsConfig(host=address[0], port=address[1])


def _log(data: Mapping[str, object]) -> LogConfig:
    return LogConfig(
        level=as_choice(data.get("level", LogConfig.level), "log.level", LOG_LEVELS),
        format=as_choice(data.get("format", LogConfig.format), "log.format", LOG_FORMATS),
    )


def _targets(value: object, path: Path, file_mode: int) -> tuple[TargetConfig, ...]:
    if value is None or value == []:
        raise ConfigError("targets", "at least one [[targets]] table is required",
                          "add a [[targets]] table for each SDDC Manager")
    value = array_of_tables(value, "targets", "write a [[targets]] table for each SDDC Manager")
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
