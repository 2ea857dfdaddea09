"""Typed values as tokend reads them from its config and command line; each error names the key.

Durations, choices, absolute paths, file modes, uid/gid lists, certificate pins and group ids:
one reader for each, shared by the config loader, the command line, the socket and the file sink.
Standard library only, and nothing heavy (no ``ssl``): ``tokend token --wait 5s`` parses its
durations here and must start fast.
"""

from __future__ import annotations

import grp
import ipaddress
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from tokend.errors import ConfigError

T = TypeVar("T", bound=str)

DURATION_FIX = 'use a number with a unit, e.g. "500ms", "30s", "5m", "1h", or a number of seconds'

_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|h|m|s)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_HOSTNAME_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
_MODE_RE = re.compile(r"(?:0o)?([0-7]{1,4})")
_HEX_FINGERPRINT_RE = re.compile(r"[0-9A-Fa-f]{64}|[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){31}")
# What tomllib hands over, by the name TOML gives it; bool before int, since a bool is an int.
_TOML_TYPES: tuple[tuple[type, str], ...] = (
    (bool, "boolean"), (int, "integer"), (float, "float"), (str, "string"), (list, "array"),
    (dict, "table"),
)


# --- durations --------------------------------------------------------------------------------


def parse_duration(value: object, key: str) -> float:
    """Seconds from ``"500ms"``, ``"30s"``, ``"5m"``, ``"1h"``, ``"2h30m"`` or a number of seconds.

    Negative, infinite and NaN values are refused; whether zero makes sense is the caller's call.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(key, f"expected a duration, got {type_name(value)}", DURATION_FIX)
    if isinstance(value, str):
        seconds = _parse_duration_text(value, key)
    else:
        try:
            seconds = float(value)
        except OverflowError:
            raise ConfigError(key, f"{value} seconds is out of range", DURATION_FIX) from None
    if not math.isfinite(seconds):
        raise ConfigError(key, f"{value!r} is not a finite duration", DURATION_FIX)
    if seconds < 0:
        raise ConfigError(key, f"{value!r} is negative", "use a duration of zero or more")
    return seconds


def format_duration(seconds: float) -> str:
    """``seconds`` the way a person would write it in the config: ``"500ms"``, ``"5m"``, ``"1h30m"``."""
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    whole = int(seconds)
    if whole != seconds:
        return f"{seconds:g}s"
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{n}{unit}" for n, unit in ((hours, "h"), (minutes, "m"), (secs, "s")) if n]
    return "".join(parts)


def _parse_duration_text(text: str, key: str) -> float:
    stripped = text.strip()
    pos = 0
    total = 0.0
    for match in _DURATION_PART_RE.finditer(stripped):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos == 0 or pos != len(stripped):
        if _is_number_text(stripped):
            raise ConfigError(key, f"{text!r} has no unit",
                              f'write "{stripped}s" for seconds, or a number without quotes')
        raise ConfigError(key, f"{text!r} is not a duration", DURATION_FIX)
    return total


def _is_number_text(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# --- TOML types -------------------------------------------------------------------------------


def type_name(value: object) -> str:
    """The TOML name of ``value``'s type, for ``expected X, got Y``."""
    return next((name for cls, name in _TOML_TYPES if isinstance(value, cls)),
                type(value).__name__)  # datetime, date, time


def as_string(value: object, key: str) -> str:
    """``value`` if it is a string."""
    if not isinstance(value, str):
        raise ConfigError(key, f"expected a string, got {type_name(value)}", "quote the value")
    return value


def as_bool(value: object, key: str) -> bool:
    """``value`` if it is a boolean."""
    if not isinstance(value, bool):
        raise ConfigError(key, f"expected a boolean, got {type_name(value)}",
                          "write true or false, unquoted")
    return value


