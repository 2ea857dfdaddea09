"""Held watches (SPEC §10.1): requests that wait for a target's next token, at a constant small cost.

A watch asks "answer when the token is no longer ``after``, or after ``wait`` seconds". What a
held watch costs is bounded and small: its connection, aiohttp's handler task for it (which exists
for every request anyway), and one future of :func:`asyncio.wait`. It waits on two *shared* futures:

- the keeper's :meth:`~tokend.keeper.Keeper.news`, one per keeper, resolved at its next publish,
  withdraw or retire;
- a deadline of :class:`Deadlines`, one per slot of :data:`SLOT` seconds, resolved by one timer
  for every watch whose deadline falls in that slot;

plus the one future that is resolved when tokend stops (:attr:`Watches.closing`). No task, timer or
upstream call per watch: a thousand watches cost a thousand small futures, and a new token wakes
them all through one ``set_result``. ``asyncio.wait`` never cancels what it waits on, so a consumer
hanging up cancels only its own future.

What a woken watch answers is decided from what the keeper holds then, never from why it woke.
"""

from __future__ import annotations

import asyncio
import math
import re

from tokend.keeper import Keeper, ServedToken, ServeError

#: Deadlines are shared per slot of this many seconds: a watch that runs its full ``wait`` is
#: answered at most this much late.
SLOT = 0.05
MAX_WAIT = 300.0
DEFAULT_WAIT = 60.0
RETRY_AFTER_STOPPING = 1.0
FINGERPRINT = re.compile(r"sha256:[0-9a-f]{64}")


class Deadlines:
    """Shared alarms: one future and one timer per :data:`SLOT`, however many wait on it."""

    def __init__(self, slot: float = SLOT) -> None:
        self._slot = slot
        self._due: dict[int, asyncio.Future[None]] = {}

    def at(self, when: float) -> asyncio.Future[None]:
        """A future resolved at ``when`` (the loop's clock), rounded up to the slot; never cancel it."""
        slot = math.ceil(when / self._slot)
        future = self._due.get(slot)
        if future is None:
            loop = asyncio.get_running_loop()
            future = self._due[slot] = loop.create_future()
            loop.call_at(slot * self._slot, self._ring, slot)
        return future

    def _ring(self, slot: int) -> None:
        future = self._due.pop(slot)
        if not future.done():
            future.set_result(None)

    def __len__(self) -> int:
        return len(self._due)


class Watches:
    """The held watches of one socket app: their shared deadlines, and the end of them at shutdown."""

    def __init__(self) -> None:
        self.deadlines = Deadlines()
        self._closing: asyncio.Future[None] | None = None
        self.closed = False

    def closing(self) -> asyncio.Future[None]:
        """A future resolved when tokend stops; never cancel it."""
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_future()
            if self.closed:
                self._closing.set_result(None)
        return self._closing

    def close(self) -> None:
        """tokend is stopping: every held watch is answered now (503), and new ones at once."""
        self.closed = True
        if self._closing is not None and not self._closing.done():
            self._closing.set_result(None)

    async def watch(self, keeper: Keeper, after: str, wait: float) -> ServedToken:
        """The keeper's token once it is not ``after``, or after ``wait`` s: SPEC §10.1.

        Raises ServeError: 503 when the keeper holds no valid token (at once, or when it is
        withdrawn) or tokend is stopping, 404 when the keeper is retired (its target removed or
        replaced by a reload).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        timer: asyncio.Future[None] | None = None
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
            if served.fingerprint != after or loop.time() >= deadline or (
                    timer is not None and timer.done()):
                return served
            if timer is None:
                timer = self.deadlines.at(deadline)
            await asyncio.wait((keeper.news(), timer, self.closing()),
                               return_when=asyncio.FIRST_COMPLETED)


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
