"""The soak of bench/soak.py, 60 seconds long: 2-second tokens, random upstream faults, consumers.

The numbers that must be zero are asserted one by one (their definitions are in bench/soak.py),
and tokend's RSS may not grow by 10 MB or more. The 15-minute version is ``python bench/soak.py``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

SOAK = Path(__file__).resolve().parents[2] / "bench" / "soak.py"
SECONDS = 60.0
MAX_RSS_GROWTH_MB = 10.0


def _load_soak() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tokend_bench_soak", SOAK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


async def test_soak_60_seconds(tmp_path_factory: pytest.TempPathFactory) -> None:
    soak = _load_soak()
    workdir = tmp_path_factory.mktemp("soak", numbered=True)  # keeps tokend's log for a failure
    report = await soak.run_soak(SECONDS, rss_interval=30.0, workdir=workdir,
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
