"""Secrets are redacted wherever they sit in a log line: at any depth, and inside rendered exceptions.

Each test runs tokend's real processor chain (``tokend.logs.configure``) into a string and reads
what would reach the journal. In JSON, an exception logged with ``exc_info`` becomes a list of
dicts (structlog's ``ExceptionDictTransformer``), so its text is only redacted if nested values are.
"""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from tokend.logs import REDACTED, REDACTOR, Redactor, configure, get_logger

PASSWORD = "Nested-Passw0rd-d41d8c"
REFRESH_ID = "rid-2b9a7e1c-nested"
JWT = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhZG1pbiIsImV4cCI6MTc5NTg0OTIwMH0"
       ".c2lnbmF0dXJlLW9mLXRoZS10b2tlbg")
SECRETS = (PASSWORD, REFRESH_ID, JWT)


@pytest.fixture
def journal() -> Iterator[io.StringIO]:
    """tokend's logging set up as in production, into a string; the previous set-up restored."""
    REDACTOR.register(PASSWORD)
    REDACTOR.register(REFRESH_ID)
    saved_config = structlog.get_config()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, logging.getLogger("aiohttp.access").disabled,
             logging.getLogger("asyncio").level)
    stream = io.StringIO()
    try:
        yield stream
    finally:
        structlog.configure(**saved_config)
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
        logging.getLogger("aiohttp.access").disabled = saved[2]
        logging.getLogger("asyncio").setLevel(saved[3])


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    text = stream.getvalue()
    for secret in SECRETS:
        assert secret not in text, f"{secret[:12]}... leaked into:\n{text}"
    return [json.loads(line) for line in text.splitlines()]


def nested(depth: int, leaf: Any) -> Any:
    """``leaf`` under ``depth`` alternating dicts, lists and tuples."""
    value = leaf
    for level in range(depth):
        value = ({f"level{level}": value}, [value], ("x", value))[level % 3]
    return value


def leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in leaves(v)]
    if isinstance(value, list):
        return [leaf for v in value for leaf in leaves(v)]
    return [value]


@pytest.mark.parametrize("depth", [1, 2, 3, 7])
def test_secrets_nested_in_dicts_lists_and_tuples_are_redacted_at_any_depth(
        journal: io.StringIO, depth: int) -> None:
    configure(fmt="json", stream=journal)

    get_logger(target="t1").warning(
        "upstream.answer", body=nested(depth, f"password {PASSWORD} was wrong"),
        pair=nested(depth, {"accessToken": JWT, "refreshToken": {"id": REFRESH_ID}}),
        keys=nested(depth, {PASSWORD: "as a key"}))

    [line] = json_lines(journal)
    assert [leaf for leaf in leaves(line["body"]) if leaf != "x"] == [f"password {REDACTED} was wrong"]
    assert sorted(set(leaves(line["pair"])) - {"x"}) == [REDACTED]
    assert REDACTED in json.dumps(line["keys"]) and "as a key" in leaves(line["keys"])
    assert line["target"] == "t1"


def raise_with_secrets() -> None:
    try:
        raise KeyError(REFRESH_ID)
    except KeyError as cause:
        raise RuntimeError(f"login with {PASSWORD} answered {JWT}") from cause


def test_an_exception_logged_with_exc_info_is_redacted_in_json(journal: io.StringIO) -> None:
    configure(fmt="json", stream=journal)

    try:
        raise_with_secrets()
    except RuntimeError:
        get_logger().error("daemon.crashed", exc_info=True)

    [line] = json_lines(journal)
    chain = line["exception"]
    assert [e["exc_type"] for e in chain] == ["RuntimeError", "KeyError"]
    assert chain[0]["exc_value"] == f"login with {REDACTED} answered {REDACTED}"
    assert chain[1]["exc_value"] == repr(REDACTED)
    assert any(frame["name"] == "raise_with_secrets" for frame in chain[0]["frames"])


def test_an_exception_from_a_library_logger_is_redacted_in_json(journal: io.StringIO) -> None:
    # aiohttp and asyncio log through the standard library, with extra fields of their own.
    configure(fmt="json", stream=journal)

    try:
        raise_with_secrets()
    except RuntimeError:
        logging.getLogger("aiohttp.server").error(
            "Error handling request", exc_info=True, extra={"peer": {"headers": [["X", JWT]]}})

    [line] = json_lines(journal)
    assert line["logger"] == "aiohttp.server"
    assert line["exception"][0]["exc_value"] == f"login with {REDACTED} answered {REDACTED}"
    assert line["peer"] == {"headers": [["X", REDACTED]]}


def test_an_exception_logged_with_exc_info_is_redacted_on_the_console(journal: io.StringIO) -> None:
    configure(fmt="console", stream=journal)

    try:
        raise_with_secrets()
    except RuntimeError:
        get_logger().error("daemon.crashed", exc_info=True, where=[{"secret": PASSWORD}])

    text = journal.getvalue()
    for secret in SECRETS:
        assert secret not in text, text
    assert f"RuntimeError: login with {REDACTED} answered {REDACTED}" in text
    assert "raise_with_secrets" in text


# -- the Redactor on its own: a fresh one, not the process-wide REDACTOR other tests fill -----------


def test_a_registered_secret_of_four_characters_or_more_is_redacted_and_shorter_ones_are_not() -> None:
    redactor = Redactor()
    redactor.register("abc")  # would shred every line containing it
    redactor.register("wxyz")

    assert redactor.text("abc wxyz abcwxyz") == f"abc {REDACTED} abc{REDACTED}"


def test_a_secret_containing_another_is_redacted_whole() -> None:
    redactor = Redactor()
    redactor.register("pass")
    redactor.register("password-1")
    redactor.register("pass")  # again: nothing changes

    assert redactor.text("<password-1> <pass>") == f"<{REDACTED}> <{REDACTED}>"


def test_jwts_are_redacted_with_or_without_registered_secrets() -> None:
    redactor = Redactor()
    assert redactor.text(f"token {JWT} end") == f"token {REDACTED} end"
    redactor.register("s3cret")
    assert redactor.text(f"{JWT} s3cret") == f"{REDACTED} {REDACTED}"


def test_values_keep_their_json_types_and_other_objects_are_redacted_as_text() -> None:
    redactor = Redactor()
    redactor.register("s3cret")

    assert redactor(None) is None and redactor(True) is True and redactor(False) is False
    assert redactor(7) == 7 and type(redactor(7)) is int and redactor(1.5) == 1.5
    assert redactor(Path("/run/s3cret")) == f"/run/{REDACTED}"
    assert redactor(("s3cret", 1, [None, {"s3cret": ("x",)}])) == [
        REDACTED, 1, [None, {REDACTED: ["x"]}]]


def test_registering_from_many_threads_loses_no_secret() -> None:
    redactor = Redactor()
    values = [f"secret-{i:04d}" for i in range(200)]
    threads = [threading.Thread(target=lambda chunk=chunk: [redactor.register(v) for v in chunk])
               for chunk in (values[i::4] for i in range(4))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert redactor.text(" ".join(values)) == " ".join([REDACTED] * len(values))
