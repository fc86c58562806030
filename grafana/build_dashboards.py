"""Write the Grafana dashboards of gpu-watchdog as JSON into grafana/dashboards/.

The JSON files are what Grafana loads (through grafana/provisioning/); this script
is where they are edited, so every panel shares one layout, one data source variable
and one set of template variables. Run it after a change and commit both:

    python grafana/build_dashboards.py          # rewrite the JSON files
    python grafana/build_dashboards.py --check  # exit 1 if they are out of date (CI)

Label conventions (docs/install.md): ``instance`` is the node, ``gpu`` the GPU index,
``training_job`` the training job (the daemon's ``job`` label, renamed by Prometheus
because ``job`` is the scrape job, always "gpu-watchdog").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards"
DS = {"type": "prometheus", "uid": "${datasource}"}
SCHEMA_VERSION = 39
WIDTH = 24

Json = dict[str, Any]


# --- building blocks -----------------------------------------------------------------


def target(expr: str, legend: str = "", *, instant: bool = False, table: bool = False) -> Json:
    """One Prometheus query of a panel."""
    query: Json = {"datasource": DS, "expr": expr, "legendFormat": legend or "__auto"}
    if instant or table:
        query["instant"] = True
        query["range"] = False
    if table:
        query["format"] = "table"
    return query


def panel(kind: str, title: str, description: str, targets: list[Json], **extra: Any) -> Json:
    """A panel of type ``kind``; ``unit``, ``w`` and ``h`` and Grafana options go in ``extra``."""
    unit = extra.pop("unit", "short")
    defaults: Json = {"unit": unit}
    defaults.update(extra.pop("defaults", {}))
    built: Json = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": [dict(t, refId=chr(ord("A") + i)) for i, t in enumerate(targets)],
        "fieldConfig": {"defaults": defaults, "overrides": extra.pop("overrides", [])},
        "options": extra.pop("options", {}),
        "gridPos": {"w": extra.pop("w", 12), "h": extra.pop("h", 8)},
    }
    built.update(extra)
    return built


def timeseries(title: str, description: str, targets: list[Json], **extra: Any) -> Json:
    """A time series graph with the legend as a table of last and max values."""
    extra.setdefault(
        "options",
        {
            "legend": {
                "displayMode": "table",
                "placement": "right",
                "calcs": ["lastNotNull", "max"],
            },
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    )
    custom = extra.pop("custom", {})
    extra.setdefault("defaults", {})["custom"] = {"fillOpacity": 0, "showPoints": "never", **custom}
    return panel("timeseries", title, description, targets, **extra)


def stat(
    title: str, description: str, expr: str, *, red_above: float | None = 0, **extra: Any
) -> Json:
    """A single number; red once it is over ``red_above`` (None: never red)."""
    steps: list[Json] = [{"color": "green", "value": None}]
    if red_above is not None:
        steps.append({"color": "red", "value": red_above + 1e-9})
    extra.setdefault("w", 4)
    extra.setdefault("h", 4)
    extra.setdefault("defaults", {})["thresholds"] = {"mode": "absolute", "steps": steps}
    options = {
        "colorMode": "background",
        "graphMode": "none",
        "reduceOptions": {"calcs": ["lastNotNull"]},
    }
    return panel("stat", title, description, [target(expr, instant=True)], options=options, **extra)


def state_timeline(
    title: str, description: str, targets: list[Json], mapping: dict[str, str], **extra: Any
) -> Json:
    """On/off states over time, with ``mapping`` from values to names (and colours)."""
    colours = {"0": "green", "1": "red"}
    mappings = [
        {
            "type": "value",
            "options": {
                value: {"text": text, "color": colours.get(value, "blue"), "index": i}
                for i, (value, text) in enumerate(mapping.items())
            },
        }
    ]
    extra.setdefault("defaults", {})["mappings"] = mappings
    options = {
        "showValue": "never",
        "mergeValues": True,
        "rowHeight": 0.8,
        "legend": {"showLegend": False},
    }
    return panel("state-timeline", title, description, targets, options=options, **extra)


def table(
    title: str,
    description: str,
    targets: list[Json],
    hide: list[str],
    rename: dict[str, str],
    **extra: Any,
) -> Json:
    """Instant queries merged into one table, one row per label set."""
    extra["transformations"] = [
        {"id": "merge", "options": {}},
        {
            "id": "organize",
            "options": {
                "excludeByName": dict.fromkeys(["Time", "__name__", "job", *hide], True),
                "renameByName": rename,
            },
        },
    ]
    return panel("table", title, description, targets, **extra)


def row(title: str) -> Json:
    """A row header."""
    return {
        "type": "row",
        "title": title,
        "collapsed": False,
        "panels": [],
        "gridPos": {"w": WIDTH, "h": 1},
    }


def layout(panels: list[Json]) -> list[Json]:
    """Number the panels and place them left to right, wrapping at 24 columns."""
    x = y = line_height = 0
    for number, item in enumerate(panels, start=1):
        pos = item["gridPos"]
        if item["type"] == "row" or x + pos["w"] > WIDTH:
            x, y, line_height = 0, y + line_height, 0
        pos["x"], pos["y"] = x, y
        item["id"] = number
        x += pos["w"]
        line_height = max(line_height, pos["h"])
        if item["type"] == "row":
            x, y, line_height = 0, y + 1, 0
    return panels


def datasource_variable() -> Json:
    """Pick the Prometheus data source; every query goes through it."""
    return {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "refresh": 1,
        "regex": "",
    }


def query_variable(name: str, label: str, query: str, *, multi: bool = True, hide: int = 0) -> Json:
    """A variable whose values are label values found by ``label_values(...)``."""
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "definition": query,
        "query": {"query": query, "refId": f"{name}-values"},
        "refresh": 2,
        "sort": 3 if name == "gpu" else 1,  # GPUs by number, nodes and jobs by name
        "multi": multi,
        "includeAll": multi,
        "allValue": ".*" if multi else None,
        "current": {},
        "hide": hide,
        "regex": "",
        "options": [],
    }


def annotation(name: str, expr: str, title: str, text: str, colour: str) -> Json:
    """Events on every time series panel, from a Prometheus query."""
    return {
        "name": name,
        "datasource": DS,
        "enable": True,
        "iconColor": colour,
        "expr": expr,
        "step": "30s",
        "titleFormat": title,
        "textFormat": text,
        "tagKeys": "instance,kind,state,action,outcome,command,result",
        "useValueForTime": False,
    }


def grafana_annotation() -> Json:
    """Grafana's own annotations and alerts (kept so users' manual notes still show)."""
    return {
        "builtIn": 1,
        "datasource": {"type": "grafana", "uid": "-- Grafana --"},
        "enable": True,
        "hide": True,
        "iconColor": "rgba(0, 211, 255, 1)",
        "name": "Annotations & Alerts",
        "type": "dashboard",
    }


def dashboard(
    uid: str,
    title: str,
    description: str,
    variables: list[Json],
    annotations: list[Json],
    panels: list[Json],
) -> Json:
    """A whole dashboard."""
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["gpu", "gpu-watchdog"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "links": [
            {
                "type": "dashboards",
                "tags": ["gpu-watchdog"],
                "title": "GPU watchdog",
                "asDropdown": True,
                "includeVars": True,
                "keepTime": True,
            },
        ],
        "templating": {"list": [datasource_variable(), *variables]},
        "annotations": {"list": [grafana_annotation(), *annotations]},
        "panels": layout(panels),
    }


# --- the dashboards ------------------------------------------------------------------

NODE = 'instance=~"$node"'
NODE_GPU = 'instance=~"$node", gpu=~"$gpu"'
ONE = 'instance="$node"'
ONE_GPU = 'instance="$node", gpu=~"$gpu"'
ONE_JOB = 'instance="$node", training_job=~"$job"'
SCRAPE_JOB = 'job="gpu-watchdog"'
LEAK = 'kind="leak"'
NEAR_OOM = 'kind="near_oom"'
FAILED = 'result="failure"'
GPU_LEGEND = "{{instance}} GPU {{gpu}}"
CLIENT_LEGEND = "{{training_job}} rank {{rank}} pid {{pid}}"
FINDING_MAPPING = {"0": "ok", "1": "raised"}
BARS = {"drawStyle": "bars", "fillOpacity": 80}
DASHED_TOTAL = [
    {
        "matcher": {"id": "byRegexp", "options": ".* total"},
        "properties": [{"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}}],
    }
]
BUDGET_STEPS = {
    "mode": "absolute",
    "steps": [{"color": "red", "value": None}, {"color": "green", "value": 1}],
}
TTO_STEPS = {
    "mode": "absolute",
    "steps": [
        {"color": "red", "value": None},
        {"color": "orange", "value": 900},
        {"color": "green", "value": 1800},
    ],
}
BARGAUGE = {
    "displayMode": "basic",
    "orientation": "horizontal",
    "reduceOptions": {"calcs": ["lastNotNull"]},
}


def m(name: str, *matchers: str) -> str:
    """``name{matchers}``: a selector, built outside f-strings so PromQL braces stay readable."""
    return name + "{" + ", ".join(matchers) + "}"


def by(labels: str, function: str, inner: str) -> str:
    """``function by (labels) (inner)``."""
    return f"{function} by ({labels}) ({inner})"


def increase(selector: str) -> str:
    """Increase of a counter over Grafana's rate interval, a series' first counts included.

    The daemon exports a label set only once it has counted something, so a new
    series' first sample already holds its count, which ``increase()`` cannot see:
    a single Xid or a single leak raised would draw nothing.
    """
    return (
        f"(increase({selector}[$__rate_interval])"
        f" or ({selector} unless {_seen_before(selector, '$__rate_interval')}))"
    )


def _seen_before(selector: str, window: str) -> str:
    """The series of ``selector`` that had samples in the hour before ``window``.

    What ``unless`` takes away to leave the series born within the window. Not the
    series present just before it: a few missed scrapes end every series of the
    target (stale markers), and each would come back looking newborn, drawing its
    whole count as if it had all happened in that moment.
    """
    return f"max_over_time({selector}[1h] offset {window})"


def rate(selector: str) -> str:
    """Per-second rate of a counter over Grafana's rate interval."""
    return f"rate({selector}[$__rate_interval])"


