"""Held watches (SPEC §10.1): requests that wait for a target's next token, at a constant small cost.

A watch asks "answer when the token is no longer ``after``, or after ``wait`` seconds". What a
held watch costs is bounded and small: its connection, aiohttp's handler task for it (which exists
for every request anyway), and one future of its own, kept in two sets:

- the set of its keeper, woken by one callback on the keeper's :meth:`~tokend.keeper.Keeper.news`
  (one shared future per keeper, resolved at its next publish, withdraw or retire);
- the set of its deadline's slot (:class:`Deadlines`: one timer per :data:`SLOT` seconds for
  every watch whose deadline falls in it).

No task, timer or upstream call per watch, and no per-watch callback on a shared future (removing
one from a future that a thousand others wait on costs a scan of them all): a new token wakes a
thousand watches with one callback and a thousand ``set_result``. A consumer hanging up cancels
only its own future, which then leaves both sets in O(1).

What a woken watch answers is decided from what the keeper holds then, never from why it woke.
"""

from __future__ import annotations

import asyncio
import math
import re

from tokend.keeper import Keeper
from tokend.serving import ServedToken, ServeError

#: Deadlines are shared per slot of this many seconds: a watch that runs its full ``wait`` is
#: answered at most this much late.
SLOT = 0.05
MAX_WAIT = 300.0
DEFAULT_WAIT = 60.0
RETRY_AFTER_STOPPING = 1.0
FINGERPRINT = re.compile(r"sha256:[0-9a-f]{64}")

#: A held watch's own future: its result says whether its deadline woke it (True) or news did.
Waiter = asyncio.Future[bool]


def _wake(waiters: set[Waiter], deadline: bool) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(deadline)


class Deadlines:
    """Shared alarms: one timer per :data:`SLOT` that wakes every waiter whose deadline is in it."""

    def __init__(self, slot: float = SLOT) -> None:
        self._slot = slot
        self._due: dict[int, set[Waiter]] = {}

    def add(self, when: float, waiter: Waiter) -> int:
        """Wake ``waiter`` at ``when`` (the loop's clock), rounded up to the slot; returns the slot."""
        slot = math.ceil(when / self._slot)
        waiters = self._due.get(slot)
        if waiters is None:
            waiters = self._due[slot] = set()
            loop = asyncio.get_running_loop()
            loop.call_at(slot * self._slot, self._ring, slot)
        waiters.add(waiter)
        return slot

    def discard(self, slot: int, waiter: Waiter) -> None:
        """Forget ``waiter`` (it was answered otherwise, or hung up)."""
        waiters = self._due.get(slot)
        if waiters is not None:
            waiters.discard(waiter)

    def _ring(self, slot: int) -> None:
        _wake(self._due.pop(slot, set()), True)

    def __len__(self) -> int:
        return len(self._due)


class Watches:
    """The held watches of one socket app: who waits on which keeper, their shared deadlines, and
    the end of them all at shutdown."""

    def __init__(self) -> None:
        self.deadlines = Deadlines()
        self.closed = False
        self._by_keeper: dict[Keeper, set[Waiter]] = {}
        self._hooked: dict[Keeper, asyncio.Future[None]] = {}  # the news future we listen to

    def close(self) -> None:
        """tokend is stopping: every held watch is answered now (503), and new ones at once."""
        self.closed = True
        for waiters in list(self._by_keeper.values()):
            _wake(waiters, False)

    def held(self) -> int:
        """How many watches are held now."""
        return sum(len(waiters) for waiters in self._by_keeper.values())

    async def watch(self, keeper: Keeper, after: str, wait: float) -> ServedToken:
        """The keeper's token once it is not ``after``, or after ``wait`` s: SPEC §10.1.

        Raises ServeError: 503 when the keeper holds no valid token (at once, or when it is
        withdrawn) or tokend is stopping, 404 when the keeper is retired (its target removed or
        replaced by a reload).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        timed_out = False
        while True:
            if self.closed:
                raise ServeError(503, "TOKEN_UNAVAILABLE", "tokend is stopping",
                                 "Ask again once it is back", retry_after=RETRY_AFTER_STOPPING)
            if keeper.retired:
                raise ServeError(404, "TARGET_NOT_FOUND",
                                 f"target '{keeper.name}' was removed or replaced by a reload",
                                 "Ask again: a replaced target answers from its new keeper")
            now = keeper.clock.monotonic()
            served = keeper.current(now)
            if served is None:
                raise keeper.unavailable(now)
            if served.fingerprint != after or timed_out or loop.time() >= deadline:
                return served
            waiter: Waiter = loop.create_future()
            waiters = self._listen(keeper)
            waiters.add(waiter)
            slot = self.deadlines.add(deadline, waiter)
            try:
                timed_out = await waiter
            finally:
                waiters.discard(waiter)
                self.deadlines.discard(slot, waiter)

    def _listen(self, keeper: Keeper) -> set[Waiter]:
        """The waiters of ``keeper``, with one callback on its current news future."""
        news = keeper.news()
        waiters = self._by_keeper.get(keeper)
        if waiters is None:
            waiters = self._by_keeper[keeper] = set()
        if self._hooked.get(keeper) is not news:
            self._hooked[keeper] = news
            news.add_done_callback(lambda done: self._news(keeper, done))
        return waiters

    def _news(self, keeper: Keeper, news: asyncio.Future[None]) -> None:
        """``keeper`` published, withdrew or retired: wake its watches; they look for themselves.

        A watch that began between the news and this callback is woken too, and simply waits again.
        """
        if self._hooked.get(keeper) is news:
            del self._hooked[keeper]
        waiters = self._by_keeper.pop(keeper, None)
        if waiters:
            _wake(waiters, False)


def parse_after(text: str) -> str:
    """``after`` of a watch: a fingerprint as the token JSON gives it; 400 otherwise."""
    if not FINGERPRINT.fullmatch(text):
        raise ServeError(400, "BAD_REQUEST",
                         f"after must be a fingerprint 'sha256:<64 lower-case hex>', not {text[:80]!r}",
                         "Send the fingerprint field of the token JSON you hold")
    return text


def parse_wait(text: str | None) -> float:
    """``wait`` of a watch in seconds: 0 to :data:`MAX_WAIT`, default :data:`DEFAULT_WAIT`; 400 otherwise."""
    if text is None:
        return DEFAULT_WAIT
    try:
        wait = float(text)
    except ValueError:
        wait = math.nan
    if not 0 <= wait <= MAX_WAIT:  # NaN fails too
        raise ServeError(400, "BAD_REQUEST",
                         f"wait must be a number of seconds from 0 to {MAX_WAIT:g}, not {text[:40]!r}",
                         f"Ask for at most {MAX_WAIT:g} s and watch again")
    return wait
