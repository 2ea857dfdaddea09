"""The ``[[proxies]]`` tables (SPEC §9) into :class:`ProxyConfig`, checked as a whole.

Each table alone is checked first (types, ranges, which keys go together), then the list: every
proxy names a configured target, at most one proxy per target (socket activation matches a proxy's
socket by its target's name), and no two sockets of tokend share a path. Every error names the key
path (``proxies[0].target``) and the fix. Files named here are not read, except the TLS
certificate and key, which are loaded the way the listener will load them.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Mapping, Sequence
from pathlib import Path

from tokend.config.keys import PROXY_KEYS, check_keys
from tokend.config.model import ProxyConfig, ServerConfig, TargetConfig
from tokend.config.sockets import allow_lists, mode_and_group, socket_path
from tokend.config.tables import array_of_tables
from tokend.errors import ConfigError
from tokend.values import (
    DURATION_FIX,
    as_abs_path,
    as_host_port,
    as_int,
    as_string,
    format_duration,
    is_loopback,
    parse_duration,
    quoted,
    type_name,
)

MIN_LOCAL_TOKEN_LIFETIME = 25 * 60.0  # PowerVCF refreshes when fewer than 2 minutes are left
MAX_LOCAL_TOKEN_LIFETIME = 24 * 3600.0
MAX_UPSTREAM_CONNECTIONS = 10_000
MAX_RESPONSE_TIMEOUT = 24 * 3600.0
_DNS_NAME_RE = re.compile(
    r"(?:\*\.)?[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*")
_LISTEN_FIX = 'write HOST:PORT, e.g. "127.0.0.1:9443" or "[::1]:9443"'


def parse_proxies(value: object, server: ServerConfig,
                  targets: Sequence[TargetConfig]) -> tuple[ProxyConfig, ...]:
    """The ``proxies`` array of tables (absent: none), each checked against ``server`` and ``targets``."""
    if value is None:
        return ()
    value = array_of_tables(value, "proxies", "write a [[proxies]] table for each target to proxy")
    names = [t.name for t in targets]
    proxies: list[ProxyConfig] = []
    by_target: dict[str, str] = {}
    # Every path a socket or token file of tokend already takes, and whose it is.
    taken: dict[Path, str] = {server.socket: "server.socket"}
    for t in targets:
        if t.file_sink is not None:
            taken[t.file_sink.path] = t.key("file_sink.path")
    for index, item in enumerate(value):
        prefix = f"proxies[{index}]"
        if not isinstance(item, dict):
            raise ConfigError(prefix, f"expected a table, got {type_name(item)}",
                              "write each proxy as a [[proxies]] table")
        proxy = parse_proxy(item, index, server)
        if proxy.target not in names:
            raise ConfigError(proxy.key("target"), f"no target is named {proxy.target!r}",
                              f"use one of {quoted(names)}")
        if proxy.target in by_target:
            raise ConfigError(proxy.key("target"),
                              f"{proxy.target!r} already has a proxy ({by_target[proxy.target]})",
                              "give each target one proxy; its allow-lists can admit several"
                              " groups")
        by_target[proxy.target] = prefix
        if proxy.socket is not None:
            if proxy.socket in taken:
                raise ConfigError(proxy.key("socket"),
                                  f"{proxy.socket} is already {taken[proxy.socket]}",
                                  "give every socket its own path")
            taken[proxy.socket] = proxy.key("socket")
        proxies.append(proxy)
    return tuple(proxies)


def parse_proxy(data: Mapping[str, object], index: int, server: ServerConfig) -> ProxyConfig:
    """One ``[[proxies]]`` table at position ``index``; absent allow-lists are ``server``'s."""
    prefix = f"proxies[{index}]"
    check_keys(data, prefix, PROXY_KEYS)

    def k(name: str) -> str:
        return f"{prefix}.{name}"

    if "target" not in data:
        raise ConfigError(k("target"), "missing", 'add target = "NAME" of a [[targets]] table')
    target = as_string(data["target"], k("target"))
    socket = socket_path(data["socket"], k("socket"), "/run/tokend/sfo-vcf01.api.sock") \
        if "socket" in data else None
    listen = as_host_port(data["listen"], k("listen"), _LISTEN_FIX) if "listen" in data else None
    if socket is None and listen is None:
        raise ConfigError(k("socket"), "missing: a proxy needs a socket or a listen address",
                          'add socket = "/run/tokend/NAME.api.sock"')
    mode, group = mode_and_group(data, prefix, ProxyConfig.socket_mode)
    if socket is None:
        for name in ("socket_mode", "socket_group", "allowed_uids", "allowed_gids"):
            if name in data:
                raise ConfigError(k(name), "only used with socket", f"remove {name}, or add socket")
    uids, gids = allow_lists(data, prefix, server.allowed_uids, server.allowed_gids)

    files = {name: as_abs_path(data[name], k(name)) if name in data else None
             for name in ("tls_cert_file", "tls_key_file", "users_file", "session_key_file")}
    names = _tls_names(data["tls_names"], k("tls_names")) if "tls_names" in data else ()
    cert, key = files["tls_cert_file"], files["tls_key_file"]
    if listen is None:
        for name in ("tls_cert_file", "tls_key_file", "tls_names", "users_file"):
            if name in data:
                raise ConfigError(k(name), "only used with listen (the HTTPS listener)",
                                  f"remove {name}, or add listen")
    else:
        for name in ("users_file", "session_key_file"):
            if files[name] is None:
                example = ("/etc/tokend/users.htpasswd" if name == "users_file"
                           else "/etc/tokend/facade.key")
                raise ConfigError(k(name), "required with listen: "
                                  + ("the TCP listener's users log in against it"
                                     if name == "users_file"
                                     else "local tokens must verify on every replica"),
                                  f'add {name} = "{example}"')
        if (cert is None) != (key is None):
            given, missing = ("tls_cert_file", "tls_key_file") if key is None \
                else ("tls_key_file", "tls_cert_file")
            raise ConfigError(k(missing), f"required with {given}", f"add {missing}, or remove"
                              f" {given} to have tokend generate a certificate")
        if cert is None and not is_loopback(listen[0]):
            raise ConfigError(k("tls_cert_file"), f"required for a listen address that is not"
                              f" loopback ({listen[0]})", "add tls_cert_file and tls_key_file,"
                              ' or listen on "127.0.0.1:PORT"')
        if cert is not None and key is not None:
            if names:
                raise ConfigError(k("tls_names"), "only used when tokend generates the"
                                  " certificate (without tls_cert_file)",
                                  "remove tls_names, or put the names in your certificate")
            _check_key_pair(cert, key, k("tls_cert_file"))

    return ProxyConfig(
        index=index,
        target=target,
        socket=socket,
        socket_mode=mode,
        socket_group=group,
        allowed_uids=uids,
        allowed_gids=gids,
        listen=listen,
        tls_cert_file=cert,
        tls_key_file=key,
        tls_names=names,
        users_file=files["users_file"],
        session_key_file=files["session_key_file"],
        local_token_lifetime=_duration(
            data, k("local_token_lifetime"), ProxyConfig.local_token_lifetime,
            MIN_LOCAL_TOKEN_LIFETIME, MAX_LOCAL_TOKEN_LIFETIME,
            "clients that decode exp (PowerVCF) refresh in its last minutes"),
        max_upstream_connections=_connections(data, k("max_upstream_connections")),
        response_timeout=_duration(data, k("response_timeout"), ProxyConfig.response_timeout,
                                   0.0, MAX_RESPONSE_TIMEOUT, ""),
        socket_mode_set="socket_mode" in data or "socket_group" in data,
    )