def unit_override(column: str, unit: str, *more: Json) -> Json:
    """A table column's unit (and more properties)."""
    return {
        "matcher": {"id": "byName", "options": column},
        "properties": [{"id": "unit", "value": unit}, *more],
    }


def _changed(counter: str) -> str:
    """Counters that moved in the last 2 minutes, including series born in that time.

    ``changes()`` cannot see a counter's first count: the daemon exports a label set
    only once it has counted something, so its first sample already holds 1.
    """
    return f"changes({counter}[2m]) > 0 or ({counter} unless {_seen_before(counter, '2m')})"


def _annotations(selector: str) -> list[Json]:
    """Findings, actions and commands as events on the time series panels."""
    events = (
        (
            "Findings",
            "gpu_watchdog_findings_total",
            "instance, kind, state",
            "{{kind}} {{state}}",
            "{{instance}}: {{kind}} {{state}}",
            "orange",
        ),
        (
            "Actions",
            "gpu_watchdog_actions_total",
            "instance, action, outcome",
            "{{action}} ({{outcome}})",
            "{{instance}}: {{action}} {{outcome}}",
            "purple",
        ),
        (
            "Commands",
            "gpu_watchdog_client_commands_total",
            "instance, command, result",
            "{{command}} ({{result}})",
            "{{instance}}: {{command}} {{result}}",
            "blue",
        ),
    )
    return [
        annotation(
            name,
            by(labels, "sum", _changed(m(metric, selector))) + " > 0",
            title,
            text,
            colour,
        )
        for name, metric, labels, title, text, colour in events
    ]


