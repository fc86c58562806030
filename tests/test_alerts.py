"""Prometheus alert rules: promtool checks them, unit-tests every alert, and each has a runbook."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, require_tool

yaml = pytest.importorskip("yaml", reason="PyYAML comes with kubernetes-validate (dev extra)")

PROMETHEUS = REPO / "deploy" / "prometheus"
RULES = PROMETHEUS / "gpu-watchdog-alerts.yml"
RULE_TESTS = sorted((PROMETHEUS / "tests").glob("*.test.yml"))
"""promtool unit-test files: the first alerts' file, and one per later group of alerts."""
OPERATOR_RULE = REPO / "deploy" / "kubernetes" / "prometheusrule.yaml"
OPERATIONS = REPO / "docs" / "operations.md"
RUNBOOK_PREFIX = (
    "https://github.com/gpu-job-watchdog/gpu-job-watchdog/blob/main/docs/operations.md#"
)
OPERATOR_HEADER = """\
# Prometheus Operator: the alert rules of deploy/prometheus/gpu-watchdog-alerts.yml.
# Generated from that file (tests/test_alerts.py fails when the two differ): edit the
# rules there, then regenerate this file with
#   python -c 'import tests.test_alerts as t; t.write_prometheus_rule()'
# The `release` label must match your Prometheus' ruleSelector.
"""


def _alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def _promtool(*args: str, cwd: Path = PROMETHEUS) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def _operator_rule() -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "gpu-watchdog",
            "namespace": "gpu-watchdog",
            "labels": {
                "app.kubernetes.io/name": "gpu-watchdog",
                "release": "kube-prometheus-stack",
            },
        },
        "spec": {"groups": yaml.safe_load(RULES.read_text())["groups"]},
    }


def write_prometheus_rule() -> None:
    """Regenerate deploy/kubernetes/prometheusrule.yaml from the alert rules."""

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper: Any, data: str) -> Any:
        style = "|" if "\n" in data else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)

    Dumper.add_representer(str, text)
    body = yaml.dump(_operator_rule(), Dumper=Dumper, sort_keys=False, width=1000)
    OPERATOR_RULE.write_text(OPERATOR_HEADER + body)


def _anchors(markdown: str) -> set[str]:
    """GitHub's anchors for the headings of a Markdown document."""
    anchors = set()
    for line in markdown.splitlines():
        if match := re.match(r"#{1,6}\s+(.*)", line):
            heading = match.group(1).strip().lower()
            anchors.add(re.sub(r"[^a-z0-9 _-]", "", heading).replace(" ", "-"))
    return anchors


def test_promtool_accepts_the_rules() -> None:
    """`promtool check rules` passes with no warning."""
    result = _promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stdout + result.stderr


def test_promtool_unit_tests_pass() -> None:
    """`promtool test rules` passes for every test case of every alert, in every test file."""
    assert len(RULE_TESTS) >= 2
    result = _promtool("test", "rules", *(str(p.relative_to(PROMETHEUS)) for p in RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_TESTS)


def test_promtool_accepts_the_scrape_config() -> None:
    """The example prometheus.yml (with its rule file) passes `promtool check config`."""
    result = _promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    """Each alert has a unit test where it fires and one where it stays silent."""
    cases = [
        case
        for path in RULE_TESTS
        for test in yaml.safe_load(path.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    ]
    for rule in _alerts():
        name = rule["alert"]
        mine = [case for case in cases if case["alertname"] == name]
        assert any(case.get("exp_alerts") for case in mine), f"{name}: no firing case"
        assert any(not case.get("exp_alerts") for case in mine), f"{name}: no silent case"


def test_every_alert_has_severity_summary_description_and_runbook() -> None:
    """Alerts carry a severity, a summary, a description and a runbook link."""
    for rule in _alerts():
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        annotations = rule["annotations"]
        assert annotations["summary"], rule["alert"]
        assert annotations["description"], rule["alert"]
        assert annotations["runbook_url"] == RUNBOOK_PREFIX + rule["alert"].lower()


def test_every_runbook_link_lands_on_a_section_of_operations_md() -> None:
    """Each alert's runbook anchor is a heading in docs/operations.md."""
    anchors = _anchors(OPERATIONS.read_text())
    missing = [rule["alert"] for rule in _alerts() if rule["alert"].lower() not in anchors]
    assert not missing, f"docs/operations.md lacks a section for {missing}"


def test_alert_names_are_unique() -> None:
    """No two alerts share a name (Alertmanager would merge them)."""
    names = [rule["alert"] for rule in _alerts()]
    assert len(names) == len(set(names))


def test_operator_rule_matches_the_rule_file() -> None:
    """deploy/kubernetes/prometheusrule.yaml carries exactly the rules of the rule file."""
    assert yaml.safe_load(OPERATOR_RULE.read_text()) == _operator_rule(), (
        "prometheusrule.yaml is out of date: "
        "python -c 'import tests.test_alerts as t; t.write_prometheus_rule()'"
    )
    assert OPERATOR_RULE.read_text().startswith(OPERATOR_HEADER)


def test_rule_tests_feed_the_series_and_kind_values_the_daemon_exports() -> None:
    """A promtool case built on label values the exporter never sets proves nothing."""
    from watchdog.detectors.events import (
        ALLOCATED,
        GPU,
        HOST_RSS,
        LEAK,
        NEAR_OOM,
        PROCESS,
        RESERVED,
    )
    from watchdog.detectors.orphans import ORPHANED_MEMORY
    from watchdog.detectors.stall import RANK_LOST, STALLED

    exported = {
        "series": {GPU, PROCESS, HOST_RSS, ALLOCATED, RESERVED},
        "kind": {LEAK, NEAR_OOM, STALLED, RANK_LOST, ORPHANED_MEMORY},
    }
    for path in [RULES, *RULE_TESTS]:
        for label, allowed in exported.items():
            used = set(re.findall(rf'\b{label}=~?"([^"]*)"', path.read_text()))
            assert used <= allowed, f"{path.name}: {label} values never exported: {used - allowed}"
