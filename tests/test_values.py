"""The typed value readers of tokend/values.py: what each accepts, and every refusal's where, what and fix.

tests/test_config.py checks them through whole config files by the start of the message; here each
reader's ConfigError is pinned whole (key, problem, fix), and its limits are tried on both sides.
"""

from __future__ import annotations

import grp
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tokend.errors import ConfigError
from tokend.values import (
    DURATION_FIX,
    as_abs_path,
    as_bool,
    as_choice,
    as_group_name,
    as_id_set,
    as_int,
    as_mode,
    as_number,
    as_string,
    format_duration,
    format_pin,
    group_id,
    normalise_fingerprint,
    parse_duration,
    pin_digest,
)

KEY = "targets[0].x"
MODE_FIX = 'write it as an octal string, e.g. "0660"'
PIN_FIX = ('write "sha256:" and the 32 bytes of the certificate\'s SHA-256 in hex, e.g. from '
           "openssl x509 -noout -fingerprint -sha256")
DIGEST = bytes(range(32))


def as_gid_set(value: object, key: str) -> frozenset[int]:
    """as_id_set for gids, as [server] allowed_gids reads it."""
    return as_id_set(value, key, "gid")


def refusal(read: Callable[..., Any], value: object, *more: Any) -> tuple[str, str, str]:
    with pytest.raises(ConfigError) as caught:
        read(value, KEY, *more)
    error = caught.value
    assert str(error) == f"{error.key}: {error.problem} ({error.fix})"
    return error.key, error.problem, error.fix


@pytest.mark.parametrize(("read", "value", "problem", "fix"), [
    (parse_duration, True, "expected a duration, got boolean", DURATION_FIX),
    (parse_duration, [1], "expected a duration, got array", DURATION_FIX),
    (parse_duration, 10**400, f"{10**400} seconds is out of range", DURATION_FIX),
    (parse_duration, math.inf, "inf is not a finite duration", DURATION_FIX),
    (parse_duration, -1, "-1 is negative", "use a duration of zero or more"),
    (parse_duration, "-5s", "'-5s' is not a duration", DURATION_FIX),
    (parse_duration, "5 min", "'5 min' is not a duration", DURATION_FIX),
    (parse_duration, "30", "'30' has no unit", 'write "30s" for seconds, or a number without quotes'),
    (as_string, 5, "expected a string, got integer", "quote the value"),
    (as_bool, "yes", "expected a boolean, got string", "write true or false, unquoted"),
    (as_int, 1.5, "expected an integer, got float", "write a whole number, unquoted"),
    (as_int, True, "expected an integer, got boolean", "write a whole number, unquoted"),
    (as_number, "0.7", "expected a number, got string", "write a number such as 0.7, unquoted"),
    (as_number, 10**400, f"{10**400} is out of range", "write a number such as 0.7"),
    (as_abs_path, "/run/\0x", "contains a NUL character", "write a plain absolute path"),
    (as_abs_path, "run/x", "'run/x' is not an absolute path", "write it starting with /"),
    (as_abs_path, "/run/x/", "'/run/x/' is a directory path", "name a file, not a directory"),
    (as_abs_path, "/run/\ud800", "'/run/\\ud800' cannot be encoded as a file name", "use a plain path"),
    (as_mode, "0x1f", "'0x1f' is not an octal file mode", MODE_FIX),
    (as_mode, 1.5, "expected an octal string, got float", MODE_FIX),
    (as_mode, "1777", "'1777' is not a permission mode between 0000 and 0777", MODE_FIX),
    (as_mode, 512, "512 is not a permission mode between 0000 and 0777", MODE_FIX),
    (as_mode, 660, "660 is not a permission mode between 0000 and 0777", MODE_FIX),
    (as_group_name, "", "'' is not a group name", "write the group's name or gid"),
    (as_group_name, "vcf automation", "'vcf automation' is not a group name",
     "write the group's name or gid"),
    (as_group_name, "vcf\x01", "'vcf\\x01' is not a group name", "write the group's name or gid"),
    (as_group_name, "vcf:x", "'vcf:x' is not a group name", "write the group's name or gid"),
    (as_gid_set, 1000, "expected an array of gids or names, got integer",
     'write e.g. [1000, "vcf-automation"]'),
    (normalise_fingerprint, "md5:00", "'md5:00' does not start with 'sha256:'", PIN_FIX),
    (normalise_fingerprint, "sha256:00:11", "'sha256:00:11' is not a SHA-256 fingerprint", PIN_FIX),
    (normalise_fingerprint, DIGEST.hex(), f"{DIGEST.hex()!r} does not start with 'sha256:'",
     f'write "{format_pin(DIGEST)}"'),
], ids=lambda v: v.__name__ if callable(v) else None)
def test_each_refusal_names_the_key_the_problem_and_the_fix(
        read: Callable[..., Any], value: object, problem: str, fix: str) -> None:
    assert refusal(read, value) == (KEY, problem, fix)


