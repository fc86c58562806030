"""The exposition: figures, absent values, lost GPUs, vanished processes, self-metrics, promtool."""

from __future__ import annotations

import subprocess

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import require_tool
from watchdog.daemon.state import DaemonState
from watchdog.exporter.collector import StateCollector
from watchdog.samples import (
    DeviceSample,
    GpuProcessSample,
    HostMemory,
    HostProcessSample,
    Owner,
    Reading,
)

GIB = 1 << 30


class Clock:
    """A hand-moved clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _state() -> DaemonState:
    state = DaemonState(monotonic=Clock(), wall=lambda: 1.7e9)
    state.add_collector("nvml_devices", 1.0)
    state.poll_started("nvml_devices")
    state.apply(
        Reading(
            t=0,
            devices=[
                DeviceSample(
                    0, "GPU-a", "A100", 80 * GIB, 10 * GIB, 70 * GIB, GIB, 0.5, 40.0, None
                ),
                DeviceSample(1, "GPU-b", "A100", lost=True, lost_reason="GpuIsLost"),
            ],
            processes=[GpuProcessSample(0, 4242, 8 * GIB), GpuProcessSample(0, 4343, None)],
            host_processes=[
                HostProcessSample(4242, "python", "alice", GIB, GIB, Owner(slurm_job_id="77"))
            ],
            host_memory=HostMemory(64 * GIB, 32 * GIB),
        )
    )
    state.poll_finished("nvml_devices", 0.002)
    return state


def _scrape(state: DaemonState) -> tuple[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    registry = CollectorRegistry()
    registry.register(StateCollector(state.snapshot, stall_after_s=10))
    text = generate_latest(registry).decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    return text, samples


def _value(samples: dict, name: str, **labels: str) -> float | None:  # type: ignore[type-arg]
    return samples.get((name, tuple(sorted(labels.items()))))


def test_device_figures_and_lost_gpu() -> None:
    """A healthy GPU exports its figures; a lost one exports gpu_lost 1 and no figures."""
    _, samples = _scrape(_state())
    assert _value(samples, "gpu_watchdog_gpu_memory_used_bytes", gpu="0", source="nvml") == 10 * GIB
    assert _value(samples, "gpu_watchdog_gpu_utilization_ratio", gpu="0", source="nvml") == 0.5
    assert _value(samples, "gpu_watchdog_gpu_lost", gpu="0", source="nvml") == 0
    assert _value(samples, "gpu_watchdog_gpu_lost", gpu="1", source="nvml") == 1
    assert _value(samples, "gpu_watchdog_gpu_memory_used_bytes", gpu="1", source="nvml") is None


def test_unknown_figures_are_absent_not_zero() -> None:
    """Power unknown on GPU 0 and memory unknown for pid 4343 leave no series at all."""
    text, _ = _scrape(_state())
    assert "gpu_watchdog_gpu_power_watts{" not in text
    assert (
        'pid="4343"' not in text.split("gpu_watchdog_process_gpu_memory_bytes", 1)[1].split("#")[0]
    )


def test_process_metrics_carry_owner_and_host_rss() -> None:
    """Per-process GPU memory and host RSS (with children) are labelled with the owner."""
    _, samples = _scrape(_state())
    labels = {"gpu": "0", "pid": "4242", "type": "compute", "owner": "slurm:77", "source": "nvml"}
    assert _value(samples, "gpu_watchdog_process_gpu_memory_bytes", **labels) == 8 * GIB
    assert (
        _value(samples, "gpu_watchdog_process_host_rss_bytes", pid="4242", owner="slurm:77")
        == 2 * GIB
    )
    assert _value(samples, "gpu_watchdog_host_memory_available_bytes") == 32 * GIB


def test_vanished_process_label_sets_are_removed() -> None:
    """When a process leaves the GPU its series disappear from the next scrape."""
    state = _state()
    state.apply(Reading(t=1, processes=[], host_processes=[]))
    text, _ = _scrape(state)
    assert 'pid="4242"' not in text


def test_self_metrics_and_stalled_flag() -> None:
    """Each collector exports success, duration, last success and a stalled flag."""
    state = _state()
    _, samples = _scrape(state)
    assert _value(samples, "gpu_watchdog_collector_success", collector="nvml_devices") == 1
    assert (
        _value(samples, "gpu_watchdog_collector_duration_seconds", collector="nvml_devices")
        == 0.002
    )
    assert _value(samples, "gpu_watchdog_collector_stalled", collector="nvml_devices") == 0
    assert (
        _value(
            samples,
            "gpu_watchdog_collector_last_success_timestamp_seconds",
            collector="nvml_devices",
        )
        == 1.7e9
    )
    state.poll_started("nvml_devices")
    state._monotonic.now += 11  # type: ignore[attr-defined]
    _, samples = _scrape(state)
    assert _value(samples, "gpu_watchdog_collector_stalled", collector="nvml_devices") == 1


def test_nvml_error_counts_are_exported() -> None:
    """NVML error counts appear per call and error."""
    state = _state()
    state.set_nvml_info(lambda: {("nvmlDeviceGetMemoryInfo", "GpuIsLost"): 3}, "550.1", "12.550")
    _, samples = _scrape(state)
    assert (
        _value(
            samples,
            "gpu_watchdog_nvml_errors_total",
            call="nvmlDeviceGetMemoryInfo",
            error="GpuIsLost",
        )
        == 3
    )
    assert (
        _value(
            samples,
            "gpu_watchdog_build_info",
            version=__import__("watchdog").__version__,
            source="nvml",
            driver_version="550.1",
            nvml_version="12.550",
        )
        == 1
    )


def test_promtool_accepts_the_exposition() -> None:
    """promtool check metrics finds no problem in the exposition."""
    promtool = require_tool("promtool")
    text, _ = _scrape(_state())
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_exported_metric_is_documented() -> None:
    """Each metric family the state collector emits is described in docs/metrics.md."""
    from tests.conftest import REPO

    docs = (REPO / "docs" / "metrics.md").read_text()
    registry = CollectorRegistry()
    registry.register(StateCollector(_state().snapshot, stall_after_s=10))
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        name = family.name + ("_total" if family.type == "counter" else "")
        name = (
            name.replace("gpu_watchdog_build", "gpu_watchdog_build_info")
            if family.type == "info"
            else name
        )
        assert f"`{name}`" in docs, f"{name} is not in docs/metrics.md"
