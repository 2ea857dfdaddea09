"""Secret sources: files, environment variables, systemd credentials, literals; and redaction."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
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
# The environment variable the env tests set (values are remembered by name, not by source).
ENV_SOURCE = SecretSource("env", "TOKEND_TEST_PW", "targets[0].password_env")


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


def test_secret_on_a_kubernetes_volume_gets_the_volume_fix_not_chmod(tmp_path: Path) -> None:
    """The kubelet's layout: NAME -> ..data/NAME, ..data -> ..<timestamp>/, files 0644."""
    stamp = tmp_path / "..2026_11_28_09_00_00.123"
    stamp.mkdir()
    secret_file(stamp, "VMware1!\n", mode=0o644)  # ..<timestamp>/secret
    (tmp_path / "..data").symlink_to(stamp.name)
    (tmp_path / "sfo-vcf01.password").symlink_to("..data/secret")
    err = read_error(file_source(tmp_path / "sfo-vcf01.password"))
    assert "on a Kubernetes Secret volume" in str(err)
    assert "defaultMode: 0440" in err.fix and "fsGroup" in err.fix
    assert "chmod" not in err.fix
    assert "VMware1!" not in str(err)


def test_docker_secret_gets_the_secrets_uid_and_mode_fix(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import tokend.secrets

    monkeypatch.setattr(tokend.secrets, "DOCKER_SECRETS_DIR", f"{tmp_path}/")
    path = secret_file(tmp_path, "VMware1!\n", mode=0o444)
    err = read_error(file_source(path))
    assert "a Docker secret" in str(err)
    assert "mode: 0400" in err.fix and f"uid: \"{os.geteuid()}\"" in err.fix
    assert "chmod" not in err.fix


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


def test_secret_file_that_is_not_utf8_names_the_key(tmp_path: Path) -> None:
    err = read_error(file_source(secret_file(tmp_path, b"p\xe4ssw\xf6rt\n")))
    assert str(err).startswith(f"{KEY}: secret file {tmp_path / 'secret'} is not UTF-8 text (")
    assert "UTF-8 text" in err.fix


@pytest.mark.parametrize("content", [b"pw\x00rd\n", b"\x00", b"pw\n\x00"])
def test_secret_file_with_a_nul_is_refused(tmp_path: Path, content: bytes) -> None:
    err = read_error(file_source(secret_file(tmp_path, content)))
    assert str(err).startswith(f"{KEY}: ")
    assert "NUL" in str(err) or "line break" in str(err)


@pytest.mark.parametrize("content", [b"\xed\xa0\x80", b"pw\xed\xb2\x80\n"])  # encoded surrogates
def test_secret_file_with_an_encoded_surrogate_is_refused(tmp_path: Path, content: bytes) -> None:
    err = read_error(file_source(secret_file(tmp_path, content)))
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
    assert read_secret(ENV_SOURCE).reveal() == "VMware1!"
    assert "TOKEND_TEST_PW" not in os.environ
    # The re-read before every login still gets it.
    assert read_secret(ENV_SOURCE).reveal() == "VMware1!"


def test_env_secret_set_again_replaces_the_remembered_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TOKEND_TEST_PW", "one")
    assert read_secret(ENV_SOURCE).reveal() == "one"
    monkeypatch.setenv("TOKEND_TEST_PW", "two")
    assert read_secret(ENV_SOURCE).reveal() == "two"
    assert read_secret(ENV_SOURCE).reveal() == "two"


def test_missing_env_secret_names_key_and_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOKEND_TEST_PW", raising=False)
    err = read_error(SecretSource("env", "TOKEND_TEST_PW", "targets[2].api_key_env"))
    assert str(err).startswith("targets[2].api_key_env: environment variable $TOKEND_TEST_PW is not set")


def test_empty_env_secret_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKEND_TEST_PW", "")
    err = read_error(ENV_SOURCE)
    assert "is empty" in str(err)


def test_env_secret_with_a_line_break_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKEND_TEST_PW", "VMware1!\n")
    err = read_error(ENV_SOURCE)
    assert "line break" in str(err)
    assert "VMware1!" not in str(err)


def test_env_secret_that_is_not_utf8_under_the_c_locale_names_the_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Under LC_ALL=C Python decodes the environment with surrogateescape: os.environ would hold
    # "\udce4", a str that cannot be sent. The bytes are what the OS handed over.
    monkeypatch.setitem(os.environb, b"TOKEND_TEST_PW", b"\xe4")
    assert os.environ["TOKEND_TEST_PW"] == "\udce4"
    err = read_error(ENV_SOURCE)
    assert str(err).startswith(
        "targets[0].password_env: environment variable $TOKEND_TEST_PW is not valid UTF-8 (")
    assert "\udce4" not in str(err) and "\xe4" not in str(err)
    # Removed all the same, from both views of the environment.
    assert "TOKEND_TEST_PW" not in os.environ
    assert b"TOKEND_TEST_PW" not in os.environb


def test_env_secret_replaced_by_bytes_that_are_not_utf8_forgets_the_old_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TOKEND_TEST_PW", "old")
    assert read_secret(ENV_SOURCE).reveal() == "old"
    monkeypatch.setitem(os.environb, b"TOKEND_TEST_PW", b"new\xff")
    assert "not valid UTF-8" in str(read_error(ENV_SOURCE))
    assert "is not set" in str(read_error(ENV_SOURCE))  # never the old value in its place


def test_env_secret_in_utf8_is_read_whatever_the_locale(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(os.environb, b"TOKEND_TEST_PW", "pässwört".encode())
    assert read_secret(ENV_SOURCE).reveal() == "pässwört"
    assert b"TOKEND_TEST_PW" not in os.environb


# --- systemd credentials ------------------------------------------------------------------------


def test_credential_is_read_from_credentials_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "sfo.pw").write_text("VMware1!\n")
    (tmp_path / "sfo.pw").chmod(0o400)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    src = SecretSource("credential", "sfo.pw", "targets[0].password_credential")
    assert read_secret(src).reveal() == "VMware1!"


def test_credential_that_is_not_utf8_names_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "sfo.pw").write_bytes(b"\xe4\n")
    (tmp_path / "sfo.pw").chmod(0o400)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    err = read_error(SecretSource("credential", "sfo.pw", "targets[0].password_credential"))
    assert str(err).startswith("targets[0].password_credential: secret file ")
    assert "not UTF-8" in str(err)


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


