"""Config loading: every rule of SPEC §3, each error naming its key path and the fix."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import write_secret
from tokend.config import (
    API_KEY_KEYS,
    FILE_SINK_KEYS,
    LOG_KEYS,
    METRICS_KEYS,
    PASSWORD_KEYS,
    SERVER_KEYS,
    TARGET_KEYS,
    TOP_KEYS,
    FileSink,
    check_secrets,
    describe,
    format_duration,
    load_config,
    parse_config,
    parse_duration,
)
from tokend.errors import ConfigError
from tokend.secrets import clear_env_cache

REPO = Path(__file__).resolve().parent.parent
PIN = "sha256:" + ":".join(["AB"] * 32)


@pytest.fixture(autouse=True)
def _fresh_env_cache() -> Iterator[None]:
    clear_env_cache()
    yield
    clear_env_cache()


@pytest.fixture
def pw_file(tmp_path: Path) -> Path:
    return write_secret(tmp_path / "sfo.password", "VMware1!")


@pytest.fixture
def ca_file(tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    return path


def target(pw_file: Path, **overrides: str | None) -> str:
    """A [[targets]] table; each override is raw TOML for a key (None removes the key)."""
    keys: dict[str, str | None] = {
        "name": '"sfo-vcf01"',
        "url": '"https://sfo-vcf01.rainpole.io"',
        "username": '"administrator@vsphere.local"',
        "password_file": f'"{pw_file}"',
    }
    keys.update(overrides)
    lines = [f"{k} = {v}" for k, v in keys.items() if v is not None]
    return "[[targets]]\n" + "\n".join(lines) + "\n"


def write(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    path.chmod(mode)
    return path


def load(tmp_path: Path, text: str, mode: int = 0o600) -> Any:
    return load_config(write(tmp_path, text, mode))


def error(tmp_path: Path, text: str, mode: int = 0o600) -> str:
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, text, mode)
    return str(exc.value)


# --- durations ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("500ms", 0.5), ("30s", 30.0), ("5m", 300.0), ("1h", 3600.0), ("1.5s", 1.5),
     ("2h30m", 9000.0), ("1m30s", 90.0), (" 15s ", 15.0), (10, 10.0), (0.25, 0.25), (0, 0.0)],
)
def test_durations_with_units_or_seconds(value: object, seconds: float) -> None:
    assert parse_duration(value, "k") == seconds


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("30", "k: '30' has no unit (write \"30s\" for seconds"),
        ("5x", "k: '5x' is not a duration"),
        ("", "k: '' is not a duration"),
        ("1s 2s", "is not a duration"),
        ("-1s", "is not a duration"),
        (-3, "k: -3 is negative"),
        (float("nan"), "k: nan is not a finite duration"),
        (float("inf"), "k: inf is not a finite duration"),
        (10**400, "out of range"),
        (True, "k: expected a duration, got boolean"),
        ([1], "k: expected a duration, got array"),
    ],
)
def test_bad_durations_name_the_key(value: object, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_duration(value, "k")
    assert message in str(exc.value)


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(["ms", "s", "m", "h"]))
def test_duration_round_trip_single_unit(n: int, unit: str) -> None:
    factor = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    assert parse_duration(f"{n}{unit}", "k") == pytest.approx(n * factor)


@given(st.integers(min_value=0, max_value=100 * 3600))
def test_duration_round_trip_through_format(seconds: int) -> None:
    text = format_duration(seconds) or "0s"
    assert parse_duration(text, "k") == seconds


@given(st.floats(min_value=0, max_value=1e9, allow_nan=False))
def test_duration_number_of_seconds_is_taken_as_is(seconds: float) -> None:
    assert parse_duration(seconds, "k") == seconds


@given(st.text(max_size=12))
def test_any_text_is_a_duration_or_a_config_error(text: str) -> None:
    try:
        assert parse_duration(text, "k") >= 0
    except ConfigError as exc:
        assert exc.key == "k"


# --- loading the file ---------------------------------------------------------------------------


def test_minimal_config_gets_the_documented_defaults(tmp_path: Path, pw_file: Path) -> None:
    config = load(tmp_path, target(pw_file))
    server, t = config.server, config.targets[0]
    assert str(server.socket) == "/run/tokend/tokend.sock"
    assert server.socket_mode == 0o660 and not server.socket_mode_set
    assert server.allowed_uids == frozenset() and server.allowed_gids == frozenset()
    assert (config.metrics.host, config.metrics.port) == ("127.0.0.1", 9464)
    assert (config.log.level, config.log.format) == ("info", "auto")
    assert config.default_target == "sfo-vcf01"
    assert t.url == "https://sfo-vcf01.rainpole.io"
    assert t.username == "administrator@vsphere.local"
    assert t.password is not None and t.api_key is None
    assert (t.secret.kind, t.secret.ref, t.secret.key) == (
        "file", str(pw_file), "targets[0].password_file")
    assert (t.refresh_at, t.jitter, t.request_timeout, t.max_backoff) == (0.7, 0.05, 15.0, 300.0)
    assert (t.max_login_failures, t.login_retry_interval) == (3, 60.0)
    assert t.verify_tls and t.ca_file is None and t.tls_fingerprint == ()
    assert not t.revoke_on_exit and t.file_sink is None


def test_full_config_is_read(tmp_path: Path, pw_file: Path, ca_file: Path) -> None:
    config = load(tmp_path, f"""
[server]
socket = "/run/x/t.sock"
socket_mode = "0600"
socket_group = "vcf-automation"
allowed_uids = [1000, 1001]
allowed_gids = [42]
default_target = "b"

[metrics]
listen = "[::1]:0"

[log]
level = "debug"
format = "json"

{target(pw_file, name='"a"', ca_file=f'"{ca_file}"')}
{target(pw_file, name='"b"', url='"http://127.0.0.1:8443/prefix/"',
        tls_fingerprint=f'["{PIN.lower()}", "sha256:{"cd" * 32}"]',
        verify_tls="true", refresh_at="0.5", jitter="0.1", request_timeout='"2s"',
        max_backoff="30", max_login_failures="5", login_retry_interval='"1m"',
        revoke_on_exit="true", max_token_lifetime='"90m"',
        file_sink='{ path = "/run/tokend/b.token", mode = "0640", group = "g", format = "json", '
                  'keep_on_exit = true }')}
