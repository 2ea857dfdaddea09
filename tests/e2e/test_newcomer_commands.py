"""What users of Vault Agent and cloud-sql-proxy look for first: ``run --once``, ``check-config
--online``, ``tokend invalidate`` and ``POST /v1/invalidate``, the log options, NO_COLOR; and a
reload that changes only ``request_timeout`` keeps the token."""

from __future__ import annotations

import asyncio
import os
import pty
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support import (
    Tokend,
    Upstream,
    assert_no_secrets,
    assert_one_line_error,
    clean_env,
    cli,
    eventually,
    parse_events,
    tokend_argv,
    write_config,
)


def tokens_dir(workdir: Path) -> Path:
    path = workdir / "tokens"
    path.mkdir(mode=0o750)
    return path


# -- run --once ------------------------------------------------------------------------------------


async def test_run_once_writes_the_token_file_and_exits_0(upstream: Upstream,
                                                          workdir: Path) -> None:
    sink = tokens_dir(workdir) / "t1.token"
    path = write_config(workdir, upstream.url, upstream.ca_pem,
                        target={"file_sink": {"path": str(sink)}})
    done = await cli("run", "--once", "--config", str(path))
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    # The file stays for whoever reads it next (keep_on_exit is false: that is for the daemon).
    assert sink.read_text() in upstream.fake.issued_access_tokens
    assert upstream.fake.count("login") == 1
    events = [e["event"] for e in parse_events(done.stdout)]
    assert "token.acquired" in events and "daemon.started" not in events
    assert not (workdir / "tokend.sock").exists()  # no socket: nothing to serve
    assert_no_secrets(done.stdout + done.stderr, [upstream.fake], "run --once")


async def test_run_once_without_a_token_exits_1_with_the_reason(upstream: Upstream,
                                                                workdir: Path) -> None:
    path = write_config(workdir, upstream.url, upstream.ca_pem, password="wrong",
                        target={"max_login_failures": 1})
    done = await cli("run", "--once", "--config", str(path))
    assert done.returncode == 1
    assert_one_line_error(done.stderr, "t1", "state credentials_rejected", "login was rejected")
    assert upstream.fake.count("login") == 1

    # The rejection is on record under state_dir: the next try makes no login at all.
    done = await cli("run", "--once", "--config", str(path))
    assert done.returncode == 1
    assert_one_line_error(done.stderr, "t1", "lockout guard made no login")
    assert upstream.fake.count("login") == 1


# -- check-config --online -------------------------------------------------------------------------


