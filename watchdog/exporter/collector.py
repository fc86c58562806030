"""Prometheus metrics built from the daemon's latest snapshot.

Every metric is rebuilt from the snapshot at each scrape, so the label sets
of vanished processes and devices disappear by themselves, and an unknown
figure is simply left out.

Every label value leaves here encodable as UTF-8 (``label_value``): text from
outside the daemon (process and user names, cgroup names, NVML strings) may
hold what UTF-8 cannot, and one such value would fail the whole scrape.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator
from itertools import chain

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from watchdog import __version__
from watchdog.daemon.state import Snapshot
from watchdog.exporter.gpu_faults import gpu_faults

PREFIX = "gpu_watchdog_"

_DEVICE_FIGURES = (
    ("gpu_memory_total_bytes", "GPU memory in total.", "total_bytes"),
    (
        "gpu_memory_used_bytes",
        "GPU memory in use (NVML v2: excluding driver-reserved memory).",
        "used_bytes",
    ),
    ("gpu_memory_free_bytes", "GPU memory free.", "free_bytes"),
    ("gpu_memory_reserved_bytes", "GPU memory reserved by the driver (NVML v2).", "reserved_bytes"),
    (
        "gpu_utilization_ratio",
        "Fraction of time a kernel ran over NVML's last period.",
        "utilization_ratio",
    ),
    ("gpu_temperature_celsius", "GPU core temperature.", "temperature_celsius"),
    ("gpu_power_watts", "GPU power draw.", "power_watts"),
)


class StateCollector(Collector):
    """Exports devices, processes, host memory and the daemon's own health."""

    def __init__(self, snapshot: Callable[[], Snapshot], stall_after_s: float) -> None:
        self._snapshot = snapshot
        self._stall_after_s = stall_after_s

    def collect(self) -> Iterator[Metric]:
        """Yield every metric family for the current snapshot."""
        # A failed or hung source's figures are dropped, never repeated as if current
        # (node_exporter's rule); gpu_watchdog_collector_success and _stalled say why.
        snap = self._snapshot().fresh(self._stall_after_s)
        families = chain(
            _build_info(snap),
            _devices(snap),
            _processes(snap),
            _host(snap),
            _collectors(snap, self._stall_after_s),
            _nvml_errors(snap),
            gpu_faults(snap),
        )
        # Escaped at the one exit rather than at each add_metric, so that no label
        # added later (or in gpu_faults) can slip past.
        for family in families:
            yield encodable(family)


def label_value(text: str) -> str:
    """``text`` as a label value that UTF-8 can encode: what it cannot is written as an escape.

    psutil, like ``os``, decodes a name's undecodable bytes to lone surrogates
    (PEP 383: a process named ``b"train\\xff"`` reads as ``"train\\udcff"``), and
    JSON can carry a lone surrogate (``"\\ud800"``). prometheus-client cannot
    encode either, and raises for the whole exposition, so one odd process name
    would fail every scrape of the node. Such a byte comes out as ``\\xff``, any
    other lone surrogate as ``\\ud800``; text that encodes is returned as it is.
    """
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        pass
    else:
        return text
    try:
        # Undecodable bytes back to the bytes they were, so the label shows those.
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate no decoder made (U+D800..U+DC7F, U+DD00..)
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def encodable(family: Metric) -> Metric:
    """``family`` with every label value passed through ``label_value``.

    ``family`` itself when every value already encodes (the usual case), else
    a copy: whoever yielded it may keep it and yield it again.
    """
    fixed = [_encodable_sample(sample) for sample in family.samples]
    if all(new is old for new, old in zip(fixed, family.samples, strict=True)):
        return family
    result = copy.copy(family)
    result.samples = fixed
    return result


def _encodable_sample(sample: Sample) -> Sample:
    labels = {name: label_value(value) for name, value in sample.labels.items()}
    return sample if labels == sample.labels else sample._replace(labels=labels)


