"""One name per concept: every code and outcome tokend produces is counted by a metric."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from tokend.metrics import Metrics
from tokend.names import (
    ERROR_CODES,
    ERROR_OUTCOME,
    OPERATIONS,
    PROXY_LOGIN_OUTCOMES,
    PROXY_OUTCOMES,
    REQUEST_OUTCOMES,
    UPSTREAM_OUTCOMES,
)


def test_every_error_code_is_counted_as_a_request_outcome() -> None:
    assert set(ERROR_OUTCOME) == set(ERROR_CODES)
    assert set(ERROR_OUTCOME.values()) <= set(REQUEST_OUTCOMES)


def test_every_outcome_has_its_series_from_the_start() -> None:
    metrics = Metrics()
    metrics.target("t1")
    metrics.proxy("t1")
    registry: CollectorRegistry = metrics.registry
    for operation in OPERATIONS:
        for outcome in UPSTREAM_OUTCOMES:
            assert registry.get_sample_value("tokend_upstream_requests_total", {
                "target": "t1", "operation": operation, "outcome": outcome}) == 0, outcome
    for outcome in REQUEST_OUTCOMES:
        assert registry.get_sample_value("tokend_token_requests_total", {"outcome": outcome}) == 0
    for outcome in PROXY_OUTCOMES:
        assert registry.get_sample_value("tokend_proxy_requests_total", {
            "target": "t1", "outcome": outcome}) == 0, outcome
    for outcome in PROXY_LOGIN_OUTCOMES:
        assert registry.get_sample_value("tokend_proxy_logins_total", {
            "target": "t1", "outcome": outcome}) == 0, outcome
