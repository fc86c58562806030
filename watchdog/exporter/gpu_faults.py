"""Prometheus metrics of GPU faults: Xid and other NVML events, ECC, retired pages, remapped rows.

Built from the snapshot like every other metric (docs/metrics.md, "GPU faults").
A figure the GPU cannot give is absent; event counters exist once something was
counted; the event thread's own health is exported only where it runs (NVML).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from watchdog.daemon.state import Snapshot
from watchdog.samples import GpuHealthSample

PREFIX = "gpu_watchdog_"

# (label values, attribute) of the ECC counters: type, counter.
_ECC = (
    (("corrected", "volatile"), "ecc_volatile_corrected"),
    (("uncorrected", "volatile"), "ecc_volatile_uncorrected"),
    (("corrected", "aggregate"), "ecc_aggregate_corrected"),
    (("uncorrected", "aggregate"), "ecc_aggregate_uncorrected"),
)
_RETIRED = (
    ("single_bit_ecc", "retired_pages_single_bit"),
    ("double_bit_ecc", "retired_pages_double_bit"),
)
_REMAPPED = (
    ("correctable", "remapped_rows_correctable"),
    ("uncorrectable", "remapped_rows_uncorrectable"),
)
# (metric, help, attribute) of the 0/1 flags.
_FLAGS = (
    (
        "gpu_retired_pages_pending",
        "1 while retired pages wait for the next GPU reset to take effect.",
        "retired_pages_pending",
    ),
    (
        "gpu_row_remap_pending",
        "1 while a row remap waits for the next GPU reset to take effect.",
        "row_remap_pending",
    ),
    (
        "gpu_row_remap_failure",
        "1 once a row remap has failed: the GPU has run out of spare rows.",
        "row_remap_failure",
    ),
)


def gpu_faults(snap: Snapshot) -> Iterator[Metric]:
    """Every GPU-fault metric family for ``snap``."""
    yield from _events(snap)
    yield from _health(snap)
    yield from _watcher(snap)


def _events(snap: Snapshot) -> Iterator[Metric]:
    xids = CounterMetricFamily(
        PREFIX + "gpu_xid_events",
        "Xid errors NVML reported, by GPU and code; action and fatal come from NVIDIA's catalog.",
        labels=["gpu", "uuid", "xid", "action", "fatal", "source"],
    )
    others = CounterMetricFamily(
        PREFIX + "gpu_events",
        "Other GPU fault events NVML reported (double-bit ECC, page retirement, ...), by type.",
        labels=["gpu", "uuid", "type", "source"],
    )
    for event, count in sorted(snap.gpu_events.items(), key=lambda item: repr(item[0])):
        gpu = str(event.gpu) if event.gpu >= 0 else "unknown"
        if event.kind == "xid":
            fatal = "true" if event.fatal else "false"
            labels = [gpu, event.uuid, str(event.xid), event.action, fatal, snap.origin]
            xids.add_metric(labels, count)
        else:
            others.add_metric([gpu, event.uuid, event.kind, snap.origin], count)
    yield xids
    yield others


def _health(snap: Snapshot) -> Iterator[Metric]:
    ecc = CounterMetricFamily(
        PREFIX + "gpu_ecc_errors",
        "ECC errors: volatile since the driver loaded, aggregate over the GPU's life.",
        labels=["gpu", "type", "counter", "source"],
    )
    retired = GaugeMetricFamily(
        PREFIX + "gpu_retired_pages",
        "Memory pages retired, by cause (GPUs up to Volta).",
        labels=["gpu", "cause", "source"],
    )
    remapped = GaugeMetricFamily(
        PREFIX + "gpu_remapped_rows",
        "Memory rows remapped, by the kind of error that caused it (Ampere and later).",
        labels=["gpu", "type", "source"],
    )
    flags = [
        GaugeMetricFamily(PREFIX + name, documentation, labels=["gpu", "source"])
        for name, documentation, _ in _FLAGS
    ]
    for sample in snap.health:
        gpu = str(sample.gpu)
        for (kind, counter), attribute in _ECC:
            _add(ecc, [gpu, kind, counter, snap.origin], sample, attribute)
        for cause, attribute in _RETIRED:
            _add(retired, [gpu, cause, snap.origin], sample, attribute)
        for kind, attribute in _REMAPPED:
            _add(remapped, [gpu, kind, snap.origin], sample, attribute)
        for family, (_, _, attribute) in zip(flags, _FLAGS, strict=True):
            _add(family, [gpu, snap.origin], sample, attribute)
    yield from (ecc, retired, remapped, *flags)


def _add(
    family: CounterMetricFamily | GaugeMetricFamily,
    labels: list[str],
    sample: GpuHealthSample,
    attribute: str,
) -> None:
    """Add the figure, or nothing when the GPU cannot give it (never a 0)."""
    value = getattr(sample, attribute)
    if value is not None:
        family.add_metric(labels, float(value))


def _watcher(snap: Snapshot) -> Iterator[Metric]:
    status = snap.event_watcher
    if status is None:
        return
    up = GaugeMetricFamily(
        PREFIX + "event_watcher_up",
        "1 while the NVML event thread waits for Xid and other GPU events.",
    )
    up.add_metric([], 1 if status.up else 0)
    gpus = GaugeMetricFamily(
        PREFIX + "event_watcher_gpus",
        "GPUs by event registration state (registered, unsupported, retrying).",
        labels=["state"],
    )
    for state, count in sorted(status.gpus.items()):
        gpus.add_metric([state], count)
    errors = CounterMetricFamily(
        PREFIX + "event_watcher_errors",
        "Failures of the NVML event thread, by NVML error or exception.",
        labels=["error"],
    )
    for error, count in sorted(status.errors.items()):
        errors.add_metric([error], count)
    restarts = CounterMetricFamily(
        PREFIX + "event_watcher_restarts",
        "Times the NVML event loop started again after a failure.",
    )
    restarts.add_metric([], status.restarts)
    yield from (up, gpus, errors, restarts)