def _fleet_overview() -> list[Json]:
    up = m("up", SCRAPE_JOB, NODE)
    return [
        row("Fleet"),
        stat(
            "Watchdogs up",
            "Nodes whose gpu-watchdog answers Prometheus.",
            f"count({up} == 1) or vector(0)",
            red_above=None,
        ),
        stat(
            "Watchdogs down",
            "Nodes whose gpu-watchdog does not answer (alert GpuWatchdogDown).",
            f"count({up} == 0) or vector(0)",
        ),
        stat(
            "GPUs",
            "GPUs watched.",
            f"count({m('gpu_watchdog_gpu_info', NODE_GPU)}) or vector(0)",
            red_above=None,
        ),
        stat(
            "Leaks",
            "Leak findings raised now, over every memory series (alert GpuMemoryLeak).",
            f"count({m('gpu_watchdog_finding_active', LEAK, NODE_GPU)} == 1) or vector(0)",
        ),
        stat(
            "Near OOM",
            "Near-OOM findings raised now (alert GpuNearOOM).",
            f"count({m('gpu_watchdog_finding_active', NEAR_OOM, NODE_GPU)} == 1) or vector(0)",
        ),
        stat(
            "GPUs lost",
            "GPUs that NVML cannot read (alert GpuLost).",
            f"sum({m('gpu_watchdog_gpu_lost', NODE_GPU)}) or vector(0)",
        ),
    ]


def _fleet_gpus() -> list[Json]:
    used = m("gpu_watchdog_gpu_memory_used_bytes", NODE_GPU)
    total = m("gpu_watchdog_gpu_memory_total_bytes", NODE_GPU)
    time_to_oom = by("instance, gpu", "min", m("gpu_watchdog_time_to_oom_seconds", NODE_GPU))
    leak_map = {"0": {"text": "no", "color": "green"}, "1": {"text": "LEAK", "color": "red"}}
    return [
        row("GPUs"),
        table(
            "Every GPU",
            "One row per GPU: memory now, the shortest predicted time to OOM over its "
            "series, and whether a leak is raised on it.",
            [
                target(by("instance, gpu", "max", used), table=True),
                target(by("instance, gpu", "max", total), table=True),
                target(by("instance, gpu", "max", f"{used} / {total}"), table=True),
                target(time_to_oom, table=True),
                target(
                    by("instance, gpu", "max", m("gpu_watchdog_finding_active", LEAK, NODE_GPU)),
                    table=True,
                ),
            ],
            hide=["source"],
            rename={
                "instance": "Node",
                "gpu": "GPU",
                "Value #A": "Used",
                "Value #B": "Total",
                "Value #C": "Used share",
                "Value #D": "Time to OOM",
                "Value #E": "Leak",
            },
            overrides=[
                unit_override("Used", "bytes"),
                unit_override("Total", "bytes"),
                unit_override(
                    "Used share",
                    "percentunit",
                    {"id": "custom.cellOptions", "value": {"type": "gauge", "mode": "basic"}},
                ),
                unit_override("Time to OOM", "s"),
                unit_override(
                    "Leak",
                    "none",
                    {"id": "mappings", "value": [{"type": "value", "options": leak_map}]},
                    {"id": "custom.cellOptions", "value": {"type": "color-background"}},
                ),
            ],
            w=24,
            h=9,
        ),
        timeseries(
            "GPU memory used vs total",
            "Used memory of each GPU (solid) against its total (dashed).",
            [target(used, GPU_LEGEND + " used"), target(total, GPU_LEGEND + " total")],
            unit="bytes",
            overrides=DASHED_TOTAL,
        ),
        timeseries(
            "Predicted time to OOM",
            "The shortest predicted time until a memory series of the GPU reaches its limit. "
            "No line: memory is not growing.",
            [target(time_to_oom, GPU_LEGEND)],
            unit="s",
            defaults={"thresholds": TTO_STEPS},
            custom={"thresholdsStyle": {"mode": "line+area"}},
        ),
        state_timeline(
            "Findings",
            "Leak and near-OOM findings over time, per GPU (any of its series).",
            [
                target(
                    by("instance, gpu, kind", "max", m("gpu_watchdog_finding_active", NODE_GPU)),
                    GPU_LEGEND + " {{kind}}",
                )
            ],
            FINDING_MAPPING,
        ),
        timeseries(
            "Memory growth rate",
            "The fastest growth of a memory floor on each GPU, as the detector measures it.",
            [
                target(
                    by(
                        "instance, gpu",
                        "max",
                        m("gpu_watchdog_memory_growth_bytes_per_second", NODE_GPU),
                    ),
                    GPU_LEGEND,
                )
            ],
            unit="binBps",
        ),
    ]