def test_a_choice_refusal_lists_the_choices() -> None:
    assert refusal(as_choice, "yaml", ("raw", "json")) == (
        KEY, "'yaml' is not one of raw | json", "use one of 'raw', 'json'")
    assert as_choice("JSON", KEY, ("raw", "json")) == "json"


@pytest.mark.parametrize(("value", "ok"), [(0, True), (2**32 - 2, True), (2**32 - 1, False),
                                           (-1, False), (2**31, True)])
def test_ids_range_from_zero_to_two_to_the_32_minus_two(value: int, ok: bool) -> None:
    if ok:
        assert as_id_set([value], KEY, "gid") == frozenset({value})
    else:
        assert refusal(as_id_set, [7, value], "gid") == (
            f"{KEY}[1]", f"{value} is not a valid gid", "use a numeric gid or a name")


def test_an_id_that_is_neither_a_number_nor_a_name_is_named_by_its_index() -> None:
    assert refusal(as_id_set, [1, True], "uid") == (
        f"{KEY}[1]", "expected a numeric uid or a name, got boolean",
        'write e.g. [1000, "svc-automation"]')


def test_ids_may_be_names_looked_up_now() -> None:
    import grp
    import pwd

    group = grp.getgrgid(os.getgid()).gr_name
    assert as_id_set([group, "7"], KEY, "gid") == frozenset({os.getgid(), 7})
    assert as_id_set([pwd.getpwuid(os.getuid()).pw_name], KEY, "uid") == frozenset({os.getuid()})
    assert refusal(as_id_set, ["nosuchgroup"], "gid") == (
        f"{KEY}[0]", "no group named 'nosuchgroup'",
        "create the group, fix the name, or write its numeric gid")


@pytest.mark.parametrize(("value", "mode"), [("0777", 0o777), ("0o640", 0o640), (" 600 ", 0o600),
                                             (0o777, 0o777), (0, 0), ("0", 0)])
def test_modes_up_to_0777_are_read(value: object, mode: int) -> None:
    assert as_mode(value, KEY) == mode


@pytest.mark.parametrize(("seconds", "text"), [
    (0.5, "500ms"), (0.999, "999ms"), (0.001, "1ms"), (1, "1s"), (1.5, "1.5s"), (59, "59s"),
    (60, "1m"), (3600, "1h"), (5400, "1h30m"), (3661, "1h1m1s"), (7200, "2h"),
])
def test_format_duration_writes_what_a_person_would(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text, KEY) == pytest.approx(seconds)


@pytest.mark.parametrize(("text", "seconds"), [("500ms", 0.5), ("2h30m", 9000.0), (" 5m ", 300.0),
                                               (".5s", 0.5), ("1.5h", 5400.0), (0, 0.0), (2.5, 2.5)])
def test_durations_are_read(text: object, seconds: float) -> None:
    assert parse_duration(text, KEY) == seconds


def test_group_id_takes_a_number_or_a_name_and_names_a_missing_group() -> None:
    assert group_id("4242", KEY) == 4242
    own = grp.getgrgid(os.getgid()).gr_name
    assert group_id(own, KEY) == os.getgid()
    with pytest.raises(ConfigError) as caught:
        group_id("no-such-group-tokend", KEY)
    assert (caught.value.key, caught.value.problem, caught.value.fix) == (
        KEY, "no group named 'no-such-group-tokend'", "create the group or fix the name")


def test_a_pin_round_trips_between_its_text_and_its_digest() -> None:
    pin = format_pin(DIGEST)

    assert pin == "sha256:" + ":".join(f"{b:02X}" for b in DIGEST)
    assert pin_digest(pin) == DIGEST
    assert normalise_fingerprint("SHA256:" + DIGEST.hex(), KEY) == pin
    assert normalise_fingerprint(" " + pin.lower() + " ", KEY) == pin


def test_an_absolute_path_is_returned_as_a_path() -> None:
    assert as_abs_path("/run/tokend/t.token", KEY) == Path("/run/tokend/t.token")
