"""TOML configuration into frozen, typed objects. Every error names its key path and the fix.

:func:`load_config` validates the file only; the secrets it names are read by
:func:`check_secrets` (and before every login), so a reload can be validated on its own.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
import stat
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, cast
from urllib.parse import urlsplit

from tokend import DEFAULT_SOCKET
from tokend.errors import ConfigError
from tokend.secrets import Secret, SecretSource, check_secret_value, read_secret
from tokend.trust import ca_context, read_ca_file
from tokend.values import (
    DURATION_FIX,
    as_abs_path,
    as_bool,
    as_choice,
    as_group_name,
    as_id_set,
    as_int,
    as_mode,
    as_number,
    as_string,
    format_duration,
    normalise_fingerprint,
    parse_duration,
    quoted,
    type_name,
)


@dataclass(frozen=True)
class FileSink:
    """Where a target's token is also written, atomically, for consumers that only read files."""

    path: Path
    mode: int = 0o600
    group: str | None = None
    format: Literal["raw", "json"] = "raw"
    keep_on_exit: bool = False


@dataclass(frozen=True)
class TargetConfig:
    """One SDDC Manager and how tokend keeps its token."""

    name: str
    url: str  # normalised: no trailing slash
    username: str | None
    password: SecretSource | None  # exactly one of password / api_key
    api_key: SecretSource | None
    ca_file: Path | None = None
    tls_fingerprint: tuple[str, ...] = ()  # normalised "sha256:AB:CD:..." upper-case hex
    verify_tls: bool = True
    refresh_at: float = 0.7
    jitter: float = 0.05
    request_timeout: float = 15.0
    max_backoff: float = 300.0
    max_login_failures: int = 3
    login_retry_interval: float = 60.0
    revoke_on_exit: bool = False
    file_sink: FileSink | None = None
    max_token_lifetime: float = 7200.0  # seconds; a longer tracked lifetime is cut to it (SPEC §8.1)

    @property
    def secret(self) -> SecretSource:
        """The one secret source of this target."""
        src = self.password if self.password is not None else self.api_key
        assert src is not None
        return src

    def key(self, name: str) -> str:
        """The config key path of this target's ``name``, e.g. ``targets[1].ca_file``, for errors."""
        return f"{self.secret.key.rpartition('.')[0]}.{name}"

    def connection_key(self) -> tuple[object, ...]:
        """What must stay equal on reload for the target to keep its token and session."""
        return (self.url, self.username, self.ca_file, self.tls_fingerprint, self.verify_tls,
                self.request_timeout)


@dataclass(frozen=True)
class ServerConfig:
    """The Unix socket consumers connect to, and who may."""

    socket: Path = Path(DEFAULT_SOCKET)
    socket_mode: int = 0o660
    socket_group: str | None = None
    allowed_uids: frozenset[int] = frozenset()
    allowed_gids: frozenset[int] = frozenset()
    default_target: str | None = None
    socket_mode_set: bool = False  # whether the file set it (a warning under socket activation)


@dataclass(frozen=True)
class MetricsConfig:
    """The TCP listener for /metrics, /healthz and /readyz; ``None`` host means disabled."""

    host: str | None = "127.0.0.1"
    port: int = 9464


@dataclass(frozen=True)
class LogConfig:
    """Log level and rendering."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console", "auto"] = "auto"


@dataclass(frozen=True)
class Config:
    """The whole, validated configuration."""

    path: Path
    targets: tuple[TargetConfig, ...]
    server: ServerConfig = field(default_factory=ServerConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    log: LogConfig = field(default_factory=LogConfig)

    @property
    def default_target(self) -> str:
        """The target `GET /v1/token` serves."""
        return self.server.default_target or self.targets[0].name

    def target(self, name: str) -> TargetConfig | None:
        """The target called ``name``, if configured."""
        return next((t for t in self.targets if t.name == name), None)


# --- the keys of each table -------------------------------------------------------------------

TOP_KEYS = ("server", "metrics", "log", "targets")
SERVER_KEYS = ("socket", "socket_mode", "socket_group", "allowed_uids", "allowed_gids",
               "default_target")
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

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("json", "console", "auto")
SINK_FORMATS = ("raw", "json")

_NAME_RE = re.compile(r"[a-z0-9_.-]+")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_HOSTNAME_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")

# The longest a Unix socket path can be (sun_path is 108 bytes including the terminating NUL).
_MAX_SOCKET_PATH = 107
_MAX_DURATION = 86400.0


# --- public API -------------------------------------------------------------------------------


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
    _check_keys(data, "", TOP_KEYS)
    server_data = _table(data, "server")
    metrics_data = _table(data, "metrics")
    log_data = _table(data, "log")
    _check_keys(server_data, "server", SERVER_KEYS)
    _check_keys(metrics_data, "metrics", METRICS_KEYS)
    _check_keys(log_data, "log", LOG_KEYS)
    targets = _parse_targets(data.get("targets"), path, file_mode)
    return Config(
        path=path,
        targets=targets,
        server=_parse_server(server_data, targets),
        metrics=_parse_metrics(metrics_data),
        log=_parse_log(log_data),
    )


def check_secrets(config: Config) -> None:
    """Read every target's secret source once; raises ConfigError naming the first that fails."""
    for target in config.targets:
        read_secret(target.secret)