def _fleet_actions() -> list[Json]:
    def bars(title: str, description: str, metric: str, labels: str, w: int = 8) -> Json:
        legend = " ".join("{{" + label.strip() + "}}" for label in labels.split(","))
        return timeseries(
            title,
            description,
            [target(by(labels, "sum", increase(m(metric, NODE))), legend)],
            custom=BARS,
            w=w,
        )

    return [
        row("Actions"),
        bars(
            "Actions decided",
            "What the policy decided, by action and outcome (send, dry_run, suppressed).",
            "gpu_watchdog_actions_total",
            "instance, action, outcome",
        ),
        bars(
            "Action results",
            "How training processes answered the policy's commands (ok, error).",
            "gpu_watchdog_action_results_total",
            "instance, action, result",
        ),
        panel(
            "bargauge",
            "Restart budget left",
            "Checkpoint-and-restarts each job may still spend in the policy's window.",
            [
                target(
                    by(
                        "instance, training_job",
                        "min",
                        m("gpu_watchdog_restart_budget_remaining", NODE, 'training_job=~"$job"'),
                    ),
                    "{{training_job}} on {{instance}}",
                    instant=True,
                )
            ],
            options=BARGAUGE,
            defaults={"min": 0, "thresholds": BUDGET_STEPS},
            w=8,
        ),
        bars(
            "Actions suppressed",
            "Decisions a guard stopped, by action and guard (cooldown, restart_budget, in_flight).",
            "gpu_watchdog_actions_suppressed_total",
            "instance, action, reason",
        ),
        bars(
            "Commands to training processes",
            "Every command sent through the control socket (policy or `gpu-watchdog send`).",
            "gpu_watchdog_client_commands_total",
            "instance, command, result",
        ),
        timeseries(
            "Training processes registered",
            "Processes attached with the client library, per node.",
            [target(by("instance", "sum", m("gpu_watchdog_clients", NODE)), "{{instance}}")],
            w=8,
        ),
    ]


def _fleet_health() -> list[Json]:
    collector = "{{instance}} {{collector}}"
    return [
        row("Watchdog health"),
        table(
            "Watchdogs",
            "Version, GPU source (nvml or simulated) and driver of each node's watchdog.",
            [target(m("gpu_watchdog_build_info", NODE), table=True)],
            hide=["Value"],
            rename={
                "instance": "Node",
                "version": "Version",
                "source": "Source",
                "driver_version": "Driver",
                "nvml_version": "NVML",
            },
            w=8,
        ),
        state_timeline(
            "Sources",
            "Whether each source's last poll succeeded, and whether a poll is hung.",
            [
                target(m("gpu_watchdog_collector_success", NODE), collector + " ok"),
                target(m("gpu_watchdog_collector_stalled", NODE), collector + " stalled"),
            ],
            {"0": "no", "1": "yes"},
            w=16,
        ),
        timeseries(
            "Seconds since the last successful poll",
            "Age of each source's figures (alert GpuWatchdogStale over 5 minutes).",
            [
                target(
                    "time() - " + m("gpu_watchdog_collector_last_success_timestamp_seconds", NODE),
                    collector,
                )
            ],
            unit="s",
            w=8,
        ),
        timeseries(
            "Poll duration",
            "How long the last poll of each source took.",
            [target(m("gpu_watchdog_collector_duration_seconds", NODE), collector)],
            unit="s",
            w=8,
        ),
        timeseries(
            "Poll failures and missed runs",
            "Failed polls and polls skipped because the previous one still ran, per second.",
            [
                target(
                    by(
                        "instance, collector",
                        "sum",
                        rate(m("gpu_watchdog_collector_polls_total", FAILED, NODE)),
                    ),
                    collector + " failed",
                ),
                target(
                    by(
                        "instance, collector",
                        "sum",
                        rate(m("gpu_watchdog_collector_missed_runs_total", NODE)),
                    ),
                    collector + " missed",
                ),
            ],
            unit="ops",
            w=8,
        ),
        timeseries(
            "NVML errors",
            "Failed NVML calls by function and error (GpuIsLost, Unknown, Timeout, ...).",
            [
                target(
                    by(
                        "instance, call, error",
                        "sum",
                        rate(m("gpu_watchdog_nvml_errors_total", NODE)),
                    ),
                    "{{instance}} {{call}} {{error}}",
                )
            ],
            unit="ops",
            w=8,
        ),
        timeseries(
            "Control connections dropped",
            "Connections to the control socket refused or dropped, by reason "
            "(limits, timeouts, bad frames).",
            [
                target(
                    by(
                        "instance, reason",
                        "sum",
                        rate(m("gpu_watchdog_control_dropped_connections_total", NODE)),
                    ),
                    "{{instance}} {{reason}}",
                )
            ],
            unit="ops",
            w=8,
        ),
        timeseries(
            "Journal write errors",
            "Audit journal entries that could not be written (disk full, read-only state dir).",
            [
                target(
                    by("instance", "sum", rate(m("gpu_watchdog_journal_write_errors_total", NODE))),
                    "{{instance}}",
                )
            ],
            unit="ops",
            w=8,
        ),
    ]


