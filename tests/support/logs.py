"""What a process logged: an output file read as it grows, its JSON lines parsed into events."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def parse_events(text: str) -> list[dict[str, Any]]:
    """Every line of ``text`` that is a JSON object, parsed; other lines are skipped."""
    out = []
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            out.append(event)
    return out


class LogFile:
    """A process's output file, read afresh on every call."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def text(self) -> str:
        """Everything written so far; a file not yet created reads as empty."""
        return self.path.read_text(errors="replace") if self.path.exists() else ""

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """The JSON log events so far, in order; only those called ``name`` if given."""
        return [e for e in parse_events(self.text()) if name is None or e.get("event") == name]

    def mark(self) -> int:
        """The current end, to read what comes after it with :meth:`lines_since`."""
        return len(self.text())

    def lines_since(self, mark: int) -> list[str]:
        """The lines written after :meth:`mark` returned ``mark``."""
        return self.text()[mark:].splitlines()
