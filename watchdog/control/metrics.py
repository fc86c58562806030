"""Prometheus metrics of the control channel: one series set per registered client.

Series of a client that left disappear with it (each scrape lists the live
clients only), so label cardinality follows the jobs actually running. A
figure the client could not read (``None``) is left out, never exported as 0.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from watchdog.control.server import ControlServer

_LABELS = ["pid", "training_job", "rank", "device"]
_FIGURES = (
    # (attribute, metric name, help, counter?)
    ("step", "gpu_watchdog_client_step", "Training step last reported by the client.", False),
    (
        "allocated_bytes",
        "gpu_watchdog_client_allocated_bytes",
        "Bytes held by tensors (torch.cuda.memory_allocated).",
        False,
    ),
    (
        "reserved_bytes",
        "gpu_watchdog_client_reserved_bytes",
        "Bytes reserved by the caching allocator (torch.cuda.memory_reserved).",
        False,
    ),
    (
        "peak_allocated_bytes",
        "gpu_watchdog_client_peak_allocated_bytes",
        "Peak of allocated bytes (torch.cuda.max_memory_allocated).",
        False,
    ),
    ("rss_bytes", "gpu_watchdog_client_rss_bytes", "Host resident memory of the client.", False),
    (
        "alloc_retries",
        "gpu_watchdog_client_alloc_retries",
        "cudaMalloc retries after freeing cached blocks (memory_stats num_alloc_retries).",
        True,
    ),
    ("ooms", "gpu_watchdog_client_ooms", "Out-of-memory errors seen by the allocator.", True),
)


class ControlCollector(Collector):
    """Reads a ControlServer's client snapshot at scrape time; no I/O, no blocking."""

    def __init__(self, server: ControlServer) -> None:
        self._server = server

    def collect(self) -> Iterator[Metric]:
        """Yield the per-client gauges, the command counters and the drop counters."""
        clients = self._server.clients()
        registered = GaugeMetricFamily(
            "gpu_watchdog_clients", "Training processes registered on the control socket."
        )
        registered.add_metric([], len(clients))
        yield registered
        families = {
            attribute: (CounterMetricFamily if counter else GaugeMetricFamily)(
                name, text, labels=_LABELS
            )
            for attribute, name, text, counter in _FIGURES
        }
        age = GaugeMetricFamily(
            "gpu_watchdog_client_heartbeat_age_seconds",
            "Seconds since the client's last heartbeat.",
            labels=_LABELS,
        )
        for client in clients:
            labels = [
                str(client.pid),
                client.job,
                "" if client.registration.rank is None else str(client.registration.rank),
                client.registration.device,
            ]
            age.add_metric(labels, client.heartbeat_age_s)
            for attribute, family in families.items():
                value = getattr(client.report, attribute)
                if value is not None:
                    family.add_metric(labels, value)
        yield age
        yield from families.values()
        commands, drops = self._server.stats()
        sent = CounterMetricFamily(
            "gpu_watchdog_client_commands",
            "Commands sent to training processes, by kind and result.",
            labels=["command", "result"],
        )
        for (command, result), count in sorted(commands.items()):
            sent.add_metric([command, result], count)
        yield sent
        dropped = CounterMetricFamily(
            "gpu_watchdog_control_dropped_connections",
            "Control connections refused or dropped, by reason.",
            labels=["reason"],
        )
        for reason, count in sorted(drops.items()):
            dropped.add_metric([reason], count)
        yield dropped