""")
    assert config.server.socket == Path("/run/x/t.sock")
    assert config.server.socket_mode == 0o600 and config.server.socket_mode_set
    assert config.server.socket_group == "vcf-automation"
    assert config.server.allowed_uids == {1000, 1001} and config.server.allowed_gids == {42}
    assert config.default_target == "b"
    assert (config.metrics.host, config.metrics.port) == ("::1", 0)
    assert (config.log.level, config.log.format) == ("debug", "json")
    a, b = config.target("a"), config.target("b")
    assert a is not None and b is not None
    assert b.url == "http://127.0.0.1:8443/prefix"
    assert a.ca_file == ca_file  # a pin and a CA file exclude each other (SPEC §8.8)
    assert (a.max_token_lifetime, b.max_token_lifetime) == (7200.0, 5400.0)
    assert b.tls_fingerprint == (PIN, "sha256:" + ":".join(["CD"] * 32))
    assert (b.refresh_at, b.jitter, b.request_timeout, b.max_backoff) == (0.5, 0.1, 2.0, 30.0)
    assert (b.max_login_failures, b.login_retry_interval, b.revoke_on_exit) == (5, 60.0, True)
    assert b.file_sink == FileSink(Path("/run/tokend/b.token"), 0o640, "g", "json", True)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(tmp_path / "nope.toml")
    assert str(exc.value).startswith(f"{tmp_path / 'nope.toml'}: config file not found (")


def test_config_path_that_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)


def test_toml_syntax_error_names_the_line(tmp_path: Path, pw_file: Path) -> None:
    message = error(tmp_path, target(pw_file) + "refresh_at = = 1\n")
    assert "invalid TOML" in message and "line 6" in message


def test_toml_error_at_the_end_of_the_file_names_the_last_line(tmp_path: Path,
                                                              pw_file: Path) -> None:
    message = error(tmp_path, target(pw_file) + '[server')
    assert "invalid TOML at the end of the file (line 6)" in message, message
    assert "opened above is never closed" in message


@pytest.mark.parametrize(
    ("line", "hint"),
    [
        ("socket_mode = 0660", 'write socket_mode = "0660"'),
        ("socket_mode = 0600  # the mode", 'write socket_mode = "0600"'),
        ('socket = "/run/tokend.sock', "closing quote is missing"),
        ("state_dir = /var/lib/tokend", 'strings need quotes: write state_dir = "/var/lib/tokend"'),
    ],
)
def test_toml_errors_get_a_hint_for_the_usual_mistake(tmp_path: Path, pw_file: Path, line: str,
                                                       hint: str) -> None:
    message = error(tmp_path, f"[server]\n{line}\n" + target(pw_file))
    assert "invalid TOML at line 2" in message and hint in message, message


def test_a_table_declared_twice_gets_the_double_bracket_hint(tmp_path: Path,
                                                              pw_file: Path) -> None:
    message = error(tmp_path, target(pw_file).replace("[[targets]]", "[targets]") * 2)
    assert "may appear only once" in message and "[[targets]]" in message, message


def test_toml_error_never_quotes_the_line(tmp_path: Path, pw_file: Path) -> None:
    message = error(tmp_path, target(pw_file, password_file=None) + 'password = "s3cret\n')
    assert "s3cret" not in message and "line 5" in message


def test_inline_table_over_two_lines_gets_a_hint(tmp_path: Path, pw_file: Path) -> None:
    message = error(tmp_path, target(pw_file) + 'file_sink = { path = "/run/t.token",\n'
                    ' mode = "0600" }\n')
    assert "must be on one line" in message, message


def test_non_utf8_config_file(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(b'x = "\xff"\n')
    with pytest.raises(ConfigError):
        load_config(path)


# --- unknown keys and types ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[server]\nsokcet = "/x"\n', "server.sokcet: unknown key (did you mean 'socket'?)"),
        ('[sever]\n', "sever: unknown key (did you mean 'server'?)"),
        ('[metrics]\nlisten_on = ""\n', "metrics.listen_on: unknown key (did you mean 'listen'?)"),
        ('[log]\nlevle = "info"\n', "log.levle: unknown key (did you mean 'level'?)"),
        ('[server]\nzzz = 1\n', "server.zzz: unknown key (remove it; known keys here: socket,"),
        ('[server]\n"a b" = 1\n', 'server."a b": unknown key'),
    ],
)
def test_unknown_keys_are_refused_with_a_suggestion(
    tmp_path: Path, pw_file: Path, text: str, message: str
) -> None:
    assert error(tmp_path, text + target(pw_file)).startswith(message)


@pytest.mark.parametrize(
    ("key", "meant"),
    [("allowed_groups", "allowed_gids"), ("allowed_users", "allowed_uids"),
     ("socket_permissions", "socket_mode"), ("socket_gid", "socket_group"),
     ("allowed_gid", "allowed_gids"), ("shutdown_grace", "shutdown_timeout")],
)
def test_near_miss_suggests_the_key_meant_not_the_most_alike(
        tmp_path: Path, pw_file: Path, key: str, meant: str) -> None:
    message = error(tmp_path, f"[server]\n{key} = []\n" + target(pw_file))
    assert message.startswith(f"server.{key}: unknown key (did you mean '{meant}'?)"), message


@pytest.mark.parametrize(("value", "seconds"), [(None, 5.0), ('"0s"', 0.0), ('"30s"', 30.0),
                                               ("2", 2.0)])
def test_shutdown_timeout(tmp_path: Path, pw_file: Path, value: str | None, seconds: float) -> None:
    text = f"[server]\nshutdown_timeout = {value}\n" if value else ""
    assert load(tmp_path, text + target(pw_file)).server.shutdown_timeout == seconds


def test_shutdown_timeout_longer_than_systemd_would_wait_is_refused(tmp_path: Path,
                                                                   pw_file: Path) -> None:
    message = error(tmp_path, '[server]\nshutdown_timeout = "10m"\n' + target(pw_file))
    assert message.startswith("server.shutdown_timeout: 10m is longer than 5m"), message


def test_allow_lists_take_names_as_socket_group_does(tmp_path: Path, pw_file: Path) -> None:
    import grp
    import pwd

    group = grp.getgrgid(os.getgid()).gr_name
    user = pwd.getpwuid(os.getuid()).pw_name
    config = load(tmp_path, f'[server]\nsocket_group = "{group}"\nallowed_gids = ["{group}", 7]\n'
                  f'allowed_uids = ["{user}"]\n' + target(pw_file))
    assert config.server.allowed_gids == {os.getgid(), 7}
    assert config.server.allowed_uids == {os.getuid()}


def test_unknown_target_key(tmp_path: Path, pw_file: Path) -> None:
    text = target(pw_file) + target(pw_file, name='"b"', pasword_env='"X"')
    assert error(tmp_path, '[server]\ndefault_target = "b"\n' + text).startswith(
        "targets[1].pasword_env: unknown key (did you mean 'password_env'?)")


def test_unknown_file_sink_key(tmp_path: Path, pw_file: Path) -> None:
    message = error(tmp_path, target(pw_file, file_sink='{ path = "/t", mod = "0600" }'))
    assert message.startswith("targets[0].file_sink.mod: unknown key (did you mean 'mode'?)")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("server = 1\n", "server: expected a table, got integer"),
        ('[server]\nsocket = 5\n', "server.socket: expected a string, got integer"),
        ('[server]\nallowed_uids = 5\n', "server.allowed_uids: expected an array of uids or names"),
        ('[server]\nallowed_uids = [1, "no-such-user-x"]\n',
         "server.allowed_uids[1]: no user named 'no-such-user-x'"),
        ('[server]\nallowed_gids = [true]\n',
         "server.allowed_gids[0]: expected a numeric gid or a name, got boolean"),
        ('[server]\nallowed_gids = [-1]\n', "server.allowed_gids[0]: -1 is not a valid gid"),
        ('[server]\nallowed_gids = ["nosuchgroup"]\n',
         "server.allowed_gids[0]: no group named 'nosuchgroup' (create the group, fix the name,"
         " or write its numeric gid)"),
        ('[server]\nsocket_group = 1\n', "server.socket_group: expected a string, got integer"),
        ('[metrics]\nlisten = 9464\n', "metrics.listen: expected a string, got integer"),
        ('[log]\nlevel = 1979-05-27\n', "log.level: expected a string, got date"),
    ],
)
def test_wrong_types_name_the_key(tmp_path: Path, pw_file: Path, text: str, message: str) -> None:
    assert error(tmp_path, text + target(pw_file)).startswith(message)


def test_wrong_type_in_second_target(tmp_path: Path, pw_file: Path) -> None:
    text = '[server]\ndefault_target = "a"\n' + target(pw_file, name='"a"') + target(
        pw_file, name='"b"', url="42")
    assert error(tmp_path, text).startswith("targets[1].url: expected a string, got integer")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"verify_tls": '"yes"'}, "targets[0].verify_tls: expected a boolean, got string"),
        ({"revoke_on_exit": "1"}, "targets[0].revoke_on_exit: expected a boolean, got integer"),
        ({"refresh_at": '"0.7"'}, "targets[0].refresh_at: expected a number, got string"),
        ({"jitter": "true"}, "targets[0].jitter: expected a number, got boolean"),
        ({"max_login_failures": "3.0"},
         "targets[0].max_login_failures: expected an integer, got float"),
        ({"request_timeout": "[]"}, "targets[0].request_timeout: expected a duration, got array"),
        ({"username": "1"}, "targets[0].username: expected a string, got integer"),
        ({"password_file": "{}"}, "targets[0].password_file: expected a string, got table"),
        ({"file_sink": '"/run/x"'}, "targets[0].file_sink: expected a table, got string"),
        ({"tls_fingerprint": "5"},
         "targets[0].tls_fingerprint: expected a string or an array of strings, got integer"),
        ({"tls_fingerprint": "[5]"}, "targets[0].tls_fingerprint[0]: expected a string, got integer"),
    ],
)
def test_wrong_target_types_name_the_key(
    tmp_path: Path, pw_file: Path, override: dict[str, str], message: str
) -> None:
    assert error(tmp_path, target(pw_file, **override)).startswith(message)


# --- server -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "mode"), [('"0660"', 0o660), ('"660"', 0o660), ('"0o600"', 0o600), ("0o640", 0o640),
                        ('"0"', 0)],
)
def test_socket_mode_forms(tmp_path: Path, pw_file: Path, value: str, mode: int) -> None:
    config = load(tmp_path, f"[server]\nsocket_mode = {value}\n" + target(pw_file))
    assert config.server.socket_mode == mode and config.server.socket_mode_set


@pytest.mark.parametrize(
    ("value", "message"),
    [('"rw-rw----"', "is not an octal file mode"), ('"0968"', "is not an octal file mode"),
     ('"4755"', "not a permission mode between 0000 and 0777"),
     ("660", "not a permission mode between 0000 and 0777"),
     ("true", "expected an octal string, got boolean")],
)
def test_bad_socket_mode(tmp_path: Path, pw_file: Path, value: str, message: str) -> None:
    got = error(tmp_path, f"[server]\nsocket_mode = {value}\n" + target(pw_file))
    assert got.startswith("server.socket_mode: ") and message in got


def test_socket_group_alone_marks_socket_mode_set(tmp_path: Path, pw_file: Path) -> None:
    config = load(tmp_path, '[server]\nsocket_group = "vcf"\n' + target(pw_file))
    assert config.server.socket_group == "vcf" and config.server.socket_mode_set


@pytest.mark.parametrize(
    ("value", "message"),
    [('"tokend.sock"', "server.socket: 'tokend.sock' is not an absolute path"),
     ('"/run/tokend/"', "server.socket: '/run/tokend/' is a directory path"),
     (f'"/{"x" * 120}"', "server.socket: longer than 107 bytes")],
)
def test_bad_socket_path(tmp_path: Path, pw_file: Path, value: str, message: str) -> None:
    assert error(tmp_path, f"[server]\nsocket = {value}\n" + target(pw_file)).startswith(message)


def test_default_target_required_with_two_targets(tmp_path: Path, pw_file: Path) -> None:
    text = target(pw_file, name='"a"') + target(pw_file, name='"b"')
    assert error(tmp_path, text) == (
        "server.default_target: required when there are two or more targets "
        "(set it to one of 'a', 'b')")


def test_default_target_must_name_a_target(tmp_path: Path, pw_file: Path) -> None:
    message = error(tmp_path, '[server]\ndefault_target = "c"\n' + target(pw_file))
    assert message == "server.default_target: no target is named 'c' (use one of 'sfo-vcf01')"


# --- metrics and log ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("listen", "host", "port"),
    [('""', None, 9464), ('"0.0.0.0:9100"', "0.0.0.0", 9100), ('"[::1]:9464"', "::1", 9464),
     ('"localhost:65535"', "localhost", 65535), ('"127.0.0.1:0"', "127.0.0.1", 0)],
)
def test_metrics_listen(
    tmp_path: Path, pw_file: Path, listen: str, host: str | None, port: int
) -> None:
    config = load(tmp_path, f"[metrics]\nlisten = {listen}\n" + target(pw_file))
    assert config.metrics.host == host
    if host is not None:
        assert config.metrics.port == port


@pytest.mark.parametrize(
    "listen", ['"9464"', '":9464"', '"127.0.0.1"', '"127.0.0.1:70000"', '"127.0.0.1:x"',
               '"::1:9464"', '"[::1]"', '"[nothost]:1"', '"bad host:1"', '"1.2.3.4:-1"'],
)
def test_bad_metrics_listen(tmp_path: Path, pw_file: Path, listen: str) -> None:
    message = error(tmp_path, f"[metrics]\nlisten = {listen}\n" + target(pw_file))
    assert message.startswith("metrics.listen: ")
    assert '"" disables metrics' in message


@pytest.mark.parametrize(
    ("text", "message"),
    [('level = "verbose"', "log.level: 'verbose' is not one of debug | info | warning | error"),
     ('format = "xml"', "log.format: 'xml' is not one of json | console | auto")],
)
def test_bad_log_settings(tmp_path: Path, pw_file: Path, text: str, message: str) -> None:
    assert error(tmp_path, f"[log]\n{text}\n" + target(pw_file)).startswith(message)


def test_log_level_is_case_insensitive(tmp_path: Path, pw_file: Path) -> None:
    assert load(tmp_path, '[log]\nlevel = "WARNING"\n' + target(pw_file)).log.level == "warning"


# --- targets ------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "targets = []\n", "[server]\n"])
def test_at_least_one_target(tmp_path: Path, text: str) -> None:
    assert error(tmp_path, text).startswith(
        "targets: at least one [[targets]] table is required")


def test_single_bracket_targets_table(tmp_path: Path, pw_file: Path) -> None:
    message = error(tmp_path, target(pw_file).replace("[[targets]]", "[targets]"))
    assert message.startswith("targets: expected an array of tables, got table")
    assert "[[targets]]" in message


def test_target_that_is_not_a_table(tmp_path: Path) -> None:
    assert error(tmp_path, 'targets = ["a"]\n').startswith("targets[0]: expected a table, got string")


@pytest.mark.parametrize("name", ["sfo-vcf01", "a", "a.b_c-d", "0"])
def test_valid_target_names(tmp_path: Path, pw_file: Path, name: str) -> None:
    assert load(tmp_path, target(pw_file, name=f'"{name}"')).targets[0].name == name


@pytest.mark.parametrize("name", ["SFO", "a b", "a/b", "", "..", ".", "ä"])
def test_invalid_target_names(tmp_path: Path, pw_file: Path, name: str) -> None:
    message = error(tmp_path, target(pw_file, name=f'"{name}"'))
    assert message.startswith(f"targets[0].name: {name!r} is not a valid target name")


def test_missing_name_and_url(tmp_path: Path, pw_file: Path) -> None:
    assert error(tmp_path, target(pw_file, name=None)).startswith("targets[0].name: missing (add")
    assert error(tmp_path, target(pw_file, url=None)).startswith("targets[0].url: missing (add")


def test_target_names_are_unique(tmp_path: Path, pw_file: Path) -> None:
    text = '[server]\ndefault_target = "a"\n' + target(pw_file, name='"a"') * 2
    assert error(tmp_path, text) == (
        "targets[1].name: 'a' is already the name of targets[0] (give every target a unique name)")


@pytest.mark.parametrize(
    ("url", "normalised"),
    [("https://sfo.rainpole.io/", "https://sfo.rainpole.io"),
     ("HTTPS://sfo.rainpole.io:8443", "https://sfo.rainpole.io:8443"),
     ("https://sfo.rainpole.io/base/", "https://sfo.rainpole.io/base"),
     ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
     ("http://127.5.6.7", "http://127.5.6.7"),
     ("http://[::1]:8443/", "http://[::1]:8443"),
     ("http://localhost:8443", "http://localhost:8443"),
     ("https://[2001:db8::1]", "https://[2001:db8::1]")],
)
def test_url_is_normalised(tmp_path: Path, pw_file: Path, url: str, normalised: str) -> None:
    assert load(tmp_path, target(pw_file, url=f'"{url}"')).targets[0].url == normalised


@pytest.mark.parametrize(
    ("url", "message"),
    [("http://sfo.rainpole.io",
      "targets[0].url: http:// is only allowed for a loopback host (use https://)"),
     ("http://10.0.0.1", "http:// is only allowed for a loopback host"),
     ("ftp://sfo.rainpole.io", "is not an https:// URL"),
     ("sfo.rainpole.io", "is not an https:// URL"),
     ("https://", "has no host"),
     ("https://admin:pw@sfo.rainpole.io", "must not carry a user name or password"),
     ("https://sfo.rainpole.io/?a=b", "must not have a query or fragment"),
     ("https://sfo.rainpole.io/#x", "must not have a query or fragment"),
     ("https://sfo.rainpole.io:99999", "is not a valid URL"),
     ("https://sfo.rainpole.io:0", "port 0 is not a valid port"),
     ("https://sfo .rainpole.io", "contains spaces")],
)
def test_bad_urls(tmp_path: Path, pw_file: Path, url: str, message: str) -> None:
    got = error(tmp_path, target(pw_file, url=f'"{url}"'))
    assert got.startswith("targets[0].url: ")
    assert message in got
    assert "pw@" not in got or "admin:pw" in url  # the message only repeats what was written


# --- secret sources -----------------------------------------------------------------------------


def test_no_secret_source(tmp_path: Path, pw_file: Path) -> None:
    message = error(tmp_path, target(pw_file, password_file=None))
    assert message.startswith("targets[0]: no secret source (set exactly one of password_file")


def test_two_secret_sources(tmp_path: Path, pw_file: Path) -> None:
    message = error(tmp_path, target(pw_file, api_key_env='"KEY"'))
    assert message.startswith(
        "targets[0]: more than one secret source (password_file, api_key_env) (keep exactly one")


@pytest.mark.parametrize(
    ("key", "value", "kind", "ref"),
    [("password_env", '"SFO_PW"', "env", "SFO_PW"),
     ("password_credential", '"sfo.pw"', "credential", "sfo.pw"),
     ("password_file", '"/etc/tokend/x"', "file", "/etc/tokend/x")],
)
def test_password_sources(
    tmp_path: Path, pw_file: Path, key: str, value: str, kind: str, ref: str
) -> None:
    t = load(tmp_path, target(pw_file, **{"password_file": None, key: value})).targets[0]
    assert t.password is not None and t.api_key is None
    assert (t.secret.kind, t.secret.ref, t.secret.key) == (kind, ref, f"targets[0].{key}")


@pytest.mark.parametrize(
    ("key", "value", "kind"),
    [("api_key_env", '"SFO_KEY"', "env"), ("api_key_credential", '"sfo.key"', "credential"),
     ("api_key_file", '"/etc/tokend/key"', "file"), ("api_key", '"k-123"', "literal")],
)
def test_api_key_sources_take_no_username(
    tmp_path: Path, pw_file: Path, key: str, value: str, kind: str
) -> None:
    t = load(tmp_path, target(pw_file, **{"password_file": None, "username": None, key: value})).targets[0]
    assert t.api_key is not None and t.password is None and t.username is None
    assert t.secret.kind == kind


def test_username_is_required_with_a_password(tmp_path: Path, pw_file: Path) -> None:
    message = error(tmp_path, target(pw_file, username=None))
    assert message.startswith("targets[0].username: required with password_file (add username")


def test_username_is_refused_with_an_api_key(tmp_path: Path, pw_file: Path) -> None:
    message = error(tmp_path, target(pw_file, password_file=None, api_key_env='"K"'))
    assert message.startswith("targets[0].username: not used with an API key (remove username")


def test_empty_username(tmp_path: Path, pw_file: Path) -> None:
    assert error(tmp_path, target(pw_file, username='""')).startswith("targets[0].username: empty")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [("password_file", '"relative/pw"', "targets[0].password_file: 'relative/pw' is not an absolute"),
     ("password_file", '""', "targets[0].password_file: '' is not an absolute path"),
     ("password_env", '"1BAD"', "targets[0].password_env: '1BAD' is not an environment variable"),
     ("password_env", '"A-B"', "targets[0].password_env: 'A-B' is not an environment variable"),
     ("password_credential", '"dir/pw"', "targets[0].password_credential: 'dir/pw' is not a credential"),
     ("password_credential", '".."', "targets[0].password_credential: '..' is not a credential"),
     ("password_credential", '""', "targets[0].password_credential: '' is not a credential")],
)
def test_bad_secret_references(
    tmp_path: Path, pw_file: Path, key: str, value: str, message: str
) -> None:
    assert error(tmp_path, target(pw_file, **{"password_file": None, key: value})).startswith(message)


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_literal_password_in_a_private_config_file(
    tmp_path: Path, pw_file: Path, mode: int
) -> None:
    text = target(pw_file, password_file=None, password='"VMware1!"')
    t = load(tmp_path, text, mode=mode).targets[0]
    assert t.secret.kind == "literal" and t.secret.literal is not None
    assert t.secret.literal.reveal() == "VMware1!"
    assert "VMware1!" not in repr(t)


@pytest.mark.parametrize(("mode", "key"), [(0o644, "password"), (0o640, "password"),
                                           (0o660, "api_key")])
def test_literal_secret_in_a_shared_config_file_is_refused(
    tmp_path: Path, pw_file: Path, mode: int, key: str
) -> None:
    if key == "password":
        text = target(pw_file, password_file=None, password='"VMware1!"')
    else:
        text = target(pw_file, password_file=None, username=None, api_key='"VMware1!"')
    path = tmp_path / "config.toml"
    message = error(tmp_path, text, mode=mode)
    assert message.startswith(f"targets[0].{key}: a literal secret is refused because {path} "
                              f"is mode {mode:04o}")
    assert f"chmod 600 {path}, or use {key}_file" in message
    assert "VMware1!" not in message


def test_literal_password_with_a_line_break_is_refused(tmp_path: Path, pw_file: Path) -> None:
    message = error(tmp_path, target(pw_file, password_file=None, password='"pw\\n"'))
    assert message.startswith("targets[0].password: the secret contains a line break")


def test_load_config_reads_no_secret(tmp_path: Path, pw_file: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SFO_PW", "VMware1!")
    text = target(pw_file, password_file=None, password_env='"SFO_PW"')
    config = load(tmp_path, text)
    assert os.environ["SFO_PW"] == "VMware1!"
    check_secrets(config)
    assert "SFO_PW" not in os.environ
    check_secrets(config)  # still readable after removal from the environment


def test_check_secrets_names_the_failing_target(tmp_path: Path, pw_file: Path) -> None:
    text = '[server]\ndefault_target = "a"\n' + target(pw_file, name='"a"') + target(
        pw_file, name='"b"', password_file=f'"{tmp_path / "missing"}"')
    config = load(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        check_secrets(config)
    assert str(exc.value).startswith(
        f"targets[1].password_file: cannot read secret file {tmp_path / 'missing'}")


def test_check_secrets_refuses_a_world_readable_secret_file(tmp_path: Path, pw_file: Path) -> None:
    pw_file.chmod(0o644)
    with pytest.raises(ConfigError, match=f"chmod 600 {re.escape(str(pw_file))}"):
        check_secrets(load(tmp_path, target(pw_file)))


# --- TLS ----------------------------------------------------------------------------------------


def test_ca_file_must_exist(tmp_path: Path, pw_file: Path) -> None:
    missing = tmp_path / "nope.pem"
    message = error(tmp_path, target(pw_file, ca_file=f'"{missing}"'))
    assert message.startswith(f"targets[0].ca_file: cannot read {missing}: No such file")


def test_ca_file_must_hold_a_certificate(tmp_path: Path, pw_file: Path) -> None:
    bogus = tmp_path / "bogus.pem"
    bogus.write_text("not a certificate\n")
    message = error(tmp_path, target(pw_file, ca_file=f'"{bogus}"'))
    assert message.startswith(f"targets[0].ca_file: {bogus} holds no PEM certificate")


def test_ca_file_must_be_absolute(tmp_path: Path, pw_file: Path) -> None:
    message = error(tmp_path, target(pw_file, ca_file='"ca.pem"'))
    assert message.startswith("targets[0].ca_file: 'ca.pem' is not an absolute path")


def test_ca_file_with_verification_off_is_refused(
    tmp_path: Path, pw_file: Path, ca_file: Path
) -> None:
    message = error(tmp_path, target(pw_file, ca_file=f'"{ca_file}"', verify_tls="false"))
    assert message.startswith("targets[0].ca_file: has no effect with verify_tls = false")


def test_ca_file_with_a_pin_is_refused_naming_both_keys(
    tmp_path: Path, pw_file: Path, ca_file: Path
) -> None:
    message = error(tmp_path, '[server]\ndefault_target = "a"\n' + target(pw_file, name='"a"')
                    + target(pw_file, name='"b"', ca_file=f'"{ca_file}"', tls_fingerprint=f'"{PIN}"'))
    assert message.startswith("targets[1].ca_file: cannot be combined with targets[1].tls_fingerprint")
    assert "a pin replaces chain verification" in message
    assert "remove ca_file" in message and "remove tls_fingerprint" in message


def test_ca_file_bundle_with_non_ascii_comments_is_accepted(tmp_path: Path, pw_file: Path) -> None:
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes("# Issuer: CN=NetLock Arany (Class Gold) Főtanúsítvány\n".encode()
                       + trustme.CA().cert_pem.bytes())
    assert load(tmp_path, target(pw_file, ca_file=f'"{bundle}"')).targets[0].ca_file == bundle


def test_ca_file_with_a_broken_certificate_is_refused(tmp_path: Path, pw_file: Path) -> None:
    bogus = tmp_path / "bogus.pem"
    bogus.write_text("-----BEGIN CERTIFICATE-----\nbm9wZQ==\n-----END CERTIFICATE-----\n")
    message = error(tmp_path, target(pw_file, ca_file=f'"{bogus}"'))
    assert message.startswith(f"targets[0].ca_file: {bogus} holds a certificate that cannot be loaded")


@pytest.mark.parametrize(
    "pin",
    [PIN, PIN.lower(), "sha256:" + "ab" * 32, "SHA256:" + "Ab" * 32, f" {PIN} "],
)
def test_fingerprint_forms_are_normalised(tmp_path: Path, pw_file: Path, pin: str) -> None:
    t = load(tmp_path, target(pw_file, tls_fingerprint=f'"{pin}"')).targets[0]
    assert t.tls_fingerprint == (PIN,)


def test_fingerprint_list_keeps_order_and_drops_duplicates(tmp_path: Path, pw_file: Path) -> None:
    other = "sha256:" + "01" * 32
    value = f'["{other}", "{PIN}", "{PIN.lower()}"]'
    t = load(tmp_path, target(pw_file, tls_fingerprint=value)).targets[0]
    assert t.tls_fingerprint == ("sha256:" + ":".join(["01"] * 32), PIN)


@pytest.mark.parametrize(
    ("value", "key", "message"),
    [('"sha1:AB:CD"', "targets[0].tls_fingerprint", "does not start with 'sha256:'"),
     ('"sha256:ABCD"', "targets[0].tls_fingerprint", "is not a SHA-256 fingerprint"),
     (f'"{PIN}:EF"', "targets[0].tls_fingerprint", "is not a SHA-256 fingerprint"),
     ('"sha256:' + "zz" * 32 + '"', "targets[0].tls_fingerprint", "is not a SHA-256"),
     (f'["{PIN}", "sha256:"]', "targets[0].tls_fingerprint[1]", "is not a SHA-256 fingerprint")],
)
def test_bad_fingerprints(
    tmp_path: Path, pw_file: Path, value: str, key: str, message: str
) -> None:
    got = error(tmp_path, target(pw_file, tls_fingerprint=value))
    assert got.startswith(f"{key}: ") and message in got


def test_bare_hex_fingerprint_gets_the_right_spelling_suggested(
    tmp_path: Path, pw_file: Path
) -> None:
    got = error(tmp_path, target(pw_file, tls_fingerprint='"' + "ab" * 32 + '"'))
    assert f'write "{PIN}"' in got


# --- refresh, timing and the lockout guard ------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"refresh_at": "0"}, "targets[0].refresh_at: 0.0 is not between 0 and 1"),
        ({"refresh_at": "1"}, "targets[0].refresh_at: 1.0 is not between 0 and 1"),
        ({"refresh_at": "-0.5"}, "targets[0].refresh_at: -0.5 is not between 0 and 1"),
        ({"refresh_at": "nan"}, "targets[0].refresh_at: nan is not between 0 and 1"),
        ({"jitter": "0.5"}, "targets[0].jitter: 0.5 is not in [0, 0.5)"),
        ({"jitter": "-0.01"}, "targets[0].jitter: -0.01 is not in [0, 0.5)"),
        ({"refresh_at": "0.9", "jitter": "0.1"}, "targets[0].jitter: refresh_at ± jitter (0.9 ± 0.1)"),
        ({"refresh_at": "0.1", "jitter": "0.2"}, "targets[0].jitter: refresh_at ± jitter (0.1 ± 0.2)"),
        ({"request_timeout": '"0s"'}, "targets[0].request_timeout: must be longer than zero"),
        ({"max_backoff": "0"}, "targets[0].max_backoff: must be longer than zero"),
        ({"login_retry_interval": '"-5s"'}, "targets[0].login_retry_interval: '-5s' is not a dur"),
        ({"request_timeout": '"15"'}, "targets[0].request_timeout: '15' has no unit"),
        ({"max_backoff": '"2d"'}, "targets[0].max_backoff: '2d' is not a duration"),
        ({"max_backoff": '"25h"'}, "targets[0].max_backoff: 25h is longer than a day"),
        ({"max_login_failures": "0"}, "targets[0].max_login_failures: 0 is less than 1"),
    ],
)
def test_bad_timing_values(
    tmp_path: Path, pw_file: Path, override: dict[str, str], message: str
) -> None:
    assert error(tmp_path, target(pw_file, **override)).startswith(message)


def test_refresh_window_edges_are_accepted(tmp_path: Path, pw_file: Path) -> None:
    t = load(tmp_path, target(pw_file, refresh_at="0.5", jitter="0.49", request_timeout="0.5",
                              max_login_failures="1")).targets[0]
    assert (t.refresh_at, t.jitter, t.request_timeout, t.max_login_failures) == (0.5, 0.49, 0.5, 1)
    t = load(tmp_path, target(pw_file, refresh_at="0.95", jitter="0")).targets[0]
    assert (t.refresh_at, t.jitter) == (0.95, 0.0)


# --- file sink ----------------------------------------------------------------------------------


def test_file_sink_defaults(tmp_path: Path, pw_file: Path) -> None:
    t = load(tmp_path, target(pw_file, file_sink='{ path = "/run/tokend/sfo.token" }')).targets[0]
    assert t.file_sink == FileSink(Path("/run/tokend/sfo.token"), 0o600, None, "raw", False)


def test_file_sink_as_a_sub_table(tmp_path: Path, pw_file: Path) -> None:
    text = target(pw_file) + '[targets.file_sink]\npath = "/run/t"\nformat = "json"\n'
    sink = load(tmp_path, text).targets[0].file_sink
    assert sink is not None and sink.format == "json"


@pytest.mark.parametrize(
    ("sink", "message"),
    [('{ mode = "0600" }', "targets[0].file_sink.path: missing"),
     ('{ path = "t.token" }', "targets[0].file_sink.path: 't.token' is not an absolute path"),
     ('{ path = "/t", mode = "0644" }', "targets[0].file_sink.mode: 0644 lets every local user read"),
     ('{ path = "/t", mode = "abc" }', "targets[0].file_sink.mode: 'abc' is not an octal file mode"),
     ('{ path = "/t", format = "yaml" }', "targets[0].file_sink.format: 'yaml' is not one of raw"),
     ('{ path = "/t", group = "" }', "targets[0].file_sink.group: '' is not a group name"),
     ('{ path = "/t", keep_on_exit = "no" }', "targets[0].file_sink.keep_on_exit: expected a bool")],
)
def test_bad_file_sink(tmp_path: Path, pw_file: Path, sink: str, message: str) -> None:
    assert error(tmp_path, target(pw_file, file_sink=sink)).startswith(message)


def test_file_sinks_must_differ(tmp_path: Path, pw_file: Path) -> None:
    sink = '{ path = "/run/t" }'
    text = '[server]\ndefault_target = "a"\n' + target(pw_file, name='"a"', file_sink=sink) + target(
        pw_file, name='"b"', file_sink=sink)
    assert error(tmp_path, text).startswith(
        "targets[1].file_sink.path: /run/t is already the file sink of targets[0]")


# --- describe -----------------------------------------------------------------------------------


def test_describe_says_what_tokend_would_do(tmp_path: Path, pw_file: Path, ca_file: Path) -> None:
    text = """
