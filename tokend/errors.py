"""Every error tokend raises on purpose, in one flat hierarchy.

Upstream errors carry the fields of the SDDC Manager ``Error`` object that an operator needs
(``errorCode``, ``message``, ``remediationMessage``, ``referenceToken``) and the ``outcome`` label used
by the ``tokend_upstream_requests_total`` metric. Nothing outside :mod:`tokend.upstream` maps foreign
exceptions onto these.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokend.names import UpstreamOutcome


class TokendError(Exception):
    """Base of every error tokend raises deliberately."""


class ConfigError(TokendError):
    """A configuration or secret-source problem: names the key path and the fix."""

    def __init__(self, key: str, problem: str, fix: str = "") -> None:
        self.key = key
        self.problem = problem
        self.fix = fix
        text = f"{key}: {problem}" if key else problem
        if fix:
            text = f"{text} ({fix})"
        super().__init__(text)


@dataclass(frozen=True)
class UpstreamDetail:
    """What the upstream said about a failure, from its ``Error`` body when it sent one."""

    error_code: str | None = None
    message: str | None = None
    remediation_message: str | None = None
    reference_token: str | None = None


class UpstreamError(TokendError):
    """A failed call to the SDDC Manager. ``outcome`` is the metric label for it.

    ``issued_refresh_id`` is set when the upstream accepted a login and issued a refresh token id,
    but tokend refused the rest of the answer (SPEC §8.2): the caller revokes that id (best effort)
    so no server session is left behind. It is a secret: it never appears in the error's text.
    """

    outcome: UpstreamOutcome = "http_error"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        detail: UpstreamDetail | None = None,
        retry_after: float | None = None,
        outcome: UpstreamOutcome | None = None,
        issued_refresh_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.detail = detail or UpstreamDetail()
        self.retry_after = retry_after
        self.issued_refresh_id = issued_refresh_id
        if outcome is not None:
            self.outcome = outcome

    @property
    def error_code(self) -> str:
        """The upstream's errorCode, else a tokend code naming the kind of failure."""
        return self.detail.error_code or self.default_code

    default_code = "UPSTREAM_ERROR"


class CredentialsRejected(UpstreamError):
    """The upstream refused the username/password or API key (400/401/403 on login)."""

    outcome: UpstreamOutcome = "rejected"
    default_code = "CREDENTIALS_REJECTED"


class RefreshTokenGone(UpstreamError):
    """The refresh token is expired or revoked: the next attempt must be a login."""

    outcome: UpstreamOutcome = "refresh_token_gone"
    default_code = "REFRESH_TOKEN_GONE"


class TransientError(UpstreamError):
    """Network, TLS, timeout, 5xx or 429: retried with backoff."""

    default_code = "UPSTREAM_UNAVAILABLE"


class InvalidResponse(UpstreamError):
    """The upstream answered something tokend cannot use (bad JSON, no ``exp``, a redirect)."""

    outcome: UpstreamOutcome = "invalid_response"
    default_code = "INVALID_UPSTREAM_RESPONSE"
