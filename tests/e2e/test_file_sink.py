"""The file sink: atomic writes, mode and group, never an expired token left behind."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt

from tests.support import Tokend, eventually


def sink(path: Path, mode: str = "0640", group: str = "5555", fmt: str = "raw",
         keep: bool = False) -> dict[str, Any]:
    """Target settings for a file sink at ``path``."""
    return {"file_sink": {"path": str(path), "mode": mode, "group": group, "format": fmt,
                          "keep_on_exit": keep}}


def sink_dir(workdir: Path) -> Path:
    directory = workdir / "tokens"
    directory.mkdir(mode=0o750, exist_ok=True)
    return directory


async def test_reader_never_sees_a_partial_empty_or_expired_token(
        make_upstream: Callable[..., Any], make_tokend: Callable[..., Any], workdir: Path) -> None:
    # 3-second tokens are served for 2 s (whole-second claims cost 1 s) and refreshed after ~1.4 s.
    upstream = await make_upstream(access_ttl=3)
    fake = upstream.fake
    path = sink_dir(workdir) / "t1.token"
    tokend: Tokend = await make_tokend(upstream.url, upstream.ca_pem, target=sink(path))
    bad: list[str] = []
    reads = 0
    stop = threading.Event()

    def reader() -> None:
        nonlocal reads
        issued = fake.issued_access_tokens
        while not stop.is_set():
            try:
                content = path.read_text()
            except FileNotFoundError:
                bad.append("missing while a token was valid")
                continue
            reads += 1
            if content not in issued:
                bad.append(f"not a token the upstream issued: {content[:20]!r}")
                continue
            exp = jwt.decode(content, options={"verify_signature": False})["exp"]
            if exp <= time.time():
                bad.append("an expired token")

    thread = threading.Thread(target=reader)
    thread.start()
    await eventually(lambda: fake.count("refresh", 200) >= 6, 30, what="six refreshes")
    stop.set()
    thread.join()
    assert reads > 1000, reads
    assert not bad, bad[:5]
    st = os.stat(path)
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert st.st_gid == 5555
    assert await tokend.stop() == 0
    leftovers = [p.name for p in path.parent.iterdir()]
    assert not leftovers, leftovers  # the token removed at exit, and no temp file left behind


async def test_sink_is_removed_when_the_token_expires_without_a_successor(
        make_upstream: Callable[..., Any], make_tokend: Callable[..., Any], workdir: Path) -> None:
    upstream = await make_upstream(access_ttl=3)
    path = sink_dir(workdir) / "t1.json"
    tokend: Tokend = await make_tokend(upstream.url, upstream.ca_pem,
                                       target=sink(path, fmt="json"))
    data = json.loads(path.read_text())
    assert data["target"] == "t1" and data["accessToken"] in upstream.fake.issued_access_tokens
    upstream.fake.faults.down = True
    await eventually(lambda: not path.exists(), 10, what="the sink file to be removed")
    assert (await tokend.status())["state"] == "expired"
    upstream.fake.faults.down = False
    await eventually(path.exists, 15, what="a new token in the sink")


async def test_sink_is_removed_at_exit_unless_keep_on_exit(
        make_upstream: Callable[..., Any], make_tokend: Callable[..., Any], workdir: Path) -> None:
    upstream = await make_upstream(access_ttl=60)
    path = sink_dir(workdir) / "t1.token"
    tokend: Tokend = await make_tokend(upstream.url, upstream.ca_pem, target=sink(path))
    assert path.exists()
    assert await tokend.stop() == 0
    assert not path.exists()
    kept: Tokend = await make_tokend(upstream.url, upstream.ca_pem,
                                     target=sink(path, keep=True))
    assert path.exists()
    assert await kept.stop() == 0
    assert path.exists()


async def test_a_sink_directory_writable_by_others_is_refused(
        upstream: Any, make_tokend: Callable[..., Any], workdir: Path) -> None:
    directory = workdir / "open"
    directory.mkdir()
    directory.chmod(0o777)
    tokend: Tokend = await make_tokend(upstream.url, upstream.ca_pem, wait=None,
                                       target=sink(directory / "t1.token"))
    assert await tokend.wait_exit(timeout=20) == 2, tokend.stderr()
    assert "writable by other users" in tokend.stderr()
    assert "Traceback" not in tokend.stderr()