def describe(config: Config) -> list[str]:
    """What tokend would do with ``config``, one line per fact, for ``tokend check-config``."""
    server = config.server
    lines = [f"config: {config.path}"]
    socket_line = f"socket: {server.socket} (mode {server.socket_mode:04o}"
    socket_line += f", group {server.socket_group})" if server.socket_group else ")"
    lines.append(socket_line)
    if server.allowed_uids or server.allowed_gids:
        uids = ", ".join(str(u) for u in sorted(server.allowed_uids)) or "none"
        gids = ", ".join(str(g) for g in sorted(server.allowed_gids)) or "none"
        lines.append(f"allowed peers: uids {uids}; gids {gids} (a peer in either list is let in)")
    else:
        lines.append("allowed peers: anyone who can open the socket (allow-lists are empty)")
    if config.metrics.host is None:
        lines.append("metrics: disabled")
    else:
        lines.append(f"metrics: http://{_host_port(config.metrics.host, config.metrics.port)}"
                     "/metrics (also /healthz, /readyz)")
    lines.append(f"log: level {config.log.level}, format {config.log.format}")
    lines.append(f"default target: {config.default_target}")
    for t in config.targets:
        lines.append(f"target {t.name}:")
        lines.extend(f"  {line}" for line in _describe_target(t))
    return lines


# --- sections ---------------------------------------------------------------------------------


def _parse_server(data: Mapping[str, object], targets: Sequence[TargetConfig]) -> ServerConfig:
    socket = Path(DEFAULT_SOCKET)
    if "socket" in data:
        socket = as_abs_path(data["socket"], "server.socket")
        if len(os.fsencode(socket)) > _MAX_SOCKET_PATH:
            raise ConfigError(
                "server.socket", f"longer than {_MAX_SOCKET_PATH} bytes, the limit of a Unix socket",
                "use a shorter path, e.g. /run/tokend/tokend.sock",
            )
    socket_mode = as_mode(data["socket_mode"], "server.socket_mode") if "socket_mode" in data \
        else 0o660
    group = as_group_name(data["socket_group"], "server.socket_group") if "socket_group" in data \
        else None
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
    return ServerConfig(
        socket=socket, socket_mode=socket_mode, socket_group=group, allowed_uids=uids,
        allowed_gids=gids, default_target=default,
        socket_mode_set="socket_mode" in data or "socket_group" in data,
    )


def _parse_metrics(data: Mapping[str, object]) -> MetricsConfig:
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


def _parse_log(data: Mapping[str, object]) -> LogConfig:
    level = as_choice(data.get("level", "info"), "log.level", LOG_LEVELS)
    fmt = as_choice(data.get("format", "auto"), "log.format", LOG_FORMATS)
    return LogConfig(
        level=cast(Literal["debug", "info", "warning", "error"], level),
        format=cast(Literal["json", "console", "auto"], fmt),
    )


def _parse_targets(value: object, path: Path, file_mode: int) -> tuple[TargetConfig, ...]:
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
        target = _parse_target(item, prefix, path, file_mode)
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


