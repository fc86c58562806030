"""What the detectors tell the rest of the daemon: events and per-series status."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LEAK = "leak"
NEAR_OOM = "near_oom"

RAISED = "raised"
UPDATED = "updated"
CLEARED = "cleared"

# Series kinds: what a series measures, and so what its limit is.
GPU = "gpu"
"""A GPU's used memory; limit: the GPU's total."""
PROCESS = "process"
"""One process's memory on one GPU; limit: the GPU's total (it runs out when the GPU does)."""
HOST_RSS = "host_rss"
"""A GPU process's host RSS with its children; limit: the host's total memory."""
ALLOCATED = "allocated"
"""PyTorch's allocated bytes, sent by the in-process client; limit: the GPU's total."""
RESERVED = "reserved"
"""PyTorch's reserved (cached) bytes, sent by the in-process client; limit: the GPU's total."""

# Growth kinds (Event.cause), told apart with the allocator figures.
CAUSE_TENSORS = "tensors_kept_alive"
"""Allocated memory rises: tensors are kept alive."""
CAUSE_CACHE = "allocator_cache"
"""Reserved memory rises while allocated stays flat: fragmentation or cache growth."""
CAUSE_OUTSIDE = "outside_pytorch"
"""NVML memory rises while reserved stays flat: NCCL, CUDA graphs, other libraries."""

# Patterns of a rising floor.
STEADY = "steady"
STAIRCASE = "staircase"
SAWTOOTH = "sawtooth"


@dataclass(frozen=True, slots=True)
class Event:
    """One change of a finding: raised, updated or cleared.

    ``t`` is the sample time that caused it (trace seconds in replay, the
    monotonic clock live). ``rate_bytes_per_s`` is the floor's growth rate and
    ``time_to_oom_s`` the predicted time until the limit is reached (None when
    memory is not growing).
    """

    t: float
    kind: str
    state: str
    gpu: int
    pid: int | None
    series: str
    rate_bytes_per_s: float
    time_to_oom_s: float | None
    confidence: float
    pattern: str | None
    cause: str | None
    message: str
    used_bytes: int = 0
    limit_bytes: int = 0

    def to_json(self) -> dict[str, Any]:
        """The fields ``gpu-watchdog replay --json`` prints, one object per event."""
        return {
            "t": round(self.t, 3),
            "kind": self.kind,
            "state": self.state,
            "gpu": self.gpu,
            "pid": self.pid,
            "series": self.series,
            "rate_bytes_per_s": round(self.rate_bytes_per_s, 3),
            "time_to_oom_s": None if self.time_to_oom_s is None else round(self.time_to_oom_s, 1),
            "confidence": round(self.confidence, 3),
            "pattern": self.pattern,
            "cause": self.cause,
            "used_bytes": self.used_bytes,
            "limit_bytes": self.limit_bytes,
            "message": self.message,
        }


@dataclass(frozen=True, slots=True)
class SeriesStatus:
    """Where one tracked series stands now (for metrics, ``status`` and logs)."""

    series: str
    gpu: int
    pid: int | None
    state: str
    """``ok``, ``leak``, ``near_oom`` or ``leak+near_oom``."""
    leak: bool
    near_oom: bool
    rate_bytes_per_s: float
    """The floor's current growth rate (0 when not rising)."""
    time_to_oom_s: float | None
    confidence: float
    pattern: str | None
    cause: str | None
    used_bytes: int
    limit_bytes: int
    growth_planned: bool = False
    """The job said this memory grows on purpose (``Watchdog.expect_growth``): no new leak."""