XID = "gpu_watchdog_gpu_xid_events_total"
ECC = "gpu_watchdog_gpu_ecc_errors_total"
YES_NO = {"0": "no", "1": "yes"}


def _counted_within(counter: str, window: str) -> str:
    """Counters that moved within ``window``, including series born in it (cf. ``_changed``)."""
    born = f"{counter} unless {_seen_before(counter, window)}"
    return f"(increase({counter}[{window}]) > 0) or ({born})"


def _fleet_faults() -> list[Json]:
    def per_gpu(function: str, inner: str) -> str:
        return by("instance, gpu", function, inner)

    fatal = m(XID, 'fatal="true"', NODE_GPU)
    pending = (
        m("gpu_watchdog_gpu_row_remap_pending", NODE_GPU)
        + " == 1 or "
        + m("gpu_watchdog_gpu_retired_pages_pending", NODE_GPU)
        + " == 1"
    )
    volatile = m(ECC, 'type="uncorrected"', 'counter="volatile"', NODE_GPU)
    lifetime = m(ECC, 'type="uncorrected"', 'counter="aggregate"', NODE_GPU)
    return [
        row("GPU faults"),
        stat(
            "GPUs with a fatal Xid",
            "GPUs with an Xid that NVIDIA's catalog marks fatal in the last hour "
            "(alert GpuXidFatal).",
            f"count({per_gpu('max', _counted_within(fatal, '1h'))}) or vector(0)",
        ),
        stat(
            "Uncorrectable ECC",
            "GPUs with uncorrectable ECC errors since their driver loaded "
            "(alert GpuEccUncorrectable).",
            f"count({volatile} > 0) or vector(0)",
        ),
        stat(
            "Memory repair pending",
            "GPUs whose remapped rows or retired pages wait for a reset "
            "(alert GpuMemoryRepairPending).",
            f"count({per_gpu('max', pending)}) or vector(0)",
        ),
        stat(
            "Row remap failures",
            "GPUs out of spare memory rows: an RMA (alert GpuRowRemapFailure).",
            f"count({m('gpu_watchdog_gpu_row_remap_failure', NODE_GPU)} == 1) or vector(0)",
        ),
        stat(
            "Xid watchers down",
            "Nodes whose NVML event thread is not waiting for Xid errors "
            "(alert GpuEventWatcherDown).",
            f"count({m('gpu_watchdog_event_watcher_up', NODE)} == 0) or vector(0)",
        ),
        timeseries(
            "Xid errors",
            "Xid errors by GPU and code, with the action NVIDIA's catalog asks for.",
            [
                target(
                    by("instance, gpu, xid, action", "sum", increase(m(XID, NODE_GPU))),
                    GPU_LEGEND + " Xid {{xid}} {{action}}",
                )
            ],
            custom=BARS,
        ),
        table(
            "GPU memory health",
            "Per GPU: uncorrectable ECC errors (since the driver loaded, lifetime), rows "
            "remapped, pages retired, a repair waiting for a reset, a failed remap.",
            [
                target(per_gpu(function, expr), table=True)
                for function, expr in (
                    ("sum", volatile),
                    ("sum", lifetime),
                    ("sum", m("gpu_watchdog_gpu_remapped_rows", NODE_GPU)),
                    ("sum", m("gpu_watchdog_gpu_retired_pages", NODE_GPU)),
                    ("max", pending),
                    ("max", m("gpu_watchdog_gpu_row_remap_failure", NODE_GPU)),
                )
            ],
            hide=[],
            rename={
                "instance": "Node",
                "gpu": "GPU",
                "Value #A": "Uncorrectable ECC (volatile)",
                "Value #B": "Uncorrectable ECC (lifetime)",
                "Value #C": "Remapped rows",
                "Value #D": "Retired pages",
                "Value #E": "Repair pending",
                "Value #F": "Remap failed",
            },
        ),
        timeseries(
            "Xid watchers",
            "The NVML event thread of each node: up, GPUs by registration state "
            "(retrying: a lost GPU), failures and restarts.",
            [
                target(m("gpu_watchdog_event_watcher_up", NODE), "{{instance}} up"),
                target(m("gpu_watchdog_event_watcher_gpus", NODE), "{{instance}} GPUs {{state}}"),
                target(
                    by(
                        "instance, error",
                        "sum",
                        increase(m("gpu_watchdog_event_watcher_errors_total", NODE)),
                    ),
                    "{{instance}} error {{error}}",
                ),
                target(
                    by(
                        "instance",
                        "sum",
                        increase(m("gpu_watchdog_event_watcher_restarts_total", NODE)),
                    ),
                    "{{instance}} restarts",
                ),
            ],
            w=24,
            h=6,
        ),
    ]


