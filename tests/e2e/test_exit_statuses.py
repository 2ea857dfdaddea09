"""One exit-status table for every command (README, ``tokend --help``): 0 done, 1 runtime failure,
2 usage or configuration error, 130 interrupted. A test per status, each through the commands a
script would run; and ``--wait D`` keeps trying until D has passed."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support import (
    Tokend,
    Upstream,
    assert_one_line_error,
    clean_env,
    run_cli,
    tokend_argv,
    write_config,
)


async def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(run_cli, *args, env=env)


async def test_exit_0_when_done(upstream: Upstream, make_tokend: Callable[..., Any]) -> None:
    # An invalidate of a brand-new token waits out the 5 s quiet window: within request_timeout.
    tokend: Tokend = await make_tokend(upstream.url, upstream.ca_pem,
                                       target={"request_timeout": "10s"})
    sock = str(tokend.socket)
    for args in (("token", "--socket", sock), ("status", "--socket", sock),
                 ("health", "--ready", "--socket", sock), ("invalidate", "--socket", sock),
                 ("check-config", "--config", str(tokend.config_path)), ("example-config",)):
        done = await cli(*args)
        assert done.returncode == 0, (args, done.stderr)
        assert done.stderr == "", (args, done.stderr)
    assert await tokend.stop() == 0  # SIGTERM: how a daemon ends


async def test_exit_1_on_a_runtime_failure(make_upstream: Callable[..., Any],
                                           make_tokend: Callable[..., Any], workdir: Path) -> None:
    absent = str(workdir / "absent.sock")
    for args in (("token",), ("status",), ("health",), ("invalidate",)):
        done = await cli(*args, "--socket", absent)
        assert done.returncode == 1, (args, done)
        assert done.stdout == ""
        assert_one_line_error(done.stderr, absent)

    upstream: Upstream = await make_upstream()
    tokend: Tokend = await make_tokend(upstream.url, upstream.ca_pem, wait="listening",
                                       password="wrong", target={"max_login_failures": 1})
    await asyncio.sleep(0.5)
    done = await cli("token", "--socket", str(tokend.socket))
    assert done.returncode == 1 and done.stdout == ""
    assert_one_line_error(done.stderr, "TOKEN_UNAVAILABLE")
    done = await cli("health", "--ready", "--socket", str(tokend.socket))
    assert done.returncode == 1


async def test_exit_2_on_a_usage_or_config_error(upstream: Upstream, tokend: Tokend,
                                                 workdir: Path) -> None:
    sock = str(tokend.socket)
    cases = [
        (("token", "--socket", sock, "--target", "nope"), "TARGET_NOT_FOUND"),
        # The fake's tokens live 6 s: a token valid for 10 more minutes cannot exist.
        (("token", "--socket", sock, "--min-ttl", "600"), "BAD_REQUEST"),
        (("token", "--socket", sock, "--wait", "10s", "--min-ttl", "10m"), "BAD_REQUEST"),
        (("health", "--ready", "--target", "nope", "--socket", sock), "nope"),
        (("invalidate", "--target", "nope", "--socket", sock), "TARGET_NOT_FOUND"),
        (("token", "--wait", "soon"), "--wait"),
        (("frobnicate",), "frobnicate"),
        (("check-config", "--config", str(workdir / "absent.toml")), "absent.toml"),
        (("run", "--config", str(workdir / "absent.toml")), "absent.toml"),
        (("run", "--once", "--config", str(workdir / "absent.toml")), "absent.toml"),
    ]
    for args, named in cases:
        started = time.monotonic()
        done = await cli(*args)
        assert done.returncode == 2, (args, done)
        assert done.stdout == ""
        assert "Traceback" not in done.stderr
        assert named in done.stderr, (args, done.stderr)
        assert time.monotonic() - started < 8, args  # --wait does not retry a usage error
    done = await cli("run", "--config", str(tokend.config_path), env=clean_env(
        TOKEND_LOG_LEVEL="loud"))
    assert done.returncode == 2
    assert_one_line_error(done.stderr, "$TOKEND_LOG_LEVEL", "'loud'")


async def test_exit_130_when_interrupted_with_nothing_on_stdout(workdir: Path) -> None:
    """Ctrl-C during ``tokend token --wait 30s > tok && next-step``: the script must stop."""
    proc = subprocess.Popen(tokend_argv("token", "--wait", "30s", "--socket",
                                        str(workdir / "absent.sock")),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=clean_env())
    await asyncio.sleep(1.5)  # waiting for tokend
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    out, err = await asyncio.to_thread(proc.communicate, timeout=10)
    assert proc.returncode == 130, (out, err)
    assert out == ""
    assert "Traceback" not in err

    # The same script line in a shell: the next step does not run.
    script = subprocess.Popen(
        ["bash", "-c", f"{' '.join(tokend_argv('token', '--wait', '30s', '--socket'))}"
                       f" {workdir / 'absent.sock'} > {workdir / 'tok'} && touch {workdir / 'next'}"],
        env=clean_env(), start_new_session=True)
    await asyncio.sleep(1.5)
    import os
    os.killpg(script.pid, signal.SIGINT)
    await asyncio.to_thread(script.wait, 10)
    assert not (workdir / "next").exists()
    assert (workdir / "tok").read_text() == ""


@pytest.mark.parametrize("wait", [1.0, 3.0])
async def test_wait_keeps_trying_until_its_deadline(workdir: Path, wait: float) -> None:
    started = time.monotonic()
    done = await cli("token", "--wait", f"{wait:g}s", "--socket", str(workdir / "absent.sock"))
    elapsed = time.monotonic() - started
    assert done.returncode == 1
    assert wait <= elapsed < wait + 2.5, elapsed  # one last try at the deadline, then no more


async def test_wait_gets_a_token_that_comes_just_before_the_deadline(
        upstream: Upstream, make_tokend: Callable[..., Any], workdir: Path) -> None:
    sock = workdir / "tokend.sock"
    waiting = subprocess.Popen(tokend_argv("token", "--json", "--wait", "6s", "--socket",
                                           str(sock)),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=clean_env())
    await asyncio.sleep(3.5)  # past the last backoff step before the deadline of the old loop
    tokend: Tokend = await make_tokend(upstream.url, upstream.ca_pem)
    out, err = await asyncio.to_thread(waiting.communicate, timeout=20)
    assert waiting.returncode == 0, err
    assert json.loads(out)["fingerprint"] == (await tokend.token())["fingerprint"]


def test_help_gives_every_duration_its_unit() -> None:
    for command in ("token", "demo", "fake-sddc", "status", "health", "invalidate"):
        done = run_cli(command, "--help")
        assert done.returncode == 0
        text = " ".join(done.stdout.split())
        for default in ("default 5", "default 3600", "default 86400", "default 30"):
            if default in text:
                assert f"{default}s" in text, (command, text)
    top = " ".join(run_cli("--help").stdout.split())
    assert "Exit status: 0 done; 1 runtime failure" in top and "130 interrupted" in top


def test_check_config_of_a_good_file_exits_0(workdir: Path) -> None:
    path = write_config(workdir, "https://127.0.0.1:1")
    assert run_cli("check-config", "--config", str(path)).returncode == 0
