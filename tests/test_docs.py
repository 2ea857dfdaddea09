"""The documents a user reads stand on their own: they state facts in the repository's own words,
never by pointing at sections of a specification the user does not have."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# What a user reads or installs: the READMEs, the example config, every deployment file, the examples.
USER_DOCS = sorted(
    ["README.md", "bench/README.md", "config.example.toml", "SECURITY.md"]
    + [str(p.relative_to(REPO)) for folder in ("deploy", "examples")
       for p in (REPO / folder).rglob("*") if p.is_file() and "__pycache__" not in p.parts])


@pytest.mark.parametrize("name", USER_DOCS)
def test_no_citations_of_the_spec(name: str) -> None:
    text = (REPO / name).read_text()
    found = re.findall(r".{0,30}(?:SPEC|§).{0,30}", text)
    assert not found, found


def test_readme_says_where_tokend_runs() -> None:
    text = " ".join((REPO / "README.md").read_text().split())
    assert "tokend runs on Linux only" in text
    assert "python3.11 -m venv" in text  # RHEL 9's python3 is 3.9
