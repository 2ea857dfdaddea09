"""The daemon as a process (SPEC §2, §3, §5.8) and the command line that talks to it."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support import (
    PASSWORD,
    Tokend,
    Upstream,
    assert_no_secrets,
    assert_one_line_error,
    clean_env,
    cli,
    eventually,
    run_cli,
    tokend_argv,
    write_config,
)

# -- 7 -----------------------------------------------------------------------------------------


async def test_sigterm_removes_the_socket_and_exits_0(
        make_upstream: Callable[..., Any], make_tokend: Callable[..., Any]) -> None:
    upstream: Upstream = await make_upstream(access_ttl=60)
    tokend: Tokend = await make_tokend(upstream.url, upstream.ca_pem)
    token = await tokend.token()
    assert tokend.socket.exists()

    # A request still in flight at SIGTERM gets its whole answer: this one waits (up to the 3 s
    # request_timeout) for a newer token that cannot come, since the current one is brand new.
    in_flight = asyncio.create_task(tokend.request(
        "POST", "/v1/targets/t1/invalidate", {"fingerprint": token["fingerprint"]}))
    await asyncio.sleep(0.5)
    assert not in_flight.done()
    tokend.signal(signal.SIGTERM)
    answer = await in_flight
    assert answer.status == 503, answer.body
    assert answer.json()["errorCode"] == "TOKEN_UNAVAILABLE"
    assert "Retry-After" in answer.headers

    assert await tokend.wait_exit() == 0
    assert not tokend.socket.exists()
    assert tokend.events("daemon.stopping")
    assert "Traceback" not in tokend.stderr() + tokend.stdout()
    # Nothing listens any more.
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with pytest.raises(OSError):
        probe.connect(str(tokend.socket))
    probe.close()


async def test_sigint_also_stops_cleanly(upstream: Upstream, tokend: Tokend) -> None:
    tokend.signal(signal.SIGINT)
    assert await tokend.wait_exit() == 0
    assert not tokend.socket.exists()


# -- 8 -----------------------------------------------------------------------------------------


async def test_second_daemon_on_a_live_socket_exits_2(upstream: Upstream, tokend: Tokend) -> None:
    before = await tokend.token()
    logins = upstream.fake.count("login")
    started = time.monotonic()
    second = await cli("run", "--config", str(tokend.config_path), timeout=20)
    assert second.returncode == 2, (second.returncode, second.stderr)
    assert time.monotonic() - started < 10
    assert_one_line_error(second.stderr, str(tokend.socket))
    assert_no_secrets(second.stdout + second.stderr, [upstream.fake], "the second daemon's output")
    # It failed before touching the upstream, and the first daemon is unharmed.
    assert upstream.fake.count("login") == logins
    assert tokend.proc is not None and tokend.proc.poll() is None
    assert tokend.socket.exists()
    after = await tokend.token()
    assert after["accessToken"] in upstream.fake.issued_access_tokens
    assert after["fingerprint"] == before["fingerprint"] or upstream.fake.count("refresh") > 0
    assert (await tokend.get("/readyz")).status == 200


# -- 9 -----------------------------------------------------------------------------------------


async def test_stale_socket_is_replaced(upstream: Upstream, make_tokend: Callable[..., Any],
                                        workdir: Path) -> None:
    path = workdir / "tokend.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.listen(1)
    stale.close()  # the file stays, as after a crash; nothing listens on it
    Path(str(path) + ".lock").touch()  # an unheld lock file, also as after a crash
    assert path.is_socket()
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with pytest.raises(ConnectionRefusedError):
        probe.connect(str(path))
    probe.close()

    tokend: Tokend = await make_tokend(upstream.url, upstream.ca_pem)
    token = await tokend.token()
    assert token["accessToken"] in upstream.fake.issued_access_tokens
    assert path.is_socket()
    assert tokend.proc is not None and tokend.proc.poll() is None


async def test_a_file_that_is_not_a_socket_is_never_replaced(
        upstream: Upstream, make_tokend: Callable[..., Any], workdir: Path) -> None:
    path = workdir / "tokend.sock"
    path.write_text("someone's data\n")
    tokend: Tokend = await make_tokend(upstream.url, upstream.ca_pem, wait=None)
    assert await tokend.wait_exit() == 2
    assert_one_line_error(tokend.stderr(), "server.socket", str(path))
    assert path.read_text() == "someone's data\n"
    assert upstream.fake.count("login") == 0


# -- 10 ----------------------------------------------------------------------------------------


async def test_bad_config_on_sighup_keeps_the_daemon_serving(
        make_upstream: Callable[..., Any], make_tokend: Callable[..., Any], workdir: Path) -> None:
    upstream: Upstream = await make_upstream(access_ttl=60)  # no refresh during the test
    tokend: Tokend = await make_tokend(upstream.url, upstream.ca_pem)
    fake = upstream.fake
    token = await tokend.token()

    write_config(workdir, upstream.url, upstream.ca_pem, target={"refresh_att": 0.5})
    tokend.signal(signal.SIGHUP)
    failed = await eventually(lambda: tokend.events("config.reload_failed"),
                              what="config.reload_failed")
    assert failed[0]["key"] == "targets[0].refresh_att"
    assert "refresh_at" in failed[0]["error"]  # the suggestion
    assert tokend.proc is not None and tokend.proc.poll() is None
    assert (await tokend.token())["fingerprint"] == token["fingerprint"]

    # Broken TOML is refused the same way.
    tokend.config_path.write_text(tokend.config_path.read_text() + "\n[server\n")
    tokend.signal(signal.SIGHUP)
    await eventually(lambda: len(tokend.events("config.reload_failed")) == 2,
                     what="a second config.reload_failed")
    assert tokend.events("config.reload_failed")[1]["key"] == str(tokend.config_path)
    assert tokend.proc.poll() is None
    assert (await tokend.token())["fingerprint"] == token["fingerprint"]
    assert not tokend.events("config.reloaded")

    write_config(workdir, upstream.url, upstream.ca_pem, target={"refresh_at": 0.5})
    tokend.signal(signal.SIGHUP)
    reloaded = await eventually(lambda: tokend.events("config.reloaded"), what="config.reloaded")
    assert reloaded[0]["kept"] == ["t1"]
    assert reloaded[0]["restarted"] == [] and reloaded[0]["removed"] == []
    assert tokend.proc.poll() is None
    after = await tokend.token()
    assert after["fingerprint"] == token["fingerprint"]
    status = await tokend.status()
    assert status["state"] == "valid" and status["consecutiveFailures"] == 0
    await asyncio.sleep(0.3)
    assert fake.count("login") == 1
    assert fake.count("refresh") == 0
    assert "Traceback" not in tokend.stdout() + tokend.stderr()


# -- 11 ----------------------------------------------------------------------------------------


GOOD_URL = "https://127.0.0.1:1"
LITERAL_PASSWORD = {"password_file": None, "password": PASSWORD}

BAD_CONFIGS: dict[str, tuple[Callable[[Path], dict[str, Any]], int, str]] = {
    # case: (config overrides for the work directory, config file mode, key path named)
    "missing url": (lambda _: {"target": {"url": None}}, 0o600, "targets[0].url"),
    "missing secret file": (lambda workdir: {"target": {"password_file": str(workdir / "absent")}},
                            0o600, "targets[0].password_file"),
    "unknown key": (lambda _: {"target": {"colour": "blue"}}, 0o600, "targets[0].colour"),
    "wrong type": (lambda _: {"target": {"request_timeout": True}}, 0o600,
                   "targets[0].request_timeout"),
    "wrong type in server": (lambda _: {"server": {"allowed_uids": "root"}}, 0o600,
                             "server.allowed_uids"),
    "non-loopback http url": (lambda _: {"target": {"url": "http://sddc.example.com"}}, 0o600,
                              "targets[0].url"),
    "literal password in a readable config": (lambda _: {"target": LITERAL_PASSWORD}, 0o644,
                                              "targets[0].password"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_configs_exit_2_naming_the_key(case: str, workdir: Path) -> None:
    overrides, mode, key = BAD_CONFIGS[case]
    path = write_config(workdir, GOOD_URL, mode=mode, **overrides(workdir))
    for command in ("run", "check-config"):
        done = run_cli(command, "--config", str(path), timeout=20)
        assert done.returncode == 2, (command, done.returncode, done.stdout, done.stderr)
        assert_one_line_error(done.stderr, key)
        assert done.stderr.startswith(f"tokend: {key}: "), done.stderr
        assert PASSWORD not in done.stdout + done.stderr
        assert "Traceback" not in done.stdout
    assert not (workdir / "tokend.sock").exists()


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_env_secret_that_is_not_utf8_under_the_c_locale_exits_2_naming_the_key(
        command: str, workdir: Path) -> None:
    """SPEC §8.3: the byte 0xE4 (ä in Latin-1) in $TOKEND_E2E_PW under LC_ALL=C."""
    path = write_config(workdir, GOOD_URL,
                        target={"password_file": None, "password_env": "TOKEND_E2E_PW"})
    env = {os.fsencode(k): os.fsencode(v) for k, v in clean_env().items()}
    env.update({b"LC_ALL": b"C", b"TOKEND_E2E_PW": b"\xe4"})
    done = subprocess.run(tokend_argv(command, "--config", str(path)),
                          capture_output=True, text=True, timeout=20, env=env, check=False)
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert_one_line_error(done.stderr, "$TOKEND_E2E_PW", "not valid UTF-8")
    assert done.stderr.startswith("tokend: targets[0].password_env: "), done.stderr
    assert "Traceback" not in done.stdout
    assert not (workdir / "tokend.sock").exists()


def test_config_path_from_the_environment_and_a_missing_file(workdir: Path) -> None:
    absent = workdir / "absent.toml"
    done = run_cli("check-config", env=clean_env(TOKEND_CONFIG=str(absent)))
    assert done.returncode == 2
    assert_one_line_error(done.stderr, str(absent))
    done = run_cli("run", env=clean_env(TOKEND_CONFIG=str(absent)))
    assert done.returncode == 2
    assert_one_line_error(done.stderr, str(absent))


@pytest.mark.parametrize("source", ["password_file", "password"])
def test_check_config_on_a_good_config_exits_0_without_printing_the_password(
        source: str, workdir: Path) -> None:
    path = write_config(workdir, GOOD_URL,
                        target=LITERAL_PASSWORD if source == "password" else {})
    done = run_cli("check-config", "--config", str(path))
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert "t1" in done.stdout and "https://127.0.0.1:1" in done.stdout
    assert PASSWORD not in done.stdout
    assert not (workdir / "tokend.sock").exists()  # it only looked


# -- 12 ----------------------------------------------------------------------------------------


async def test_cli_token_header_and_json(make_upstream: Callable[..., Any],
                                         make_tokend: Callable[..., Any], workdir: Path) -> None:
    upstream: Upstream = await make_upstream(access_ttl=60)  # one token for the whole test
    sock = str(workdir / "tokend.sock")

    # A worker that starts before tokend waits for it, then gets the token.
    waiting = subprocess.Popen(
        tokend_argv("token", "--socket", sock, "--wait", "15s"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env())
    await asyncio.sleep(1.0)
    assert waiting.poll() is None, waiting.communicate()
    tokend: Tokend = await make_tokend(upstream.url, upstream.ca_pem)
    out, err = await asyncio.to_thread(waiting.communicate, timeout=20)
    assert waiting.returncode == 0, err
    assert err == ""
    token = await tokend.token()
    access = token["accessToken"]
    assert out == access + "\n"

    done = await cli("token", "--socket", sock)
    assert done.returncode == 0, done.stderr
    assert done.stdout == access + "\n" and done.stderr == ""

    done = await cli("token", "--socket", sock, "--header")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"Authorization: Bearer {access}\n"

    done = await cli("token", "--socket", sock, "--json")
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert set(printed) == set(token)
    assert {k: v for k, v in printed.items() if k != "expiresIn"} == \
        {k: v for k, v in token.items() if k != "expiresIn"}
    assert 0 < printed["expiresIn"] <= token["expiresIn"]

    done = await cli("token", "--target", "t1", "--min-ttl", "10s", env=clean_env(TOKEND_SOCKET=sock))
    assert done.returncode == 0, done.stderr
    assert done.stdout == access + "\n"

    done = await cli("status", "--socket", sock)
    assert done.returncode == 0, done.stderr
    assert "t1" in done.stdout and "valid" in done.stdout
    assert access not in done.stdout

    done = await cli("status", "--socket", sock, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["targets"][0]["name"] == "t1"

    for args in (("health",), ("health", "--ready"), ("health", "--ready", "--target", "t1")):
        done = await cli(*args, "--socket", sock)
        assert (done.returncode, done.stdout, done.stderr) == (0, "", ""), (args, done)

    # An unknown target is a usage error (2), not a failure of tokend (1).
    done = await cli("health", "--ready", "--target", "nope", "--socket", sock)
    assert done.returncode == 2
    assert_one_line_error(done.stderr, "nope")

    done = await cli("token", "--socket", sock, "--target", "nope")
    assert done.returncode == 2
    assert done.stdout == ""
    assert_one_line_error(done.stderr, "TARGET_NOT_FOUND", "nope")

    for args in (("token",), ("status",), ("health",)):
        done = await cli(*args, "--socket", "/nonexistent/tokend.sock")
        assert done.returncode == 1, (args, done)
        assert done.stdout == ""
        assert_one_line_error(done.stderr, "/nonexistent/tokend.sock")

    done = await cli("token", "--socket", sock, "--wait", "soon")
    assert done.returncode == 2
    assert_one_line_error(done.stderr, "--wait")

    assert_no_secrets(tokend.stdout() + tokend.stderr(), [upstream.fake], "tokend's output")


# -- 13 ----------------------------------------------------------------------------------------


async def test_header_form_works_with_curl_against_the_fake_protected_endpoint(
        make_upstream: Callable[..., Any], make_tokend: Callable[..., Any]) -> None:
    upstream: Upstream = await make_upstream(access_ttl=60)
    tokend: Tokend = await make_tokend(upstream.url, upstream.ca_pem)
    domains = f"{upstream.url}/v1/domains"
    curl = f"curl -sS --cacert {shlex.quote(str(upstream.ca_pem))} -w '\\n%{{http_code}}'"
    pipeline = (f"{shlex.quote(sys.executable)} -m tokend token --header"
                f" --socket {shlex.quote(str(tokend.socket))} | {curl} -H @- {shlex.quote(domains)}")

    def shell(command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True,
                              text=True, timeout=30, env=clean_env(), check=False)

    done = await asyncio.to_thread(shell, pipeline)
    assert done.returncode == 0, done.stderr
    body, _, code = done.stdout.rpartition("\n")
    assert code == "200", done.stdout
    assert "elements" in json.loads(body)
    assert upstream.fake.count("domains", 200) == 1

    # Without the header the same request is refused: the token is what let it in.
    done = await asyncio.to_thread(shell, f"{curl} {shlex.quote(domains)}")
    assert done.stdout.rpartition("\n")[2] == "401"
    assert_no_secrets(done.stdout + done.stderr, [upstream.fake], "curl's output")
