"""Brute-force limits for local logins, and the rate limit of their log lines (SPEC §9.3, §9.6).

The rules, all over a sliding window of :data:`WINDOW` seconds:

- Failed logins are counted per (user, peer address) and per peer address. A login is refused
  (429 with ``Retry-After``) when either count, plus the checks still running for it, has
  reached its limit (:data:`LIMIT` each by default; every failure of a pair is also one of its
  address, so with equal limits the address count is the one that binds). A refused login is
  not checked and does not count.
- There is no count per user alone, so failures from one address never refuse a login from
  another: a correct password from an address with no recent failures is always checked, and
  nobody can lock a user out from elsewhere.
- The peer address is the TCP peer's. ``X-Forwarded-For`` is never an input: nothing here takes
  headers.
- A check that is still running counts as a failure until it is reported as a success, so a
  burst of parallel guesses from one address cannot queue more than :data:`LIMIT` bcrypt runs.

Memory is bounded: failures older than the window are dropped, and at most ``max_addresses``
addresses are tracked (beyond, the least recently active is forgotten first). User names are kept
only as keyed hashes (people type passwords into the user field). Everything is pure: ``now`` is
a monotonic time in seconds passed to every call.
"""

from __future__ import annotations

import hashlib
import math
import secrets
from collections import OrderedDict, deque
from dataclasses import dataclass, field

#: Failed logins allowed per (user, address) and per address within :data:`WINDOW`.
LIMIT = 5
#: The sliding window, in seconds.
WINDOW = 60.0
#: Addresses tracked at most.
MAX_ADDRESSES = 10_000
#: Seconds a client is told to wait when only running checks fill the count.
RUNNING_RETRY_AFTER = 1

_SALT = secrets.token_bytes(16)


def _user_key(user: str) -> bytes:
    return hashlib.blake2b(user.encode("utf-8", "surrogatepass"), digest_size=16, key=_SALT).digest()


@dataclass(frozen=True)
class Attempt:
    """An admitted login whose password check is under way; report it with :meth:`LoginLimiter.finish`."""

    user_key: bytes = field(repr=False)
    address: str


@dataclass(frozen=True)
class Refused:
    """A refused login: answer 429 with ``Retry-After: retry_after`` (whole seconds, at least 1)."""

    retry_after: int


@dataclass
class _Count:
    failures: deque[float] = field(default_factory=deque)
    running: int = 0

    def prune(self, now: float, window: float) -> None:
        while self.failures and self.failures[0] <= now - window:
            self.failures.popleft()

    def retry_after(self, now: float, window: float, limit: int) -> int | None:
        if len(self.failures) + self.running < limit:
            return None
        if len(self.failures) < limit:
            return RUNNING_RETRY_AFTER
        # The count falls below the limit when the oldest failure that keeps it full leaves.
        oldest = self.failures[len(self.failures) - limit]
        return max(1, math.ceil(oldest + window - now))

    @property
    def idle(self) -> bool:
        return not self.failures and self.running == 0


@dataclass
class _Address:
    count: _Count = field(default_factory=_Count)
    users: dict[bytes, _Count] = field(default_factory=dict)


class LoginLimiter:
    """Counts failed local logins of one proxy and decides whether the next one is checked."""

    def __init__(self, *, per_user: int = LIMIT, per_address: int = LIMIT, window: float = WINDOW,
                 max_addresses: int = MAX_ADDRESSES) -> None:
        self.per_user = per_user
        self.per_address = per_address
        self.window = window
        self.max_addresses = max_addresses
        # Least recently active first.
        self._addresses: OrderedDict[str, _Address] = OrderedDict()

    def __len__(self) -> int:
        """The number of addresses tracked."""
        return len(self._addresses)

    def admit(self, user: str, address: str, now: float) -> Attempt | Refused:
        """An Attempt when ``user``'s login from ``address`` may be checked now, else Refused."""
        self._forget_idle(now)
        key = _user_key(user)
        state = self._addresses.get(address)
        if state is not None:
            counts = [(state.count, self.per_address)]
            if key in state.users:
                counts.append((state.users[key], self.per_user))
            waits = []
            for count, limit in counts:
                count.prune(now, self.window)
                wait = count.retry_after(now, self.window, limit)
                if wait is not None:
                    waits.append(wait)
            if waits:
                return Refused(max(waits))
        state = self._touch(address)
        state.count.running += 1
        state.users.setdefault(key, _Count()).running += 1
        return Attempt(user_key=key, address=address)

    def finish(self, attempt: Attempt, *, ok: bool, now: float) -> None:
        """Report the outcome of an admitted ``attempt``: a failure counts from ``now``."""
        state = self._touch(attempt.address)
        user = state.users.setdefault(attempt.user_key, _Count())
        for count in (state.count, user):
            count.running = max(0, count.running - 1)
            if not ok:
                count.failures.append(now)
        if user.idle:
            del state.users[attempt.user_key]
        if state.count.idle and not state.users:
            del self._addresses[attempt.address]

    def _touch(self, address: str) -> _Address:
        state = self._addresses.get(address)
        if state is None:
            while len(self._addresses) >= self.max_addresses:
                self._addresses.popitem(last=False)
            state = self._addresses[address] = _Address()
        else:
            self._addresses.move_to_end(address)
        return state

    def _forget_idle(self, now: float) -> None:
        # Addresses are in order of last activity, and every failure happened at or before its
        # address's last activity: the first address still in use ends the sweep.
        while self._addresses:
            address, state = next(iter(self._addresses.items()))
            for count in (state.count, *state.users.values()):
                count.prune(now, self.window)
            if not all(c.idle for c in (state.count, *state.users.values())):
                return
            del self._addresses[address]


class LogLimiter:
    """Lets ``proxy.login_rejected`` through at most once per ``interval`` per (user, address).

    At most ``max_entries`` pairs are remembered; when they are all recent, new pairs are not
    logged until some age out, so the promise holds and memory stays bounded. ``now`` is a
    monotonic time in seconds.
    """

    def __init__(self, *, interval: float = WINDOW, max_entries: int = MAX_ADDRESSES) -> None:
        self.interval = interval
        self.max_entries = max_entries
        # Oldest log line first.
        self._last: OrderedDict[tuple[bytes, str], float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._last)

    def allow(self, user: str, address: str, now: float) -> bool:
        """True when a rejected login of ``user`` from ``address`` may be logged now (and noted)."""
        while self._last and next(iter(self._last.values())) <= now - self.interval:
            self._last.popitem(last=False)
        key = (_user_key(user), address)
        if key in self._last or len(self._last) >= self.max_entries:
            return False
        self._last[key] = now
        return True
