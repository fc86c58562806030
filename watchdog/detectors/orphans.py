"""Orphaned GPU memory: held by a process that belongs to no live job, or by no process at all.

Pure: the daemon hands in its latest GPU, GPU-process and host-process
readings, the pids of registered (live) clients and the time; the detector
returns events. Three reasons, each a finding ``orphaned_memory``:

* ``zombie``: a process on the GPU's process list has exited but not been
  reaped; its context (a thread stuck in the driver) may still hold memory.
* ``reparented``: a process on the GPU was first seen with one parent and
  now has another: its parent (the launcher, the trainer that started it)
  exited and the kernel handed it to init or a subreaper. Only a change that
  the daemon saw counts: a process first seen under pid 1 may be a systemd
  service or a container's main process, and proves nothing.
* ``unattributed``: the GPU's used memory exceeds the sum of its processes'
  memory by more than ``unattributed_min_bytes`` (driver and context
  overhead stay under it). Claimed only when every figure is known: the
  device's used memory, every listed process's memory (a container, MIG or
  WDDM hides it) and, where host facts are read, every listed pid visible
  on this host (a pid from another pid namespace means the list is not ours
  to judge). A daemon that cannot see the host's pid namespace may be shown
  only its own container's processes, so the caller switches this reason
  off there (``detection.orphan_unattributed = "auto"``).

A registered client is never an orphan: it is a live job by definition.
Every reason must hold for ``min_age_s`` before it is raised (a job tearing
down passes through these states for a moment); it is cleared as soon as it
no longer holds or the process leaves the GPU.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from watchdog.detectors.events import CLEARED, RAISED
from watchdog.samples import DeviceSample, GpuProcessSample, HostProcessSample

ORPHANED_MEMORY = "orphaned_memory"
ZOMBIE = "zombie"
REPARENTED = "reparented"
UNATTRIBUTED = "unattributed"

_MIB = 1 << 20


@dataclass(frozen=True, slots=True)
class OrphanEvent:
    """One change of an ``orphaned_memory`` finding.

    ``pid`` is None for ``unattributed`` memory. ``used_bytes`` is the amount
    held (None when the driver does not say). The attribute names the policy
    and the journal read match those of memory events.
    """

    t: float
    state: str
    gpu: int
    pid: int | None
    reason: str
    used_bytes: int | None
    message: str
    parent: int | None = None
    """The parent the process had when first seen (``reparented``)."""
    kind: str = ORPHANED_MEMORY
    cause: None = None
    time_to_oom_s: None = None

    @property
    def series(self) -> str:
        """The reason doubles as the series: one finding per GPU, pid and reason."""
        return self.reason

    def to_json(self) -> dict[str, Any]:
        """The journal's view of the event."""
        return {
            "t": round(self.t, 3),
            "kind": self.kind,
            "state": self.state,
            "gpu": self.gpu,
            "pid": self.pid,
            "series": self.series,
            "reason": self.reason,
            "used_bytes": self.used_bytes,
            "parent": self.parent,
            "message": self.message,
        }

    def log_fields(self) -> dict[str, Any]:
        """Structured fields for the daemon's log line."""
        fields = {k: v for k, v in self.to_json().items() if k not in ("t", "kind", "state")}
        return {k: v for k, v in fields.items() if v is not None}


@dataclass(frozen=True, slots=True)
class Orphan:
    """An active finding (for metrics)."""

    gpu: int
    pid: int | None
    reason: str
    used_bytes: int | None


Key = tuple[int, int | None, str]
"""(gpu, pid, reason)."""


@dataclass
class _Candidate:
    since: float
    used_bytes: int | None
    parent: int | None
    raised: bool = False


