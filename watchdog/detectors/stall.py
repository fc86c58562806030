"""Hung jobs: a registered process whose step count stops advancing, and ranks that died.

Pure: the daemon hands in heartbeats (time, step) of each registered client,
the moments clients leave (and how), and the time at each poll; the detector
returns events. No clock, no I/O, so a test drives it with made-up times.

A client is **stalled** when its step has not advanced for longer than
``step_factor`` times its recent step time, and at least ``min_s``. The step
time is the median of the last few advances seen in heartbeats (seconds per
step), so one slow step (an eval, a checkpoint) does not move it much. A
client is judged only once it has been seen to advance once: before its
first step it may be loading a model for an hour.

A rank is **lost** when a client of a multi-rank job (rank and world size
registered) leaves without a clean detach while its process is gone, or
detaches reporting the exception it dies of (a CUDA out-of-memory error),
and other ranks of the same job are still registered: in a synchronous job
they now wait in their next collective for a peer that will never come,
until the collective's timeout (NCCL: 10 minutes by default). The finding is
raised at once, naming the dead rank and pid and the ranks left waiting; it
is cleared when no rank of the job is left, when the dead rank's number
registers again (the launcher restarted the group), or when a survivor
advances two steps past where it stood after the loss (the job does not
wait on that rank: elastic or asynchronous training).
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

from watchdog.detectors.events import CLEARED, RAISED

STALLED = "stalled"
RANK_LOST = "rank_lost"

CLIENT = "client"
"""Series of a ``stalled`` finding: one registered process."""
JOB = "job"
"""Series of a ``rank_lost`` finding: one training job (the lost rank is its pid)."""

STEP_HISTORY = 16
"""Advances remembered per client for its recent step time."""
SURVIVOR_STEPS = 2
"""Steps a survivor must advance after the loss to show it does not wait on the lost rank:
one more step can still complete if the rank died after its last collective of a step."""


@dataclass(frozen=True, slots=True)
class JobEvent:
    """One change of a ``stalled`` or ``rank_lost`` finding.

    ``pid`` is the stalled process, or the lost rank's. ``t`` is the
    detector's clock (monotonic in the daemon). The attribute names the
    policy and the journal read (``series``, ``cause``, ``time_to_oom_s``)
    match those of memory events, so findings of every kind flow alike.
    """

    t: float
    kind: str
    state: str
    job: str
    gpu: int
    pid: int | None
    rank: int | None
    message: str
    step: int | None = None
    idle_s: float | None = None
    """Seconds since the step last advanced (stalled)."""
    threshold_s: float | None = None
    """The stall threshold that was passed: max(min_s, step_factor * step time)."""
    step_time_s: float | None = None
    waiting: tuple[int, ...] = ()
    """Pids of the job's ranks still registered (rank_lost)."""
    how: str = ""
    """How the rank was lost: ``gone`` (no detach, process gone) or the error it reported."""
    cause: None = None
    """Memory findings carry a growth kind here; a hang has none."""
    time_to_oom_s: None = None
    """Memory findings carry a prediction here; a hang has none."""

    @property
    def series(self) -> str:
        """``client`` for a stall, ``job`` for a lost rank."""
        return CLIENT if self.kind == STALLED else JOB

    def to_json(self) -> dict[str, Any]:
        """The journal's view of the event."""
        return {
            "t": round(self.t, 3),
            "kind": self.kind,
            "state": self.state,
            "job": self.job,
            "gpu": self.gpu,
            "pid": self.pid,
            "rank": self.rank,
            "series": self.series,
            "step": self.step,
            "idle_s": None if self.idle_s is None else round(self.idle_s, 1),
            "threshold_s": None if self.threshold_s is None else round(self.threshold_s, 1),
            "step_time_s": None if self.step_time_s is None else round(self.step_time_s, 3),
            "waiting": list(self.waiting),
            "how": self.how,
            "message": self.message,
        }

    def log_fields(self) -> dict[str, Any]:
        """Structured fields for the daemon's log line."""
        fields = {k: v for k, v in self.to_json().items() if k not in ("t", "kind", "state")}
        return {k: v for k, v in fields.items() if v not in (None, "", [])}


@dataclass(frozen=True, slots=True)
class ClientStall:
    """Where one registered client stands (for metrics)."""

    pid: int
    job: str
    rank: int | None
    step: int | None
    idle_s: float | None
    """Seconds since the step last advanced; None before the first step is reported."""
    threshold_s: float | None
    """None until a step time is known."""
    stalled: bool


@dataclass(frozen=True, slots=True)
class LostRank:
    """An active ``rank_lost`` finding (for metrics)."""

    job: str
    rank: int | None
    pid: int
    since: float


