"""Grafana dashboards: generated, well formed, every query valid PromQL (checked by promtool)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, require_tool

GRAFANA = REPO / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
PROVISIONING = GRAFANA / "provisioning"
BUILT_INS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}
"""Grafana's own variables, as the tests stand them in."""


def load(path: Path) -> dict[str, Any]:
    """One dashboard's JSON."""
    return dict(json.loads(path.read_text()))


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel that is not a row, including panels inside collapsed rows."""
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL expression) for every panel target and Prometheus annotation."""
    for panel in panels(dashboard):
        for target in panel["targets"]:
            yield f"panel {panel['title']!r} query {target['refId']}", target["expr"]
    for annotation in dashboard["annotations"]["list"]:
        if "expr" in annotation:
            yield f"annotation {annotation['name']!r}", annotation["expr"]


def substitute(expr: str, values: dict[str, str]) -> str:
    """``expr`` with Grafana's built-in variables and the template ``values`` filled in."""
    for name, value in BUILT_INS.items():
        expr = expr.replace(name, value)

    def one(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise KeyError(f"unknown variable ${name} in {expr!r}")
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", one, expr)


ALL = {"node": ".*", "gpu": ".*", "job": ".*", "datasource": "prometheus"}


def _yaml() -> Any:
    return pytest.importorskip("yaml", reason="PyYAML comes with kubernetes-validate (dev extra)")


def test_dashboards_are_generated_from_the_builder() -> None:
    """The committed JSON is exactly what grafana/build_dashboards.py writes."""
    result = subprocess.run(
        [sys.executable, str(GRAFANA / "build_dashboards.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert len(DASHBOARDS) == 2


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_panels_are_well_formed_and_do_not_overlap(path: Path) -> None:
    """Unique ids, inside 24 columns, no two panels on the same cell, each described."""
    dashboard = load(path)
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    taken: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0, panel["title"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells
    for panel in panels(dashboard):
        assert panel["description"], panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_template_variables_for_node_gpu_and_job(path: Path) -> None:
    """Every dashboard can be narrowed to a node, a GPU and a job, on any Prometheus."""
    variables = {v["name"]: v for v in load(path)["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("node", "gpu", "job"):
        assert variables[name]["type"] == "query"
        assert variables[name]["definition"].startswith("label_values(")


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_every_query_uses_only_known_variables(path: Path) -> None:
    """Each query's variables are template variables or Grafana built-ins."""
    for where, expr in queries(load(path)):
        try:
            substitute(expr, ALL)
        except KeyError as exc:
            pytest.fail(f"{path.name} {where}: {exc}")


def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses every panel and annotation query (as recording rules)."""
    yaml = _yaml()
    rules = []
    for path in DASHBOARDS:
        for number, (where, expr) in enumerate(queries(load(path))):
            record = f"dashboard:{path.stem.replace('-', '_')}:{number}"
            rules.append({"record": record, "expr": substitute(expr, ALL), "labels": {}})
            rules[-1]["labels"]["where"] = where
    rule_file = tmp_path / "dashboards.rules.yml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run(
        [require_tool("promtool"), "check", "rules", str(rule_file)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_node_dashboard_shows_watchdog_events_as_annotations() -> None:
    """Findings, actions and commands are annotations on the node dashboard."""
    node = load(GRAFANA / "dashboards" / "gpu-watchdog-node.json")
    names = {a["name"] for a in node["annotations"]["list"]}
    assert {"Findings", "Actions", "Commands"} <= names


def test_provisioning_points_grafana_at_the_dashboards() -> None:
    """The provisioning files are valid YAML of Grafana's provisioning format, version 1."""
    yaml = _yaml()
    dashboards = yaml.safe_load((PROVISIONING / "dashboards" / "gpu-watchdog.yaml").read_text())
    assert dashboards["apiVersion"] == 1
    provider = dashboards["providers"][0]
    assert provider["type"] == "file"
    assert provider["options"]["path"].startswith("/")
    sources = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yaml").read_text())
    assert sources["apiVersion"] == 1
    assert sources["datasources"][0]["type"] == "prometheus"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_uids_are_stable(path: Path) -> None:
    """Dashboards keep fixed uids, so links and bookmarks survive re-provisioning."""
    assert load(path)["uid"] == path.stem


def test_counter_panels_draw_no_burst_after_missed_scrapes(tmp_path: Path) -> None:
    """Every series of a target ends for a moment when scrapes are missed (stale markers);
    when it comes back, a counter panel must not draw its whole count as new."""
    yaml = _yaml()
    node = load(GRAFANA / "dashboards" / "gpu-watchdog-node.json")
    panel = next(p for p in panels(node) if p["title"] == "Commands and actions")
    expr = next(t["expr"] for t in panel["targets"] if "client_commands_total" in t["expr"])
    panel_expr = substitute(expr, {**ALL, "node": "node1:9723"})
    counter = (
        'gpu_watchdog_client_commands_total{job="gpu-watchdog",instance="node1:9723",'
        'command="checkpoint",result="error"}'
    )
    case = {
        "rule_files": [],
        "evaluation_interval": "15s",
        "tests": [
            {
                "interval": "15s",
                # 5 failures long ago; 2 minutes of scrapes missed after 10m; the same 5 after.
                "input_series": [{"series": counter, "values": "5x40 " + "stale " * 8 + "5x20"}],
                "promql_expr_test": [
                    # The first sample back is alone in the rate interval: no increase, and
                    # nothing new to draw (not 5).
                    {"expr": panel_expr, "eval_time": "12m15s", "exp_samples": []},
                    {
                        "expr": panel_expr,
                        "eval_time": "13m",
                        "exp_samples": [
                            {"labels": '{command="checkpoint", result="error"}', "value": 0}
                        ],
                    },
                ],
            }
        ],
    }
    test_file = tmp_path / "burst.test.yml"
    test_file.write_text(yaml.safe_dump(case))
    result = subprocess.run(
        [require_tool("promtool"), "test", "rules", str(test_file)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
