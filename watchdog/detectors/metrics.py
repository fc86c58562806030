"""Prometheus metrics for the detectors: each series' findings, growth rate and time to OOM.

``DetectionCollector`` reads ``DetectionEngine.status()`` (through a callable,
so a scrape never touches the engine's internals or blocks on its lock) and
exports one label set per tracked series; a forgotten series (its process
exited) simply is not in the next scrape. ``FindingsCounter`` counts events
by kind and state; the daemon passes it each batch of events.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from watchdog.detectors.events import LEAK, NEAR_OOM, SeriesStatus

FINDING_KINDS = (LEAK, NEAR_OOM)


def _labels(status: SeriesStatus, source: str) -> list[str]:
    return [status.series, str(status.gpu), "" if status.pid is None else str(status.pid), source]


class DetectionCollector(Collector):
    """Exports the detectors' view of every tracked memory series.

    - ``gpu_watchdog_finding_active{kind,series,gpu,pid,source}``: 1 while a
      finding is raised, 0 otherwise (both kinds for every series).
    - ``gpu_watchdog_memory_growth_bytes_per_second{series,gpu,pid,source}``:
      the floor's growth rate (0 when it is not rising).
    - ``gpu_watchdog_time_to_oom_seconds{series,gpu,pid,source}``: the predicted
      time until the limit; absent when memory is not growing.
    - ``gpu_watchdog_growth_planned{series,gpu,pid,source}``: 1 while the job's
      planned growth holds new leaks on the series (``Watchdog.expect_growth``),
      else 0.

    ``pid`` is empty for a GPU's own series. ``source`` is where the figures
    came from (``nvml``, or ``simulated`` for a daemon run with ``--simulate``),
    as on the GPU figures, so a simulated daemon's findings, and the alerts
    raised on them, say so.
    """

    def __init__(self, status_provider: Callable[[], list[SeriesStatus]], source: str) -> None:
        self._status = status_provider
        self._source = source

    def collect(self) -> Iterator[Metric]:
        """One family per metric; series that vanished are simply absent."""
        active = GaugeMetricFamily(
            "gpu_watchdog_finding_active",
            "1 while a detector finding (leak, near_oom) is raised on a memory series.",
            labels=["kind", "series", "gpu", "pid", "source"],
        )
        growth = GaugeMetricFamily(
            "gpu_watchdog_memory_growth_bytes_per_second",
            "Growth rate of a memory series' floor (0 when it is not rising).",
            labels=["series", "gpu", "pid", "source"],
        )
        time_to_oom = GaugeMetricFamily(
            "gpu_watchdog_time_to_oom_seconds",
            "Predicted seconds until a memory series reaches its limit at its floor's growth rate.",
            labels=["series", "gpu", "pid", "source"],
        )
        planned = GaugeMetricFamily(
            "gpu_watchdog_growth_planned",
            "1 while growth the job planned holds new leak findings on a memory series.",
            labels=["series", "gpu", "pid", "source"],
        )
        for status in self._status():
            labels = _labels(status, self._source)
            active.add_metric([LEAK, *labels], 1.0 if status.leak else 0.0)
            active.add_metric([NEAR_OOM, *labels], 1.0 if status.near_oom else 0.0)
            growth.add_metric(labels, max(0.0, status.rate_bytes_per_s))
            if status.time_to_oom_s is not None:
                time_to_oom.add_metric(labels, status.time_to_oom_s)
            planned.add_metric(labels, 1.0 if status.growth_planned else 0.0)
        yield active
        yield growth
        yield time_to_oom
        yield planned
