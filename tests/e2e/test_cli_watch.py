"""``tokend token --watch`` and ``--after FP --wait S`` (SPEC §2, §10.1), as a shell script runs them."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time

from tests.support import Tokend, Upstream

TOKEND = [sys.executable, "-m", "tokend"]


def env(tokend: Tokend) -> dict[str, str]:
    return {**os.environ, "TOKEND_SOCKET": str(tokend.socket)}


async def run(tokend: Tokend, *argv: str, timeout: float = 30) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(*TOKEND, *argv, env=env(tokend),
                                                stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_watch_prints_a_line_per_new_token_and_exits_130_on_ctrl_c(
        upstream: Upstream, tokend: Tokend) -> None:
    proc = await asyncio.create_subprocess_exec(*TOKEND, "token", "--watch", env=env(tokend),
                                                stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    lines = []
    for _ in range(3):  # the current token, then two refreshes of the 6 s tokens
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        lines.append(line.decode().rstrip("\n"))
        assert lines[-1] == (await tokend.token())["accessToken"]
    assert len(set(lines)) == 3
    assert all(token in upstream.fake.issued_access_tokens for token in lines)
    proc.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(proc.wait(), 10) == 130
    # the watches cost no upstream call: one login, one refresh per line after the first
    assert upstream.fake.count("login") == 1
    assert upstream.fake.count("refresh") in (2, 3)


async def test_watch_lines_in_header_and_json_form_feed_a_while_read_loop(
        tokend: Tokend) -> None:
    script = (" ".join(TOKEND) + " token --watch --header"
              " | { n=0; while read -r line; do echo \"got ${#line}\"; n=$((n+1));"
              " [ $n -eq 2 ] && break; done; }")
    proc = await asyncio.create_subprocess_exec("bash", "-c", script, env=env(tokend),
                                                stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err
    assert out.decode().count("got ") == 2
    code, out_json, err_json = await run(tokend, "token", "--json", "--after", "sha256:" + "0" * 64)
    assert code == 0, err_json
    assert json.loads(out_json)["fingerprint"] == (await tokend.token())["fingerprint"]


async def test_after_and_wait_print_once(tokend: Tokend) -> None:
    current = await tokend.token()
    started = time.monotonic()
    code, out, err = await run(tokend, "token", "--after", current["fingerprint"], "--wait", "1s")
    took = time.monotonic() - started
    assert code == 0, err
    if out == current["accessToken"] + "\n":
        assert took >= 1.0  # held for --wait, then the current token
    else:  # a refresh came first: the new token, at once
        assert out == (await tokend.token())["accessToken"] + "\n"
    code, out, err = await run(tokend, "token", "--header", "--after", "sha256:" + "1" * 64)
    assert code == 0 and out.startswith("Authorization: Bearer ") and out.count("\n") == 1


async def test_watch_errors_keep_the_exit_codes(tokend: Tokend) -> None:
    code, out, err = await run(tokend, "token", "--after", "sha256:nothex")
    assert (code, out) == (1, "") and err.startswith("tokend: no token: BAD_REQUEST: ")
    assert err[-1] == "\n" and err.count("\n") == 1
    code, _, err = await run(tokend, "token", "--watch", "--min-ttl", "10")
    assert code == 2 and "--min-ttl cannot be combined" in err
    code, _, err = await run(tokend, "token", "--watch", "--target", "nope")
    assert code == 1 and "TARGET_NOT_FOUND" in err
    code, _, err = await run(tokend, "token", "--watch", "--socket", str(tokend.socket) + ".x")
    assert code == 1 and "cannot reach tokend" in err