def fleet() -> Json:
    """Every node and GPU: memory, predicted time to OOM, findings, actions, watchdog health."""
    variables = [
        query_variable("node", "Node", "label_values(gpu_watchdog_gpu_info, instance)"),
        query_variable("gpu", "GPU", f"label_values({m('gpu_watchdog_gpu_info', NODE)}, gpu)"),
        query_variable(
            "job", "Job", f"label_values({m('gpu_watchdog_client_step', NODE)}, training_job)"
        ),
    ]
    return dashboard(
        "gpu-watchdog-fleet",
        "GPU watchdog / Fleet",
        "Every node and GPU watched by gpu-watchdog: memory, time to OOM, leaks, actions.",
        variables,
        _annotations(NODE),
        [
            *_fleet_overview(),
            *_fleet_gpus(),
            *_fleet_actions(),
            *_fleet_hangs(),
            *_fleet_faults(),
            *_fleet_health(),
        ],
    )


def _node_gpus() -> list[Json]:
    def gpu(metric: str) -> str:
        return m(metric, ONE_GPU)

    return [
        row("GPUs"),
        timeseries(
            "GPU memory",
            "Used, free and driver-reserved memory of each GPU, against its total.",
            [
                target(gpu("gpu_watchdog_gpu_memory_used_bytes"), "GPU {{gpu}} used"),
                target(gpu("gpu_watchdog_gpu_memory_free_bytes"), "GPU {{gpu}} free"),
                target(
                    gpu("gpu_watchdog_gpu_memory_reserved_bytes"), "GPU {{gpu}} driver-reserved"
                ),
                target(gpu("gpu_watchdog_gpu_memory_total_bytes"), "GPU {{gpu}} total"),
            ],
            unit="bytes",
            w=16,
            overrides=DASHED_TOTAL,
        ),
        table(
            "GPUs",
            "Name and UUID of each GPU, and whether it is lost.",
            [
                target(
                    by(
                        "gpu, name, uuid",
                        "max",
                        gpu("gpu_watchdog_gpu_lost")
                        + " * on (instance, gpu) group_left (name, uuid) "
                        + gpu("gpu_watchdog_gpu_info"),
                    ),
                    table=True,
                )
            ],
            hide=[],
            rename={"gpu": "GPU", "name": "Name", "uuid": "UUID", "Value": "Lost"},
            w=8,
        ),
        timeseries(
            "Utilization",
            "Share of time a kernel ran.",
            [target(gpu("gpu_watchdog_gpu_utilization_ratio"), "GPU {{gpu}}")],
            unit="percentunit",
            defaults={"min": 0, "max": 1},
            w=8,
        ),
        timeseries(
            "Temperature",
            "GPU core temperature.",
            [target(gpu("gpu_watchdog_gpu_temperature_celsius"), "GPU {{gpu}}")],
            unit="celsius",
            w=8,
        ),
        timeseries(
            "Power",
            "GPU power draw.",
            [target(gpu("gpu_watchdog_gpu_power_watts"), "GPU {{gpu}}")],
            unit="watt",
            w=8,
        ),
    ]


def _node_findings() -> list[Json]:
    series = "GPU {{gpu}} pid {{pid}} {{series}}"
    return [
        row("Findings"),
        state_timeline(
            "Findings by series",
            "Each memory series the detector follows, and whether a leak or near-OOM is raised.",
            [target(m("gpu_watchdog_finding_active", ONE_GPU), series + " {{kind}}")],
            FINDING_MAPPING,
            w=24,
        ),
        timeseries(
            "Leaks held by planned growth",
            "1 while the job said this series grows on purpose (Watchdog.expect_growth): "
            "no new leak is raised on it until the plan ends or the job outgrows it. "
            "near-OOM is never held.",
            [target(m("gpu_watchdog_growth_planned", ONE_GPU), series)],
            w=24,
            h=6,
        ),
        timeseries(
            "Memory growth rate",
            "Growth of each series' floor (bytes per second), as the detector measures it.",
            [target(m("gpu_watchdog_memory_growth_bytes_per_second", ONE_GPU), series)],
            unit="binBps",
        ),
        timeseries(
            "Predicted time to OOM",
            "Time until each growing series reaches its limit. No line: not growing.",
            [target(m("gpu_watchdog_time_to_oom_seconds", ONE_GPU), series)],
            unit="s",
            defaults={"thresholds": TTO_STEPS},
            custom={"thresholdsStyle": {"mode": "line+area"}},
        ),
        timeseries(
            "Findings raised and cleared",
            "Finding changes over time, by kind and state.",
            [
                target(
                    by("kind, state", "sum", increase(m("gpu_watchdog_findings_total", ONE))),
                    "{{kind}} {{state}}",
                )
            ],
            custom=BARS,
            w=24,
            h=6,
        ),
    ]


def _node_processes() -> list[Json]:
    return [
        row("Processes"),
        timeseries(
            "GPU memory per process",
            "GPU memory of each process, with its owner (pod, Slurm job, container or unit).",
            [
                target(
                    m("gpu_watchdog_process_gpu_memory_bytes", ONE_GPU),
                    "GPU {{gpu}} pid {{pid}} {{owner}}",
                )
            ],
            unit="bytes",
        ),
        timeseries(
            "Host RSS per process",
            "Host resident memory of each GPU process plus its children (DataLoader workers).",
            [target(m("gpu_watchdog_process_host_rss_bytes", ONE), "pid {{pid}} {{owner}}")],
            unit="bytes",
        ),
        table(
            "Processes",
            "Who each GPU process is and what owns it.",
            [target(m("gpu_watchdog_process_info", ONE), table=True)],
            hide=["instance", "Value"],
            rename={
                "pid": "PID",
                "command": "Command",
                "user": "User",
                "owner": "Owner",
                "systemd_unit": "Unit",
                "slurm_job_id": "Slurm job",
                "container_id": "Container",
                "pod_uid": "Pod",
            },
            w=16,
        ),
        timeseries(
            "Host memory",
            "Memory available to new work on the node, against its total.",
            [
                target(m("gpu_watchdog_host_memory_available_bytes", ONE), "available"),
                target(m("gpu_watchdog_host_memory_total_bytes", ONE), "total"),
            ],
            unit="bytes",
            w=8,
            overrides=DASHED_TOTAL,
        ),
    ]


