"""Prometheus families of hung jobs, lost ranks and orphaned GPU memory.

Built at scrape time from the detectors' state, as the supervisor hands it
over; series of clients that left and findings that cleared disappear with
them. A figure that is not known (an orphan's memory hidden by the driver,
a stall threshold before the first step) is left out, never exported as 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric

from watchdog.detectors.orphans import Orphan
from watchdog.detectors.stall import ClientStall, LostRank

CLIENT_LABELS = ["pid", "training_job", "rank", "device"]


def families(
    clients: Iterable[Any],
    stalls: Iterable[ClientStall],
    lost: Iterable[LostRank],
    orphans: Iterable[Orphan],
    unattributed: Mapping[int, int],
    origin: str,
) -> Iterator[Metric]:
    """Yield the stall, lost-rank and orphan families.

    Args:
        clients: The registered clients (``ClientInfo``), for their labels.
        stalls: The stall detector's view of each client.
        lost: The active ``rank_lost`` findings.
        orphans: The active ``orphaned_memory`` findings.
        unattributed: Per GPU, used memory beyond its processes' sum, where known.
        origin: ``nvml`` or ``simulated``: the ``source`` label of GPU figures.
    """
    yield from _stall_families(clients, stalls)
    rank_lost = GaugeMetricFamily(
        "gpu_watchdog_rank_lost",
        "1 while a rank of a multi-rank job has died and the job's other ranks wait on it.",
        labels=["training_job", "rank", "pid"],
    )
    for item in lost:
        rank_lost.add_metric([item.job, _text(item.rank), str(item.pid)], 1)
    yield rank_lost
    beyond = GaugeMetricFamily(
        "gpu_watchdog_gpu_memory_unattributed_bytes",
        "GPU used memory beyond the sum of its processes' memory (absent where any is unknown).",
        labels=["gpu", "source"],
    )
    for gpu, amount in sorted(unattributed.items()):
        beyond.add_metric([str(gpu), origin], amount)
    yield beyond
    orphaned = GaugeMetricFamily(
        "gpu_watchdog_orphaned_memory_bytes",
        "GPU memory held by no live job: a zombie, a process whose parent exited, or memory "
        "no process accounts for (reason unattributed, pid empty).",
        labels=["gpu", "pid", "reason", "source"],
    )
    for orphan in orphans:
        if orphan.used_bytes is not None:
            orphaned.add_metric(
                [str(orphan.gpu), _text(orphan.pid), orphan.reason, origin], orphan.used_bytes
            )
    yield orphaned


def _stall_families(clients: Iterable[Any], stalls: Iterable[ClientStall]) -> Iterator[Metric]:
    labels_of = {
        client.pid: [
            str(client.pid),
            client.job,
            _text(client.registration.rank),
            client.registration.device,
        ]
        for client in clients
    }
    stalled = GaugeMetricFamily(
        "gpu_watchdog_client_stalled",
        "1 while a training process's step has not advanced for longer than its stall "
        "threshold, else 0.",
        labels=CLIENT_LABELS,
    )
    age = GaugeMetricFamily(
        "gpu_watchdog_client_step_age_seconds",
        "Seconds since the training process's step last advanced.",
        labels=CLIENT_LABELS,
    )
    threshold = GaugeMetricFamily(
        "gpu_watchdog_client_stall_threshold_seconds",
        "Time without a step after which the process is stalled: max(stall_min_s, "
        "stall_step_factor x its recent step time).",
        labels=CLIENT_LABELS,
    )
    for stall in stalls:
        labels = labels_of.get(stall.pid)
        if labels is None or stall.idle_s is None:
            continue  # left meanwhile, or no step reported yet
        stalled.add_metric(labels, 1 if stall.stalled else 0)
        age.add_metric(labels, stall.idle_s)
        if stall.threshold_s is not None:
            threshold.add_metric(labels, stall.threshold_s)
    yield stalled
    yield age
    yield threshold


def _text(value: int | None) -> str:
    return "" if value is None else str(value)
