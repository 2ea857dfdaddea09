"""What a keeper's state machine asks its driver to do (:mod:`tokend.schedule`, :mod:`tokend.keeper`).

Each effect is a frozen value; the driver performs them in order. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from tokend.held import HeldToken
from tokend.names import KeeperCall, State

# -- effects: what the driver does for the machine ---------------------------------------------


@dataclass(frozen=True)
class Call:
    """Make this upstream call now, then report :meth:`RefreshPolicy.on_token` or ``on_failure``."""

    operation: KeeperCall
    refresh_id: str | None  # for a refresh


@dataclass(frozen=True)
class Revoke:
    """Revoke this refresh id, best effort (a session the machine will not use)."""

    refresh_id: str


@dataclass(frozen=True)
class CheckSecret:
    """Look at the secret source (and TLS material); report :meth:`RefreshPolicy.on_secret`.

    ``login``: read the secret itself, a login is waiting for it; else only if its source changed.
    """

    login: bool


@dataclass(frozen=True)
class Publish:
    """Serve this token from now on (answer waiters, write the sink, set the gauges)."""

    token: HeldToken


@dataclass(frozen=True)
class Withdraw:
    """The served token has expired: stop serving it, remove the sink."""

    token: HeldToken


@dataclass(frozen=True)
class Log:
    """Log ``event`` at ``level`` with ``fields`` (the target is added by the driver)."""

    level: Literal["debug", "info", "warning", "error"]
    event: str
    fields: dict[str, Any]


@dataclass(frozen=True)
class StateChanged:
    """The SPEC §4 state changed."""

    old: State
    new: State


@dataclass(frozen=True)
class Sleep:
    """Nothing to do before ``until`` (monotonic) unless an event arrives."""

    until: float


Effect = Call | Revoke | CheckSecret | Publish | Withdraw | Log | StateChanged | Sleep
