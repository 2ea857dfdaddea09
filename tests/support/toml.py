"""A small TOML writer for the documents tests and benchmarks hand to tokend.

Enough of TOML for a tokend config: tables, arrays of tables, strings (and paths), booleans,
integers, floats, arrays, and inline tables for tables nested in a table (``file_sink = { ... }``).
Strings are always basic strings with every character TOML requires escaped, so a path or a
password with quotes, backslashes or control characters reads back as written. Dates and times
are written in their ISO form. No comments, no formatting choices: the output is meant to be read
by ``tomllib``, not by people.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from datetime import date, datetime, time
from typing import Any

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f",
            "\r": "\\r"}


def render(document: Mapping[str, Any]) -> str:
    """``document`` as TOML text: top-level values, then ``[table]`` and ``[[array of tables]]``."""
    lines = [f"{key(k)} = {value(v)}" for k, v in document.items() if not _is_section(v)]
    for name, item in document.items():
        if isinstance(item, Mapping):
            lines += ["", f"[{key(name)}]", *_body(item)]
        elif _is_table_array(item):
            for table in item:
                lines += ["", f"[[{key(name)}]]", *_body(table)]
    return "\n".join(lines).lstrip("\n") + "\n"


def key(name: str) -> str:
    """A key, bare when TOML allows it, quoted otherwise."""
    return name if _BARE_KEY.fullmatch(name) else string(name)


def string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped."""
    out = []
    for char in text:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04X}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def value(item: Any) -> str:
    """One TOML value; a mapping becomes an inline table."""
    if isinstance(item, bool):  # before int: bool is an int
        return "true" if item else "false"
    if isinstance(item, int):
        return str(item)
    if isinstance(item, float):
        if math.isnan(item):
            return "nan"
        if math.isinf(item):
            return "inf" if item > 0 else "-inf"
        return repr(item)
    if isinstance(item, str):
        return string(item)
    if isinstance(item, os.PathLike):
        return string(os.fspath(item))
    if isinstance(item, datetime | date | time):
        return item.isoformat()
    if isinstance(item, Mapping):
        return "{ " + ", ".join(f"{key(k)} = {value(v)}" for k, v in item.items()) + " }" \
            if item else "{}"
    if isinstance(item, list | tuple):
        return "[" + ", ".join(value(v) for v in item) + "]"
    raise TypeError(f"no TOML form for {type(item).__name__}: {item!r}")


def _body(table: Mapping[str, Any]) -> list[str]:
    return [f"{key(k)} = {value(v)}" for k, v in table.items()]


def _is_table_array(item: Any) -> bool:
    return isinstance(item, list | tuple) and bool(item) and all(isinstance(t, Mapping) for t in item)


def _is_section(item: Any) -> bool:
    return isinstance(item, Mapping) or _is_table_array(item)