@dataclass
class _Client:
    pid: int
    job: str
    rank: int | None
    world_size: int | None
    gpu: int
    step: int | None = None
    advanced_t: float | None = None
    seconds_per_step: deque[float] = field(default_factory=lambda: deque(maxlen=STEP_HISTORY))
    stalled: bool = False

    def step_time(self) -> float | None:
        return statistics.median(self.seconds_per_step) if self.seconds_per_step else None

    @property
    def ranked(self) -> bool:
        return self.rank is not None and (self.world_size or 0) > 1


@dataclass
class _Lost:
    job: str
    rank: int | None
    pid: int
    gpu: int
    since: float
    baseline: dict[int, int] = field(default_factory=dict)
    """Each survivor's step at its first heartbeat after the loss."""


class StallDetector:
    """Stalled clients and lost ranks from heartbeats, departures and time (see module doc).

    Args:
        step_factor: A client is stalled after this many times its recent step time ...
        min_s: ... and never before this many seconds without a step.
    """

    def __init__(self, step_factor: float = 10.0, min_s: float = 300.0) -> None:
        self.step_factor = step_factor
        self.min_s = min_s
        self._clients: dict[int, _Client] = {}
        self._lost: dict[tuple[str, int], _Lost] = {}

    # --- inputs -------------------------------------------------------------------------

    def heartbeat(
        self,
        t: float,
        pid: int,
        job: str,
        step: int | None,
        *,
        rank: int | None = None,
        world_size: int | None = None,
        gpu: int = -1,
    ) -> list[JobEvent]:
        """A client's report: its step (None when it sends none) at time ``t``."""
        events: list[JobEvent] = []
        client = self._clients.get(pid)
        if client is None or (client.job, client.rank) != (job, rank):
            if client is not None:
                events += self._end_stall(t, client, "it registered again under another name")
            client = self._clients[pid] = _Client(pid, job, rank, world_size, gpu)
            events += self._rejoined(t, client)
        client.gpu = gpu if gpu >= 0 else client.gpu
        if step is None:
            return events
        if client.step is None or step < client.step:
            # First step seen, or the count went back (resumed from a checkpoint): a new baseline.
            client.step, client.advanced_t = step, t
            client.seconds_per_step.clear()
            events += self._end_stall(t, client, f"its step count restarted at {step}")
        elif step > client.step:
            assert client.advanced_t is not None
            client.seconds_per_step.append((t - client.advanced_t) / (step - client.step))
            idle = t - client.advanced_t
            client.step, client.advanced_t = step, t
            events += self._end_stall(t, client, f"step advanced to {step} after {idle:.0f} s")
        events += self._survivor_progress(t, client)
        return events

    def left(
        self, t: float, pid: int, *, detached: bool, gone: bool, error: str = ""
    ) -> list[JobEvent]:
        """A client's connection closed.

        Args:
            t: When.
            pid: Whose.
            detached: The client said goodbye first (``wd.close()``, interpreter exit).
            gone: Its process no longer runs (or is a zombie).
            error: The exception it reported in its goodbye, if it died of one.
        """
        client = self._clients.pop(pid, None)
        if client is None:
            return []
        events = self._end_stall(t, client, "it left")
        survivors = [c for c in self._clients.values() if c.job == client.job]
        lost = bool(error) or (gone and not detached)
        if lost and client.ranked and any(c.ranked and c.rank != client.rank for c in survivors):
            events.append(self._raise_lost(t, client, survivors, error))
        if not survivors:
            for key in [k for k in self._lost if k[0] == client.job]:
                events.append(self._clear_lost(t, key, "no rank of the job is left"))
        return events

    def tick(self, t: float) -> list[JobEvent]:
        """Judge every client at time ``t``: raise ``stalled`` where the step has not moved."""
        events = []
        for client in self._clients.values():
            threshold = self._threshold(client)
            if client.stalled or threshold is None or client.advanced_t is None:
                continue
            idle = t - client.advanced_t
            if idle > threshold:
                client.stalled = True
                events.append(self._stall_event(t, client, RAISED, idle, threshold))
        return events

    # --- state --------------------------------------------------------------------------

    def clients(self, t: float) -> list[ClientStall]:
        """Every client's step, idle time, threshold and stall state at ``t``."""
        return [
            ClientStall(
                pid=c.pid,
                job=c.job,
                rank=c.rank,
                step=c.step,
                idle_s=None if c.advanced_t is None else max(0.0, t - c.advanced_t),
                threshold_s=self._threshold(c),
                stalled=c.stalled,
            )
            for c in sorted(self._clients.values(), key=lambda c: c.pid)
        ]

    def lost_ranks(self) -> list[LostRank]:
        """The active ``rank_lost`` findings."""
        return [LostRank(x.job, x.rank, x.pid, x.since) for x in self._lost.values()]

    def job_of_lost(self, pid: int) -> str | None:
        """The job of the lost rank ``pid``, while its finding is active."""
        return next((x.job for x in self._lost.values() if x.pid == pid), None)

    def step_of(self, pid: int) -> int | None:
        """The last step ``pid`` reported."""
        client = self._clients.get(pid)
        return None if client is None else client.step

    # --- internals ----------------------------------------------------------------------

    def _threshold(self, client: _Client) -> float | None:
        step_time = client.step_time()
        if step_time is None:
            return None
        return max(self.min_s, self.step_factor * step_time)

    def _stall_event(
        self, t: float, client: _Client, state: str, idle: float, threshold: float | None
    ) -> JobEvent:
        step_time = client.step_time()
        if state == RAISED:
            message = (
                f"job {client.job}{_rank_text(client.rank)} pid {client.pid}: no step for "
                f"{idle:.0f} s (stuck at step {client.step}; its steps take "
                f"{_seconds(step_time)}, threshold {threshold:.0f} s)"
            )
        else:
            message = f"job {client.job}{_rank_text(client.rank)} pid {client.pid}: training again"
        return JobEvent(
            t=t,
            kind=STALLED,
            state=state,
            job=client.job,
            gpu=client.gpu,
            pid=client.pid,
            rank=client.rank,
            message=message,
            step=client.step,
            idle_s=idle,
            threshold_s=threshold,
            step_time_s=step_time,
        )

    def _end_stall(self, t: float, client: _Client, why: str) -> list[JobEvent]:
        if not client.stalled:
            return []
        client.stalled = False
        event = self._stall_event(t, client, CLEARED, 0.0, self._threshold(client))
        message = f"job {client.job}{_rank_text(client.rank)} pid {client.pid}: stall over, {why}"
        return [replace(event, message=message)]

    def _raise_lost(
        self, t: float, client: _Client, survivors: list[_Client], error: str
    ) -> JobEvent:
        how = error or "gone"
        cause = (
            f"died of {error}"
            if error
            else "died without detaching (killed: SIGKILL, the OOM killer, or a crash)"
        )
        waiting = sorted(survivors, key=lambda c: (c.rank or 0, c.pid))
        names = ", ".join(f"rank {c.rank} (pid {c.pid})" for c in waiting)
        self._lost[(client.job, client.pid)] = _Lost(
            client.job, client.rank, client.pid, client.gpu, t
        )
        return JobEvent(
            t=t,
            kind=RANK_LOST,
            state=RAISED,
            job=client.job,
            gpu=client.gpu,
            pid=client.pid,
            rank=client.rank,
            step=client.step,
            waiting=tuple(c.pid for c in waiting),
            how=how,
            message=(
                f"job {client.job}: rank {client.rank} (pid {client.pid}) {cause} at step "
                f"{client.step}; {names} wait(s) on it in the next collective"
            ),
        )

    def _clear_lost(self, t: float, key: tuple[str, int], why: str) -> JobEvent:
        lost = self._lost.pop(key)
        return JobEvent(
            t=t,
            kind=RANK_LOST,
            state=CLEARED,
            job=lost.job,
            gpu=lost.gpu,
            pid=lost.pid,
            rank=lost.rank,
            message=f"job {lost.job}: lost rank {lost.rank} (pid {lost.pid}): {why}",
        )

    def _rejoined(self, t: float, client: _Client) -> list[JobEvent]:
        if client.rank is None:
            return []
        keys = [k for k, x in self._lost.items() if x.job == client.job and x.rank == client.rank]
        why = f"rank {client.rank} registered again (pid {client.pid}): the group restarted"
        return [self._clear_lost(t, key, why) for key in keys]

    def _survivor_progress(self, t: float, client: _Client) -> list[JobEvent]:
        events = []
        for key, lost in list(self._lost.items()):
            if lost.job != client.job or client.step is None:
                continue
            baseline = lost.baseline.setdefault(client.pid, client.step)
            if client.step >= baseline + SURVIVOR_STEPS:
                why = (
                    f"rank {client.rank} (pid {client.pid}) went on to step {client.step}: "
                    "the job does not wait on it"
                )
                events.append(self._clear_lost(t, key, why))
        return events


def _rank_text(rank: int | None) -> str:
    return "" if rank is None else f" rank {rank}"


def _seconds(value: float | None) -> str:
    if value is None:
        return "?"
    return f"{value:.3g} s" if value < 10 else f"{value:.0f} s"
