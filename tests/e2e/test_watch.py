"""Watch (SPEC §10.1): ``?after=FP&wait=S`` held until the next token, against the real daemon."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support import USER, Answer, Tokend, Upstream, eventually, write_config

ZERO_FP = "sha256:" + "0" * 64


def watch_path(after: str, wait: float | None = None, path: str = "/v1/targets/t1/token",
               extra: str = "") -> str:
    query = f"after={after}" + (f"&wait={wait:g}" if wait is not None else "") + extra
    return f"{path}?{query}"


def upstream_calls(upstream: Upstream) -> int:
    return sum(upstream.fake.count(op) for op in ("login", "refresh", "revoke"))


def assert_error(answer: Answer, status: int, code: str) -> dict[str, Any]:
    assert answer.status == status, (answer.status, answer.body)
    body: dict[str, Any] = answer.json()
    assert body["errorCode"] == code, body
    assert body["message"] and "remediationMessage" in body
    if status == 503:
        retry_after = answer.headers.get("Retry-After", "")
        assert retry_after.isdigit() and int(retry_after) >= 1, answer.headers
    return body


async def held(tokend: Tokend, path: str, seconds: float = 0.5) -> asyncio.Task[Answer]:
    """Start a watch and check it is still held after ``seconds``."""
    task = asyncio.create_task(tokend.get(path, timeout=60))
    await asyncio.sleep(seconds)
    assert not task.done(), task.result().body if not task.exception() else task.exception()
    return task


async def test_a_watch_with_an_old_fingerprint_is_answered_at_once(tokend: Tokend) -> None:
    current = await tokend.token()
    for path in ("/v1/token", "/v1/targets/t1/token"):
        started = time.monotonic()
        answer = await tokend.get(watch_path(ZERO_FP, 30, path))
        assert answer.status == 200, answer.body
        assert answer.json()["fingerprint"] == current["fingerprint"]
        assert time.monotonic() - started < 1.0
    raw = await tokend.get(watch_path(ZERO_FP, 30, extra="&format=raw"))
    assert raw.status == 200 and raw.body.decode() == current["accessToken"]


async def test_a_held_watch_is_answered_with_the_next_token_and_costs_no_upstream_call(
        upstream: Upstream, tokend: Tokend) -> None:
    first = await tokend.token()
    calls = upstream_calls(upstream)
    watches = [await held(tokend, watch_path(first["fingerprint"], 60), 0) for _ in range(20)]
    await asyncio.sleep(0.5)
    assert not any(w.done() for w in watches)
    answers = await asyncio.wait_for(asyncio.gather(*watches), 15)  # the 6 s token refreshes at ~4 s
    new = {a.json()["fingerprint"] for a in answers}
    assert len(new) == 1 and first["fingerprint"] not in new, new
    assert new == {(await tokend.token())["fingerprint"]}
    # The one scheduled refresh, nothing for the twenty watches.
    assert upstream_calls(upstream) == calls + 1
    assert upstream.fake.count("refresh") == 1


async def test_a_watch_that_times_out_answers_the_current_token(tokend: Tokend) -> None:
    current = await tokend.token()
    started = time.monotonic()
    answer = await tokend.get(watch_path(current["fingerprint"], 1))
    took = time.monotonic() - started
    assert answer.status == 200, answer.body
    assert answer.json()["fingerprint"] == current["fingerprint"]
    assert 1.0 <= took < 2.0, took
    zero = await tokend.get(watch_path(current["fingerprint"], 0))
    assert zero.status == 200 and zero.json()["fingerprint"] == current["fingerprint"]


async def test_malformed_watch_parameters_are_400(tokend: Tokend) -> None:
    fp = (await tokend.token())["fingerprint"]
    for query in (f"after={fp.upper()}", "after=sha256:abc", "after=", f"after={fp}x",
                  f"after={fp}&wait=301", f"after={fp}&wait=-1", f"after={fp}&wait=nan",
                  f"after={fp}&wait=soon", "wait=10", f"after={fp}&min_ttl=10"):
        body = assert_error(await tokend.get(f"/v1/token?{query}"), 400, "BAD_REQUEST")
        assert body["remediationMessage"], query


async def test_a_withdrawn_token_answers_held_watches_with_503(
        upstream: Upstream, tokend: Tokend) -> None:
    current = await tokend.token()
    upstream.fake.faults.down = True  # no refresh: the 6 s token expires with no successor
    task = await held(tokend, watch_path(current["fingerprint"], 120))
    answer = await asyncio.wait_for(task, 15)
    assert_error(answer, 503, "TOKEN_UNAVAILABLE")
    # A watch that finds no token is answered at once, like a plain request.
    started = time.monotonic()
    assert_error(await tokend.get(watch_path(current["fingerprint"], 120)), 503,
                 "TOKEN_UNAVAILABLE")
    assert time.monotonic() - started < 1.0


async def test_sigterm_answers_held_watches_with_503_at_once(tokend: Tokend) -> None:
    current = await tokend.token()
    tasks = [await held(tokend, watch_path(current["fingerprint"], 120), 0) for _ in range(5)]
    await asyncio.sleep(0.5)
    started = time.monotonic()
    tokend.signal(signal.SIGTERM)
    answers = await asyncio.wait_for(asyncio.gather(*tasks), 10)
    assert time.monotonic() - started < 2.0  # not the 5 s shutdown grace
    for answer in answers:
        body = assert_error(answer, 503, "TOKEN_UNAVAILABLE")
        assert "stopping" in body["message"]
    assert await tokend.wait_exit() == 0


async def test_a_reload_that_replaces_or_removes_the_target_answers_held_watches_with_404(
        upstream: Upstream, make_tokend: Callable[..., Any], workdir: Path) -> None:
    two = {"name": "t2", "url": upstream.url, "username": USER,
           "password_file": str(workdir / "password"), "ca_file": str(upstream.ca_pem)}
    tokend: Tokend = await make_tokend(upstream.url, upstream.ca_pem, extra_targets=[two],
                                       server={"default_target": "t1"})
    fp1 = (await tokend.token("/v1/targets/t1/token"))["fingerprint"]
    fp2 = (await tokend.token("/v1/targets/t2/token"))["fingerprint"]
    on_t1 = await held(tokend, watch_path(fp1, 120))
    on_t2 = await held(tokend, watch_path(fp2, 120, "/v1/targets/t2/token"))
    # t1 is replaced (a new request_timeout is a new connection), t2 is removed.
    write_config(workdir, upstream.url, upstream.ca_pem, server={"default_target": "t1"},
                 target={"request_timeout": "4s"})
    tokend.signal(signal.SIGHUP)
    for task in (on_t1, on_t2):
        body = assert_error(await asyncio.wait_for(task, 10), 404, "TARGET_NOT_FOUND")
        assert "removed or replaced" in body["message"]
    # The replaced target answers again from its new keeper.
    async def t1_served() -> bool:
        return (await tokend.get("/v1/targets/t1/token")).status == 200
    await eventually(t1_served, what="t1's new keeper to hold a token")
    assert (await tokend.get("/v1/targets/t2/token")).status == 404


async def test_held_watches_count_against_the_connection_limit(
        upstream: Upstream, make_tokend: Callable[..., Any]) -> None:
    tokend: Tokend = await make_tokend(upstream.url, upstream.ca_pem,
                                       server={"max_connections_per_uid": 4})
    fp = (await tokend.token())["fingerprint"]
    tasks = [await held(tokend, watch_path(fp, 120), 0) for _ in range(4)]
    await asyncio.sleep(0.5)
    assert not any(t.done() for t in tasks)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as extra:
        extra.settimeout(5)
        extra.connect(str(tokend.socket))
        refused = extra.recv(4096)
    assert refused.startswith(b"HTTP/1.1 503"), refused
    assert b"TOO_MANY_CONNECTIONS" in refused
    for task in tasks:
        task.cancel()
