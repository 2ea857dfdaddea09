"""The soak engine of bench/soak.py, 60 seconds long: 2-second tokens, random upstream faults,
consumers.

The numbers that must be zero are asserted one by one (their definitions are in
``bench/engines/soak``), and tokend's RSS may not grow by 10 MB or more. The 15-minute version is
``python bench/soak.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.engines.soak import run_soak

SECONDS = 60.0
MAX_RSS_GROWTH_MB = 10.0


async def test_soak_60_seconds(tmp_path_factory: pytest.TempPathFactory) -> None:
    workdir = tmp_path_factory.mktemp("soak", numbered=True)  # keeps tokend's log for a failure
    report = await run_soak(SECONDS, rss_interval=30.0, workdir=workdir,
                            max_rss_growth_mb=MAX_RSS_GROWTH_MB,
                            command=f"run_soak({SECONDS:g}) from {Path(__file__).name}")
    text = report.render()
    print(text)

    # it really ran: tokens came and went, faults were injected, consumers were answered
    assert report.events["token.refreshed"] + report.events["token.acquired"] >= 20, text
    assert sum(report.faults.values()) >= 5, text
    assert report.consumer_requests >= 1000, text

    for name, value in report.must_be_zero().items():
        assert value == 0, f"{name}: {value}\n{text}"
    assert report.exit_status == 0, text
    assert len(report.rss_samples) >= 3, text  # start, 30 s, end
    assert report.rss_growth_kb < MAX_RSS_GROWTH_MB * 1024, text
