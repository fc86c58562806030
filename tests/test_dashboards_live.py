"""A real Prometheus scrapes the daemon on a simulated leak; every dashboard query returns data.

The daemon plays the built-in ``leak`` scenario at 60x speed. A stand-in training
process (this test, speaking the control protocol) registers and reports allocator
figures and answers commands; one command fails on purpose and one connection is
dropped on purpose, so the command and connection counters have series. Prometheus
(the Debian package) scrapes every second with the project's alert rules loaded.
Then every panel, annotation and variable query of both dashboards runs against it.

Queries over metrics that a simulated run cannot have (NVML-only figures, the host
source, errors that need a fault) may come back empty; everything else must return
data. Every metric the daemon exports must be on a dashboard or listed in
docs/metrics.md under a "Not on the dashboards" heading.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, free_port, require_tool
from tests.test_dashboards import DASHBOARDS, load, panels, queries, substitute
from watchdog.control.protocol import COMMANDS, FrameDecoder, recv_message, send_message
from watchdog.control.requests import ControlRequester

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

JOB = "train-leak"
FAILING_COMMAND = "dump_stacks"
SIMULATION_GAPS = {
    "gpu_watchdog_gpu_utilization_ratio": "NVML only: the simulated GPU has no utilization",
    "gpu_watchdog_gpu_temperature_celsius": "NVML only: the simulated GPU has no temperature",
    "gpu_watchdog_gpu_power_watts": "NVML only: the simulated GPU has no power draw",
    "gpu_watchdog_gpu_memory_reserved_bytes": "NVML v2 only: the simulated GPU reserves nothing",
    "gpu_watchdog_process_host_rss_bytes": "no host source with --simulate (the pids are fake)",
    "gpu_watchdog_process_info": "no host source with --simulate (the pids are fake)",
    "gpu_watchdog_host_memory_available_bytes": "no host source with --simulate",
    "gpu_watchdog_host_memory_total_bytes": "no host source with --simulate",
    "gpu_watchdog_nvml_errors_total": "NVML only, and only when a call fails",
    "gpu_watchdog_journal_write_errors_total": "increases only when the journal cannot be written",
    "gpu_watchdog_actions_suppressed_total": "only once a guard stops a decision",
    "gpu_watchdog_orphaned_memory_bytes": "only when GPU memory is orphaned (no scenario does)",
    # GPU faults: the simulated GPU has none (tests/test_nvml_events.py drives them on NVML).
    "gpu_watchdog_gpu_xid_events_total": "NVML only, and only after an Xid error",
    "gpu_watchdog_gpu_events_total": "NVML only, and only after a fault event",
    "gpu_watchdog_gpu_ecc_errors_total": "NVML only: the simulated GPU has no ECC",
    "gpu_watchdog_gpu_retired_pages": "NVML only: the simulated GPU retires no pages",
    "gpu_watchdog_gpu_retired_pages_pending": "NVML only: the simulated GPU retires no pages",
    "gpu_watchdog_gpu_remapped_rows": "NVML only: the simulated GPU remaps no rows",
    "gpu_watchdog_gpu_row_remap_pending": "NVML only: the simulated GPU remaps no rows",
    "gpu_watchdog_gpu_row_remap_failure": "NVML only: the simulated GPU remaps no rows",
    "gpu_watchdog_event_watcher_up": "NVML only: no event thread with --simulate",
    "gpu_watchdog_event_watcher_gpus": "NVML only: no event thread with --simulate",
    "gpu_watchdog_event_watcher_errors_total": "NVML only: no event thread with --simulate",
    "gpu_watchdog_event_watcher_restarts_total": "NVML only: no event thread with --simulate",
}
"""Metrics a simulated run cannot produce (or only with a fault), and why."""
DEADLINE_S = 150.0


# --- processes -----------------------------------------------------------------------


def _get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _wait(what: str, check: Callable[[], Any], deadline_s: float = 60.0, every: float = 0.5) -> Any:
    end = time.monotonic() + deadline_s
    last: Any = None
    while time.monotonic() < end:
        try:
            last = check()
        except (OSError, ValueError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(every)
    pytest.fail(f"timed out waiting for {what} (last: {last!r})")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    """A short temporary directory (the control socket's path must stay under 104 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="wd-live-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def daemon(workdir: Path) -> Iterator[dict[str, Any]]:
    """``gpu-watchdog run --simulate leak`` at 60x speed on loopback."""
    port = free_port()
    socket_path = workdir / "run" / "watchdog.sock"
    config = workdir / "config.toml"
    config.write_text(
        f'[daemon]\nstate_dir = "{workdir / "state"}"\nlog_format = "json"\n'
        f'[control]\nsocket_path = "{socket_path}"\nheartbeat_s = 1.0\n'
    )
    log = (workdir / "daemon.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "watchdog",
            "run",
            "--config",
            str(config),
            "--listen",
            f"127.0.0.1:{port}",
            "--simulate",
            "leak",
            "--speed",
            "60",
        ],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait("the daemon's /metrics", lambda: _get(url + "/metrics")[0] == 200)
        _wait("the control socket", socket_path.exists)
        yield {"url": url, "port": port, "socket": str(socket_path), "process": process}
    finally:
        _stop(process)
        log.close()


@pytest.fixture(scope="module")
def prometheus(workdir: Path, daemon: dict[str, Any]) -> Iterator[str]:
    """A real Prometheus on loopback scraping the daemon every second, alert rules loaded."""
    binary = require_tool("prometheus")
    require_tool("promtool")
    port = free_port()
    rules = REPO / "deploy" / "prometheus" / "gpu-watchdog-alerts.yml"
    config = workdir / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files: [{json.dumps(str(rules))}]\n"
        "scrape_configs:\n  - job_name: gpu-watchdog\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{daemon['port']}']}}]\n"
    )
    log = (workdir / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait("Prometheus to be ready", lambda: _get(url + "/-/ready")[0] == 200)
        yield url
    finally:
        _stop(process)
        log.close()


class TrainingStandIn:
    """A training process on the simulated GPU, speaking the control protocol itself."""

    def __init__(self, socket_path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(socket_path)
        self.decoder = FrameDecoder()
        self.pending: list[dict[str, Any]] = []
        self.stop = threading.Event()
        self.commands: list[str] = []
        self.thread = threading.Thread(target=self._run, name="training-stand-in", daemon=True)

    def start(self) -> TrainingStandIn:
        self._send(
            {
                "type": "register",
                "pid": os.getpid(),
                "job": JOB,
                "rank": 0,
                "local_rank": 0,
                "world_size": 1,
                "device": "cuda:0",
                "hostname": socket.gethostname(),
                "client_version": "test",
                "commands": list(COMMANDS),
            }
        )
        reply = recv_message(self.sock, self.decoder, self.pending, 10.0)
        assert reply["type"] == "registered", reply
        self.thread.start()
        return self

    def _send(self, message: dict[str, Any]) -> None:
        send_message(self.sock, {"v": 1, **message}, 1 << 20)

    def _run(self) -> None:
        step, started = 0, time.monotonic()
        while not self.stop.is_set():
            step += 25
            leaked = int((time.monotonic() - started) * 50e6)
            self._send(
                {
                    "type": "report",
                    "step": step,
                    "allocated_bytes": 20_000_000_000 + leaked,
                    "reserved_bytes": 24_000_000_000 + leaked,
                    "peak_allocated_bytes": 22_000_000_000 + leaked,
                    "alloc_retries": 1,
                    "ooms": 0,
                    "rss_bytes": 3_000_000_000,
                    "device": "cuda:0",
                }
            )
            try:
                message = recv_message(self.sock, self.decoder, self.pending, 0.5)
            except TimeoutError:
                continue
            except (ConnectionError, OSError):
                return
            if message.get("type") == "command":
                self.commands.append(message["command"])
                failing = message["command"] == FAILING_COMMAND
                self._send(
                    {
                        "type": "result",
                        "id": message["id"],
                        "ok": not failing,
                        "duration_s": 0.01,
                        "error": "failed on purpose" if failing else "",
                        "details": {},
                    }
                )

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        self.sock.close()


@pytest.fixture(scope="module")
def training(daemon: dict[str, Any]) -> Iterator[TrainingStandIn]:
    """The stand-in training process, registered with the daemon."""
    client = TrainingStandIn(daemon["socket"]).start()
    yield client
    client.close()


# --- Prometheus queries --------------------------------------------------------------


def _query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    status, body = _get(f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    reply = json.loads(body)
    assert status == 200, f"{expr}: {reply.get('error')}"
    return list(reply["data"]["result"])


def _label_values(prometheus: str, definition: str) -> list[str]:
    """What Grafana's ``label_values(selector, label)`` lists."""
    match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", definition)
    assert match, definition
    selector, label = match.groups()
    query = urllib.parse.urlencode({"match[]": selector})
    status, body = _get(f"{prometheus}/api/v1/series?{query}")
    assert status == 200, body
    return sorted({s[label] for s in json.loads(body)["data"] if label in s})


def _metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bgpu_watchdog_\w+", expr))


def _ready(prometheus: str) -> bool:
    """True once Prometheus holds everything the scenario is meant to produce."""
    needed = (
        'gpu_watchdog_finding_active{kind="leak"} == 1',
        "gpu_watchdog_time_to_oom_seconds",
        f'gpu_watchdog_client_step{{training_job="{JOB}"}}',
        'gpu_watchdog_client_commands_total{result="error"}',
        "gpu_watchdog_control_dropped_connections_total",
        "gpu_watchdog_restart_budget_remaining",
        "count_over_time(gpu_watchdog_client_step[1m]) > 5",
        # increase() in the panels needs two samples of each counter after it moved.
        "count_over_time(gpu_watchdog_findings_total[1m]) > 1",
        "count_over_time(gpu_watchdog_actions_total[1m]) > 1",
        "count_over_time(gpu_watchdog_action_results_total[1m]) > 1",
    )
    return all(_query(prometheus, expr) for expr in needed)


@pytest.fixture(scope="module")
def scraped(daemon: dict[str, Any], prometheus: str, training: TrainingStandIn) -> str:
    """Prometheus once the leak is raised and commands and drops have happened."""
    with ControlRequester(daemon["socket"]) as requester:
        results = requester.send(os.getpid(), "empty_cache", timeout_s=30)
        assert results[0]["ok"], results
        results = requester.send(os.getpid(), FAILING_COMMAND, timeout_s=30)
        assert not results[0]["ok"], results
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as rogue:
        rogue.connect(daemon["socket"])
        rogue.sendall(b"\xff\xff\xff\xff")  # a frame longer than any maximum: dropped
        rogue.settimeout(5)
        assert rogue.recv(1) == b""
    _wait(
        "the leak and the client's figures in Prometheus",
        lambda: _ready(prometheus),
        deadline_s=DEADLINE_S,
        every=2.0,
    )
    return prometheus


# --- the tests -----------------------------------------------------------------------


def _variables(prometheus: str, dashboard: dict[str, Any]) -> dict[str, str]:
    """Values for the template variables: every value (multi), or the first one (single)."""
    values = {"datasource": "prometheus"}
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        found = _label_values(prometheus, substitute(variable["definition"], values))
        assert found, f"{dashboard['uid']}: variable {variable['name']} has no values"
        values[variable["name"]] = ".*" if variable["multi"] else found[0]
    return values


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_every_panel_query_returns_data(scraped: str, path: Path) -> None:
    """Each panel and annotation query of the dashboard returns series from the live daemon."""
    dashboard = load(path)
    values = _variables(scraped, dashboard)
    empty = []
    for where, expr in queries(dashboard):
        result = _query(scraped, substitute(expr, values))
        if not result and not _metric_names(expr) & SIMULATION_GAPS.keys():
            empty.append(f"{where}: {expr}")
    assert not empty, "queries without data:\n" + "\n".join(empty)


def test_job_variable_finds_the_training_job(scraped: str) -> None:
    """The daemon's `job` label arrives as `training_job`, and the Job variable lists it."""
    node = load(REPO / "grafana" / "dashboards" / "gpu-watchdog-node.json")
    job = next(v for v in node["templating"]["list"] if v["name"] == "job")
    values = _variables(scraped, node)
    assert JOB in _label_values(scraped, substitute(job["definition"], values))


def test_leak_alert_is_pending_or_firing(scraped: str) -> None:
    """The real Prometheus, with the project's rules, raises GpuMemoryLeak for the leak."""
    alerts = _wait(
        "the GpuMemoryLeak alert",
        lambda: _query(scraped, 'ALERTS{alertname="GpuMemoryLeak"}'),
        deadline_s=30,
    )
    assert {a["metric"]["alertstate"] for a in alerts} <= {"pending", "firing"}


def test_every_alert_rule_evaluates_without_error(scraped: str) -> None:
    """On the live metrics, Prometheus evaluates every alert rule with health "ok"."""
    status, body = _get(f"{scraped}/api/v1/rules")
    assert status == 200
    rules = [rule for group in json.loads(body)["data"]["groups"] for rule in group["rules"]]
    assert len(rules) >= 12
    broken = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
    assert not broken, broken


def test_simulation_gaps_are_real_metric_names(daemon: dict[str, Any]) -> None:
    """Every metric excused from returning data is exported or documented: no typo hides there."""
    documented = "".join(path.read_text() for path in (REPO / "docs").glob("*.md"))
    exported = _exported(daemon)
    for name in SIMULATION_GAPS:
        known = name in exported or name.removesuffix("_total") in documented
        assert known, f"{name} is neither on /metrics nor in docs/"


def _exported(daemon: dict[str, Any]) -> set[str]:
    status, text = _get(daemon["url"] + "/metrics")
    assert status == 200
    return set(re.findall(r"^# TYPE (gpu_watchdog_\w+) ", text, re.MULTILINE))


def _deliberately_hidden() -> set[str]:
    """Metric names listed in docs/metrics.md under a heading "Not on the dashboards"."""
    text = (REPO / "docs" / "metrics.md").read_text()
    match = re.search(
        r"^#+ [^\n]*not on the dashboards[^\n]*$(.*?)(?=^#+ |\Z)",
        text,
        re.IGNORECASE | re.MULTILINE | re.DOTALL,
    )
    return set(re.findall(r"`(gpu_watchdog_\w+)`", match.group(1))) if match else set()


def test_every_exported_metric_is_on_a_dashboard_or_deliberately_not(
    scraped: str, daemon: dict[str, Any]
) -> None:
    """Each metric family on /metrics is used by a panel or listed as not shown on purpose."""
    used = {
        name
        for path in DASHBOARDS
        for _, expr in queries(load(path))
        for name in _metric_names(expr)
    }
    for path in DASHBOARDS:
        for panel in panels(load(path)):
            assert panel["targets"]
    missing = sorted(_exported(daemon) - used - _deliberately_hidden())
    assert not missing, (
        "on /metrics but on no dashboard panel, nor under 'Not on the dashboards' in "
        f"docs/metrics.md: {missing}"
    )


def test_counter_panels_show_a_series_first_count(scraped: str) -> None:
    """The one failed command is a bar on "Commands and actions", not a flat zero.

    The daemon exports ``client_commands_total{result="error"}`` first when the
    command fails, already at 1, and it stays 1: ``increase()`` alone never sees it.
    """
    node = load(REPO / "grafana" / "dashboards" / "gpu-watchdog-node.json")
    panel = next(p for p in panels(node) if p["title"] == "Commands and actions")
    target = next(t for t in panel["targets"] if "client_commands_total" in t["expr"])
    expr = substitute(target["expr"], _variables(scraped, node))
    shown = _query(scraped, f"max_over_time(({expr})[10m:1s])")
    failed = [s for s in shown if s["metric"] == {"command": FAILING_COMMAND, "result": "error"}]
    assert failed, shown
    assert float(failed[0]["value"][1]) > 0, shown
