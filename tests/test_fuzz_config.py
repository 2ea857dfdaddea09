"""Arbitrary TOML values and types in every table: a Config, or a ConfigError naming a key path.

``tests/test_config.py`` fuzzes the ``[[targets]]`` tables; this covers the rest of the file too:
``[server]``, ``[metrics]``, ``[log]``, unknown top-level keys, a ``targets`` that is not an array
of tables, several targets at once, and the way in through ``load_config`` (TOML text on disk).
"""

from __future__ import annotations

import json
import re
import tempfile
import tomllib
from collections.abc import Iterator
from datetime import UTC, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.support import toml
from tokend.config import (
    FILE_SINK_KEYS,
    LOG_KEYS,
    METRICS_KEYS,
    SERVER_KEYS,
    TARGET_KEYS,
    Config,
    describe,
    load_config,
    parse_config,
)
from tokend.errors import ConfigError

CONFIG_PATH = Path("/etc/tokend/config.toml")
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- what tomllib can hand over ------------------------------------------------------------------

# TOML strings hold any Unicode scalar value (not a lone surrogate); integers are 64-bit.
toml_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
offsets = st.sampled_from([None, UTC, timezone(timedelta(hours=5, minutes=30)),
                           timezone(-timedelta(hours=8)), timezone(timedelta(hours=23, minutes=59))])
toml_scalars = st.one_of(
    toml_text,
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(),
    st.booleans(),
    st.datetimes(timezones=offsets),
    st.dates(),
    st.times(),
    st.sampled_from([
        "", "/x", "/run/tokend/t.sock", "/" + "x" * 120, "30s", "0ms", "25h", "0600", "0777", "4755",
        "https://h", "https://sfo.rainpole.io/", "http://127.0.0.1", "http://[::1]:0", "127.0.0.1:0",
        "[::1]:9464", "[::1]", ":9464", "host:99999", "debug", "INFO", "json", "console", "raw",
        "sha256:00", "sha256:" + "ab" * 32, "t1", "sfo", "vcf", "0", "root", "\x00", "/a\x00b",
    ]),
)
toml_values = st.recursive(
    toml_scalars,
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(FILE_SINK_KEYS) | toml_text, inner, max_size=3),
    max_leaves=8,
)


def keys_of(known: tuple[str, ...]) -> st.SearchStrategy[str]:
    """Mostly known keys (so the values get checked), sometimes any key at all."""
    return st.sampled_from([*known, *known, *known, ""]).flatmap(
        lambda k: st.just(k) if k else toml_text | st.sampled_from(["sokcet", "levle", "x y", "Name"]))


def tables(known: tuple[str, ...], base: dict[str, Any] | None = None,
           max_size: int = 4) -> st.SearchStrategy[dict[str, Any]]:
    """A table of ``known`` keys with values of any type, over ``base`` (a valid table) or not."""
    fuzzed = st.dictionaries(keys_of(known), toml_values, max_size=max_size)
    if base is None:
        return fuzzed
    return st.builds(lambda keep, extra: {**(base if keep else {}), **extra}, st.booleans(), fuzzed)


def valid_target(name: str) -> dict[str, Any]:
    return {"name": name, "url": f"https://{name}.rainpole.io", "username": "admin",
            "password_file": f"/etc/tokend/{name}.password"}


