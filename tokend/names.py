"""One name per concept: the operations, body forms, error codes and metric outcomes, owned here.

Each is a ``Literal`` type with its tuple of values beside it, so the metric label sets are built
from the same definition the code is type-checked against: a new outcome or error code that some
module produces but no metric counts is a ``mypy --strict`` error, not a silently missing series.
"""

from __future__ import annotations

from typing import Literal, get_args

#: Calls tokend makes to the SDDC Manager (metric label ``operation``).
Operation = Literal["login", "refresh", "revoke"]
OPERATIONS: tuple[Operation, ...] = get_args(Operation)

#: The calls a keeper schedules (a revoke is only made at exit or for an unused session).
KeeperCall = Literal["login", "refresh"]

#: How a refresh or revoke body carries the refresh id: a JSON string, or the bare id.
BodyForm = Literal["json_string", "bare"]

#: ``tokend_upstream_requests_total{outcome}``.
UpstreamOutcome = Literal["success", "rejected", "refresh_token_gone", "http_error",
                          "network_error", "tls_error", "timeout", "invalid_response",
                          "internal_error"]
UPSTREAM_OUTCOMES: tuple[UpstreamOutcome, ...] = get_args(UpstreamOutcome)

#: ``tokend_token_requests_total{outcome}``: answers of the §4 API socket.
RequestOutcome = Literal["served", "unavailable", "below_min_ttl", "forbidden", "not_found",
                         "bad_request"]
REQUEST_OUTCOMES: tuple[RequestOutcome, ...] = get_args(RequestOutcome)

#: ``errorCode`` of the answers tokend itself generates on the API socket (SPEC §4).
ErrorCode = Literal["TOKEN_UNAVAILABLE", "TOKEN_BELOW_MIN_TTL", "TARGET_NOT_FOUND", "FORBIDDEN",
                    "BAD_REQUEST", "NOT_FOUND", "METHOD_NOT_ALLOWED", "PAYLOAD_TOO_LARGE",
                    "TOO_MANY_CONNECTIONS"]
ERROR_CODES: tuple[ErrorCode, ...] = get_args(ErrorCode)

#: Which request outcome each error code is counted as; every code has one (a test holds it).
ERROR_OUTCOME: dict[ErrorCode, RequestOutcome] = {
    "TOKEN_UNAVAILABLE": "unavailable",
    "TOKEN_BELOW_MIN_TTL": "below_min_ttl",
    "TARGET_NOT_FOUND": "not_found",
    "FORBIDDEN": "forbidden",
    "BAD_REQUEST": "bad_request",
    "NOT_FOUND": "not_found",
    "METHOD_NOT_ALLOWED": "bad_request",
    "PAYLOAD_TOO_LARGE": "bad_request",
    "TOO_MANY_CONNECTIONS": "unavailable",
}

#: ``tokend_proxy_requests_total{outcome}`` (SPEC §9.6). forwarded: the upstream's answer was
#: passed on; retried_after_401: passed on after one retry with a new token; unavailable: 503 from
#: tokend (no token, no pool slot); unauthorized: no valid local token (TCP); refused: refused by
#: tokend (400, 403, 404 of a token path, 429); upstream_error: 502 or 504.
ProxyOutcome = Literal["forwarded", "retried_after_401", "unavailable", "unauthorized", "refused",
                       "upstream_error"]
PROXY_OUTCOMES: tuple[ProxyOutcome, ...] = get_args(ProxyOutcome)

#: ``tokend_proxy_logins_total{outcome}``.
ProxyLoginOutcome = Literal["success", "rejected", "rate_limited"]
PROXY_LOGIN_OUTCOMES: tuple[ProxyLoginOutcome, ...] = get_args(ProxyLoginOutcome)

#: The target states of SPEC §4.
State = Literal["starting", "valid", "refreshing", "degraded", "expired", "credentials_rejected"]
STATES: tuple[State, ...] = (
    "starting", "valid", "refreshing", "degraded", "expired", "credentials_rejected",
)
