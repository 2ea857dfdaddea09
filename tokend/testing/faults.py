"""The fault model of the fake SDDC Manager: what can go wrong, and the queue of scripted faults.

A :class:`Faults` object belongs to one :class:`~tokend.testing.fake_sddc.FakeSddc`; tests set its
knobs at any time, and the fake consults it on every call. Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

#: The calls the fake answers: the three token endpoints and ``GET /v1/domains``.
Route = Literal["login", "refresh", "revoke", "domains", "echo", "sink", "stream", "other"]
#: What a fault applies to: one operation, or ``"any"`` of the three token endpoints.
FaultTarget = Literal["login", "refresh", "revoke", "domains", "echo", "sink", "stream", "any"]
#: How a broken connection is broken: after the headers, or before any answer.
DropWhen = Literal["headers", "no_response"]
#: The ways a successful answer can be malformed (see :meth:`Faults.malformed_next`).
MalformedKind = Literal[
    "not_json", "not_jwt", "no_exp", "expired", "iat_future", "missing_fields", "wrong_types",
    # odd `exp` claims (SPEC §8.1): a lifetime to cap, or a claim that is no number
    "exp_milliseconds", "exp_after_9999", "exp_string", "exp_true", "exp_1e308",
    # TokenPair shapes (SPEC §8.2): the refresh id as a bare string, or none at all (login only)
    "refresh_id_bare", "refresh_id_absent",
    # the access token's text: whitespace around it (fine once trimmed), a newline inside it
    "token_padded", "token_newline",
]

#: The operations ``"any"``, ``down`` and ``down_mode`` apply to.
TOKEN_OPERATIONS: frozenset[str] = frozenset({"login", "refresh", "revoke"})


@dataclass
class ScriptedFault:
    """One scripted misbehaviour, applied to the next ``remaining`` matching calls."""

    target: FaultTarget
    kind: Literal["fail", "drop", "redirect", "malformed"]
    remaining: int
    status: int = 0
    body: dict[str, Any] | str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    location: str = ""
    malformed: MalformedKind = "not_json"
    drop_when: DropWhen = "headers"

    def matches(self, operation: Route) -> bool:
        """Whether this fault applies to a call of ``operation`` ("any" means every token endpoint)."""
        if self.target == "any":
            return operation in TOKEN_OPERATIONS
        return self.target == operation


class Faults:
    """The fault-injection knobs of one fake SDDC Manager. Tests set them at any time.

    Scripted faults (``fail_next``, ``drop_next``, ``redirect_next``, ``malformed_next``) are kept in
    one queue and consumed in the order they were added, each by the calls it matches (a malformed
    answer only by a call that would have succeeded). The target ``"any"`` matches the three token
    endpoints, not ``GET /v1/domains``; so do ``down`` and ``down_mode``.

    ``revoke_all`` is the fake's own "forget every refresh token" (for
    :meth:`revoke_all_refresh_tokens`).
    """

    def __init__(self, revoke_all: Callable[[], None]) -> None:
        self._revoke_all = revoke_all
        self.down = False
        self.down_mode: Literal["503", "drop"] = "503"
        self.delay = 0.0
        self.delays: dict[str, float] = {}
        self.clock_skew = 0.0
        self.echo_secrets_in_errors = False
        self.queue: list[ScriptedFault] = []

    def reset(self) -> None:
        """Back to a well-behaved server (refresh tokens already revoked stay revoked)."""
        self.down = False
        self.down_mode = "503"
        self.delay = 0.0
        self.delays = {}
        self.clock_skew = 0.0
        self.echo_secrets_in_errors = False
        self.queue.clear()

    def fail_next(
        self,
        operation: FaultTarget,
        status: int,
        body: dict[str, Any] | str | None = None,
        count: int = 1,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Answer the next ``count`` calls of ``operation`` with ``status`` and ``body``.

        ``body`` ``None`` sends an ``Error`` object (errorCode ``INTERNAL_SERVER_ERROR``); a ``str`` is
        sent as ``text/plain``. ``headers`` go on the answer, e.g. ``{"Retry-After": "2"}`` with 429.
        """
        self.queue.append(
            ScriptedFault(operation, "fail", count, status=status, body=body, headers=dict(headers or {}))
        )

    def drop_next(self, operation: FaultTarget, count: int = 1, when: DropWhen = "headers") -> None:
        """Break the connection on the next ``count`` calls of ``operation``.

        ``when="headers"`` sends the status line, headers and part of the body, then closes;
        ``when="no_response"`` closes without answering.
        """
        self.queue.append(ScriptedFault(operation, "drop", count, drop_when=when))

    def redirect_next(
        self, operation: FaultTarget, location: str, status: int = 307, count: int = 1
    ) -> None:
        """Answer the next ``count`` calls of ``operation`` with a redirect to ``location``."""
        self.queue.append(ScriptedFault(operation, "redirect", count, status=status, location=location))

    def malformed_next(self, operation: FaultTarget, kind: MalformedKind, count: int = 1) -> None:
        """Replace the next ``count`` successful answers to ``operation`` with ones broken as ``kind``.

        Calls that fail anyway (wrong credentials, unknown refresh id) fail as usual and leave the
        fault queued.

        ``not_json``: an HTML body; ``not_jwt``: access token ``"not-a-jwt"``; ``no_exp``: a JWT without
        ``exp``; ``expired``: ``exp`` in the past; ``iat_future``: ``iat`` an hour ahead;
        ``missing_fields``: ``{}``; ``wrong_types``: the access token is a number.

        Odd claims, each in an access token the fake issues (recorded in ``issued_access_tokens``):
        ``exp_milliseconds``: ``exp`` is ``iat * 1000``; ``exp_after_9999``: ``exp`` an hour past
        year 9999 (``YEAR_10000`` + 3600); ``exp_string``: ``exp`` as a JSON string of the usual
        number; ``exp_true``: ``exp`` is ``true``; ``exp_1e308``: ``exp`` is ``1e308``.

        TokenPair shapes (a refresh answers its usual token for these): ``refresh_id_bare``:
        ``"refreshToken": "<id>"``, a working id; ``refresh_id_absent``: no ``refreshToken``.
        ``token_padded``: a valid token with whitespace around it (``" \\t<jwt>\\r\\n"``);
        ``token_newline``: a valid token with a newline after its first dot.
        """
        self.queue.append(ScriptedFault(operation, "malformed", count, malformed=kind))

    def revoke_all_refresh_tokens(self) -> None:
        """Forget every refresh token, as if an administrator revoked them all."""
        self._revoke_all()

    def delay_for(self, operation: Route) -> float:
        """Seconds to wait before answering a call of ``operation``."""
        return self.delays.get(operation, self.delay)

    def peek(self, operation: Route) -> ScriptedFault | None:
        """The first queued fault matching ``operation``, left in the queue."""
        return next((fault for fault in self.queue if fault.matches(operation)), None)

    def consume(self, fault: ScriptedFault) -> None:
        """Use ``fault`` once; it leaves the queue when used up."""
        fault.remaining -= 1
        if fault.remaining <= 0 and fault in self.queue:
            self.queue.remove(fault)

    def take_malformed(self, operation: Route) -> MalformedKind | None:
        """The kind of the malformed answer due for a successful call of ``operation``, if one is."""
        fault = self.peek(operation)
        if fault is None or fault.kind != "malformed":
            return None
        self.consume(fault)
        return fault.malformed