@st.composite
def configs(draw: st.DrawFn) -> dict[str, Any]:
    """A whole config: each part absent, valid, fuzzed or replaced by a value of any type."""
    data: dict[str, Any] = {}
    parts = (("server", SERVER_KEYS, {"socket": "/run/tokend/t.sock"}),
             ("metrics", METRICS_KEYS, {"listen": ""}),
             ("log", LOG_KEYS, {"level": "info"}))
    for name, known, valid in parts:
        how = draw(st.sampled_from(["absent", "valid", "valid", "fuzz", "fuzz", "value"]))
        if how == "valid":
            data[name] = valid
        elif how == "fuzz":
            data[name] = draw(tables(known, valid))
        elif how == "value":
            data[name] = draw(toml_values)
    how = draw(st.sampled_from(["one", "two", "fuzz", "fuzz", "fuzz", "value", "absent"]))
    if how == "one":
        data["targets"] = [valid_target("sfo")]
    elif how == "two":
        data["targets"] = [valid_target("sfo"), valid_target("lax")]
    elif how == "fuzz":
        count = draw(st.integers(min_value=0, max_value=3))
        data["targets"] = [draw(tables(TARGET_KEYS, valid_target(f"t{i}"), max_size=3))
                           for i in range(count)]
    elif how == "value":
        data["targets"] = draw(toml_values)
    if draw(st.sampled_from([False] * 9 + [True])):  # an unknown top-level key
        data[draw(toml_text)] = draw(toml_values)
    return data


# -- the key path an error must name -------------------------------------------------------------

_SEGMENT = r'(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*")'
KEY_PATH = re.compile(rf"{_SEGMENT}(?:\.{_SEGMENT}|\[\d+\])*")


def shown(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def check_outcome(data: dict[str, Any], mode: int) -> Config | ConfigError:
    try:
        config = parse_config(data, CONFIG_PATH, file_mode=mode)
    except ConfigError as exc:
        assert exc.key, str(exc)
        assert KEY_PATH.fullmatch(exc.key), exc.key
        assert str(exc).startswith(exc.key + ": "), str(exc)
        first = re.match(_SEGMENT, exc.key)
        assert first is not None
        # The error is in a table the file has, or names one the file lacks (targets, a default).
        assert first.group(0) in {shown(k) for k in data} | {"server", "targets"}, (exc.key, data)
        event("ConfigError at " + re.sub(r"\[\d+\]", "[i]", exc.key).split(".")[0])
        return exc
    names = [t.name for t in config.targets]
    assert names and len(set(names)) == len(names)
    assert config.default_target in names
    assert describe(config)
    event("Config")
    return config


@FUZZ
@given(data=configs(), mode=st.sampled_from([0o600, 0o400, 0o640, 0o644]))
def test_arbitrary_values_in_any_table_only_raise_config_errors_with_a_key_path(
        data: dict[str, Any], mode: int) -> None:
    check_outcome(data, mode)


# -- the same through a file on disk -------------------------------------------------------------


def toml_document(data: dict[str, Any]) -> str:
    """Every key on a line of its own, tables inline."""
    return "".join(f"{toml.key(k)} = {toml.value(v)}\n" for k, v in data.items())


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as directory:
        yield Path(directory) / "config.toml"


@FUZZ
@given(data=configs(), mode=st.sampled_from([0o600, 0o644]))
def test_load_config_agrees_with_parse_config(scratch: Path, data: dict[str, Any],
                                              mode: int) -> None:
    text = toml_document(data)
    scratch.write_text(text, encoding="utf-8")
    scratch.chmod(mode)
    parsed = tomllib.loads(text)
    try:
        loaded: Config | ConfigError = load_config(scratch)
    except ConfigError as exc:
        loaded = exc
    try:
        direct: Config | ConfigError = parse_config(parsed, scratch, file_mode=mode)
    except ConfigError as exc:
        direct = exc
    if isinstance(direct, ConfigError):
        assert isinstance(loaded, ConfigError) and str(loaded) == str(direct)
    else:
        assert loaded == direct


@FUZZ
@given(content=st.binary(max_size=200) | toml_text.map(str.encode)
       | st.sampled_from([b"[server", b"targets = [[", b'x = """', b"\xff", b"[[targets]]\n" * 3,
                          b"a = 1\na = 2", b"[targets]\n[[targets]]"]))
def test_any_file_content_is_a_config_error_or_a_config(scratch: Path, content: bytes) -> None:
    scratch.write_bytes(content)
    scratch.chmod(0o600)
    try:
        load_config(scratch)
    except ConfigError as exc:
        assert exc.key == str(scratch) or KEY_PATH.fullmatch(exc.key), str(exc)
        assert str(exc).startswith(exc.key + ": ")