def _parse_target(data: Mapping[str, object], prefix: str, path: Path,
                  file_mode: int) -> TargetConfig:
    _check_keys(data, prefix, TARGET_KEYS)

    def k(name: str) -> str:
        return f"{prefix}.{name}"

    for required in ("name", "url"):
        if required not in data:
            example = '"sfo-vcf01"' if required == "name" else '"https://sddc-manager.example.com"'
            raise ConfigError(k(required), "missing", f"add {required} = {example}")
    name = as_string(data["name"], k("name"))
    if not _NAME_RE.fullmatch(name) or set(name) == {"."}:
        raise ConfigError(k("name"), f"{name!r} is not a valid target name",
                          "use lower-case letters, digits, '-', '_' and '.' only")
    url = _parse_url(data["url"], k("url"))

    password, api_key = _parse_secret_source(data, prefix, path, file_mode)
    username: str | None = None
    if password is not None:
        if "username" not in data:
            raise ConfigError(k("username"), f"required with {password.key.rpartition('.')[2]}",
                              'add username = "administrator@vsphere.local"')
        username = as_string(data["username"], k("username"))
        if username == "" or username != username.strip():
            raise ConfigError(k("username"), "empty or with surrounding spaces",
                              "write the user name exactly")
    elif "username" in data:
        raise ConfigError(k("username"), "not used with an API key",
                          "remove username, or use a password_* source instead")

    ca_file = _ca_file(data["ca_file"], k("ca_file")) if "ca_file" in data else None
    pins = _fingerprints(data.get("tls_fingerprint", []), k("tls_fingerprint"))
    verify_tls = as_bool(data.get("verify_tls", True), k("verify_tls"))
    if ca_file is not None and pins:
        raise ConfigError(
            k("ca_file"),
            f"cannot be combined with {k('tls_fingerprint')}: a pin replaces chain verification,"
            " so the CA file would never be used",
            "keep tls_fingerprint and remove ca_file, or keep ca_file and remove tls_fingerprint",
        )
    if not verify_tls and ca_file is not None:
        raise ConfigError(k("ca_file"), "has no effect with verify_tls = false",
                          "remove ca_file, or verify_tls = false")

    refresh_at = as_number(data.get("refresh_at", 0.7), k("refresh_at"))
    if not 0 < refresh_at < 1:
        raise ConfigError(k("refresh_at"), f"{refresh_at!r} is not between 0 and 1 (exclusive)",
                          "use a fraction of the token lifetime, e.g. 0.7")
    jitter = as_number(data.get("jitter", 0.05), k("jitter"))
    if not 0 <= jitter < 0.5:
        raise ConfigError(k("jitter"), f"{jitter!r} is not in [0, 0.5)",
                          "use a small fraction of the token lifetime, e.g. 0.05")
    if not refresh_at - jitter > 0 or not refresh_at + jitter < 1:
        raise ConfigError(
            k("jitter"), f"refresh_at ± jitter ({refresh_at:g} ± {jitter:g}) leaves (0, 1)",
            "lower jitter, or move refresh_at away from 0 and 1",
        )

    max_login_failures = as_int(data.get("max_login_failures", 3), k("max_login_failures"))
    if max_login_failures < 1:
        raise ConfigError(k("max_login_failures"), f"{max_login_failures} is less than 1",
                          "use 1 or more (vCenter SSO locks an account after 5 failures)")

    return TargetConfig(
        name=name,
        url=url,
        username=username,
        password=password,
        api_key=api_key,
        ca_file=ca_file,
        tls_fingerprint=pins,
        verify_tls=verify_tls,
        refresh_at=float(refresh_at),
        jitter=float(jitter),
        request_timeout=_positive_duration(data, "request_timeout", prefix, 15.0),
        max_backoff=_positive_duration(data, "max_backoff", prefix, 300.0),
        max_login_failures=max_login_failures,
        login_retry_interval=_positive_duration(data, "login_retry_interval", prefix, 60.0),
        revoke_on_exit=as_bool(data.get("revoke_on_exit", False), k("revoke_on_exit")),
        file_sink=_file_sink(data["file_sink"], k("file_sink")) if "file_sink" in data else None,
        max_token_lifetime=_positive_duration(data, "max_token_lifetime", prefix, 7200.0),
    )


