"""Where one proxied exchange stands, and the deadline that moves with it (SPEC §9.1 *Streaming*).

A transfer may stall for ``request_timeout`` in either direction, and the upstream has
``response_timeout`` from the end of the request body to its response headers. The deadline moves
with every chunk, so it is a :class:`MovingDeadline`: moving it later only writes a number, and the
one timer of the event loop is set again only when it fires early. ``asyncio.timeout`` with
``reschedule`` on every chunk would cancel and push a timer each time (measured in
``bench/proxy.py``: the most expensive of the forwarder's own steps).
"""

from __future__ import annotations

import asyncio
from types import TracebackType

from aiohttp import web


class MovingDeadline:
    """``async with MovingDeadline(loop, when):`` cancels the task at ``when`` (loop time, seconds)
    unless :meth:`move_to` moved it; the cancellation leaves the block as TimeoutError.

    Like ``asyncio.timeout_at`` (3.12 semantics: a cancellation from elsewhere stays a
    cancellation), but :meth:`move_to` a later instant costs no timer operation.
    """

    __slots__ = ("_cancelling", "_expired", "_first_check", "_handle", "_loop", "_task", "_when")

    def __init__(self, loop: asyncio.AbstractEventLoop, when: float,
                 first_check: float | None = None) -> None:
        """``first_check`` (loop time, at most ``when``): when the timer first wakes to look, so
        that moving the deadline earlier, but not before it, sets no timer either."""
        self._loop = loop
        self._when = when
        self._first_check = when if first_check is None else min(first_check, when)
        self._handle: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[object] | None = None
        self._cancelling = 0
        self._expired = False

    async def __aenter__(self) -> MovingDeadline:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("MovingDeadline must be used inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        self._handle = self._loop.call_at(self._first_check, self._fire)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        # Once expired, the deadline withdraws its cancellation whatever the block raised (as
        # asyncio.timeout does): aiohttp reads the task's count of cancellation requests.
        if (self._expired and self._task is not None
                and self._task.uncancel() <= self._cancelling
                and exc_type is asyncio.CancelledError):
            raise TimeoutError from exc

    def expired(self) -> bool:
        """Whether the deadline passed and the task was cancelled for it."""
        return self._expired

    def move_to(self, when: float) -> None:
        """The deadline is ``when`` (loop time, seconds) from now on; ignored once expired."""
        if self._expired:
            return
        self._when = when
        handle = self._handle
        if handle is not None and when < handle.when():  # earlier: the timer must follow
            handle.cancel()
            self._handle = self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._handle = None
        if self._when > self._loop.time():  # moved since the timer was set
            self._handle = self._loop.call_at(self._when, self._fire)
            return
        self._expired = True
        assert self._task is not None
        self._task.cancel()


class Transfer:
    """One exchange's progress: which side it waits on, whether the answer has begun."""

    __slots__ = (
        "_loop",
        "answer",
        "body_sent",
        "deadline",
        "request_timeout",
        "response_timeout",
        "waiting_on_consumer",
    )

    def __init__(self, request_timeout: float, response_timeout: float) -> None:
        """Timeouts in seconds: ``request_timeout`` for a stall, ``response_timeout`` for the
        response headers after the request body."""
        self.request_timeout = request_timeout
        self.response_timeout = response_timeout
        self._loop = asyncio.get_running_loop()
        self.deadline: MovingDeadline | None = None
        self.waiting_on_consumer = False
        self.body_sent = False
        self.answer: web.StreamResponse | None = None  # once set, failures cut the connection

    def start(self, first_wait: float) -> MovingDeadline:
        """The deadline of the exchange, ``first_wait`` seconds from now (not yet armed)."""
        now = self._loop.time()
        # The first look comes after request_timeout at most: the first bytes moved then set
        # the deadline no earlier than the timer, and no timer is set again.
        self.deadline = MovingDeadline(self._loop, now + first_wait,
                                       first_check=now + self.request_timeout)
        return self.deadline

    def moved(self) -> None:
        """Bytes moved: the transfer may stall for ``request_timeout`` from now."""
        if self.deadline is not None:
            self.deadline.move_to(self._loop.time() + self.request_timeout)

    def sent(self) -> None:
        """The request body is sent: the response headers have ``response_timeout`` from now."""
        self.body_sent = True
        if self.deadline is not None and self.answer is None:
            self.deadline.move_to(self._loop.time() + self.response_timeout)
