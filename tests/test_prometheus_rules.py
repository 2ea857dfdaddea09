"""The Prometheus rules in deploy/prometheus: valid, unit-tested, and about metrics tokend exports.

promtool comes with Debian's prometheus package (``bash .ci/prometheus-setup``); the tests that run
it are skipped only when it is absent. The metric-name checks need no promtool.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tokend.metrics import Metrics

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS_DIR / "tokend.rules.yml"
RULE_TESTS = PROMETHEUS_DIR / "tokend.rules.test.yml"
SCRAPE = PROMETHEUS_DIR / "scrape.yml"
POD_ANNOTATIONS = PROMETHEUS_DIR / "pod-annotations.yml"
PROMTOOL = shutil.which("promtool")

needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (bash .ci/prometheus-setup installs it)")

# Series every Prometheus has without tokend exporting them.
PROMETHEUS_OWN = {"up"}

# PromQL words that look like metric names: operators, modifiers, literals.
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
             "group_left", "group_right", "atan2", "inf", "nan", "start", "end"}


def exported_series_names() -> set[str]:
    """The names of the series tokend's registry exposes, as Prometheus stores them."""
    names: set[str] = set()
    for family in Metrics().registry.collect():
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type in ("histogram", "gaugehistogram"):
            names.update(family.name + suffix for suffix in ("_bucket", "_sum", "_count"))
        elif family.type == "summary":
            names.update({family.name, family.name + "_sum", family.name + "_count"})
        else:
            names.add(family.name)
    return names


def per_target_series_names() -> set[str]:
    """The exposed series that carry a ``target`` label."""
    metrics = Metrics()
    metrics.target("t1")
    return {sample.name for family in metrics.registry.collect() for sample in family.samples
            if "target" in sample.labels}


def metric_names(promql: str) -> set[str]:
    """The metric names a PromQL expression (or a Grafana one, with $variables) selects."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', promql)  # string literals
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery durations
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # Grafana variables
    names = set()
    for match in re.finditer(r"(?<![\w.:])[A-Za-z_:][\w:]*", text):
        word = match.group()
        if word.lower() in _KEYWORDS or text[match.end():].lstrip().startswith("("):
            continue  # a keyword, or a function or aggregation call
        names.add(word)
    return names


def load_rules() -> list[dict[str, Any]]:
    """Every rule of tokend.rules.yml."""
    data = yaml.safe_load(RULES.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def recording_rules() -> set[str]:
    """The series tokend.rules.yml records."""
    return {rule["record"] for rule in load_rules() if "record" in rule}


def rule_queries() -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every rule expression and every query an annotation template runs."""
    for rule in load_rules():
        name = rule.get("alert") or rule["record"]
        yield name, rule["expr"]
        for key, template in rule.get("annotations", {}).items():
            for query in re.findall(r"`([^`]*)`", template):
                if "%s" in query:  # printf'd into a query; the rest are shell commands for people
                    yield f"{name} {key}", query.replace("%s", "x")


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    result = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120, cwd=ROOT)
    print(f"$ promtool {' '.join(args)}  (exit {result.returncode})\n{result.stdout}{result.stderr}")
    return result


@needs_promtool
def test_promtool_accepts_the_rules() -> None:
    result = _promtool("check", "rules", str(RULES.relative_to(ROOT)))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_the_rules_unit_tests_pass() -> None:
    result = _promtool("test", "rules", str(RULE_TESTS.relative_to(ROOT)))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_the_scrape_snippet_is_a_valid_prometheus_config(tmp_path: Path) -> None:
    config = yaml.safe_load(SCRAPE.read_text())
    assert [job["job_name"] for job in config["scrape_configs"]] == ["tokend"]
    assert config["scrape_configs"][0]["static_configs"][0]["targets"] == ["127.0.0.1:9464"]
    config["rule_files"] = [str(RULES)]  # the snippet names the installed copy
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    result = _promtool("check", "config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_pod_annotations_point_at_the_metrics_listener() -> None:
    annotations = yaml.safe_load(POD_ANNOTATIONS.read_text())["metadata"]["annotations"]
    assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": "9464",
                           "prometheus.io/path": "/metrics", "prometheus.io/job": "tokend"}


def test_the_name_extraction_finds_names_and_skips_functions_and_labels() -> None:
    expr = ('histogram_quantile(0.99, sum by (le, target) (rate(a_bucket{job=~"$job"}[$window])))'
            ' / on (target) group_left b:c offset 5m > 1e3 and d unless absent(e{x="y"})')
    assert metric_names(expr) == {"a_bucket", "b:c", "d", "e"}


def test_the_rules_select_only_series_tokend_exports() -> None:
    known = exported_series_names() | recording_rules() | PROMETHEUS_OWN
    checked = 0
    for where, query in rule_queries():
        names = metric_names(query)
        assert names, f"{where}: no metric name found in {query!r}"
        unknown = names - known
        assert not unknown, f"{where}: {sorted(unknown)} are not exported by tokend.metrics.Metrics"
        checked += 1
    assert checked >= 10


def test_every_alert_says_what_and_where_and_the_first_step() -> None:
    per_target = per_target_series_names() | recording_rules()
    alerts = [rule for rule in load_rules() if "alert" in rule]
    assert len(alerts) >= 8
    for rule in alerts:
        annotations = rule.get("annotations", {})
        assert {"summary", "description", "runbook"} <= annotations.keys(), rule["alert"]
        assert rule.get("labels", {}).get("severity") in ("critical", "warning"), rule["alert"]
        if metric_names(rule["expr"]) & per_target:
            assert "$labels.target" in annotations["description"], rule["alert"]


def test_every_alert_is_unit_tested_firing_and_not_firing() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    alerts = {rule["alert"] for rule in load_rules() if "alert" in rule}
    assert alerts - fired == set(), "alerts never shown firing"
    assert alerts - quiet == set(), "alerts never shown not firing"
