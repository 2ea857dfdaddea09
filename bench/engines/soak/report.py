"""The soak's report: what ran, what was seen, and the numbers that must be zero."""

from __future__ import annotations

import textwrap
from collections import Counter
from dataclasses import dataclass, field

from bench.engines.soak.params import ACCESS_TTL

MUST_BE_ZERO = (
    "expired tokens served",
    "consumer errors while a valid token existed",
    "tokens served outside their window",
    "unexpected consumer answers",
    "tokend internal errors",
    "secrets in tokend's output",
    "tokend exits during the soak",
)


@dataclass
class Report:
    command: str
    planned: float
    seed: int
    slack: float
    min_ttl: float
    elapsed: float = 0.0
    requests: Counter[str] = field(default_factory=Counter)  # by consumer kind
    answers: Counter[str] = field(default_factory=Counter)  # "kind status"
    zero: Counter[str] = field(default_factory=Counter)
    info: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    upstream: Counter[str] = field(default_factory=Counter)  # "operation status" at the fake
    events: Counter[str] = field(default_factory=Counter)  # tokend log events
    refresh_failures: Counter[str] = field(default_factory=Counter)  # by outcome
    rss_samples: list[tuple[float, int]] = field(default_factory=list)  # (s since start, kB)
    fds: tuple[int, int] = (0, 0)
    uncovered: float = 0.0  # seconds without any token inside its window
    max_loop_lag: float = 0.0
    exit_status: int | None = None
    max_rss_growth_mb: float = 10.0

    def violation(self, name: str, detail: str) -> None:
        self.zero[name] += 1
        shown = self.examples.setdefault(name, [])
        if len(shown) < 5:
            shown.append(detail)

    @property
    def consumer_requests(self) -> int:
        return sum(self.requests.values())

    @property
    def rss_start_kb(self) -> int:
        return self.rss_samples[0][1] if self.rss_samples else 0

    @property
    def rss_end_kb(self) -> int:
        return self.rss_samples[-1][1] if self.rss_samples else 0

    @property
    def rss_growth_kb(self) -> int:
        return self.rss_end_kb - self.rss_start_kb

    def must_be_zero(self) -> dict[str, int]:
        return {name: self.zero[name] for name in MUST_BE_ZERO}

    @property
    def passed(self) -> bool:
        return not any(self.must_be_zero().values()) and (
            self.rss_growth_kb < self.max_rss_growth_mb * 1024)

    def render(self) -> str:
        out: list[str] = []
        w = out.append
        w("==================== tokend soak report ====================")
        w(f"command: {self.command}")
        w(f"ran {self.elapsed:.1f} s (planned {self.planned:g} s), seed {self.seed}; access tokens"
          f" {ACCESS_TTL} s, so tokend serves each for 1 s (exp - iat - 1)")
        ok_logins = self.upstream["login 201"]
        ok_refreshes = self.upstream["refresh 200"]
        logins = sum(v for k, v in self.upstream.items() if k.startswith("login "))
        refreshes = sum(v for k, v in self.upstream.items() if k.startswith("refresh "))
        w(f"refreshes: {self.events['token.refreshed']} accepted by tokend"
          f" ({refreshes} calls at the fake, {ok_refreshes} answered 200)")
        w(f"logins:    {self.events['token.acquired']} accepted by tokend"
          f" ({logins} calls at the fake, {ok_logins} answered 201)")
        w("upstream answers by operation and status (0 = dropped): "
          + _counter_line(self.upstream))
        w(f"tokend refresh failures by outcome ({sum(self.refresh_failures.values())}): "
          + _counter_line(self.refresh_failures))
        w(f"faults injected by kind ({sum(self.faults.values())}): " + _counter_line(self.faults))
        w(f"consumer requests: {self.consumer_requests} ("
          + ", ".join(f"{k} {v}" for k, v in sorted(self.requests.items())) + ")")
        w("answers by kind and status: " + _counter_line(self.answers))
        w(f"time without any token inside its window: {self.uncovered:.1f} s"
          f" ({100 * self.uncovered / max(self.elapsed, 1e-9):.1f} %)")
        w("for information: " + _counter_line(self.info)
          + f"; longest soak loop stall {self.max_loop_lag * 1000:.0f} ms")
        samples = ", ".join(f"{t:.0f}s {kb / 1024:.1f}" for t, kb in self.rss_samples)
        w(f"tokend RSS (MB): start {self.rss_start_kb / 1024:.1f}, end {self.rss_end_kb / 1024:.1f},"
          f" max {max((kb for _, kb in self.rss_samples), default=0) / 1024:.1f};"
          f" growth {self.rss_growth_kb / 1024:+.1f} (limit {self.max_rss_growth_mb:g}); samples: {samples}")
        w(f"tokend open fds: start {self.fds[0]}, end {self.fds[1]};"
          f" exit status on SIGTERM: {self.exit_status}")
        w("--- must be zero ---")
        for name, value in self.must_be_zero().items():
            w(f"  {name + ' ':.<50} {value}")
            for example in self.examples.get(name, []):
                w(f"      e.g. {example}")
        growth_ok = self.rss_growth_kb < self.max_rss_growth_mb * 1024
        w(f"  {'RSS growth below the limit ':.<50} {'yes' if growth_ok else 'NO'}")
        w(f"result: {'PASS' if self.passed else 'FAIL'}")
        for line in textwrap.wrap(
                "definitions: a token's window runs from when the fake finished answering with it"
                " to received + min(exp-iat-1, exp-Date-1), received being when the fake got the"
                " request (SPEC 5.1; an upper bound of tokend's own window). 'expired served': a 200"
                " whose token's exp (fake clock) had passed when the request was sent, or whose"
                " expiresIn is negative or not an integer. 'outside their window': a 200 sent after"
                " the token's window had closed. 'error while a valid token existed': a 503 although"
                f" a token was inside its window, shrunk by {self.slack:g} s plus the longest stall"
                " seen within 2 s at both ends, for the whole request (plain GET) or, for a request"
                " that waits (min_ttl, invalidate), at an instant of the request with more than"
                " min_ttl left; only tokens tokend could answer with count (not one superseded"
                " before the request; for invalidate, only tokens newer than the reported one)."
                " 'unexpected"
                " answers': anything else off-contract (unknown token, wrong fingerprint, a min_ttl"
                " answer shorter than asked, an invalidate answering the reported token, a 503"
                " without Retry-After, a status other than 200/503 (400 only for an unmeetable"
                " min_ttl), a failed connection).", 100):
            w(line)
        w("============================================================")
        return "\n".join(out)


def _counter_line(counter: Counter[str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counter.items())) or "none"