def _parse_url(value: object, key: str) -> str:
    text = as_string(value, key)
    fix = 'use the SDDC Manager base URL, e.g. "https://sfo-vcf01.rainpole.io"'
    if text != text.strip() or any(c.isspace() or ord(c) < 32 for c in text):
        raise ConfigError(key, "contains spaces or control characters", fix)
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(key, f"{text!r} is not a valid URL: {exc}", fix) from None
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        raise ConfigError(key, f"{text!r} is not an https:// URL", fix)
    host = parts.hostname
    if not host:
        raise ConfigError(key, f"{text!r} has no host", fix)
    if parts.username is not None or parts.password is not None:
        raise ConfigError(key, "must not carry a user name or password",
                          "remove them from the URL; use username and password_file")
    if parts.query or parts.fragment or text.endswith(("?", "#")):
        raise ConfigError(key, "must not have a query or fragment", "remove the '?...' or '#...'")
    if port == 0:
        raise ConfigError(key, "port 0 is not a valid port", "remove the port or fix it")
    if scheme == "http" and not _is_loopback(host):
        raise ConfigError(key, "http:// is only allowed for a loopback host", "use https://")
    return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def _parse_secret_source(
    data: Mapping[str, object], prefix: str, path: Path, file_mode: int,
) -> tuple[SecretSource | None, SecretSource | None]:
    """The one secret source of a target, as (password, api_key)."""
    given = [name for name in SECRET_KEYS if name in data]
    choices = " | ".join(SECRET_KEYS)
    if not given:
        raise ConfigError(prefix, "no secret source",
                          f"set exactly one of {choices}")
    if len(given) > 1:
        raise ConfigError(prefix, f"more than one secret source ({', '.join(given)})",
                          f"keep exactly one of {choices}")
    name = given[0]
    key = f"{prefix}.{name}"
    value = data[name]
    source: SecretSource
    if name.endswith("_file"):
        source = SecretSource("file", str(as_abs_path(value, key)), key)
    elif name.endswith("_env"):
        var = as_string(value, key)
        if not _ENV_NAME_RE.fullmatch(var):
            raise ConfigError(key, f"{var!r} is not an environment variable name",
                              "use letters, digits and '_', e.g. TOKEND_PASSWORD")
        source = SecretSource("env", var, key)
    elif name.endswith("_credential"):
        cred = as_string(value, key)
        if cred in ("", ".", "..") or "/" in cred or "\0" in cred:
            raise ConfigError(key, f"{cred!r} is not a credential name",
                              "use the plain name given to LoadCredential= in the unit")
        source = SecretSource("credential", cred, key)
    else:
        literal = as_string(value, key)
        if file_mode & 0o777 not in (0o600, 0o400):
            file_key = name + "_file"
            raise ConfigError(
                key,
                f"a literal secret is refused because {path} is mode {file_mode & 0o777:04o}, "
                "readable by others",
                f"chmod 600 {path}, or use {file_key}",
            )
        check_secret_value(literal, key)
        source = SecretSource("literal", str(path), key, literal=Secret(literal))
    if name.startswith("password"):
        return source, None
    return None, source


def _file_sink(value: object, key: str) -> FileSink:
    if not isinstance(value, dict):
        raise ConfigError(key, f"expected a table, got {type_name(value)}",
                          'write file_sink = { path = "/run/tokend/NAME.token" }')
    _check_keys(value, key, FILE_SINK_KEYS)
    if "path" not in value:
        raise ConfigError(f"{key}.path", "missing", 'add path = "/run/tokend/NAME.token"')
    path = as_abs_path(value["path"], f"{key}.path")
    mode = as_mode(value.get("mode", "0600"), f"{key}.mode")
    if mode & 0o007:
        raise ConfigError(f"{key}.mode", f"{mode:04o} lets every local user read the token",
                          'use "0600", or "0640" with group')
    group = as_group_name(value["group"], f"{key}.group") if "group" in value else None
    fmt = as_choice(value.get("format", "raw"), f"{key}.format", SINK_FORMATS)
    return FileSink(
        path=path, mode=mode, group=group, format=cast(Literal["raw", "json"], fmt),
        keep_on_exit=as_bool(value.get("keep_on_exit", False), f"{key}.keep_on_exit"),
    )


def _ca_file(value: object, key: str) -> Path:
    """An absolute path to a CA file that loads now, the way the upstream client will load it."""
    path = as_abs_path(value, key)
    ca_context(read_ca_file(path, key), path, key)
    return path


