"""The shapes of the config's TOML: a table, an array of tables.

Each check raises a :class:`~tokend.errors.ConfigError` naming the key and how to write it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

from tokend.errors import ConfigError
from tokend.values import type_name


def table(data: Mapping[str, object], key: str) -> Mapping[str, object]:
    """The table ``data[key]`` (absent: an empty one); ConfigError if it is anything else."""
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(key, f"expected a table, got {type_name(value)}",
                          f"write it as a [{key}] table")
    return cast(Mapping[str, object], value)


def array_of_tables(value: object, key: str, fix: str) -> list[object]:
    """``value`` as the array of ``[[key]]`` tables it must be; ConfigError otherwise, with ``fix``
    as the remediation when it is not even a table."""
    if isinstance(value, dict):
        raise ConfigError(key, "expected an array of tables, got table",
                          f"write [[{key}]], with double brackets")
    if not isinstance(value, list):
        raise ConfigError(key, f"expected an array of tables, got {type_name(value)}", fix)
    return value
