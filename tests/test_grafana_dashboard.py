"""The Grafana dashboard in deploy/grafana: every query selects series that exist, and parses.

The Prometheus panels are checked against tokend's registry and promtool; the Loki panels (the
proxy's log lines, SPEC §9.6) against the log catalogue.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.test_prometheus_rules import (
    PROMETHEUS_OWN,
    exported_series_names,
    metric_names,
    recording_rules,
)

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "tokend.json"
PROMETHEUS_UID = "${datasource}"
LOKI_UID = "${loki}"
PROMTOOL = shutil.which("promtool")
# What Grafana puts in place of the dashboard's variables, for checking the queries' syntax.
VARIABLES = {"job": "tokend", "instance": ".*", "target": ".*", "__rate_interval": "1m",
             "window": "1h", "datasource": "prometheus"}


def load() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside rows."""
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))


def queries(uid: str = PROMETHEUS_UID) -> Iterator[tuple[str, str]]:
    """(panel title and refId, expr) for every query of the panels on data source ``uid``."""
    for panel in panels(load()["panels"]):
        if panel.get("datasource", {}).get("uid") != uid:
            continue
        for target in panel.get("targets", []):
            yield f"{panel['title']} [{target['refId']}]", target["expr"]


def substituted(expr: str) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: VARIABLES[m.group(1)], expr)


def test_every_panel_query_selects_series_tokend_exports_or_the_rules_record() -> None:
    known = exported_series_names() | recording_rules() | PROMETHEUS_OWN
    seen: set[str] = set()
    for where, expr in queries():
        names = metric_names(expr)
        assert names, f"{where}: no metric name found in {expr!r}"
        assert not names - known, f"{where}: {sorted(names - known)} exist neither in" \
            " tokend.metrics.Metrics nor as a recording rule in deploy/prometheus/tokend.rules.yml"
        seen |= names
    # The views an on-call engineer needs are all there.
    assert {"tokend:token_seconds_left", "tokend_target_state", "tokend_refresh_consecutive_failures",
            "tokend_upstream_requests_total", "tokend_upstream_request_duration_seconds_bucket",
            "tokend_token_requests_total"} <= seen
    # The proxy's and the facade's metrics (SPEC §9.6).
    assert {"tokend_proxy_requests_total", "tokend_proxy_request_duration_seconds_bucket",
            "tokend_proxy_logins_total"} <= seen


def test_the_log_panels_select_the_proxy_events_tokend_logs() -> None:
    from tokend.events import CATALOGUE

    known = set(CATALOGUE)
    seen: set[str] = set()
    found = list(queries(LOKI_UID))
    assert found, "no Loki panel"
    for where, expr in found:
        assert expr.startswith("$log_selector") or "($log_selector" in expr, where
        match = re.search(r'event =~ "proxy\\\\\.\(([^)]*)\)"', expr)
        if match:
            names = {f"proxy.{name}" for name in match.group(1).split("|")}
            assert names <= known, f"{where}: {sorted(names - known)} are not tokend log events"
            seen |= names
        else:
            assert 'event =~ "proxy\\\\..+"' in expr, where
    assert {"proxy.request", "proxy.login_rejected", "proxy.upstream_failed"} <= seen
    variables = {v["name"]: v for v in load()["templating"]["list"]}
    assert variables["loki"]["type"] == "datasource" and variables["loki"]["query"] == "loki"
    assert variables["log_selector"]["type"] == "textbox"


def test_the_variables_list_values_of_exported_series() -> None:
    known = exported_series_names()
    for variable in load()["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((\w+)(?:\{[^}]*\})?, *(\w+)\)", variable["query"]["query"])
        assert match, variable
        assert match.group(1) in known, variable["name"]


def test_panels_have_titles_unique_ids_and_the_datasource_variable() -> None:
    all_panels = list(panels(load()["panels"]))
    ids = [panel["id"] for panel in all_panels]
    assert len(ids) == len(set(ids))
    for panel in all_panels:
        assert panel.get("title"), panel
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] in (PROMETHEUS_UID, LOKI_UID), panel["title"]
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == panel["datasource"]["uid"], panel["title"]


@pytest.mark.skipif(PROMTOOL is None,
                    reason="promtool is not installed (bash .ci/prometheus-setup installs it)")
def test_every_panel_query_is_valid_promql(tmp_path: Path) -> None:
    # promtool has no offline expression check; a recording rule per query is one.
    rules = [{"record": f"dashboard:query_{n}", "expr": substituted(expr)}
             for n, (_, expr) in enumerate(queries())]
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert PROMTOOL is not None
    result = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
