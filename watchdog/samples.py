"""The values every source produces and every consumer reads.

A figure that a source could not read is ``None``: "unknown" is never
written as zero, so it never reaches a detector or a dashboard as a real value.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SIMULATED = "simulated"
NVML = "nvml"


@dataclass(frozen=True, slots=True)
class DeviceSample:
    """One GPU's state at one poll.

    A lost device (``lost=True``) keeps only its index and whatever identity
    was known before it was lost; its figures are ``None``.
    """

    gpu: int
    uuid: str = ""
    name: str = ""
    total_bytes: int | None = None
    used_bytes: int | None = None
    free_bytes: int | None = None
    reserved_bytes: int | None = None
    utilization_ratio: float | None = None
    temperature_celsius: float | None = None
    power_watts: float | None = None
    lost: bool = False
    lost_reason: str = ""


@dataclass(frozen=True, slots=True)
class GpuProcessSample:
    """One process's use of one GPU; ``used_bytes`` is ``None`` where the driver hides it."""

    gpu: int
    pid: int
    used_bytes: int | None
    kind: str = "compute"  # "compute" or "graphics"


@dataclass(frozen=True, slots=True)
class Owner:
    """What a process belongs to, read from its cgroup and environment."""

    systemd_unit: str = ""
    slurm_job_id: str = ""
    container_id: str = ""
    pod_uid: str = ""

    def label(self) -> str:
        """A short, bounded identity for a metric label: the most specific owner known."""
        if self.pod_uid:
            return f"pod:{self.pod_uid}"
        if self.slurm_job_id:
            return f"slurm:{self.slurm_job_id}"
        if self.container_id:
            return f"container:{self.container_id[:12]}"
        if self.systemd_unit:
            return f"unit:{self.systemd_unit}"
        return ""


@dataclass(frozen=True, slots=True)
class HostProcessSample:
    """Host memory of one GPU process and its children (DataLoader workers)."""

    pid: int
    command: str = ""
    username: str = ""
    rss_bytes: int | None = None
    children_rss_bytes: int | None = None
    owner: Owner = field(default_factory=Owner)
    started: int | None = None
    """When the process started (``watchdog.identity.start_ticks``): with the pid, which
    process this is, so a reused pid is not taken for the old process. None: unknown."""
    ppid: int | None = None
    """The parent's pid now; it changes when the parent exits (the kernel reparents the
    process to init or the nearest subreaper). None: unknown."""
    state: str = ""
    """The kernel's scheduling state (``running``, ``sleeping``, ``zombie``...); empty: unknown."""

    @property
    def total_rss_bytes(self) -> int | None:
        """RSS of the process plus its children; unknown if the process's own RSS is."""
        if self.rss_bytes is None:
            return None
        return self.rss_bytes + (self.children_rss_bytes or 0)


@dataclass(frozen=True, slots=True)
class HostMemory:
    """The host's memory as a whole."""

    total_bytes: int
    available_bytes: int


@dataclass(frozen=True, slots=True)
class GpuHealthSample:
    """One GPU's memory-error figures at one (slow) poll; ``None``: the GPU cannot tell.

    ECC counters are volatile (since the driver loaded) and aggregate (lifetime).
    Pages are retired on GPUs up to Volta; Ampere and later remap rows instead, so
    a GPU normally reports one of the two and leaves the other ``None``.
    """

    gpu: int
    ecc_volatile_corrected: int | None = None
    ecc_volatile_uncorrected: int | None = None
    ecc_aggregate_corrected: int | None = None
    ecc_aggregate_uncorrected: int | None = None
    retired_pages_single_bit: int | None = None
    retired_pages_double_bit: int | None = None
    retired_pages_pending: bool | None = None
    remapped_rows_correctable: int | None = None
    remapped_rows_uncorrectable: int | None = None
    row_remap_pending: bool | None = None
    row_remap_failure: bool | None = None


@dataclass(frozen=True, slots=True)
class GpuEvent:
    """One NVML event on one GPU: an Xid error or another fault event.

    Equal events are counted together, so it holds no time, only what a metric
    label may carry. ``action`` and ``fatal`` come from the Xid catalog.
    """

    gpu: int
    uuid: str
    kind: str  # "xid", "double_bit_ecc", "dram_retirement", ...
    xid: int | None = None
    action: str = ""
    fatal: bool = False


@dataclass(frozen=True, slots=True)
class EventWatcherStatus:
    """How the NVML event thread is doing."""

    up: bool
    gpus: dict[str, int]  # GPUs by registration state: registered, unsupported, retrying
    errors: dict[str, int]  # failures by NVML error or exception name
    restarts: int


@dataclass(frozen=True, slots=True)
class Reading:
    """What one poll of one source returned.

    ``t`` is the sample time in seconds on the source's clock: monotonic for
    live sources, trace time for the simulated one. A field left ``None`` is
    one this source does not report; an empty list means "reported, none".
    ``processes`` is the full list of every GPU except those in
    ``unread_gpus``, whose list the driver failed to give this time: what was
    known of their processes stands, none of them has exited.
    """

    t: float
    origin: str = NVML
    devices: list[DeviceSample] | None = None
    processes: list[GpuProcessSample] | None = None
    host_processes: list[HostProcessSample] | None = None
    host_memory: HostMemory | None = None
    health: list[GpuHealthSample] | None = None
    unread_gpus: frozenset[int] = frozenset()