@pytest.mark.parametrize(("value", "problem"), [("pw\0rd", "NUL"), ("pw\ud800", "not valid UTF-8"),
                                                ("\udce4", "not valid UTF-8")])
def test_literal_secret_that_cannot_be_sent_is_refused(value: str, problem: str) -> None:
    src = SecretSource("literal", "/etc/tokend/config.toml", "targets[0].password",
                       literal=Secret(value))
    err = read_error(src)
    assert str(err).startswith("targets[0].password: ") and problem in str(err)


# --- any bytes ----------------------------------------------------------------------------------


def check_read(src: SecretSource, raw: bytes) -> None:
    """Either a secret that can be sent, or a ConfigError naming the key; nothing else."""
    try:
        value = read_secret(src).reveal()
    except ConfigError as exc:
        assert str(exc).startswith(f"{src.key}: "), exc
        return
    encoded = value.encode("utf-8")  # never a surrogate
    assert encoded and b"\0" not in encoded and b"\n" not in encoded and b"\r" not in encoded
    assert raw.startswith(encoded)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=40) | st.text(max_size=20).map(lambda t: t.encode("utf-8", "surrogatepass")),
       kind=st.sampled_from(["file", "env", "credential"]))
def test_any_bytes_from_a_source_only_raise_config_errors(
    raw: bytes, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    clear_env_cache()
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "secret"
        path.write_bytes(raw)
        path.chmod(0o600)
        if kind == "file":
            src = SecretSource("file", str(path), "targets[0].password_file")
        elif kind == "credential":
            monkeypatch.setenv("CREDENTIALS_DIRECTORY", directory)
            src = SecretSource("credential", "secret", "targets[0].password_credential")
        else:
            raw = raw.replace(b"\0", b"")  # the OS cannot hold a NUL in an environment value
            monkeypatch.setitem(os.environb, b"TOKEND_TEST_PW", raw)
            src = ENV_SOURCE
        check_read(src, raw)
        assert b"TOKEND_TEST_PW" not in os.environb


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
    env = ENV_SOURCE
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