def _node_jobs() -> list[Json]:
    def client(metric: str) -> str:
        return m(metric, ONE_JOB)

    return [
        row("Training jobs"),
        timeseries(
            "Allocator: allocated vs reserved",
            "PyTorch's allocated (tensors), reserved (cached) and peak allocated bytes, "
            "per process.",
            [
                target(client("gpu_watchdog_client_allocated_bytes"), CLIENT_LEGEND + " allocated"),
                target(client("gpu_watchdog_client_reserved_bytes"), CLIENT_LEGEND + " reserved"),
                target(client("gpu_watchdog_client_peak_allocated_bytes"), CLIENT_LEGEND + " peak"),
            ],
            unit="bytes",
        ),
        timeseries(
            "Step rate",
            "Training steps per second reported by each process.",
            [target(rate(client("gpu_watchdog_client_step")), CLIENT_LEGEND)],
            unit="ops",
        ),
        timeseries(
            "Client host RSS",
            "Host resident memory each training process reports for itself.",
            [target(client("gpu_watchdog_client_rss_bytes"), CLIENT_LEGEND)],
            unit="bytes",
            w=8,
        ),
        timeseries(
            "Allocator retries and OOMs",
            "cudaMalloc retries after freeing the cache, and out-of-memory errors.",
            [
                target(
                    increase(client("gpu_watchdog_client_alloc_retries_total")),
                    CLIENT_LEGEND + " retries",
                ),
                target(increase(client("gpu_watchdog_client_ooms_total")), CLIENT_LEGEND + " OOMs"),
            ],
            w=8,
        ),
        timeseries(
            "Heartbeat age",
            "Seconds since each process last reported; a hung loop shows as a rising line.",
            [target(client("gpu_watchdog_client_heartbeat_age_seconds"), CLIENT_LEGEND)],
            unit="s",
            w=8,
        ),
        timeseries(
            "Commands and actions",
            "Commands sent to this node's processes, the policy's decisions and their answers.",
            [
                target(
                    by(
                        "command, result",
                        "sum",
                        increase(m("gpu_watchdog_client_commands_total", ONE)),
                    ),
                    "command {{command}} {{result}}",
                ),
                target(
                    by("action, outcome", "sum", increase(m("gpu_watchdog_actions_total", ONE))),
                    "action {{action}} {{outcome}}",
                ),
                target(
                    by(
                        "action, result",
                        "sum",
                        increase(m("gpu_watchdog_action_results_total", ONE)),
                    ),
                    "answer to {{action}} {{result}}",
                ),
            ],
            custom=BARS,
            w=16,
        ),
        panel(
            "bargauge",
            "Restart budget left",
            "Checkpoint-and-restarts each job on this node may still spend.",
            [
                target(
                    by("training_job", "min", client("gpu_watchdog_restart_budget_remaining")),
                    "{{training_job}}",
                    instant=True,
                )
            ],
            options=BARGAUGE,
            defaults={"min": 0, "thresholds": BUDGET_STEPS},
            w=8,
        ),
    ]


def _node_faults() -> list[Json]:
    def gpu(metric: str) -> str:
        return m(metric, ONE_GPU)

    return [
        row("GPU faults"),
        timeseries(
            "Xid errors and GPU events",
            "Xid errors by code (with the catalog's action) and other NVML fault events "
            "(double-bit ECC, page retirement, ...).",
            [
                target(
                    by("gpu, xid, action", "sum", increase(gpu(XID))),
                    "GPU {{gpu}} Xid {{xid}} {{action}}",
                ),
                target(
                    by("gpu, type", "sum", increase(gpu("gpu_watchdog_gpu_events_total"))),
                    "GPU {{gpu}} {{type}}",
                ),
            ],
            custom=BARS,
        ),
        timeseries(
            "ECC errors",
            "Corrected and uncorrected ECC errors: volatile since the driver loaded, "
            "aggregate over the GPU's life.",
            [target(gpu(ECC), "GPU {{gpu}} {{type}} {{counter}}")],
        ),
        timeseries(
            "Remapped rows and retired pages",
            "Memory rows remapped (Ampere and later) and pages retired (older GPUs) after "
            "memory errors.",
            [
                target(gpu("gpu_watchdog_gpu_remapped_rows"), "GPU {{gpu}} rows {{type}}"),
                target(gpu("gpu_watchdog_gpu_retired_pages"), "GPU {{gpu}} pages {{cause}}"),
            ],
        ),
        state_timeline(
            "Memory repair",
            "Whether a row remap or page retirement waits for a GPU reset, and whether a "
            "remap failed (RMA).",
            [
                target(gpu("gpu_watchdog_gpu_row_remap_pending"), "GPU {{gpu}} remap pending"),
                target(
                    gpu("gpu_watchdog_gpu_retired_pages_pending"), "GPU {{gpu}} retirement pending"
                ),
                target(gpu("gpu_watchdog_gpu_row_remap_failure"), "GPU {{gpu}} remap failed"),
            ],
            YES_NO,
        ),
    ]


