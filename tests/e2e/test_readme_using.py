"""Each way of using the token that the README's "Using the token" table adds for watch and the
client library (SPEC §10) is run here as written, against the real daemon and the fake."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import pytest

from tests.support import Tokend

REPO = Path(__file__).resolve().parents[2]
EXAMPLES_TESTED = REPO / "tests" / "e2e" / "test_examples.py"


def using_rows() -> dict[str, str]:
    """The table's rows: the "from" cell -> the first command in the "how" cell, as written."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Using the token", 1)[1].lstrip("\n").split("\n\n", 1)[0]
    rows = {}
    for line in section.splitlines()[2:]:
        cells = re.split(r"(?<!\\)\|", line)
        code = re.search(r"`((?:[^`\\]|\\.)+)`", cells[2])
        assert code, line
        rows[cells[1].strip()] = code.group(1).replace("\\|", "|")
    return rows


ROWS = using_rows()


def env(tokend: Tokend, fingerprint: str = "") -> dict[str, str]:
    path = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"  # the tokend script
    return {**os.environ, "TOKEND_SOCKET": str(tokend.socket), "PATH": path, "FP": fingerprint}


def with_socket(command: str, tokend: Tokend) -> str:
    return command.replace("/run/tokend/tokend.sock", str(tokend.socket))


async def shell(command: str, environ: dict[str, str], timeout: float = 30) -> str:
    proc = await asyncio.create_subprocess_exec("bash", "-c", command, env=environ,
                                                stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode == 0, (command, err.decode())
    return out.decode()


async def test_a_shell_loop_follows_rotation(tokend: Tokend) -> None:
    command = ROWS["a shell loop that follows rotation"]
    proc = await asyncio.create_subprocess_exec("bash", "-c", command, env=env(tokend),
                                                stdout=asyncio.subprocess.PIPE,
                                                start_new_session=True)
    assert proc.stdout is not None
    try:
        lines = [await asyncio.wait_for(proc.stdout.readline(), 20) for _ in range(2)]
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        await asyncio.wait_for(proc.wait(), 10)
    for line in lines:  # the current token, then the next one
        assert re.fullmatch(rb"new token, \d+ characters\n", line), line


async def test_a_script_waits_for_the_next_token(tokend: Tokend) -> None:
    current = await tokend.token()
    out = await shell(ROWS["a script that waits for the next token"],
                      env(tokend, current["fingerprint"]))
    assert out.strip() == (await tokend.token())["accessToken"] != current["accessToken"]


async def test_http_waits_for_rotation(tokend: Tokend) -> None:
    current = await tokend.token()
    command = with_socket(ROWS["anything that speaks HTTP, waiting for rotation"], tokend)
    out = await shell(command, env(tokend, current["fingerprint"]))
    assert '"fingerprint": "sha256:' in out and current["fingerprint"] not in out


async def test_python(tokend: Tokend) -> None:
    code = ROWS["Python"].replace("; ", "\n")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code, env=env(tokend),
                                                stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0 and 0 < int(out) <= 6


async def test_python_asyncio_keeps_a_header(tokend: Tokend) -> None:
    head, body = ROWS["Python asyncio, a header kept in memory"].split(": ", 1)
    code = "\n".join([
        "import asyncio",
        "from tokend.client import AsyncClient",
        "async def main():",
        "    seen = []",
        f"    {head}:",
        f"        {body}",
        "        seen.append(headers['Authorization'])",
        "        if len(seen) == 2:",
        "            break",
        "    assert seen[0] != seen[1] and all(h.startswith('Bearer ') for h in seen), seen",
        "    print('ok')",
        "asyncio.run(main())",
    ])
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code, env=env(tokend),
                                                stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert out == b"ok\n", err.decode()


@pytest.mark.parametrize(("row", "name"), [
    ("`requests`", "TokendAuth"),
    ("`httpx`, sync or async", "TokendHttpxAuth"),
    ("the vendor SDK (`vmware-sddc-manager`)", "create_oauth_security_context"),
])
def test_library_rows_name_an_example_the_suite_runs(row: str, name: str) -> None:
    text = (REPO / "README.md").read_text()
    line = next(line for line in text.splitlines() if line.startswith(f"| {row} |"))
    assert name in ROWS[row]
    script = re.search(r"python (examples/\w+\.py)", line)
    assert script, line
    assert name in (REPO / script.group(1)).read_text()
    # tests/e2e/test_examples.py runs it, before and after a forced revocation at the fake
    assert Path(script.group(1)).name in EXAMPLES_TESTED.read_text()
