"""Kubernetes manifests: valid against the Kubernetes schemas offline, and consistent."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO

KUBERNETES = REPO / "deploy" / "kubernetes"
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
VERSIONS = ("1.28.0", "1.37.0")
"""The oldest Kubernetes release still commonly run, and the newest kubernetes-validate knows."""


def _require(module: str) -> Any:
    """Import ``module``; skip without it, fail in CI (WATCHDOG_REQUIRE_TOOLS set)."""
    try:
        return __import__(module)
    except ImportError:
        if os.environ.get("WATCHDOG_REQUIRE_TOOLS"):
            pytest.fail(f"python package {module} is required here (WATCHDOG_REQUIRE_TOOLS is set)")
        pytest.skip(f"{module} not installed (pip install kubernetes-validate)")


def _documents() -> list[tuple[Path, dict[str, Any]]]:
    yaml = _require("yaml")
    return [
        (path, doc)
        for path in sorted(KUBERNETES.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def _kind(kind: str) -> dict[str, Any]:
    found = [doc for _, doc in _documents() if doc["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind}s"
    return found[0]


@pytest.mark.parametrize("version", VERSIONS)
def test_manifests_validate_against_the_kubernetes_schemas(version: str) -> None:
    """Every built-in resource passes kubernetes-validate --strict (no unknown field)."""
    validate = _require("kubernetes_validate")
    checked = 0
    for path, doc in _documents():
        if doc["kind"] in CRD_KINDS:
            continue
        try:
            validate.validate(doc, version, strict=True)
        except validate.ValidationError as exc:
            pytest.fail(f"{path.name} ({doc['kind']}): {exc}")
        checked += 1
    assert checked >= 6


def test_the_command_line_tool_agrees() -> None:
    """The kubernetes-validate command (what scripts/ci-deploy-checks.sh runs) passes too."""
    _require("kubernetes_validate")
    files = [str(path) for path in sorted(KUBERNETES.glob("*.yaml"))]
    result = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet", *files],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_daemonset_sees_host_processes_and_shares_the_socket_directory() -> None:
    """hostPID, the socket directory from the host, no GPU taken from the scheduler."""
    pod = _kind("DaemonSet")["spec"]["template"]["spec"]
    assert pod["hostPID"] is True
    container = pod["containers"][0]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["socket-dir"]["hostPath"]["path"] == mounts["socket-dir"] == "/run/gpu-watchdog"
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all"
    security = container["securityContext"]
    assert security["capabilities"]["drop"] == ["ALL"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True


def test_daemonset_command_is_a_valid_command_line() -> None:
    """The container's command and args parse as `gpu-watchdog run --config <the ConfigMap>`."""
    from watchdog.cli import build_parser

    pod = _kind("DaemonSet")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"] == ["gpu-watchdog"]
    args = build_parser().parse_args(container["args"])
    assert args.command == "run"
    config_mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert str(args.config) == config_mount["mountPath"] + "/config.toml"


def test_configmap_config_passes_check_config(tmp_path: Path) -> None:
    """The ConfigMap's config.toml is accepted by `gpu-watchdog check-config`."""
    config = tmp_path / "config.toml"
    config.write_text(_kind("ConfigMap")["data"]["config.toml"])
    result = subprocess.run(
        [sys.executable, "-m", "watchdog", "check-config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_socket_path_is_the_same_everywhere() -> None:
    """Daemon config, DaemonSet hostPath and the training pod example name one socket."""
    tomllib = _require("tomllib") if sys.version_info >= (3, 11) else _require("tomli")
    config = tomllib.loads(_kind("ConfigMap")["data"]["config.toml"])
    socket_path = config["control"]["socket_path"]
    assert socket_path == "/run/gpu-watchdog/watchdog.sock"
    training = _kind("Job")["spec"]["template"]["spec"]
    env = {e["name"]: e["value"] for e in training["containers"][0]["env"]}
    assert env["GPU_WATCHDOG_SOCKET"] == socket_path
    mount = training["containers"][0]["volumeMounts"][0]
    assert mount["mountPath"] == "/run/gpu-watchdog"
    assert mount["readOnly"] is True
    volume = next(v for v in training["volumes"] if v["name"] == mount["name"])
    assert volume["hostPath"]["path"] == "/run/gpu-watchdog"


def test_service_and_servicemonitor_select_the_daemonset_pods() -> None:
    """Service selector, port name and ServiceMonitor selector all meet the DaemonSet's pods."""
    daemonset = _kind("DaemonSet")
    pod_labels = daemonset["spec"]["template"]["metadata"]["labels"]
    service = _kind("Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    container = daemonset["spec"]["template"]["spec"]["containers"][0]
    port_names = {p["name"] for p in container["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    monitor = _kind("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    service_labels = service["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service_labels.items()
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [service["metadata"]["namespace"]]
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    # The rules and dashboards expect job="gpu-watchdog" and the node's name in `instance`.
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "gpu-watchdog"
    assert {
        "sourceLabels": ["__meta_kubernetes_pod_node_name"],
        "targetLabel": "instance",
        "action": "replace",
    } in endpoint["relabelings"]


def test_everything_lives_in_the_watchdog_namespace() -> None:
    """All namespaced resources but the training example are in namespace gpu-watchdog."""
    for path, doc in _documents():
        if doc["kind"] in {"Namespace", "Job"}:
            continue
        assert doc["metadata"]["namespace"] == "gpu-watchdog", path.name