def _fingerprints(value: object, key: str) -> tuple[str, ...]:
    items: list[tuple[object, str]]
    if isinstance(value, str):
        items = [(value, key)]
    elif isinstance(value, list):
        items = [(v, f"{key}[{i}]") for i, v in enumerate(value)]
    else:
        raise ConfigError(key, f"expected a string or an array of strings, got {type_name(value)}",
                          'write "sha256:AB:CD:..." or a list of them')
    pins: list[str] = []
    for item, item_key in items:
        pin = normalise_fingerprint(as_string(item, item_key), item_key)
        if pin not in pins:
            pins.append(pin)
    return tuple(pins)


def _positive_duration(data: Mapping[str, object], name: str, prefix: str,
                       default: float) -> float:
    key = f"{prefix}.{name}"
    if name not in data:
        return default
    seconds = parse_duration(data[name], key)
    if seconds <= 0:
        raise ConfigError(key, "must be longer than zero", DURATION_FIX)
    if seconds > _MAX_DURATION:
        raise ConfigError(key, f"{format_duration(seconds)} is longer than a day",
                          "use a duration of at most 24h")
    return seconds


def _check_keys(data: Mapping[str, object], prefix: str, known: Sequence[str]) -> None:
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


def _table(data: Mapping[str, object], key: str) -> Mapping[str, object]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(key, f"expected a table, got {type_name(value)}",
                          f"write it as a [{key}] table")
    return cast(Mapping[str, object], value)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _is_loopback(host: str) -> bool:
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _describe_target(t: TargetConfig) -> list[str]:
    lines = [f"url: {t.url}"]
    if t.password is not None:
        lines.append(f"auth: user {t.username} with the password from "
                     f"{t.password.describe()} ({t.password.key.rpartition('.')[2]})")
    else:
        src = t.secret
        lines.append(f"auth: API key from {src.describe()} ({src.key.rpartition('.')[2]})")
    lines.append(f"tls: {_describe_tls(t)}")
    lines.append(f"refresh: at {t.refresh_at * 100:g}% ± {t.jitter * 100:g}% of the token lifetime")
    lines.append(f"token lifetime: at most {format_duration(t.max_token_lifetime)} is trusted; a"
                 " longer one is cut to it (max_token_lifetime)")
    lines.append(
        f"timeouts: request {format_duration(t.request_timeout)}, "
        f"backoff up to {format_duration(t.max_backoff)}"
    )
    lines.append(
        f"lockout guard: logins stop after {t.max_login_failures} rejection(s) of the same "
        f"secret, at least {format_duration(t.login_retry_interval)} apart"
    )
    lines.append("on exit: " + ("revoke the refresh token" if t.revoke_on_exit
                                else "keep the refresh token (no revoke)"))
    if t.file_sink is None:
        lines.append("file sink: none")
    else:
        sink = t.file_sink
        group = f", group {sink.group}" if sink.group else ""
        keep = "kept" if sink.keep_on_exit else "removed"
        lines.append(f"file sink: {sink.path} (mode {sink.mode:04o}{group}, format {sink.format}, "
                     f"{keep} on exit)")
    return lines


def _describe_tls(t: TargetConfig) -> str:
    """Exactly what is verified on the connection to ``t``, in the order the client decides it."""
    if t.url.startswith("http://"):
        unused = [name for name, set_ in (("ca_file", t.ca_file is not None),
                                          ("tls_fingerprint", bool(t.tls_fingerprint)),
                                          ("verify_tls", not t.verify_tls)) if set_]
        note = f" ({', '.join(unused)} not used)" if unused else ""
        return f"plain HTTP, no TLS (loopback only){note}"
    if t.tls_fingerprint:
        # aiohttp checks a pin instead of the chain and the host name, never in addition.
        return (f"leaf certificate pinned to {', '.join(t.tls_fingerprint)}, no chain verification,"
                " no hostname check")
    if not t.verify_tls:
        return ("certificate verification OFF (verify_tls = false): any certificate is accepted,"
                " no hostname check")
    if t.ca_file is not None:
        return (f"verify against the system CAs and the CA file {t.ca_file} (re-read when it"
                " changes), with hostname check")
    return "verify against the system CAs, with hostname check"