class OrphanDetector:
    """Zombie, reparented and unattributed GPU memory from readings and time (see module doc).

    Args:
        min_age_s: How long a reason must hold before it is raised.
        unattributed_min_bytes: Used memory beyond the processes' sum that counts.
        unattributed: False: never claim unattributed memory (the caller cannot see
            every process on the GPU).
    """

    def __init__(
        self,
        min_age_s: float = 120.0,
        unattributed_min_bytes: int = 2 << 30,
        unattributed: bool = True,
    ) -> None:
        self.min_age_s = min_age_s
        self.unattributed_min_bytes = unattributed_min_bytes
        self.unattributed = unattributed
        self._parents: dict[tuple[int, int | None], int] = {}
        self._candidates: dict[Key, _Candidate] = {}
        self._unattributed_bytes: dict[int, int] = {}

    def observe(
        self,
        t: float,
        devices: Sequence[DeviceSample] | None,
        processes: Sequence[GpuProcessSample] | None,
        host: Sequence[HostProcessSample] | None,
        live_pids: Collection[int] = (),
    ) -> list[OrphanEvent]:
        """Judge the latest readings at ``t``; None for a reading not (yet) taken."""
        if devices is None or processes is None:
            return []
        facts = None if host is None else {h.pid: h for h in host}
        if facts is not None:
            self._remember_parents(facts)
        found: dict[Key, tuple[int | None, int | None]] = {}
        for process in processes:
            fact = None if facts is None else facts.get(process.pid)
            if fact is None or process.pid in live_pids:
                continue
            reason, parent = self._reason(fact)
            if reason:
                found[(process.gpu, process.pid, reason)] = (process.used_bytes, parent)
        self._unattributed_bytes = {}
        for device in devices:
            amount = self._unexplained(device, processes, facts)
            if amount is None:
                continue
            self._unattributed_bytes[device.gpu] = amount
            if self.unattributed and amount > self.unattributed_min_bytes:
                found[(device.gpu, None, UNATTRIBUTED)] = (amount, None)
        return self._update(t, found)

    def active(self) -> list[Orphan]:
        """The raised findings."""
        return [
            Orphan(gpu, pid, reason, c.used_bytes)
            for (gpu, pid, reason), c in sorted(self._candidates.items(), key=_order)
            if c.raised
        ]

    def unattributed_bytes(self) -> dict[int, int]:
        """Per GPU, used memory beyond its processes' sum (0 at least), where it is known."""
        return dict(self._unattributed_bytes)

    # --- internals ----------------------------------------------------------------------

    def _remember_parents(self, facts: dict[int, HostProcessSample]) -> None:
        """Keep the first parent seen of each process now on the host list, forget the rest."""
        parents = {}
        for fact in facts.values():
            key = (fact.pid, fact.started)
            first = self._parents.get(key)
            if first is not None:
                parents[key] = first
            elif fact.ppid is not None and fact.state != "zombie":
                parents[key] = fact.ppid
        self._parents = parents

    def _reason(self, fact: HostProcessSample) -> tuple[str, int | None]:
        if fact.state == "zombie":
            return ZOMBIE, None
        first = self._parents.get((fact.pid, fact.started))
        if first is not None and fact.ppid is not None and fact.ppid != first:
            return REPARENTED, first
        return "", None

    def _unexplained(
        self,
        device: DeviceSample,
        processes: Sequence[GpuProcessSample],
        facts: dict[int, HostProcessSample] | None,
    ) -> int | None:
        """Used memory beyond the processes' sum; None where any figure is unknown."""
        if device.lost or device.used_bytes is None:
            return None
        mine = [p for p in processes if p.gpu == device.gpu]
        if any(p.used_bytes is None for p in mine):
            return None  # hidden per-process memory (container, MIG): claim nothing
        if facts is not None and any(p.pid not in facts for p in mine):
            return None  # a pid we cannot see: another namespace, or it just exited
        return max(0, device.used_bytes - sum(p.used_bytes or 0 for p in mine))

    def _update(
        self, t: float, found: dict[Key, tuple[int | None, int | None]]
    ) -> list[OrphanEvent]:
        events = []
        for key in [k for k in self._candidates if k not in found]:
            candidate = self._candidates.pop(key)
            if candidate.raised:
                events.append(self._event(t, key, candidate, CLEARED))
        for key, (used, parent) in found.items():
            candidate = self._candidates.setdefault(key, _Candidate(t, used, parent))
            candidate.used_bytes = used
            if not candidate.raised and t - candidate.since >= self.min_age_s:
                candidate.raised = True
                events.append(self._event(t, key, candidate, RAISED))
        return events

    def _event(self, t: float, key: Key, candidate: _Candidate, state: str) -> OrphanEvent:
        gpu, pid, reason = key
        amount = (
            "an unknown amount"
            if candidate.used_bytes is None
            else (f"{candidate.used_bytes / _MIB:.0f} MiB")
        )
        what = {
            ZOMBIE: f"pid {pid} is a zombie (exited, not reaped) still listed with {amount}",
            REPARENTED: (
                f"pid {pid} holds {amount} and its parent (pid {candidate.parent}) has exited: "
                "it belongs to no live job"
            ),
            UNATTRIBUTED: f"{amount} in use that no listed process accounts for",
        }[reason]
        if state == CLEARED:
            what = (
                f"no longer orphaned ({reason})"
                if pid is not None
                else ("used memory is accounted for again")
            )
            what = f"pid {pid}: {what}" if pid is not None else what
        return OrphanEvent(
            t=t,
            state=state,
            gpu=gpu,
            pid=pid,
            reason=reason,
            used_bytes=candidate.used_bytes,
            parent=candidate.parent,
            message=f"GPU {gpu}: {what}",
        )


def _order(item: tuple[Key, _Candidate]) -> tuple[int, int, str]:
    (gpu, pid, reason), _ = item
    return (gpu, -1 if pid is None else pid, reason)