def _gauge(name: str, documentation: str, labels: Iterable[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, documentation, labels=list(labels))


def _build_info(snap: Snapshot) -> Iterator[Metric]:
    info = InfoMetricFamily(
        PREFIX + "build", "Watchdog version, GPU source and NVML/driver versions."
    )
    info.add_metric(
        [],
        {
            "version": __version__,
            "source": snap.origin,
            "driver_version": snap.driver_version,
            "nvml_version": snap.nvml_version,
        },
    )
    yield info


def _devices(snap: Snapshot) -> Iterator[Metric]:
    info = _gauge("gpu_info", "GPU identity; always 1.", ("gpu", "uuid", "name", "source"))
    lost = _gauge(
        "gpu_lost", "1 while the GPU cannot be read (lost, unknown error).", ("gpu", "source")
    )
    figures = [_gauge(name, doc, ("gpu", "source")) for name, doc, _ in _DEVICE_FIGURES]
    for device in snap.devices:
        labels = [str(device.gpu), snap.origin]
        info.add_metric([str(device.gpu), device.uuid, device.name, snap.origin], 1)
        lost.add_metric(labels, 1 if device.lost else 0)
        for family, (_, _, attribute) in zip(figures, _DEVICE_FIGURES, strict=True):
            value = getattr(device, attribute)
            if value is not None:
                family.add_metric(labels, value)
    yield info
    yield lost
    yield from figures


def _processes(snap: Snapshot) -> Iterator[Metric]:
    host_by_pid = {sample.pid: sample for sample in snap.host_processes}
    gpu_memory = _gauge(
        "process_gpu_memory_bytes",
        "GPU memory used by a process (absent where the driver does not say).",
        ("gpu", "pid", "type", "owner", "source"),
    )
    for process in snap.processes:
        if process.used_bytes is None:
            continue
        host = host_by_pid.get(process.pid)
        owner = host.owner.label() if host else ""
        gpu_memory.add_metric(
            [str(process.gpu), str(process.pid), process.kind, owner, snap.origin],
            process.used_bytes,
        )
    yield gpu_memory

    rss = _gauge(
        "process_host_rss_bytes",
        "Host RSS of a GPU process plus its child processes (DataLoader workers).",
        ("pid", "owner"),
    )
    info = _gauge(
        "process_info",
        "What a GPU process is and who owns it; always 1.",
        (
            "pid",
            "command",
            "user",
            "owner",
            "systemd_unit",
            "slurm_job_id",
            "container_id",
            "pod_uid",
        ),
    )
    for sample in snap.host_processes:
        who = sample.owner
        if sample.total_rss_bytes is not None:
            rss.add_metric([str(sample.pid), who.label()], sample.total_rss_bytes)
        info.add_metric(
            [
                str(sample.pid),
                sample.command,
                sample.username,
                who.label(),
                who.systemd_unit,
                who.slurm_job_id,
                who.container_id,
                who.pod_uid,
            ],
            1,
        )
    yield rss
    yield info


def _host(snap: Snapshot) -> Iterator[Metric]:
    if snap.host_memory is None:
        return
    total = _gauge("host_memory_total_bytes", "Host memory in total.", ())
    total.add_metric([], snap.host_memory.total_bytes)
    available = _gauge("host_memory_available_bytes", "Host memory available to new work.", ())
    available.add_metric([], snap.host_memory.available_bytes)
    yield total
    yield available


def _collectors(snap: Snapshot, stall_after_s: float) -> Iterator[Metric]:
    labels = ("collector",)
    success = _gauge("collector_success", "1 if the last poll of this source succeeded.", labels)
    duration = _gauge("collector_duration_seconds", "Duration of the last poll.", labels)
    last = _gauge(
        "collector_last_success_timestamp_seconds",
        "Unix time of the last successful poll.",
        labels,
    )
    stalled = _gauge(
        "collector_stalled",
        "1 while a poll has been running for too long (a hung driver call).",
        labels,
    )
    polls = CounterMetricFamily(
        PREFIX + "collector_polls", "Polls run.", labels=["collector", "result"]
    )
    missed = CounterMetricFamily(
        PREFIX + "collector_missed_runs",
        "Scheduled polls skipped because the previous one still ran or ran late.",
        labels=list(labels),
    )
    for health in snap.collectors:
        name = [health.name]
        success.add_metric(name, 1 if health.success else 0)
        if health.last_duration_s is not None:
            duration.add_metric(name, health.last_duration_s)
        if health.last_success_wall is not None:
            last.add_metric(name, health.last_success_wall)
        stalled.add_metric(name, 1 if snap.stalled(health, stall_after_s) else 0)
        polls.add_metric([health.name, "success"], health.polls - health.failures)
        polls.add_metric([health.name, "failure"], health.failures)
        missed.add_metric(name, health.missed_runs)
    yield from (success, duration, last, stalled, polls, missed)


def _nvml_errors(snap: Snapshot) -> Iterator[Metric]:
    errors = CounterMetricFamily(
        PREFIX + "nvml_errors",
        "NVML calls that failed, by call and error.",
        labels=["call", "error"],
    )
    for (call, error), count in sorted(snap.nvml_errors.items()):
        errors.add_metric([call, error], count)
    yield errors
