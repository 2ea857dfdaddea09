"""Secret sources: files, environment variables, systemd credentials, literals; and redaction."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokend.errors import ConfigError
from tokend.secrets import (
    MAX_SECRET_BYTES,
    Secret,
    SecretSource,
    clear_env_cache,
    read_secret,
    secret_stamp,
)

KEY = "targets[0].password_file"


@pytest.fixture(autouse=True)
def _fresh_env_cache() -> Iterator[None]:
    clear_env_cache()
    yield
    clear_env_cache()


def secret_file(tmp_path: Path, content: bytes | str, mode: int = 0o600) -> Path:
    path = tmp_path / "secret"
    if isinstance(content, str):
        content = content.encode()
    path.write_bytes(content)
    path.chmod(mode)
    return path


def file_source(path: Path) -> SecretSource:
    return SecretSource("file", str(path), KEY)


def read_error(src: SecretSource) -> ConfigError:
    with pytest.raises(ConfigError) as exc:
        read_secret(src)
    return exc.value


# --- files ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("VMware1!\n", "VMware1!"),
        ("VMware1!\r\n", "VMware1!"),
        ("VMware1!", "VMware1!"),
        (" spaced pass ", " spaced pass "),
        ("pässwört\n", "pässwört"),
    ],
)
def test_file_secret_strips_exactly_one_trailing_newline(
    tmp_path: Path, content: str, expected: str
) -> None:
    assert read_secret(file_source(secret_file(tmp_path, content))).reveal() == expected


@pytest.mark.parametrize("content", ["VMware1!\n\n", "VMware1!\r\n\r\n", "line1\nline2\n"])
def test_file_secret_with_more_than_one_line_is_refused(tmp_path: Path, content: str) -> None:
    err = read_error(file_source(secret_file(tmp_path, content)))
    assert err.key == KEY
    assert "line break" in str(err)
    assert "VMware1!" not in str(err) and "line1" not in str(err)


@pytest.mark.parametrize("content", ["", "\n", "\r\n"])
def test_empty_secret_file_is_refused(tmp_path: Path, content: str) -> None:
    path = secret_file(tmp_path, content)
    err = read_error(file_source(path))
    assert str(err).startswith(f"{KEY}: secret file {path} is empty")


def test_missing_secret_file_names_key_and_path(tmp_path: Path) -> None:
    path = tmp_path / "nope"
    err = read_error(file_source(path))
    assert str(err).startswith(f"{KEY}: cannot read secret file {path}: No such file or directory")


def test_secret_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = secret_file(tmp_path, "VMware1!\n", mode=0o644)
    err = read_error(file_source(path))
    assert err.key == KEY
    assert "accessible to other users (mode 0644)" in str(err)
    assert f"chmod 600 {path}" in str(err)
    assert "VMware1!" not in str(err)


def test_secret_file_writable_by_others_is_refused(tmp_path: Path) -> None:
    err = read_error(file_source(secret_file(tmp_path, "x", mode=0o602)))
    assert "chmod 600" in str(err)


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o640, 0o440])
def test_secret_file_private_to_owner_and_group_is_read(tmp_path: Path, mode: int) -> None:
    assert read_secret(file_source(secret_file(tmp_path, "pw\n", mode=mode))).reveal() == "pw"


def test_secret_file_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "dir"
    directory.mkdir(mode=0o700)
    err = read_error(file_source(directory))
    assert err.key == KEY
    assert str(directory) in str(err)


def test_secret_fifo_is_refused_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    err = read_error(file_source(fifo))
    assert "not a regular file" in str(err)


def test_huge_secret_file_is_refused(tmp_path: Path) -> None:
    err = read_error(file_source(secret_file(tmp_path, b"x" * (MAX_SECRET_BYTES + 1))))
    assert "larger than" in str(err)


def test_non_utf8_secret_file_is_refused(tmp_path: Path) -> None:
    err = read_error(file_source(secret_file(tmp_path, b"\xff\xfe\n")))
    assert "not UTF-8" in str(err)


def test_secret_file_is_read_again_each_time(tmp_path: Path) -> None:
    path = secret_file(tmp_path, "old\n")
    src = file_source(path)
    assert read_secret(src).reveal() == "old"
    path.write_text("new\n")
    assert read_secret(src).reveal() == "new"


# --- environment variables ----------------------------------------------------------------------


def test_env_secret_is_removed_from_the_environment_and_still_readable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TOKEND_TEST_PW", "VMware1!")
    src = SecretSource("env", "TOKEND_TEST_PW", "targets[0].password_env")
    assert read_secret(src).reveal() == "VMware1!"
    assert "TOKEND_TEST_PW" not in os.environ
    # The re-read before every login still gets it.
    assert read_secret(src).reveal() == "VMware1!"


def test_env_secret_set_again_replaces_the_remembered_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    src = SecretSource("env", "TOKEND_TEST_PW", "targets[0].password_env")
    monkeypatch.setenv("TOKEND_TEST_PW", "one")
    assert read_secret(src).reveal() == "one"
    monkeypatch.setenv("TOKEND_TEST_PW", "two")
    assert read_secret(src).reveal() == "two"
    assert read_secret(src).reveal() == "two"


def test_missing_env_secret_names_key_and_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOKEND_TEST_PW", raising=False)
    err = read_error(SecretSource("env", "TOKEND_TEST_PW", "targets[2].api_key_env"))
    assert str(err).startswith("targets[2].api_key_env: environment variable $TOKEND_TEST_PW is not set")


def test_empty_env_secret_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKEND_TEST_PW", "")
    err = read_error(SecretSource("env", "TOKEND_TEST_PW", "targets[0].password_env"))
    assert "is empty" in str(err)


def test_env_secret_with_a_line_break_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKEND_TEST_PW", "VMware1!\n")
    err = read_error(SecretSource("env", "TOKEND_TEST_PW", "targets[0].password_env"))
    assert "line break" in str(err)
    assert "VMware1!" not in str(err)


# --- systemd credentials ------------------------------------------------------------------------


def test_credential_is_read_from_credentials_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "sfo.pw").write_text("VMware1!\n")
    (tmp_path / "sfo.pw").chmod(0o400)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    src = SecretSource("credential", "sfo.pw", "targets[0].password_credential")
    assert read_secret(src).reveal() == "VMware1!"


def test_credential_without_credentials_directory_explains_load_credential(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    err = read_error(SecretSource("credential", "sfo.pw", "targets[0].password_credential"))
    assert str(err).startswith("targets[0].password_credential: $CREDENTIALS_DIRECTORY is not set")
    assert "LoadCredential=sfo.pw:" in str(err)


def test_missing_credential_names_key_and_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    err = read_error(SecretSource("credential", "sfo.pw", "targets[0].password_credential"))
    assert str(err).startswith(
        f"targets[0].password_credential: cannot read secret file {tmp_path / 'sfo.pw'}"
    )


def test_credential_name_with_a_slash_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    err = read_error(SecretSource("credential", "../etc/shadow", "targets[0].password_credential"))
    assert "not a credential name" in str(err)


# --- literals -----------------------------------------------------------------------------------


def test_literal_secret_is_returned() -> None:
    src = SecretSource("literal", "/etc/tokend/config.toml", "targets[0].password",
                       literal=Secret("VMware1!"))
    assert read_secret(src).reveal() == "VMware1!"


# --- change stamps ------------------------------------------------------------------------------


def test_stamp_of_a_file_changes_when_the_file_is_replaced(tmp_path: Path) -> None:
    path = secret_file(tmp_path, "old\n")
    src = file_source(path)
    before = secret_stamp(src)
    assert before is not None
    assert secret_stamp(src) == before
    replacement = tmp_path / "new"
    replacement.write_text("newer\n")
    replacement.chmod(0o600)
    replacement.replace(path)
    assert secret_stamp(src) != before


def test_stamp_of_a_missing_file_is_none(tmp_path: Path) -> None:
    assert secret_stamp(file_source(tmp_path / "nope")) is None


def test_stamp_of_a_credential(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = SecretSource("credential", "pw", "targets[0].password_credential")
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    assert secret_stamp(src) is None
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert secret_stamp(src) is None
    (tmp_path / "pw").write_text("x")
    assert secret_stamp(src) is not None


def test_stamp_of_env_and_literal_sources_is_constant(monkeypatch: pytest.MonkeyPatch) -> None:
    env = SecretSource("env", "TOKEND_TEST_PW", "targets[0].password_env")
    monkeypatch.setenv("TOKEND_TEST_PW", "one")
    before = secret_stamp(env)
    read_secret(env)
    assert secret_stamp(env) == before
    literal = SecretSource("literal", "/c.toml", "targets[0].password", literal=Secret("x"))
    assert secret_stamp(literal) == secret_stamp(literal)


# --- redaction ----------------------------------------------------------------------------------


def renderings(secret: Secret) -> list[str]:
    src = SecretSource("literal", "/c.toml", "targets[0].password", literal=secret)
    # %-formatting and str.format on purpose: logging and older code render values that way.
    return [
        repr(secret), str(secret), f"{secret}", f"{secret!r}",
        "%s" % secret, "%r" % secret,  # noqa: UP031
        "{}".format(secret), "{!r}".format(secret),  # noqa: UP032
        repr([secret]), repr({"pw": secret}), repr(src), str(src), src.describe(),
    ]


@given(st.text(min_size=1))
def test_secret_value_never_shows_in_text(value: str) -> None:
    # Every rendering is the same whatever the value: nothing of it can leak.
    assert renderings(Secret(value)) == renderings(Secret("VMware1!"))
    assert "VMware1!" not in " ".join(renderings(Secret("VMware1!")))


def test_secret_reveal_digest_and_equality() -> None:
    a, b = Secret("VMware1!"), Secret("VMware1!")
    assert a.reveal() == "VMware1!"
    assert a == b and hash(a) == hash(b)
    assert a != Secret("other") and a != "VMware1!"
    assert a.digest == b.digest != Secret("other").digest
    assert "VMware1!" not in a.digest