def as_int(value: object, key: str) -> int:
    """``value`` if it is an integer (a boolean is not)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, f"expected an integer, got {type_name(value)}",
                          "write a whole number, unquoted")
    return value


def as_number(value: object, key: str) -> float:
    """``value`` as a float if it is an integer or a float (a boolean is not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(key, f"expected a number, got {type_name(value)}",
                          "write a number such as 0.7, unquoted")
    try:
        return float(value)
    except OverflowError:
        raise ConfigError(key, f"{value} is out of range", "write a number such as 0.7") from None


def as_choice(value: object, key: str, choices: Sequence[T]) -> T:
    """The one of ``choices`` that the string ``value`` names, in any case."""
    text = as_string(value, key)
    for choice in choices:
        if text.lower() == choice:
            return choice
    raise ConfigError(key, f"{text!r} is not one of {' | '.join(choices)}",
                      f"use one of {quoted(choices)}")


def quoted(names: Sequence[str]) -> str:
    """``'a', 'b'``: names as a list in an error message."""
    return ", ".join(repr(n) for n in names)


# --- files, modes, ids ------------------------------------------------------------------------


def as_abs_path(value: object, key: str) -> Path:
    """An absolute path naming a file (not ending in ``/``) that the OS can encode."""
    text = as_string(value, key)
    if "\0" in text:
        raise ConfigError(key, "contains a NUL character", "write a plain absolute path")
    if not text.startswith("/"):
        raise ConfigError(key, f"{text!r} is not an absolute path", "write it starting with /")
    if text.endswith("/"):
        raise ConfigError(key, f"{text!r} is a directory path", "name a file, not a directory")
    try:
        os.fsencode(text)
    except UnicodeError:
        raise ConfigError(key, f"{text!r} cannot be encoded as a file name",
                          "use a plain path") from None
    return Path(text)


def as_mode(value: object, key: str) -> int:
    """Permission bits from an octal string (``"0660"``, ``"0o660"``) or an integer, 0 to 0o777."""
    fix = 'write it as an octal string, e.g. "0660"'
    if isinstance(value, str):
        match = _MODE_RE.fullmatch(value.strip())
        if not match:
            raise ConfigError(key, f"{value!r} is not an octal file mode", fix)
        mode = int(match.group(1), 8)
    elif isinstance(value, int) and not isinstance(value, bool):
        mode = value
    else:
        raise ConfigError(key, f"expected an octal string, got {type_name(value)}", fix)
    # setuid, setgid and sticky bits make no sense on a socket or a token file; a decimal
    # integer such as 660 (meant as octal) lands here too.
    if not 0 <= mode <= 0o777:
        raise ConfigError(key, f"{value!r} is not a permission mode between 0000 and 0777", fix)
    return mode


def as_group_name(value: object, key: str) -> str:
    """A group name or gid as written: non-empty, no spaces, control characters or ``:``."""
    text = as_string(value, key)
    if not text or any(c.isspace() or ord(c) < 32 for c in text) or ":" in text:
        raise ConfigError(key, f"{text!r} is not a group name", "write the group's name or gid")
    return text


def as_id_set(value: object, key: str) -> frozenset[int]:
    """A TOML array of numeric uids or gids."""
    if not isinstance(value, list):
        raise ConfigError(key, f"expected an array of integers, got {type_name(value)}",
                          "write e.g. [1000, 1001]")
    ids: set[int] = set()
    for i, item in enumerate(value):
        item_key = f"{key}[{i}]"
        number = as_int(item, item_key)
        if not 0 <= number < 2**32 - 1:
            raise ConfigError(item_key, f"{number} is not a valid id", "use a numeric uid or gid")
        ids.add(number)
    return frozenset(ids)


def group_id(group: str, key: str) -> int:
    """The gid of ``group``, a name or a number; ConfigError naming ``key`` if there is none."""
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ConfigError(key, f"no group named '{group}'",
                          "create the group or fix the name") from None


# --- listen addresses -------------------------------------------------------------------------


def as_host_port(value: object, key: str, fix: str) -> tuple[str, int] | None:
    """``HOST:PORT`` or ``[IPV6]:PORT`` as (host, port); ``""`` is None (no listener)."""
    listen = as_string(value, key)
    if listen == "":
        return None
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
        if not is_ip(host) and not _HOSTNAME_RE.fullmatch(host):
            raise ConfigError(key, f"{host!r} is not a host name or IP address", fix)
    if not port_text.isascii() or not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError(key, f"{port_text!r} is not a port number (0 to 65535)", fix)
    return host, int(port_text)


def is_ip(host: str) -> bool:
    """Whether ``host`` is an IPv4 or IPv6 address literal."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address: only this machine can reach it."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --- certificate pins -------------------------------------------------------------------------


def normalise_fingerprint(text: str, key: str) -> str:
    """``"sha256:" + 32 hex bytes`` (colons optional, any case) as ``"sha256:AB:CD:..."``."""
    fix = ('write "sha256:" and the 32 bytes of the certificate\'s SHA-256 in hex, e.g. from '
           "openssl x509 -noout -fingerprint -sha256")
    prefix, sep, digest = text.strip().partition(":")
    if not sep or prefix.lower() != "sha256":
        if _HEX_FINGERPRINT_RE.fullmatch(text.strip()):
            fix = f'write "{format_pin(_hex_bytes(text.strip()))}"'
        raise ConfigError(key, f"{text!r} does not start with 'sha256:'", fix)
    if not _HEX_FINGERPRINT_RE.fullmatch(digest):
        raise ConfigError(key, f"{text!r} is not a SHA-256 fingerprint", fix)
    return format_pin(_hex_bytes(digest))


def format_pin(digest: bytes) -> str:
    """A SHA-256 digest in the ``tls_fingerprint`` format: ``"sha256:AB:CD:..."``."""
    return "sha256:" + digest.hex(":").upper()


def pin_digest(pin: str) -> bytes:
    """The digest a pin in the ``tls_fingerprint`` format stands for (the inverse of format_pin)."""
    return _hex_bytes(pin.removeprefix("sha256:"))


def _hex_bytes(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))
