"""The detectors' Prometheus metrics, parsed back with prometheus_client's own parser."""

from __future__ import annotations

import dataclasses

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from watchdog.detectors.events import SeriesStatus
from watchdog.detectors.metrics import DetectionCollector


def status(pid: int | None, leak: bool, time_to_oom: float | None) -> SeriesStatus:
    """A series status for the collector."""
    return SeriesStatus(
        series="gpu" if pid is None else "process",
        gpu=0,
        pid=pid,
        state="leak" if leak else "ok",
        leak=leak,
        near_oom=False,
        rate_bytes_per_s=1000.0 if leak else 0.0,
        time_to_oom_s=time_to_oom,
        confidence=0.9 if leak else 0.0,
        pattern="steady" if leak else None,
        cause=None,
        used_bytes=1,
        limit_bytes=2,
    )


def scrape(*collectors: object) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Register, render and parse; return samples by name."""
    registry = CollectorRegistry()
    for collector in collectors:
        registry.register(collector)  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def test_collector_exports_state_rate_and_time_to_oom() -> None:
    """Each series gets finding_active per kind and a growth rate; time to OOM only if predicted."""
    statuses = [status(None, True, 600.0), status(77, False, None)]
    found = scrape(DetectionCollector(lambda: statuses, "nvml"))
    active = {
        (lab["kind"], lab["series"], lab["pid"]): v
        for lab, v in found["gpu_watchdog_finding_active"]
    }
    assert active[("leak", "gpu", "")] == 1.0
    assert active[("near_oom", "gpu", "")] == 0.0
    assert active[("leak", "process", "77")] == 0.0
    growth = found["gpu_watchdog_memory_growth_bytes_per_second"]
    assert ({"series": "gpu", "gpu": "0", "pid": "", "source": "nvml"}, 1000.0) in growth
    assert found["gpu_watchdog_time_to_oom_seconds"] == [
        ({"series": "gpu", "gpu": "0", "pid": "", "source": "nvml"}, 600.0)
    ]


def test_a_simulated_daemons_findings_say_simulated() -> None:
    """Every detection family carries the source, so alerts on a simulated GPU say so."""
    statuses = [status(None, True, 600.0)]
    found = scrape(DetectionCollector(lambda: statuses, "simulated"))
    families = (
        "gpu_watchdog_finding_active",
        "gpu_watchdog_memory_growth_bytes_per_second",
        "gpu_watchdog_time_to_oom_seconds",
        "gpu_watchdog_growth_planned",
    )
    for name in families:
        assert {lab["source"] for lab, _ in found[name]} == {"simulated"}, name


def test_a_series_held_by_planned_growth_says_so() -> None:
    """growth_planned is 1 on the series a plan holds, 0 on the others."""
    statuses = [status(None, False, None), status(77, False, None)]
    statuses[1] = dataclasses.replace(statuses[1], growth_planned=True)
    found = scrape(DetectionCollector(lambda: statuses, "nvml"))
    planned = {lab["pid"]: v for lab, v in found["gpu_watchdog_growth_planned"]}
    assert planned == {"": 0.0, "77": 1.0}


def test_vanished_series_disappear_from_the_next_scrape() -> None:
    """Label sets come only from the current status: a forgotten pid is simply gone."""
    statuses = [status(77, True, 10.0)]
    collector = DetectionCollector(lambda: statuses, "nvml")
    assert any(lab["pid"] == "77" for lab, _ in scrape(collector)["gpu_watchdog_finding_active"])
    statuses.clear()
    assert "gpu_watchdog_finding_active" not in scrape(collector)
