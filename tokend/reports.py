"""Consumers' reports on one target's token (rule 8 of :mod:`tokend.schedule`). Pure, clock passed in.

A consumer reports the token it holds as refused by the upstream (``invalidate``) or as too short
(``min_ttl``). :class:`ConsumerReports` decides when the refresh they ask for may be made: every
report of one token joins one refresh, due no sooner than 5 s after that token arrived and 10 s
after the last refresh consumers asked for. It also keeps the row of brand-new tokens (reported
refused within their first 5 s) refused in a row: at 3, the upstream is taken to issue tokens it
does not accept, and reports no longer refresh (the verdict) until the next token or SIGHUP.

Times are seconds on the monotonic clock. The state machine owns the one instance of a target and
decides what else stops a refresh (failures backing off, logins stopped).
"""

from __future__ import annotations

import math

CONSUMER_QUIET_AFTER_NEW_TOKEN = 5.0
CONSUMER_MIN_INTERVAL = 10.0
REFUSED_NEW_TOKENS_LIMIT = 3


class ConsumerReports:
    """What consumers reported about one target's tokens, and the refresh they asked for.

    ``refused_new_tokens``: brand-new tokens reported refused in a row so far. ``rejected``: the
    verdict, True once there were ``REFUSED_NEW_TOKENS_LIMIT`` of them. ``due``: the monotonic
    instant of the refresh asked for and not yet made or dropped, or None.
    """

    def __init__(self) -> None:
        self.rejected = False
        self.due: float | None = None
        self._token_received_at = -math.inf
        self._last_refresh = -math.inf
        self._reported: str | None = None  # the token already reported refused
        self.refused_new_tokens = 0

    def new_token(self, now: float, previous: str | None) -> None:
        """A token arrived at ``now`` (seconds), replacing the one of fingerprint ``previous``.

        ``previous`` is None for the first token. Any refresh asked for is dropped and the verdict
        cleared. The row starts again after the verdict, and after a token nobody reported refused.
        """
        if self.rejected or (previous is not None and previous != self._reported):
            self.refused_new_tokens = 0
        self.rejected = False
        self.due = None
        self._token_received_at = now

    def refused(self, now: float, fingerprint: str) -> bool:
        """The current token, of ``fingerprint``, was reported refused at ``now`` (seconds).

        Counts once a token. Returns True when this report brings the verdict; the refresh asked
        for, if any, is then dropped.
        """
        if self._reported == fingerprint:
            return False
        self._reported = fingerprint
        brand_new = now - self._token_received_at < CONSUMER_QUIET_AFTER_NEW_TOKEN
        self.refused_new_tokens = self.refused_new_tokens + 1 if brand_new else 0
        if self.refused_new_tokens < REFUSED_NEW_TOKENS_LIMIT:
            return False
        self.rejected = True
        self.due = None
        return True

    def ask(self, now: float) -> tuple[float, bool]:
        """A consumer asks at ``now`` (seconds) for a refresh of the current token.

        Returns the monotonic instant it is due (``now`` or later), and True when this report set
        it, False when it joins the refresh already asked for. Does not look at the verdict.
        """
        if self.due is not None:
            return self.due, False
        due = max(now, self._token_received_at + CONSUMER_QUIET_AFTER_NEW_TOKEN,
                  self._last_refresh + CONSUMER_MIN_INTERVAL)
        self.due = self._last_refresh = due
        return due, True

    def drop(self) -> None:
        """A call failed: the refresh asked for, if any, is no longer due."""
        self.due = None

    def reset(self) -> None:
        """SIGHUP: the verdict is cleared and the row starts again."""
        self.rejected = False
        self.refused_new_tokens = 0