[server]
socket_group = "vcf"
allowed_uids = [1000]
default_target = "b"
[metrics]
listen = "[::1]:9464"
""" + target(pw_file, name='"a"', ca_file=f'"{ca_file}"',
             file_sink='{ path = "/run/a.token", group = "vcf" }') + target(
        pw_file, name='"b"', password_file=None, username=None, api_key='"KEY-SECRET-1"',
        verify_tls="false", revoke_on_exit="true") + target(
        pw_file, name='"c"', tls_fingerprint=f'"{PIN}"')
    lines = describe(load(tmp_path, text))
    joined = "\n".join(lines)
    assert "socket: /run/tokend/tokend.sock (mode 0660, group vcf)" in lines
    assert "allowed peers: uids 1000; gids none" in joined
    assert "metrics: http://[::1]:9464/metrics" in joined
    assert "default target: b" in lines
    assert "target a:" in lines and "target b:" in lines
    assert "  url: https://sfo-vcf01.rainpole.io" in lines
    assert f"user administrator@vsphere.local with the password from file {pw_file}" in joined
    assert f"the CA file {ca_file}" in joined and PIN in joined
    assert "API key from literal in the config file (api_key)" in joined
    assert "certificate verification OFF" in joined
    assert "refresh: at 70% ± 5% of the token lifetime" in joined
    assert "timeouts: request 15s, backoff up to 5m" in joined
    assert "file sink: /run/a.token (mode 0600, group vcf, format raw, removed on exit)" in joined
    assert "revoke the refresh token" in joined
    assert "KEY-SECRET-1" not in joined and "VMware1!" not in joined


def test_describe_with_defaults(tmp_path: Path, pw_file: Path) -> None:
    lines = describe(load(tmp_path, '[metrics]\nlisten = ""\n' + target(
        pw_file, password_file=None, password_env='"SFO_PW"')))
    joined = "\n".join(lines)
    assert "metrics: disabled" in lines
    assert "anyone who can open the socket" in joined
    assert "environment variable $SFO_PW" in joined
    assert "tls: verify against the system CAs" in joined
    assert "file sink: none" in joined


def test_describe_says_exactly_what_is_verified(
    tmp_path: Path, pw_file: Path, ca_file: Path
) -> None:
    text = '[server]\ndefault_target = "pin"\n' + "".join([
        target(pw_file, name='"pin"', tls_fingerprint=f'"{PIN}"'),
        target(pw_file, name='"pin-no-verify"', tls_fingerprint=f'"{PIN}"', verify_tls="false"),
        target(pw_file, name='"off"', verify_tls="false"),
        target(pw_file, name='"ca"', ca_file=f'"{ca_file}"'),
        target(pw_file, name='"system"'),
        target(pw_file, name='"plain"', url='"http://127.0.0.1:8443"'),
        target(pw_file, name='"plain-ca"', url='"http://localhost:8443"', ca_file=f'"{ca_file}"'),
    ])
    lines = describe(load(tmp_path, text))
    tls = [line for line in lines if line.startswith("  tls: ")]
    assert tls == [
        f"  tls: leaf certificate pinned to {PIN}, no chain verification, no hostname check",
        f"  tls: leaf certificate pinned to {PIN}, no chain verification, no hostname check",
        "  tls: certificate verification OFF (verify_tls = false): any certificate is accepted,"
        " no hostname check",
        f"  tls: verify against the system CAs and the CA file {ca_file} (re-read when it"
        " changes), with hostname check",
        "  tls: verify against the system CAs, with hostname check",
        "  tls: plain HTTP, no TLS (loopback only)",
        "  tls: plain HTTP, no TLS (loopback only) (ca_file not used)",
    ]


def test_describe_shows_the_token_lifetime_cap(tmp_path: Path, pw_file: Path) -> None:
    lines = describe(load(tmp_path, target(pw_file, max_token_lifetime='"90m"')))
    assert ("  token lifetime: at most 1h30m is trusted; a longer one is cut to it"
            " (max_token_lifetime)") in lines


# --- max_token_lifetime (SPEC §8.1) ---------------------------------------------------------------


@pytest.mark.parametrize(("value", "seconds"), [(None, 7200.0), ('"1h"', 3600.0), ("600", 600.0),
                                                ('"500ms"', 0.5)])
def test_max_token_lifetime(tmp_path: Path, pw_file: Path, value: str | None,
                            seconds: float) -> None:
    assert load(tmp_path, target(pw_file, max_token_lifetime=value)).targets[0] \
        .max_token_lifetime == seconds


@pytest.mark.parametrize(("value", "problem"), [
    ('"0s"', "must be longer than zero"), ("0", "must be longer than zero"),
    ('"-1h"', "is not a duration"), ("-5", "is negative"), ('"2"', "has no unit"),
    ("true", "expected a duration, got boolean"), ('"48h"', "longer than a day"),
    ("nan", "is not a finite duration"),
])
def test_bad_max_token_lifetime_names_the_key(tmp_path: Path, pw_file: Path, value: str,
                                              problem: str) -> None:
    message = error(tmp_path, target(pw_file, max_token_lifetime=value))
    assert message.startswith("targets[0].max_token_lifetime: ") and problem in message, message


# --- arbitrary values ---------------------------------------------------------------------------

toml_scalars = (
    st.text(max_size=20) | st.integers() | st.floats() | st.booleans() | st.dates()
    | st.sampled_from(["", "/x", "30s", "0600", "https://h", "http://127.0.0.1", "sha256:00", "raw"])
)
toml_values = st.recursive(
    toml_scalars,
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from([*FILE_SINK_KEYS, "x"]), inner, max_size=3),
    max_leaves=6,
)
target_keys = st.sampled_from([*TARGET_KEYS, "nmae", "passwd", "x y"])
VALID_TARGET: dict[str, object] = {
    "name": "sfo", "url": "https://sfo.rainpole.io", "username": "admin",
    "password_file": "/etc/tokend/pw",
}


def assert_parses_or_names_target_key(table: dict[str, object], mode: int) -> None:
    try:
        parse_config({"targets": [table]}, Path("/etc/tokend/config.toml"), file_mode=mode)
    except ConfigError as exc:
        assert exc.key.startswith("targets[0]"), str(exc)
        assert str(exc).startswith(exc.key + ": ")


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(target_keys, toml_values, max_size=6), st.sampled_from([0o600, 0o644]))
def test_arbitrary_target_tables_only_raise_config_errors_with_a_key_path(
    table: dict[str, object], mode: int
) -> None:
    assert_parses_or_names_target_key(table, mode)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(target_keys, toml_values, max_size=3), st.sampled_from([0o600, 0o644]))
def test_arbitrary_values_in_a_valid_target_only_raise_config_errors(
    overrides: dict[str, object], mode: int
) -> None:
    assert_parses_or_names_target_key({**VALID_TARGET, **overrides}, mode)


# --- the example config -------------------------------------------------------------------------


def test_example_config_documents_every_key() -> None:
    text = (REPO / "config.example.toml").read_text()
    for key in (*TOP_KEYS, *SERVER_KEYS, *METRICS_KEYS, *LOG_KEYS, *TARGET_KEYS, *PASSWORD_KEYS,
                *API_KEY_KEYS, *FILE_SINK_KEYS):
        assert re.search(rf"(?<![\w.]){re.escape(key)}(?![\w])", text), key
    data = tomllib.loads(text)
    # Proxies are opt-in: the example's [[proxies]] table is commented out
    # (tests/test_config_proxies.py loads it).
    assert set(data) == set(TOP_KEYS) - {"proxies"}


def test_example_config_loads(tmp_path: Path, pw_file: Path, ca_file: Path) -> None:
    text = (REPO / "config.example.toml").read_text()
    text = text.replace("/etc/tokend/sfo-vcf01.password", str(pw_file))
    text = text.replace("/etc/tokend/vcf-ca.pem", str(ca_file))
    config = load(tmp_path, text, mode=0o644)
    check_secrets(config)
    t = config.targets[0]
    assert t.name == "sfo-vcf01" and t.ca_file == ca_file
    assert config.server.socket_mode_set  # the example sets socket_mode
    assert describe(config)


def test_example_config_commented_keys_load(tmp_path: Path, pw_file: Path, ca_file: Path) -> None:
    """Uncommenting the documented optional keys (one secret source kept) gives a valid config."""
    text = (REPO / "config.example.toml").read_text()
    text = text.replace("/etc/tokend/sfo-vcf01.password", str(pw_file))
    text = text.replace("/etc/tokend/vcf-ca.pem", str(ca_file))
    pin = "sha256:" + ":".join(["AB"] * 32)
    text = text.replace('# socket_group = "vcf-automation"', 'socket_group = "vcf-automation"')
    text = text.replace('# tls_fingerprint = ["sha256:AB:CD:..."]', f'tls_fingerprint = ["{pin}"]')
    # A pin replaces ca_file (SPEC §8.8): the example says to use one or the other.
    text = text.replace(f'ca_file = "{ca_file}"', f'# ca_file = "{ca_file}"')
    text = text.replace("# verify_tls = true", "verify_tls = true")
    text = text.replace("#   file_sink = {", "file_sink = {")
    config = load(tmp_path, text)
    t = config.targets[0]
    assert t.tls_fingerprint == (pin,) and t.file_sink is not None
    assert t.file_sink.group == "vcf-automation"
    assert config.server.socket_group == "vcf-automation"


def test_example_config_file_sink_sub_table_loads(
    tmp_path: Path, pw_file: Path, ca_file: Path
) -> None:
    text = (REPO / "config.example.toml").read_text()
    text = text.replace("/etc/tokend/sfo-vcf01.password", str(pw_file))
    text = text.replace("/etc/tokend/vcf-ca.pem", str(ca_file))
    sub_table = text.index("# [targets.file_sink]")
    head, tail = text[:sub_table], text[sub_table:].splitlines()
    uncommented = [line[2:] for line in tail[:6]]
    text = head + "\n".join(uncommented + tail[6:]) + "\n"
    sink = load(tmp_path, text).targets[0].file_sink
    assert sink == FileSink(Path("/run/tokend/sfo-vcf01.token"), 0o600, "vcf-automation", "raw", False)
