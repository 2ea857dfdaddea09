"""The test toolkit's own rules: TOML that reads back as written, overrides merged by key, and a
base config tokend accepts."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support import PASSWORD, merge, socket_of, tokend_config, write_config
from tests.support.toml import render, string
from tokend.config import TargetConfig, load_config

scalars = (st.text() | st.booleans() | st.integers(min_value=-2**63, max_value=2**63 - 1)
           | st.floats(allow_nan=False))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8)
tables = st.dictionaries(st.text(max_size=8), values, max_size=4)
documents = st.dictionaries(st.text(max_size=8),
                            values | tables | st.lists(tables, min_size=1, max_size=3), max_size=5)


@given(documents)
def test_rendered_toml_reads_back_as_the_document(document: dict[str, Any]) -> None:
    assert tomllib.loads(render(document)) == document


@pytest.mark.parametrize("text", ['"', "\\", "a\nb", "\x00\x1f\x7f", "tab\there", "ä €", "'''"])
def test_strings_are_escaped(text: str) -> None:
    assert tomllib.loads(f"k = {string(text)}")["k"] == text


def test_special_floats_and_paths() -> None:
    data = tomllib.loads(render({"a": math.inf, "b": -math.inf, "c": math.nan, "p": Path("/x y")}))
    assert data["a"] == math.inf and data["b"] == -math.inf and math.isnan(data["c"])
    assert data["p"] == "/x y"


def test_a_value_without_a_toml_form_is_refused() -> None:
    with pytest.raises(TypeError, match="no TOML form for object"):
        render({"k": object()})


def test_merge_is_by_key_and_none_removes() -> None:
    base = {"a": {"b": 1, "c": {"d": 2}}, "l": [1, 2], "x": 1}
    merged = merge(base, {"a": {"c": {"e": 3}, "b": None}, "l": [3], "x": {"y": 1}, "n": None})
    assert merged == {"a": {"c": {"d": 2, "e": 3}}, "l": [3], "x": {"y": 1}}
    assert base == {"a": {"b": 1, "c": {"d": 2}}, "l": [1, 2], "x": 1}, "the base was changed"


def test_the_base_config_loads_and_takes_overrides(tmp_path: Path) -> None:
    path = write_config(tmp_path, "https://127.0.0.1:1", None,
                        server={"allowed_uids": [0, 4242], "default_target": "t1"},
                        log={"level": "info"},
                        target={"refresh_at": 0.3, "request_timeout": None,
                                "file_sink": {"path": str(tmp_path / "t1.token")}},
                        extra_targets=[{"name": "t2", "url": "https://127.0.0.1:2", "username": "u",
                                        "password": "p"}])
    assert (tmp_path / "password").read_text() == PASSWORD + "\n"
    assert (tmp_path / "password").stat().st_mode & 0o777 == 0o600
    config = load_config(path)
    first, second = config.targets
    assert first.name == "t1" and first.refresh_at == 0.3
    assert first.request_timeout == TargetConfig.request_timeout, "the removed key is the default"
    assert first.file_sink is not None and first.file_sink.path == tmp_path / "t1.token"
    assert second.name == "t2"
    assert config.server.allowed_uids == {0, 4242}
    assert config.log.level == "info"
    assert socket_of(tokend_config(tmp_path, "https://x")) == tmp_path / "tokend.sock"


def test_an_existing_password_file_is_kept(tmp_path: Path) -> None:
    (tmp_path / "password").write_text("mine\n")
    write_config(tmp_path, "https://127.0.0.1:1")
    assert (tmp_path / "password").read_text() == "mine\n"
