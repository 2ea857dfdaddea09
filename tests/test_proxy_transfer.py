"""The moving deadline of a proxied exchange (tokend.proxy.transfer), on a clock of the test's."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tokend.proxy.transfer import MovingDeadline


class ManualTimers:
    """The two timer calls MovingDeadline makes (``time``, ``call_at``), on a clock the test moves."""

    def __init__(self) -> None:
        self.now = 0.0
        self.handles: list[asyncio.TimerHandle] = []
        self.set_at: list[float] = []  # every call_at, in order

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Any) -> asyncio.TimerHandle:
        handle = asyncio.TimerHandle(when, callback, (), asyncio.get_running_loop())
        self.handles.append(handle)
        self.set_at.append(when)
        return handle

    def advance(self, to: float) -> None:
        """Time is ``to``: every live timer due by then runs, in order."""
        self.now = to
        while due := sorted((h for h in self.handles if not h.cancelled() and h.when() <= to),
                            key=lambda h: h.when()):
            handle = due[0]
            self.handles.remove(handle)
            handle._run()


async def run_until_blocked(task: asyncio.Task[Any]) -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def hold(deadline: MovingDeadline, release: asyncio.Event) -> str:
    async with deadline:
        await release.wait()
    return "finished"


async def held(timers: ManualTimers, when: float, first_check: float | None = None,
               release: asyncio.Event | None = None) -> tuple[MovingDeadline, asyncio.Task[str]]:
    """A task inside ``async with MovingDeadline(...)``, blocked until ``release`` (never: None)."""
    deadline = MovingDeadline(timers, when, first_check)  # type: ignore[arg-type]
    task = asyncio.create_task(hold(deadline, release or asyncio.Event()))
    await run_until_blocked(task)
    return deadline, task


@pytest.fixture
def timers() -> ManualTimers:
    return ManualTimers()


async def test_a_deadline_not_moved_cancels_at_its_instant_as_a_timeout(timers: ManualTimers) -> None:
    deadline, task = await held(timers, 10.0)
    timers.advance(9.9)
    await run_until_blocked(task)
    assert not task.done() and not deadline.expired()
    timers.advance(10.0)
    with pytest.raises(TimeoutError):
        await task
    assert deadline.expired()


async def test_moving_a_deadline_later_sets_no_timer_until_the_old_one_fires(
        timers: ManualTimers) -> None:
    deadline, task = await held(timers, 10.0)
    for when in (12.0, 14.0, 16.0):
        deadline.move_to(when)
    assert timers.set_at == [10.0]  # moved three times, no timer touched
    timers.advance(10.0)  # the first timer fires early: it is set again at the moved instant
    await run_until_blocked(task)
    assert not task.done()
    assert timers.set_at == [10.0, 16.0]
    timers.advance(15.9)
    await run_until_blocked(task)
    assert not task.done()
    timers.advance(16.0)
    with pytest.raises(TimeoutError):
        await task


async def test_moving_a_deadline_earlier_fires_at_the_earlier_instant(timers: ManualTimers) -> None:
    deadline, task = await held(timers, 300.0)
    deadline.move_to(15.0)
    assert timers.set_at == [300.0, 15.0]
    timers.advance(15.0)
    with pytest.raises(TimeoutError):
        await task


async def test_a_block_that_ends_in_time_cancels_its_timer_and_returns(timers: ManualTimers) -> None:
    release = asyncio.Event()
    deadline, task = await held(timers, 10.0, release=release)
    release.set()
    assert await task == "finished"
    assert all(h.cancelled() for h in timers.handles)
    timers.advance(20.0)
    assert not deadline.expired()


async def test_a_cancellation_from_elsewhere_stays_a_cancellation(timers: ManualTimers) -> None:
    deadline, task = await held(timers, 10.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not deadline.expired()


async def test_a_cancellation_from_elsewhere_after_expiry_stays_a_cancellation(
        timers: ManualTimers) -> None:
    deadline, task = await held(timers, 10.0)
    timers.advance(10.0)  # the deadline cancels the task ...
    task.cancel()  # ... and so does someone else before it runs
    with pytest.raises(asyncio.CancelledError):
        await task
    assert deadline.expired()


async def test_an_expired_deadline_is_not_moved(timers: ManualTimers) -> None:
    deadline, task = await held(timers, 10.0)
    timers.advance(10.0)
    deadline.move_to(50.0)
    assert timers.set_at == [10.0]
    with pytest.raises(TimeoutError):
        await task



async def test_a_first_check_before_the_deadline_looks_then_waits_for_the_deadline(
        timers: ManualTimers) -> None:
    _deadline, task = await held(timers, 300.0, first_check=15.0)
    assert timers.set_at == [15.0]
    timers.advance(15.0)  # nothing moved: the timer waits for the deadline itself
    await run_until_blocked(task)
    assert not task.done() and timers.set_at == [15.0, 300.0]
    timers.advance(300.0)
    with pytest.raises(TimeoutError):
        await task


async def test_moving_a_deadline_earlier_but_not_before_the_first_check_sets_no_timer(
        timers: ManualTimers) -> None:
    deadline, task = await held(timers, 300.0, first_check=15.0)
    timers.now = 1.0
    deadline.move_to(16.0)  # the answer began at 1.0: it may stall until 16.0
    assert timers.set_at == [15.0]
    timers.advance(15.0)
    await run_until_blocked(task)
    assert not task.done() and timers.set_at == [15.0, 16.0]
    timers.advance(16.0)
    with pytest.raises(TimeoutError):
        await task


async def test_a_first_check_after_the_deadline_is_the_deadline(timers: ManualTimers) -> None:
    _deadline, task = await held(timers, 10.0, first_check=15.0)
    assert timers.set_at == [10.0]
    timers.advance(10.0)
    with pytest.raises(TimeoutError):
        await task


async def _cancellations_left_after_a_wrapped_cancellation(timers: ManualTimers) -> int:
    """A block whose code turns the deadline's cancellation into another exception: the task's
    count of cancellation requests afterwards."""
    deadline = MovingDeadline(timers, 10.0)  # type: ignore[arg-type]
    try:
        async with deadline:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                raise ValueError("wrapped") from None
    except ValueError:
        pass
    task = asyncio.current_task()
    assert task is not None and deadline.expired()
    return task.cancelling()


async def test_an_expired_deadline_withdraws_its_cancellation_whatever_the_block_raised(
        timers: ManualTimers) -> None:
    """Like asyncio.timeout: otherwise the task stays counted as cancelled, and aiohttp (which reads
    that count) would take a later writer's cancellation for the task's own."""
    task = asyncio.create_task(_cancellations_left_after_a_wrapped_cancellation(timers))
    await run_until_blocked(task)
    timers.advance(10.0)
    assert await task == 0
