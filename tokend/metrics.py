"""Every Prometheus metric tokend exports (SPEC §6), on a registry of its own per daemon."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from tokend import __version__
from tokend.names import (
    OPERATIONS,
    PROXY_LOGIN_OUTCOMES,
    PROXY_OUTCOMES,
    REQUEST_OUTCOMES,
    STATES,
    UPSTREAM_OUTCOMES,
    Operation,
    ProxyLoginOutcome,
    ProxyOutcome,
    State,
    UpstreamOutcome,
)

UPSTREAM_OPERATIONS = OPERATIONS
TOKEN_REQUEST_OUTCOMES = REQUEST_OUTCOMES


# The *_created series double the series count and nothing in tokend's dashboards or alerts uses them.
disable_created_metrics()  # type: ignore[no-untyped-call]


class RequestCounts(Collector):
    """``tokend_token_requests_total`` kept as plain integers: serving a token adds one to a dict
    entry (no lock, no label lookup); the counter family is built at scrape time."""

    def __init__(self) -> None:
        self.counts = dict.fromkeys(TOKEN_REQUEST_OUTCOMES, 0)

    def collect(self) -> Iterator[CounterMetricFamily]:
        """The counter family, one series per outcome."""
        family = CounterMetricFamily("tokend_token_requests", "Token requests on the socket",
                                     labels=["outcome"])
        for outcome, count in self.counts.items():
            family.add_metric([outcome], count)
        yield family


class Metrics:
    """The metric families, registered on ``self.registry``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        r = self.registry
        self.token_expiry = Gauge(
            "tokend_token_expiry_timestamp_seconds",
            "When tokend stops serving the current token (local clock)", ["target"], registry=r)
        self.token_issued = Gauge(
            "tokend_token_issued_timestamp_seconds",
            "When the current token was obtained (local clock)", ["target"], registry=r)
        self.token_valid = Gauge(
            "tokend_token_valid", "1 while a valid token is held", ["target"], registry=r)
        self.target_state = Gauge(
            "tokend_target_state", "1 for the target's current state", ["target", "state"],
            registry=r)
        self.upstream_requests = Counter(
            "tokend_upstream_requests_total", "Calls to the SDDC Manager token API",
            ["target", "operation", "outcome"], registry=r)
        self.upstream_duration = Histogram(
            "tokend_upstream_request_duration_seconds", "Duration of calls to the token API",
            ["target", "operation"], registry=r,
            buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.consecutive_failures = Gauge(
            "tokend_refresh_consecutive_failures", "Failed upstream calls in a row", ["target"],
            registry=r)
        self.clock_skew = Gauge(
            "tokend_clock_skew_seconds", "Upstream clock minus local clock, from the Date header",
            ["target"], registry=r)
        self.requests = RequestCounts()
        r.register(self.requests)
        self.proxy_requests = Counter(
            "tokend_proxy_requests_total", "Requests on a proxy listener, by outcome",
            ["target", "outcome"], registry=r)
        self.proxy_duration = Histogram(
            "tokend_proxy_request_duration_seconds",
            "Time from a forwarded request to the upstream's response headers", ["target"],
            registry=r, buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))
        self.proxy_logins = Counter(
            "tokend_proxy_logins_total", "Local logins on a proxy listener (the facade)",
            ["target", "outcome"], registry=r)
        self.config_reload_ok = Gauge(
            "tokend_config_last_reload_successful",
            "0 after a SIGHUP whose config failed to load", registry=r)
        self.build_info = Gauge("tokend_build_info", "tokend version", ["version"], registry=r)
        self.build_info.labels(version=__version__).set(1)
        self.config_reload_ok.set(1)

    def target(self, name: str) -> TargetMetrics:
        """The pre-resolved children for one target."""
        return TargetMetrics(self, name)

    def proxy(self, target: str) -> ProxyMetrics:
        """The pre-resolved children for one target's proxy."""
        return ProxyMetrics(self, target)

    def remove_proxy(self, target: str) -> None:
        """Drop a removed proxy's series."""
        _remove(self.proxy_duration, target)
        for outcome in PROXY_OUTCOMES:
            _remove(self.proxy_requests, target, outcome)
        for login_outcome in PROXY_LOGIN_OUTCOMES:
            _remove(self.proxy_logins, target, login_outcome)

    def remove_target(self, name: str) -> None:
        """Drop a removed target's series."""
        for family in (self.token_expiry, self.token_issued, self.token_valid,
                       self.consecutive_failures, self.clock_skew):
            _remove(family, name)
        for state in STATES:
            _remove(self.target_state, name, state)
        for op in UPSTREAM_OPERATIONS:
            _remove(self.upstream_duration, name, op)
            for outcome in UPSTREAM_OUTCOMES:
                _remove(self.upstream_requests, name, op, outcome)


def _remove(family: Gauge | Counter | Histogram, *labels: str) -> None:
    with contextlib.suppress(KeyError):
        family.remove(*labels)


class TargetMetrics:
    """One target's series."""

    def __init__(self, metrics: Metrics, name: str) -> None:
        self._m = metrics
        self.name = name
        self.expiry = metrics.token_expiry.labels(target=name)
        self.issued = metrics.token_issued.labels(target=name)
        self.valid = metrics.token_valid.labels(target=name)
        self.failures = metrics.consecutive_failures.labels(target=name)
        self.skew = metrics.clock_skew.labels(target=name)
        self.states = {s: metrics.target_state.labels(target=name, state=s) for s in STATES}
        # Pre-create the counters so rate() works from the first scrape.
        for op in UPSTREAM_OPERATIONS:
            metrics.upstream_duration.labels(target=name, operation=op)
            for outcome in UPSTREAM_OUTCOMES:
                metrics.upstream_requests.labels(target=name, operation=op, outcome=outcome)
        self.valid.set(0)
        self.set_state("starting")

    def set_state(self, state: State) -> None:
        """Make ``state`` the one state series at 1."""
        for name, child in self.states.items():
            child.set(1 if name == state else 0)

    def upstream(self, operation: Operation, outcome: UpstreamOutcome, duration: float | None) -> None:
        """Count one upstream call."""
        self._m.upstream_requests.labels(target=self.name, operation=operation,
                                         outcome=outcome).inc()
        if duration is not None:
            self._m.upstream_duration.labels(target=self.name, operation=operation).observe(duration)


class ProxyMetrics:
    """One proxy's series (SPEC §9.6), every outcome present from the start."""

    def __init__(self, metrics: Metrics, target: str) -> None:
        self.requests = {o: metrics.proxy_requests.labels(target=target, outcome=o)
                         for o in PROXY_OUTCOMES}
        self.logins = {o: metrics.proxy_logins.labels(target=target, outcome=o)
                       for o in PROXY_LOGIN_OUTCOMES}
        self.duration = metrics.proxy_duration.labels(target=target)

    def request(self, outcome: ProxyOutcome) -> None:
        """Count one request on the proxy's listeners with its ``outcome`` (PROXY_OUTCOMES)."""
        self.requests[outcome].inc()

    def upstream_answered(self, seconds: float) -> None:
        """Time from sending a request upstream to its response headers."""
        self.duration.observe(seconds)

    def login(self, outcome: ProxyLoginOutcome) -> None:
        """Count one local login: ``success``, ``rejected`` or ``rate_limited`` (the facade's)."""
        self.logins[outcome].inc()