def node() -> Json:
    """One node in detail: its GPUs, processes, training jobs and the watchdog's events."""
    variables = [
        query_variable(
            "node", "Node", "label_values(gpu_watchdog_gpu_info, instance)", multi=False
        ),
        query_variable("gpu", "GPU", f"label_values({m('gpu_watchdog_gpu_info', ONE)}, gpu)"),
        query_variable(
            "job", "Job", f"label_values({m('gpu_watchdog_client_step', ONE)}, training_job)"
        ),
    ]
    return dashboard(
        "gpu-watchdog-node",
        "GPU watchdog / Node",
        "One node in detail: GPU and per-process memory, the allocator of each training job, "
        "step rate, and the watchdog's findings, commands and actions as annotations.",
        variables,
        _annotations(ONE),
        [
            *_node_gpus(),
            *_node_faults(),
            *_node_findings(),
            *_node_processes(),
            *_node_jobs(),
            *_node_hangs(),
        ],
    )


def _fleet_hangs() -> list[Json]:
    orphaned = m("gpu_watchdog_orphaned_memory_bytes", NODE_GPU)
    return [
        row("Hung jobs and orphaned memory"),
        stat(
            "Stalled ranks",
            "Training processes whose step has stopped advancing while they run "
            "(alert GpuJobStalled).",
            f"count({m('gpu_watchdog_client_stalled', NODE)} == 1) or vector(0)",
        ),
        stat(
            "Lost ranks",
            "Ranks that died while the rest of their job waits on them (alert GpuJobRankLost).",
            f"count({m('gpu_watchdog_rank_lost', NODE)} == 1) or vector(0)",
        ),
        stat(
            "Orphaned GPU memory",
            "GPU memory held by no live job: zombies, processes whose parent exited, memory "
            "no process accounts for (alert GpuOrphanedMemory).",
            f"sum({orphaned}) or vector(0)",
            unit="bytes",
        ),
        timeseries(
            "Unattributed GPU memory",
            "Per GPU, used memory beyond the sum of its processes' memory (driver and "
            "context overhead, or memory nobody owns). Absent where a process's memory is hidden.",
            [target(m("gpu_watchdog_gpu_memory_unattributed_bytes", NODE_GPU), GPU_LEGEND)],
            unit="bytes",
        ),
    ]


def _node_hangs() -> list[Json]:
    def client(metric: str) -> str:
        return m(metric, ONE_JOB)

    return [
        row("Hung jobs and orphaned memory"),
        state_timeline(
            "Stalled ranks",
            "Per training process: stepping, or stalled (no step for longer than its "
            "threshold while it runs). The daemon logs each stalled process's stacks.",
            [target(client("gpu_watchdog_client_stalled"), CLIENT_LEGEND)],
            {"0": "stepping", "1": "stalled"},
            w=8,
        ),
        timeseries(
            "Time since the last step",
            "Seconds since each process's step last advanced, against its stall threshold "
            "(stall_step_factor x its step time, at least stall_min_s).",
            [
                target(client("gpu_watchdog_client_step_age_seconds"), CLIENT_LEGEND),
                target(
                    client("gpu_watchdog_client_stall_threshold_seconds"),
                    CLIENT_LEGEND + " threshold",
                ),
            ],
            unit="s",
            w=8,
        ),
        stat(
            "Lost ranks",
            "Ranks of this node's jobs that died while the other ranks wait on them.",
            f"count({client('gpu_watchdog_rank_lost')} == 1) or vector(0)",
            w=8,
        ),
        timeseries(
            "Orphaned GPU memory",
            "Per GPU: memory beyond its processes' sum (measured), and memory held by no live "
            "job once reported (by reason: zombie, reparented, unattributed).",
            [
                target(
                    m("gpu_watchdog_gpu_memory_unattributed_bytes", ONE_GPU),
                    "GPU {{gpu}} unattributed (measured)",
                ),
                target(
                    by("gpu, reason, pid", "sum", m("gpu_watchdog_orphaned_memory_bytes", ONE_GPU)),
                    "GPU {{gpu}} orphaned {{reason}} {{pid}}",
                ),
            ],
            unit="bytes",
            w=24,
            h=6,
        ),
    ]


DASHBOARDS = {"gpu-watchdog-fleet.json": fleet, "gpu-watchdog-node.json": node}


def render(build: Any) -> str:
    """The JSON text of one dashboard, as committed."""
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the dashboards, or with --check report those that differ from this script."""
    parser = argparse.ArgumentParser(description="Write grafana/dashboards/*.json.")
    parser.add_argument("--check", action="store_true", help="exit 1 if a file is out of date")
    args = parser.parse_args(argv)
    stale = []
    for name, build in DASHBOARDS.items():
        path = OUT / name
        text = render(build)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            OUT.mkdir(exist_ok=True)
            path.write_text(text)
    for name in stale:
        print(
            f"grafana/dashboards/{name} is out of date: run python grafana/build_dashboards.py",
            file=sys.stderr,
        )
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
