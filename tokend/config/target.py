"""One ``[[targets]]`` table into a :class:`TargetConfig`: its URL, its one secret source, how its
TLS is verified, its refresh policy and its file sink. Every error names the key path and the fix.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from tokend.config.keys import FILE_SINK_KEYS, SECRET_KEYS, TARGET_KEYS, check_keys
from tokend.config.model import SINK_FORMATS, FileSink, TargetConfig
from tokend.errors import ConfigError
from tokend.secrets import Secret, SecretSource, check_secret_value
from tokend.trust import ca_context, read_ca_file
from tokend.values import (
    DURATION_FIX,
    as_abs_path,
    as_bool,
    as_choice,
    as_group_name,
    as_int,
    as_mode,
    as_number,
    as_string,
    format_duration,
    is_loopback,
    normalise_fingerprint,
    parse_duration,
    type_name,
)

_NAME_RE = re.compile(r"[a-z0-9_.-]+")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MAX_DURATION = 86400.0


def parse_target(data: Mapping[str, object], prefix: str, path: Path,
                 file_mode: int) -> TargetConfig:
    """The target table ``data`` at key path ``prefix`` (``targets[0]``) of the config at ``path``.

    ``file_mode``, the config file's permission bits, decides whether a literal secret is accepted.
    """
    check_keys(data, prefix, TARGET_KEYS)

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
    url = _url(data["url"], k("url"))

    password, api_key = _secret_source(data, prefix, path, file_mode)
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
    verify_tls = as_bool(data.get("verify_tls", TargetConfig.verify_tls), k("verify_tls"))
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

    refresh_at = as_number(data.get("refresh_at", TargetConfig.refresh_at), k("refresh_at"))
    if not 0 < refresh_at < 1:
        raise ConfigError(k("refresh_at"), f"{refresh_at!r} is not between 0 and 1 (exclusive)",
                          "use a fraction of the token lifetime, e.g. 0.7")
    jitter = as_number(data.get("jitter", TargetConfig.jitter), k("jitter"))
    if not 0 <= jitter < 0.5:
        raise ConfigError(k("jitter"), f"{jitter!r} is not in [0, 0.5)",
                          "use a small fraction of the token lifetime, e.g. 0.05")
    if not refresh_at - jitter > 0 or not refresh_at + jitter < 1:
        raise ConfigError(
            k("jitter"), f"refresh_at ± jitter ({refresh_at:g} ± {jitter:g}) leaves (0, 1)",
            "lower jitter, or move refresh_at away from 0 and 1",
        )

    max_login_failures = as_int(data.get("max_login_failures", TargetConfig.max_login_failures),
                                k("max_login_failures"))
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
        refresh_at=refresh_at,
        jitter=jitter,
        request_timeout=_duration(data, "request_timeout", prefix, TargetConfig.request_timeout),
        max_backoff=_duration(data, "max_backoff", prefix, TargetConfig.max_backoff),
        max_login_failures=max_login_failures,
        login_retry_interval=_duration(data, "login_retry_interval", prefix,
                                       TargetConfig.login_retry_interval),
        revoke_on_exit=as_bool(data.get("revoke_on_exit", TargetConfig.revoke_on_exit),
                               k("revoke_on_exit")),
        file_sink=_file_sink(data["file_sink"], k("file_sink")) if "file_sink" in data else None,
        max_token_lifetime=_duration(data, "max_token_lifetime", prefix,
                                     TargetConfig.max_token_lifetime),
    )


def _url(value: object, key: str) -> str:
    """The SDDC Manager base URL, normalised without a trailing slash."""
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
    if scheme == "http" and not is_loopback(host):
        raise ConfigError(key, "http:// is only allowed for a loopback host", "use https://")
    return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def _secret_source(
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
    check_keys(value, key, FILE_SINK_KEYS)
    if "path" not in value:
        raise ConfigError(f"{key}.path", "missing", 'add path = "/run/tokend/NAME.token"')
    path = as_abs_path(value["path"], f"{key}.path")
    mode = as_mode(value.get("mode", FileSink.mode), f"{key}.mode")
    if mode & 0o007:
        raise ConfigError(f"{key}.mode", f"{mode:04o} lets every local user read the token",
                          'use "0600", or "0640" with group')
    group = as_group_name(value["group"], f"{key}.group") if "group" in value else None
    return FileSink(
        path=path, mode=mode, group=group,
        format=as_choice(value.get("format", FileSink.format), f"{key}.format", SINK_FORMATS),
        keep_on_exit=as_bool(value.get("keep_on_exit", FileSink.keep_on_exit),
                             f"{key}.keep_on_exit"),
    )


def _ca_file(value: object, key: str) -> Path:
    """An absolute path to a CA file that loads now, the way the upstream client will load it."""
    path = as_abs_path(value, key)
    ca_context(read_ca_file(path, key), path, key)
    return path


def _fingerprints(value: object, key: str) -> tuple[str, ...]:
    """One pin or a list of them (a list stages a rotation), normalised, without repeats."""
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


def _duration(data: Mapping[str, object], name: str, prefix: str, default: float) -> float:
    """The duration ``name`` of the table, longer than zero and at most a day; else ``default``."""
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