async def test_check_config_online_succeeds_step_by_step(upstream: Upstream,
                                                         workdir: Path) -> None:
    path = write_config(workdir, upstream.url, upstream.ca_pem)
    done = await cli("check-config", "--online", "--config", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    # It says the login counts before it makes it.
    warning = out.index("counts against the lockout guard")
    steps = ["resolve 127.0.0.1: ok", "connect 127.0.0.1:", "tls: ok, verified against the system"
             f" CAs and {upstream.ca_pem}", "login as user administrator@vsphere.local: ok",
             "revoke the session: ok"]
    at = [out.index(step) for step in steps]
    assert warning < at[0] and at == sorted(at), out
    assert upstream.fake.count("login") == 1 and upstream.fake.count("revoke") == 1
    assert upstream.fake.refresh_ids == set()  # no session left behind
    assert_no_secrets(out + done.stderr, [upstream.fake], "check-config --online")


async def test_check_config_online_with_a_wrong_password_exits_1_and_counts_it(
        upstream: Upstream, make_tokend: Callable[..., Any], workdir: Path) -> None:
    path = write_config(workdir, upstream.url, upstream.ca_pem, password="wrong",
                        target={"max_login_failures": 2})
    done = await cli("check-config", "--online", "--config", str(path))
    assert done.returncode == 1
    assert "login as user administrator@vsphere.local: FAILED: rejected" in done.stdout
    assert "rejection 1 of 2 for this secret" in done.stdout
    assert "wrong" not in done.stdout.replace("wrong password", "")  # the secret is not echoed
    # The daemon sees the rejection: one more, and it stops logging in.
    tokend: Tokend = await make_tokend(upstream.url, upstream.ca_pem, wait="listening",
                                       password="wrong", target={"max_login_failures": 2})
    await eventually(lambda: tokend.events("login.rejected"), what="login.rejected")
    assert tokend.events("lockout.restored")[0]["rejections"] == 1
    assert (await tokend.status())["state"] == "credentials_rejected"
    assert upstream.fake.count("login") == 2


async def test_check_config_online_names_the_untrusted_certificate(upstream: Upstream,
                                                                   workdir: Path) -> None:
    path = write_config(workdir, upstream.url)  # no ca_file: the fake's CA is not trusted
    done = await cli("check-config", "--online", "--config", str(path))
    assert done.returncode == 1
    line = next(x for x in done.stdout.splitlines() if "tls: FAILED" in x)
    assert "the certificate does not verify against the system CAs" in line
    assert "the server presented sha256:" in line and "tls_fingerprint" in line
    assert upstream.fake.count("login") == 0  # nothing was sent to a server not trusted


# -- invalidate ------------------------------------------------------------------------------------


async def test_invalidate_command_and_the_default_target_endpoint(
        upstream: Upstream, make_tokend: Callable[..., Any]) -> None:
    tokend: Tokend = await make_tokend(upstream.url, upstream.ca_pem,
                                       target={"request_timeout": "10s"})
    first = await tokend.token()
    done = await cli("invalidate", "--socket", str(tokend.socket))
    assert done.returncode == 0, done.stderr
    second = await tokend.token()
    assert second["fingerprint"] != first["fingerprint"]
    assert done.stdout == (f"t1: reported {first['fingerprint']}; now serving"
                           f" {second['fingerprint']}, expires in {done.stdout.split()[-1]}\n")

    # One line of shell: POST /v1/invalidate, for the default target.
    await asyncio.sleep(5.5)  # past the quiet window after a new token
    answer = await tokend.request("POST", "/v1/invalidate", {"fingerprint": second["fingerprint"]},
                                  timeout=20)
    assert answer.status == 200, answer.body
    assert answer.json()["fingerprint"] not in (first["fingerprint"], second["fingerprint"])
    bad = await tokend.request("POST", "/v1/invalidate", {"nope": 1})
    assert bad.status == 400


# -- log options, NO_COLOR ---------------------------------------------------------------------------


async def test_log_level_and_format_from_the_command_line_and_the_environment(
        upstream: Upstream, workdir: Path) -> None:
    path = write_config(workdir, upstream.url, upstream.ca_pem)  # [log] level = "debug"
    done = await cli("run", "--once", "--log-level", "warning", "--config", str(path))
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""  # info and debug lines are below warning
    done = await cli("run", "--once", "--config", str(path),
                     env=clean_env(TOKEND_LOG_LEVEL="info", TOKEND_LOG_FORMAT="console"))
    assert done.returncode == 0, done.stderr
    assert "token.acquired" in done.stdout and not done.stdout.lstrip().startswith("{")
    assert "[info" in done.stdout and "[debug" not in done.stdout


def on_a_terminal(argv: list[str], env: dict[str, str]) -> str:
    """What ``argv`` prints with its stdout on a pseudo-terminal."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(argv, stdout=follower, stderr=subprocess.DEVNULL, env=env)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the other end closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    proc.wait(20)
    os.close(leader)
    return b"".join(chunks).decode(errors="replace")


async def test_no_color_is_honoured_by_status_and_console_logs(
        upstream: Upstream, tokend: Tokend, workdir: Path) -> None:
    status = tokend_argv("status", "--socket", str(tokend.socket))
    colored = await asyncio.to_thread(on_a_terminal, status, clean_env())
    assert "\x1b[" in colored
    plain = await asyncio.to_thread(on_a_terminal, status, clean_env(NO_COLOR="1"))
    assert "\x1b[" not in plain and "valid" in plain

    (workdir / "once").mkdir()
    path = write_config(workdir / "once", upstream.url, upstream.ca_pem, log={"format": "auto"})
    once = tokend_argv("run", "--once", "--config", str(path))
    assert "\x1b[" in await asyncio.to_thread(on_a_terminal, once, clean_env())
    logs = await asyncio.to_thread(on_a_terminal, once, clean_env(NO_COLOR="1"))
    assert "token.acquired" in logs and "\x1b[" not in logs


# -- reload --------------------------------------------------------------------------------------


async def test_a_reload_that_changes_only_request_timeout_keeps_the_token(
        make_upstream: Callable[..., Any], make_tokend: Callable[..., Any],
        workdir: Path) -> None:
    upstream: Upstream = await make_upstream(access_ttl=60)
    tokend: Tokend = await make_tokend(upstream.url, upstream.ca_pem)
    before = await tokend.token()
    write_config(workdir, upstream.url, upstream.ca_pem, target={"request_timeout": "7s"})
    tokend.signal(signal.SIGHUP)
    reloaded = await eventually(lambda: tokend.events("config.reloaded"), what="config.reloaded")
    assert reloaded[0]["kept"] == ["t1"] and reloaded[0]["restarted"] == []
    assert (await tokend.token())["fingerprint"] == before["fingerprint"]
    assert upstream.fake.count("login") == 1


async def test_daemon_started_comes_first_and_a_clean_exit_leaves_no_lock(
        upstream: Upstream, tokend: Tokend) -> None:
    assert await tokend.stop() == 0
    daemon = [e["event"] for e in tokend.events() if e["event"].startswith("daemon.")]
    assert daemon == ["daemon.started", "daemon.stopping", "daemon.stopped"]
    assert not tokend.socket.exists()
    assert not Path(f"{tokend.socket}.lock").exists()


async def test_example_config_is_the_one_in_the_repository() -> None:
    done = await cli("example-config")
    repo = Path(__file__).resolve().parents[2]
    assert done.returncode == 0
    assert done.stdout == (repo / "config.example.toml").read_text()
    assert "[tool.setuptools.package-data]" in (repo / "pyproject.toml").read_text()
    assert '"config.example.toml"' in (repo / "pyproject.toml").read_text()
    assert (repo / "config.example.toml").resolve() == repo / "tokend" / "config.example.toml"


async def test_the_log_options_outlive_a_reload(upstream: Upstream, make_tokend: Callable[..., Any],
                                                workdir: Path) -> None:
    tokend: Tokend = await make_tokend(upstream.url, upstream.ca_pem,
                                       env={"TOKEND_LOG_FORMAT": "console"})  # [log] says json
    tokend.signal(signal.SIGHUP)
    await eventually(lambda: "config.reloaded" in tokend.stdout(), what="config.reloaded")
    lines = [line for line in tokend.stdout().splitlines() if line.strip()]
    assert lines and not any(line.lstrip().startswith("{") for line in lines), lines[-3:]
