"""A call's outcome as the state machine (:mod:`tokend.schedule`) records and words it. Pure.

The record behind ``lastError`` (SPEC §4), the log lines of a token obtained and of a failed call
with their fields, what the operator should do about a failure, and which refused login answers
call for the long backoff. Times are seconds; ``now`` is on the monotonic clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tokend.effects import Log
from tokend.errors import CredentialsRejected, InvalidResponse, RefreshTokenGone, UpstreamError
from tokend.held import HeldToken, iso_utc
from tokend.names import KeeperCall


@dataclass(frozen=True)
class Failure:
    """The last failure, for ``lastError`` (SPEC §4)."""

    error: UpstreamError
    at: float  # monotonic


def remediation(error: UpstreamError) -> str:
    """What the operator should do about ``error`` when the upstream did not say."""
    if isinstance(error, CredentialsRejected):
        return ("Check the username and secret of this target; tokend logs in again when the"
                " secret changes or on SIGHUP")
    if isinstance(error, RefreshTokenGone):
        return "None needed: tokend logs in again"
    return "tokend retries with backoff; check that the SDDC Manager is reachable and healthy"


def refused_after_accept(error: UpstreamError) -> bool:
    """True for a login answer the upstream sent after taking the credentials, and tokend refused.

    That is an ``InvalidResponse`` without a 3xx status (a redirect is not followed, and says
    nothing of the credentials).
    """
    status = error.status
    return isinstance(error, InvalidResponse) and not (status is not None and 300 <= status < 400)


def token_log(now: float, operation: KeeperCall, token: HeldToken, next_in: float | None,
              duration: float | None) -> Log:
    """``token.acquired`` (a login) or ``token.refreshed``, at info.

    ``next_in``: seconds to the next call, None when none is planned; ``duration``: seconds the
    call took, None when not measured.
    """
    return Log("info", "token.acquired" if operation == "login" else "token.refreshed", {
        "operation": operation, "fingerprint": token.fingerprint,
        "expires_at": iso_utc(token.expires_wall), "expires_in": token.expires_in(now),
        "next_refresh_in": round(next_in, 1) if next_in is not None else None,
        "duration": round(duration, 3) if duration is not None else None,
    })


def failure_log(operation: KeeperCall, error: UpstreamError, next_call: tuple[str, float], *,
                failures: int, token_valid_for: int, rejections: int,
                max_login_failures: int) -> Log:
    """``login.rejected`` (error) for a credential rejection, else ``token.refresh_failed`` (warning).

    ``next_call``: the kind of the next call (``"idle"``: none until the secret changes or SIGHUP)
    and seconds to it; ``failures``: failures in a row, this one included; ``token_valid_for``:
    whole seconds the held token may still be served (0: none); ``rejections`` and
    ``max_login_failures``: the current secret's count and its limit.
    """
    kind, seconds = next_call
    fields: dict[str, Any] = {
        "operation": operation,
        "outcome": error.outcome,
        "status": error.status,
        "errorCode": error.error_code,
        "message": error.message + (f": {error.detail.message}" if error.detail.message else ""),
        "remediationMessage": error.detail.remediation_message or remediation(error),
        "referenceToken": error.detail.reference_token,
        "consecutive_failures": failures,
        "token_valid_for": token_valid_for,
        "next": ("no more logins until the secret changes or SIGHUP" if kind == "idle"
                 else f"{kind} in {max(0.0, seconds):.1f}s"),
    }
    fields = {k: v for k, v in fields.items() if v is not None}
    if isinstance(error, CredentialsRejected):
        return Log("error", "login.rejected", {
            "rejections": rejections, "max_login_failures": max_login_failures, **fields})
    return Log("warning", "token.refresh_failed", fields)
