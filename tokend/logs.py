"""structlog set-up: JSON lines (or console on a TTY) on stdout, and the redaction processor.

Redaction is by value: every secret tokend holds or has held is registered with :data:`REDACTOR`
and replaced wherever it appears, at any depth, as is anything shaped like a JWT. The processor
sits in the shared chain, so records from the standard library (aiohttp's loggers) pass it too.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from collections.abc import Mapping
from typing import Any, Literal

import structlog
from structlog.tracebacks import ExceptionDictTransformer
from structlog.typing import EventDict, Processor, WrappedLogger

from tokend.jwtinfo import JWT_PATTERN

REDACTED = "**redacted**"
MIN_SECRET_LENGTH = 4  # shorter values would shred every log line; no real secret is that short


class Redactor:
    """Replaces every registered secret value, and every JWT-shaped string, in any structure."""

    def __init__(self) -> None:
        self._values: set[str] = set()
        self._pattern: re.Pattern[str] = JWT_PATTERN
        self._lock = threading.Lock()

    def register(self, value: str) -> None:
        """Remember ``value`` as a secret, for as long as the process lives."""
        if len(value) < MIN_SECRET_LENGTH or value in self._values:
            return
        with self._lock:
            self._values.add(value)
            # Longest first, so a secret containing another is replaced whole.
            alternatives = [re.escape(v) for v in sorted(self._values, key=len, reverse=True)]
            self._pattern = re.compile("|".join([*alternatives, JWT_PATTERN.pattern]))

    def text(self, value: str) -> str:
        """``value`` with every secret replaced."""
        return self._pattern.sub(REDACTED, value)

    def __call__(self, value: Any) -> Any:
        """Redact strings inside dicts, lists and tuples; other objects by their ``str``."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {self(k): self(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self(v) for v in value]
        if value is None or isinstance(value, bool | int | float):
            return value
        return self.text(str(value))


REDACTOR = Redactor()


def redact_processor(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """structlog processor: redact every field."""
    return {k: REDACTOR(v) for k, v in event_dict.items()}


def _drop_color_message(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    event_dict.pop("color_message", None)
    event_dict.pop("_record", None)
    event_dict.pop("_from_structlog", None)
    return event_dict


Format = Literal["json", "console", "auto"]


def debug_enabled() -> bool:
    """Whether a debug line would be written: hot paths skip building one that would not."""
    return logging.getLogger().isEnabledFor(logging.DEBUG)


def configure(level: str = "info", fmt: Format = "auto", stream: Any = None) -> None:
    """Route structlog and the standard library's loggers to ``stream`` (stdout) as configured."""
    stream = stream or sys.stdout
    console = fmt == "console" or (fmt == "auto" and stream.isatty())
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    exceptions: Processor = (
        structlog.processors.format_exc_info if console
        else structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False))
    )
    renderer: Processor = (
        structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback,
                                      colors=stream.isatty() and not os.environ.get("NO_COLOR"))
        if console else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        # Lines from libraries (aiohttp, asyncio) say where they come from.
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name, structlog.stdlib.ExtraAdder()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            exceptions,
            redact_processor,
            _drop_color_message,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").disabled = True
    logging.getLogger("asyncio").setLevel(max(root.level, logging.WARNING))  # not its debug chatter


def get_logger(**bound: Any) -> Any:
    """A structlog logger with ``bound`` fields on every line."""
    return structlog.get_logger("tokend", **bound)
