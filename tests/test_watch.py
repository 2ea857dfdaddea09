"""Held watches (tokend/watch.py) without a socket: what they wait on and what they answer."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tokend.serving import ServeError
from tokend.watch import SLOT, Deadlines, Watches, parse_after, parse_wait

OLD = "sha256:" + "a" * 64
NEW = "sha256:" + "b" * 64


class Served:
    def __init__(self, fingerprint: str) -> None:
        self.fingerprint = fingerprint


class StubKeeper:
    """What a watch reads from a keeper: current(), news(), retired, unavailable()."""

    name = "t1"

    def __init__(self) -> None:
        self.token: Served | None = Served(OLD)
        self.retired = False
        self.clock = type("Clock", (), {"monotonic": staticmethod(time.monotonic)})()
        self._news: asyncio.Future[None] | None = None
        self.news_handed_out = 0

    def current(self, now: float) -> Served | None:
        return self.token

    def unavailable(self, now: float) -> ServeError:
        return ServeError(503, "TOKEN_UNAVAILABLE", "no token", retry_after=3)

    def news(self) -> asyncio.Future[None]:
        if self._news is None:
            self._news = asyncio.get_running_loop().create_future()
        self.news_handed_out += 1
        return self._news

    def announce(self) -> None:
        news, self._news = self._news, None
        if news is not None:
            news.set_result(None)


def start(watches: Watches, keeper: StubKeeper, n: int, wait: float = 60) -> list[asyncio.Task[Any]]:
    return [asyncio.create_task(watches.watch(keeper, OLD, wait)) for _ in range(n)]  # type: ignore[arg-type]


async def test_a_thousand_watches_share_one_news_callback_and_one_timer() -> None:
    loop = asyncio.get_running_loop()
    keeper, watches = StubKeeper(), Watches()
    timers_before = len(loop._scheduled)  # type: ignore[attr-defined]
    tasks = start(watches, keeper, 1000, wait=60)
    await asyncio.sleep(0.01)
    assert not any(t.done() for t in tasks)
    assert watches.held() == 1000
    news = keeper._news
    assert news is not None
    assert len(news._callbacks) == 1  # type: ignore[attr-defined]  # one, not one per watch
    # All started within a slot or two: one shared timer each, not one per watch.
    assert len(watches.deadlines) <= 2
    assert len(loop._scheduled) - timers_before <= 2  # type: ignore[attr-defined]
    keeper.token = Served(NEW)
    started = time.perf_counter()
    keeper.announce()
    answers = await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert {a.fingerprint for a in answers} == {NEW}
    assert time.perf_counter() - started < 0.5  # a few ms on a quiet machine
    assert watches.held() == 0


async def test_a_watch_that_hangs_up_cancels_nothing_shared() -> None:
    keeper, watches = StubKeeper(), Watches()
    gone, stays = start(watches, keeper, 2)
    await asyncio.sleep(0.01)
    gone.cancel()
    await asyncio.sleep(0.01)
    assert keeper._news is not None and not keeper._news.cancelled()
    assert watches.held() == 1  # it left its sets at once
    keeper.token = Served(NEW)
    keeper.announce()
    assert (await asyncio.wait_for(stays, 5)).fingerprint == NEW


async def test_a_watch_ends_at_its_deadline_with_the_current_token() -> None:
    keeper, watches = StubKeeper(), Watches()
    started = time.monotonic()
    [task] = start(watches, keeper, 1, wait=0.2)
    assert (await asyncio.wait_for(task, 5)).fingerprint == OLD
    assert 0.2 <= time.monotonic() - started < 0.2 + SLOT + 0.1


async def test_news_that_leaves_the_token_unchanged_keeps_the_watch_held() -> None:
    keeper, watches = StubKeeper(), Watches()
    [task] = start(watches, keeper, 1)
    await asyncio.sleep(0.01)
    keeper.announce()  # e.g. a publish of the same token: nothing for this watch
    await asyncio.sleep(0.01)
    assert not task.done()
    task.cancel()


@pytest.mark.parametrize(("change", "status", "code"), [
    ("withdraw", 503, "TOKEN_UNAVAILABLE"),
    ("retire", 404, "TARGET_NOT_FOUND"),
    ("close", 503, "TOKEN_UNAVAILABLE"),
])
async def test_held_watches_end_with_an_error(change: str, status: int, code: str) -> None:
    keeper, watches = StubKeeper(), Watches()
    tasks = start(watches, keeper, 3)
    await asyncio.sleep(0.01)
    if change == "withdraw":
        keeper.token = None
        keeper.announce()
    elif change == "retire":
        keeper.retired = True
        keeper.announce()
    else:
        watches.close()
    for task in tasks:
        with pytest.raises(ServeError) as caught:
            await asyncio.wait_for(task, 5)
        assert (caught.value.status, caught.value.code) == (status, code)
        if status == 503:
            assert caught.value.retry_after is not None and caught.value.retry_after >= 1
    if change == "close":  # and a watch that starts after is answered at once
        with pytest.raises(ServeError):
            await asyncio.wait_for(watches.watch(keeper, OLD, 60), 1)  # type: ignore[arg-type]


async def test_deadlines_in_one_slot_share_a_timer() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(slot=0.05)
    base = (int(loop.time() / 0.05) + 2) * 0.05 + 0.001
    early, late, other = (loop.create_future() for _ in range(3))
    assert deadlines.add(base, early) == deadlines.add(base + 0.02, late)
    deadlines.add(base + 0.06, other)
    assert len(deadlines) == 2
    assert await asyncio.wait_for(early, 1) is True and late.done() and not other.done()
    assert await asyncio.wait_for(other, 1) is True


@pytest.mark.parametrize("text", ["", "sha256:", "sha256:" + "A" * 64, "sha1:" + "a" * 64,
                                  "sha256:" + "a" * 63, "sha256:" + "a" * 65, "sha256:" + "g" * 64])
def test_a_malformed_after_is_refused(text: str) -> None:
    with pytest.raises(ServeError) as caught:
        parse_after(text)
    assert caught.value.status == 400


@pytest.mark.parametrize(("text", "wait"), [(None, 60.0), ("0", 0.0), ("2.5", 2.5), ("300", 300.0)])
def test_wait_is_read(text: str | None, wait: float) -> None:
    assert parse_wait(text) == wait


@pytest.mark.parametrize("text", ["-1", "300.5", "nan", "inf", "1e9", "soon", ""])
def test_a_bad_wait_is_refused(text: str) -> None:
    with pytest.raises(ServeError) as caught:
        parse_wait(text)
    assert caught.value.status == 400