def _tls_names(value: object, key: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ConfigError(key, f"expected an array of strings, got {type_name(value)}",
                          'write e.g. ["tokend.automation.svc"]')
    names: list[str] = []
    for i, item in enumerate(value):
        name = as_string(item, f"{key}[{i}]")
        if not _DNS_NAME_RE.fullmatch(name) or len(name) > 253:
            raise ConfigError(f"{key}[{i}]", f"{name!r} is not a DNS name",
                              'write a host name such as "tokend.automation.svc"')
        if name.lower() not in names:
            names.append(name.lower())
    return tuple(names)


def _check_key_pair(cert: Path, key: Path, cert_key: str) -> None:
    """The certificate and key load together, as the listener will load them."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except FileNotFoundError as exc:
        raise ConfigError(cert_key, f"cannot read {exc.filename}: no such file",
                          "fix the path") from None
    except PermissionError as exc:
        raise ConfigError(cert_key, f"cannot read {exc.filename}: permission denied",
                          "make it readable by tokend's user") from None
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(cert_key, f"{cert} and its key do not load as a certificate and"
                          f" matching private key ({getattr(exc, 'reason', None) or exc})",
                          "give PEM files: the certificate (chain) and its unencrypted key") \
            from None


def _duration(data: Mapping[str, object], key: str, default: float, least: float, most: float,
              why: str) -> float:
    name = key.rpartition(".")[2]
    if name not in data:
        return default
    seconds = parse_duration(data[name], key)
    if seconds <= 0 or seconds < least:
        bound = f"at least {format_duration(least)}" if least else "longer than zero"
        raise ConfigError(key, f"must be {bound}" + (f": {why}" if why else ""),
                          f"use e.g. {format_duration(default)!r}" if least else DURATION_FIX)
    if seconds > most:
        raise ConfigError(key, f"{format_duration(seconds)} is longer than"
                          f" {format_duration(most)}", f"use at most {format_duration(most)!r}")
    return seconds


def _connections(data: Mapping[str, object], key: str) -> int:
    if "max_upstream_connections" not in data:
        return ProxyConfig.max_upstream_connections
    value = as_int(data["max_upstream_connections"], key)
    if not 1 <= value <= MAX_UPSTREAM_CONNECTIONS:
        raise ConfigError(key, f"{value} is not between 1 and {MAX_UPSTREAM_CONNECTIONS}",
                          f"use e.g. {ProxyConfig.max_upstream_connections}")
    return value
