"""The daemon's latest view of the world, shared by the poll loop and the exporter.

Polls write into it; scrapes, ``/healthz`` and the status table read an
immutable :class:`Snapshot` of it, so a scrape never calls NVML and never
waits for a poll.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from watchdog.samples import (
    NVML,
    DeviceSample,
    EventWatcherStatus,
    GpuEvent,
    GpuHealthSample,
    GpuProcessSample,
    HostMemory,
    HostProcessSample,
    Reading,
)


@dataclass(frozen=True, slots=True)
class CollectorHealth:
    """How one source's polls are going."""

    name: str
    interval_s: float
    success: bool = False
    last_duration_s: float | None = None
    last_success_wall: float | None = None
    last_success_mono: float | None = None
    running_since_mono: float | None = None
    polls: int = 0
    failures: int = 0
    missed_runs: int = 0
    last_error: str = ""


READING_FIELDS = ("devices", "processes", "host_processes", "host_memory", "health")
"""What a source's reading may report, and so what its failure leaves stale."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """An immutable copy of the state at one moment.

    ``stale`` names the figures whose source failed its latest poll: they are
    the last ones it read, kept for the detectors' context; ``fresh`` leaves
    them out, as the exporter does, so a dashboard never shows old values as
    current. ``fed`` says what each source's last good poll reported, so
    ``fresh`` can leave out a hung source's figures too.
    """

    origin: str
    devices: tuple[DeviceSample, ...]
    processes: tuple[GpuProcessSample, ...]
    host_processes: tuple[HostProcessSample, ...]
    host_memory: HostMemory | None
    collectors: tuple[CollectorHealth, ...]
    taken_mono: float
    nvml_errors: dict[tuple[str, str], int] = field(default_factory=dict)
    driver_version: str = ""
    nvml_version: str = ""
    health: tuple[GpuHealthSample, ...] = ()
    gpu_events: dict[GpuEvent, int] = field(default_factory=dict)
    event_watcher: EventWatcherStatus | None = None
    stale: frozenset[str] = frozenset()
    fed: dict[str, frozenset[str]] = field(default_factory=dict)

    def fresh(self, stall_after_s: float | None = None) -> Snapshot:
        """This snapshot without the figures in ``stale``, nor, given ``stall_after_s``,
        those of a source whose poll has hung that long (its last figures are as old
        as the hang: one GPU's hung call holds every GPU's figures of that source)."""
        stale = self.stale
        if stall_after_s is not None:
            hung = [c.name for c in self.collectors if self.stalled(c, stall_after_s)]
            stale = stale.union(*(self.fed.get(name, ()) for name in hung))
        if not stale:
            return self
        return replace(
            self,
            stale=stale,
            devices=() if "devices" in stale else self.devices,
            processes=() if "processes" in stale else self.processes,
            host_processes=() if "host_processes" in stale else self.host_processes,
            host_memory=None if "host_memory" in stale else self.host_memory,
            health=() if "health" in stale else self.health,
        )

    def stalled(self, collector: CollectorHealth, stall_after_s: float) -> bool:
        """True when ``collector`` has had one poll running for longer than ``stall_after_s``."""
        since = collector.running_since_mono
        return since is not None and self.taken_mono - since > stall_after_s


class DaemonState:
    """Thread-safe store of the latest readings and of each collector's health."""

    def __init__(
        self,
        origin: str = NVML,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._lock = threading.Lock()
        self._monotonic = monotonic
        self._wall = wall
        self._origin = origin
        self._devices: dict[int, DeviceSample] = {}
        self._processes: tuple[GpuProcessSample, ...] = ()
        self._host_processes: tuple[HostProcessSample, ...] = ()
        self._host_memory: HostMemory | None = None
        self._collectors: dict[str, CollectorHealth] = {}
        self._nvml_errors: Callable[[], dict[tuple[str, str], int]] = dict
        self._versions = ("", "")
        self._health: dict[int, GpuHealthSample] = {}
        self._gpu_events: Counter[GpuEvent] = Counter()
        self._event_watcher: Callable[[], EventWatcherStatus | None] = lambda: None
        self._fed: dict[str, frozenset[str]] = {}
        """Source name -> what its last successful reading reported."""
        self._stale: frozenset[str] = frozenset()

    @property
    def origin(self) -> str:
        """Where the GPU figures come from (``nvml`` or ``simulated``); fixed at start."""
        return self._origin

    def set_nvml_info(
        self,
        errors: Callable[[], dict[tuple[str, str], int]],
        driver_version: str,
        nvml_version: str,
    ) -> None:
        """Where to read NVML error counts, and the versions found at start."""
        self._nvml_errors = errors
        self._versions = (driver_version, nvml_version)

    def set_event_watcher(self, status: Callable[[], EventWatcherStatus]) -> None:
        """Where to read how the NVML event thread is doing (NVML origin only)."""
        self._event_watcher = status

    def record_gpu_event(self, event: GpuEvent) -> None:
        """Count one GPU event (an Xid, an ECC error event); called from the event thread."""
        with self._lock:
            self._gpu_events[event] += 1

    def processes_on(self, gpu: int) -> list[dict[str, object]]:
        """The processes on GPU ``gpu`` at the last poll, for the log line of a GPU event."""
        with self._lock:
            hosts = {sample.pid: sample for sample in self._host_processes}
            return [
                {
                    "pid": process.pid,
                    "gpu_memory_bytes": process.used_bytes,
                    "command": hosts[process.pid].command if process.pid in hosts else "",
                    "owner": hosts[process.pid].owner.label() if process.pid in hosts else "",
                }
                for process in self._processes
                if process.gpu == gpu
            ]

    def add_collector(self, name: str, interval_s: float) -> None:
        """Track the health of a source polled every ``interval_s``."""
        with self._lock:
            self._collectors[name] = CollectorHealth(name=name, interval_s=interval_s)

    def poll_started(self, name: str) -> None:
        """A poll of ``name`` began (for the stalled flag)."""
        self._update(name, running_since_mono=self._monotonic())

    def poll_finished(self, name: str, duration_s: float, error: str = "") -> None:
        """A poll of ``name`` ended, successfully when ``error`` is empty."""
        with self._lock:
            health = self._collectors[name]
            ok = not error
            self._collectors[name] = replace(
                health,
                success=ok,
                last_duration_s=duration_s,
                running_since_mono=None,
                polls=health.polls + 1,
                failures=health.failures + (0 if ok else 1),
                last_error=error,
                last_success_wall=self._wall() if ok else health.last_success_wall,
                last_success_mono=self._monotonic() if ok else health.last_success_mono,
            )
            self._stale = frozenset().union(
                *(self._fed.get(h.name, ()) for h in self._collectors.values() if h.last_error)
            )

    def run_missed(self, name: str) -> None:
        """A scheduled poll of ``name`` was skipped (the previous one still ran, or it was late)."""
        with self._lock:
            health = self._collectors[name]
            self._collectors[name] = replace(health, missed_runs=health.missed_runs + 1)

    def apply(self, reading: Reading, source: str | None = None) -> None:
        """Replace what ``reading`` reports; vanished devices and processes disappear with it.

        ``source`` names the poller's source, whose failures then mark what it
        reports as stale (``Snapshot.stale``).
        """
        with self._lock:
            if source is not None:
                self._fed[source] = frozenset(
                    name for name in READING_FIELDS if getattr(reading, name) is not None
                )
            if reading.devices is not None:
                self._devices = {device.gpu: device for device in reading.devices}
            if reading.processes is not None:
                unread = reading.unread_gpus
                kept = tuple(p for p in self._processes if p.gpu in unread)
                self._processes = tuple(reading.processes) + kept
            if reading.host_processes is not None:
                self._host_processes = tuple(reading.host_processes)
            if reading.host_memory is not None:
                self._host_memory = reading.host_memory
            if reading.health is not None:
                self._health = {sample.gpu: sample for sample in reading.health}

    def gpu_pids(self) -> list[int]:
        """Pids of the processes currently on a GPU."""
        with self._lock:
            return sorted({process.pid for process in self._processes})

    def snapshot(self) -> Snapshot:
        """A consistent copy for readers."""
        # tuple([...]), not tuple(genexpr): a tuple built from a generator is sized
        # by guess and shrunk in place, so it bypasses CPython's tuple free list when
        # made and joins it when freed. At every poll and scrape that filled the
        # free list of 8-tuples (one per GPU) to its cap of 2000, 128-byte blocks
        # the daemon's RSS crept by over its first quarter hour (docs/performance.md).
        with self._lock:
            return Snapshot(
                origin=self._origin,
                devices=tuple([self._devices[gpu] for gpu in sorted(self._devices)]),
                processes=self._processes,
                host_processes=self._host_processes,
                host_memory=self._host_memory,
                collectors=tuple(self._collectors.values()),
                taken_mono=self._monotonic(),
                nvml_errors=self._nvml_errors(),
                driver_version=self._versions[0],
                nvml_version=self._versions[1],
                health=tuple([self._health[gpu] for gpu in sorted(self._health)]),
                gpu_events=dict(self._gpu_events),
                event_watcher=self._event_watcher(),
                stale=self._stale,
                fed=dict(self._fed),
            )

    def _update(self, name: str, **changes: object) -> None:
        with self._lock:
            self._collectors[name] = replace(self._collectors[name], **changes)  # type: ignore[arg-type]
