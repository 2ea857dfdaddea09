"""The scripts in examples/ run against tokend and the fake SDDC Manager over HTTPS (SPEC §10.2)."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support import Tokend, Upstream

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SCRIPTS = ["requests_domains.py", "httpx_async_domains.py", "sdk_domains.py"]
# Consumer-triggered refreshes wait until a token is 5 s old (SPEC §4): revoke after that.
QUIET_AFTER_NEW_TOKEN = 5.0


async def run_example(script: str, tokend: Tokend, upstream: Upstream) -> str:
    env = {**os.environ, "TOKEND_SOCKET": str(tokend.socket), "SDDC_CA_FILE": str(upstream.ca_pem),
           "REQUESTS_CA_BUNDLE": str(upstream.ca_pem)}
    env.pop("TOKEND_TARGET", None)
    proc = await asyncio.create_subprocess_exec(sys.executable, str(EXAMPLES / script), env=env,
                                                stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, f"{script} failed: {err.decode()[-2000:]}"
    return out.decode()


async def test_the_examples_list_the_domains_before_and_after_a_forced_revocation(
        make_upstream: Callable[..., Any], make_tokend: Callable[..., Any]) -> None:
    upstream: Upstream = await make_upstream(access_ttl=60)
    tokend: Tokend = await make_tokend(upstream.url, upstream.ca_pem)
    started = time.monotonic()
    for script in SCRIPTS:
        assert await run_example(script, tokend, upstream) == "sfo-m01 MANAGEMENT ACTIVE\n", script
    assert upstream.fake.count("domains", 401) == 0

    await asyncio.sleep(max(0.0, started + QUIET_AFTER_NEW_TOKEN + 0.5 - time.monotonic()))
    upstream.fake.revoke_access_tokens()
    for script in SCRIPTS:
        assert await run_example(script, tokend, upstream) == "sfo-m01 MANAGEMENT ACTIVE\n", script
    # The first script after the revocation got a 401, reported it and retried with the one new
    # token; the others got that token from tokend at once.
    assert upstream.fake.count("domains", 401) == 1
    assert upstream.fake.count("refresh") == 1


@pytest.mark.parametrize("script", SCRIPTS)
def test_each_example_says_how_to_run_it(script: str) -> None:
    text = (EXAMPLES / script).read_text()
    assert "TOKEND_SOCKET=" in text.split('"""')[1]
