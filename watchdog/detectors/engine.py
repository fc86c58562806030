"""The detection engine: every memory series the daemon sees, one ``Series`` each.

Pure: it is handed samples with their times and returns events. The daemon
calls ``observe`` with each source's ``Reading``; ``gpu-watchdog replay``
calls ``observe_step`` with the rows of a trace, which is what ``observe``
itself calls, so a replay decides exactly what the live daemon decided.

A pid names one process only while that process lives: the kernel reuses
pids. The host source reports when each process started; a pid seen with
another start time is a new process, and everything learnt under that pid
is forgotten first: its series, their findings (cleared) and their history.
``process_started`` tells which process a pid's series belong to, so that
the daemon never takes a new process with that pid for the old one.

A training process may say that its memory is about to grow on purpose
(``Watchdog.expect_growth``: a model loading, a cache filling, a batch
schedule): ``plan_growth`` holds new leak findings on that process's series
and on its GPU's until the plan ends or the process passes the size it
planned, and then judges them afresh (see docs/detection.md).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from watchdog.config import DetectionSettings
from watchdog.detectors.events import (
    ALLOCATED,
    CAUSE_CACHE,
    CAUSE_OUTSIDE,
    CAUSE_TENSORS,
    GPU,
    HOST_RSS,
    PROCESS,
    RESERVED,
    Event,
    SeriesStatus,
)
from watchdog.detectors.series import Series
from watchdog.samples import Reading

Key = tuple[str, int, int | None]
SWEEP_EVERY_S = 60.0
CAUSE_SHARE = 0.5
"""An allocator figure explains a leak when it rises at least this share as fast."""
MAX_PLANNED_GROWTH_S = 6 * 3600.0
"""The longest growth a process may plan at once: a plan renewed by every heartbeat
can last longer, one that stops being renewed cannot hold leaks for a day."""


@dataclass(slots=True)
class PlannedGrowth:
    """A growth a process said it would make: on ``gpu``, until ``until_t``, up to a size."""

    gpu: int
    until_t: float
    up_to_bytes: int | None


class DetectionEngine:
    """Leak and near-OOM detection over every memory series (see docs/detection.md)."""

    def __init__(self, settings: DetectionSettings | None = None) -> None:
        self.settings = settings or DetectionSettings()
        self._out: list[Event] = []
        self._gpus: dict[int, Series] = {}
        self._processes: dict[tuple[int, int], Series] = {}
        self._others: dict[Key, Series] = {}
        self._pids: dict[int, frozenset[int]] = {}
        self._present: set[tuple[int, int]] = set()
        """(gpu, pid) of the last full process list, hidden figures included."""
        self._gpu_of_pid: dict[int, int] = {}
        self._started: dict[int, int] = {}
        """pid -> start time of the process whose series are kept under that pid."""
        self._keys_of_pid: dict[int, dict[Key, None]] = {}
        """pid -> the keys of its series, process ones as ``(PROCESS, gpu, pid)``, in the
        order they were made. Finding them without a scan of every series keeps many
        processes exiting at once linear in their number, not quadratic."""
        self._plans: dict[int, PlannedGrowth] = {}
        """pid -> the growth that process planned (``plan_growth``)."""
        self._outgrown: dict[int, int | None] = {}
        """pid -> the size of a plan it went past: that plan, sent again, holds nothing."""
        self._next_sweep = 0.0
        self._newest_t = -math.inf

    # -- input

    def observe(self, reading: Reading) -> list[Event]:
        """Take one poll of one source; return the events it caused."""
        devices = None
        if reading.devices is not None:
            devices = [
                (d.gpu, d.used_bytes, d.total_bytes)
                for d in reading.devices
                if not d.lost and d.used_bytes is not None and d.total_bytes
            ]
        processes = None
        hidden: list[tuple[int, int]] = []
        if reading.processes is not None:
            processes = [
                (p.gpu, p.pid, p.used_bytes) for p in reading.processes if p.used_bytes is not None
            ]
            # A process whose figure the driver hides is still there: do not forget it;
            # nor one on a GPU whose list the driver failed to give this time.
            hidden = [(p.gpu, p.pid) for p in reading.processes if p.used_bytes is None]
            if reading.unread_gpus:
                hidden += [key for key in self._processes if key[0] in reading.unread_gpus]
        events = self.observe_step(reading.t, devices, processes, hidden)
        if reading.host_processes is not None:
            events += self._observe_host(reading)
        return events

    def observe_step(
        self,
        t: float,
        devices: Sequence[tuple[int, int, int]] | None,
        processes: Sequence[tuple[int, int, int]] | None = None,
        still_running: Iterable[tuple[int, int]] = (),
    ) -> list[Event]:
        """Take the samples of one instant: ``(gpu, used, total)`` and ``(gpu, pid, used)``.

        ``processes`` None means "not polled this time"; a list (even empty) is a
        full report, and a process missing from it has exited.

        Samples older than ``forget_after_s`` before the newest time seen are stale
        (a trace played to its end keeps giving its last step, a poll that hung for
        that long returns): the series they belong to may have been forgotten for
        want of samples, and must not come back with old figures.
        """
        self._newest_t = max(self._newest_t, t)
        if t < self._newest_t - self.settings.forget_after_s:
            devices = processes = None
        out = self._out
        gpus = self._gpus
        if devices:
            for gpu, used, total in devices:
                series = gpus.get(gpu)
                if series is None:
                    series = gpus[gpu] = self._new(GPU, gpu, None, t, total)
                series.add(t, used, total)
        if processes is not None:
            self._observe_processes(t, processes, still_running)
        if t >= self._next_sweep:
            self._sweep(t)
        if not out:
            return []
        events = out[:]
        out.clear()
        return events

    def observe_allocator(
        self, t: float, gpu: int, pid: int, allocated_bytes: int, reserved_bytes: int
    ) -> list[Event]:
        """Take the allocator figures a training process sent (``watchdog.attach``)."""
        limit = self._gpus[gpu].limit if gpu in self._gpus else 0.0
        for kind, value in ((ALLOCATED, allocated_bytes), (RESERVED, reserved_bytes)):
            key = (kind, gpu, pid)
            series = self._others.get(key)
            if series is None:
                series = self._add_other(key, self._new(kind, gpu, pid, t, limit))
            series.add(t, value, limit or series.limit)
        if self._plans:
            # Where the driver hides per-process memory, the allocator's is what was planned.
            self._check_plan(t, pid, reserved_bytes)
        return self._drain()

    # -- planned growth

    def plan_growth(
        self, t: float, gpu: int, pid: int, for_s: float, up_to_bytes: int | None = None
    ) -> list[Event]:
        """Process ``pid`` on ``gpu`` says its memory grows for ``for_s`` from ``t``.

        Until then, and while its memory stays at or under ``up_to_bytes`` (when
        given), no new leak is raised on its series or on its GPU's; near_oom is
        raised as ever. A plan is renewed by calling again (every heartbeat).
        ``gpu`` -1: a process on no GPU, whose plan sizes its host memory.
        """
        until = t + min(max(for_s, 0.0), MAX_PLANNED_GROWTH_S)
        if until <= t:
            return self.end_growth(t, pid)
        if pid in self._outgrown:
            if self._outgrown[pid] == up_to_bytes:
                return []  # the heartbeat repeats a plan the memory already went past
            del self._outgrown[pid]
        self._plans[pid] = PlannedGrowth(gpu, until, up_to_bytes)
        for series in self._series_of(pid):
            series.plan_growth(until)
        self._gpus_plan(gpu, t)
        return self._drain()

    def end_growth(self, t: float, pid: int, afresh: bool = True) -> list[Event]:
        """The growth ``pid`` planned is over (said so, or went past its size): judge again.

        ``afresh``: from where the memory stands now (the plan ended as planned);
        otherwise with what came before, so a climb past the plan is judged whole.
        """
        self._end_growth(t, pid, afresh)
        return self._drain()

    def _end_growth(self, t: float, pid: int, afresh: bool) -> None:
        """``end_growth`` without draining: inside a poll, its events join the poll's."""
        plan = self._plans.pop(pid, None)
        if afresh:
            self._outgrown.pop(pid, None)
        elif plan is not None:
            self._outgrown[pid] = plan.up_to_bytes
        if plan is not None and plan.until_t > t:
            for series in self._series_of(pid):
                series.end_growth(t, afresh)
            self._gpus_plan(plan.gpu, t, afresh)

    def _check_plan(self, t: float, pid: int, used: int) -> None:
        plan = self._plans.get(pid)
        if plan is not None and plan.up_to_bytes is not None and used > plan.up_to_bytes:
            self._end_growth(t, pid, afresh=False)

    def _series_of(self, pid: int) -> Iterator[Series]:
        keys = list(self._keys_of_pid.get(pid, ()))
        yield from (self._processes[(key[1], pid)] for key in keys if key[0] == PROCESS)
        yield from (self._others[key] for key in keys if key[0] != PROCESS)

    def _add_other(self, key: Key, series: Series) -> Series:
        self._others[key] = series
        if key[2] is not None:
            self._keys_of_pid.setdefault(key[2], {})[key] = None
        return series

    def _pop_other(self, key: Key) -> Series:
        self._unindex(key)
        return self._others.pop(key)

    def _pop_process(self, gpu: int, pid: int) -> Series:
        self._unindex((PROCESS, gpu, pid))
        return self._processes.pop((gpu, pid))

    def _unindex(self, key: Key) -> None:
        pid = key[2]
        keys = self._keys_of_pid.get(pid) if pid is not None else None
        if keys is None or pid is None:
            return
        keys.pop(key, None)
        if not keys:
            del self._keys_of_pid[pid]

    def _gpus_plan(self, gpu: int, t: float, afresh: bool = True) -> None:
        """Hold the GPU's series as long as the longest plan of a process on it."""
        device = self._gpus.get(gpu)
        if device is None:
            return
        until = max(
            (p.until_t for p in self._plans.values() if p.gpu == gpu and p.until_t > t),
            default=math.inf,
        )
        if until == math.inf:
            device.end_growth(t, afresh)
        else:
            device.plan_growth(until)

    def _drain(self) -> list[Event]:
        """The events found since the last drain (and no longer kept)."""
        events = self._out[:]
        self._out.clear()
        return events

    def _observe_processes(
        self, t: float, processes: Sequence[tuple[int, int, int]], still: Iterable[tuple[int, int]]
    ) -> None:
        table = self._processes
        gpus = self._gpus
        plans = self._plans
        started = False
        for gpu, pid, used in processes:
            series = table.get((gpu, pid))
            device = gpus.get(gpu)
            if series is None:
                series = table[(gpu, pid)] = self._new(PROCESS, gpu, pid, t, 0.0)
                self._keys_of_pid.setdefault(pid, {})[(PROCESS, gpu, pid)] = None
                self._gpu_of_pid[pid] = gpu
                started = True
                if device is not None:
                    series.inherit_sawtooth(device)
            series.add(t, used, device.limit if device is not None else series.limit)
            if plans:
                self._check_plan(t, pid, used)
        present = {(gpu, pid) for gpu, pid, _ in processes}
        present.update(still)
        if not started and present == self._present:
            return  # the usual case: the same processes as last time
        self._present = present
        for gpu, pid in [key for key in table if key not in present]:
            self._forget_process(t, gpu, pid)
        # A process whose memory the driver hides has no series to forget, only its plan
        # (or the size of one it went past).
        listed = {pid for _, pid in present}
        for pid in [pid for pid in {*self._plans, *self._outgrown} if pid not in listed]:
            if any(pid in pids for pids in self._pids.values()):  # it was listed, and left
                self._drop_plan(t, pid)
        seen: dict[int, set[int]] = {}
        for gpu, pid in present:
            seen.setdefault(gpu, set()).add(pid)
        for gpu in set(seen) | set(self._pids):
            pids = frozenset(seen.get(gpu, ()))
            if gpu in gpus:
                if self._pids.get(gpu, pids) != pids:
                    # Jobs came or went: the GPU's memory is a new sum, judge it afresh.
                    gpus[gpu].restart(t)
                # Only while the processes on it are known can a fall be theirs.
                gpus[gpu].falls_keep_ground = bool(pids)
            self._pids[gpu] = pids

    def _observe_host(self, reading: Reading) -> list[Event]:
        memory = reading.host_memory
        host_processes = reading.host_processes or []
        present = set()
        for sample in host_processes:
            self._identify(reading.t, sample.pid, sample.started)
            rss = sample.total_rss_bytes
            if rss is None or memory is None:
                continue
            present.add(sample.pid)
            # One series per process, whichever GPU it is on (or none yet): its host
            # memory does not change with the GPUs it holds a context on.
            key: Key = (HOST_RSS, -1, sample.pid)
            series = self._others.get(key)
            if series is None:
                gpu = self._gpu_of_pid.get(sample.pid, -1)
                series = self._add_other(
                    key, self._new(HOST_RSS, gpu, sample.pid, reading.t, memory.total_bytes)
                )
            available = float(memory.available_bytes)
            series.headroom_of = lambda available=available: available
            series.add(reading.t, rss, memory.total_bytes)
            plan = self._plans.get(sample.pid)
            if plan is not None and plan.gpu == -1:
                # A plan of a process on no GPU sizes its host memory.
                self._check_plan(reading.t, sample.pid, rss)
        for gone in [k for k in self._others if k[0] == HOST_RSS and k[2] not in present]:
            self._pop_other(gone).forget(reading.t, "process exited")
            self._release(gone[2])
        return self._drain()

    # -- series lifecycle

    def _new(self, kind: str, gpu: int, pid: int | None, t: float, limit: float) -> Series:
        series = Series(kind, gpu, pid, self.settings, self._out, t, limit)
        if kind in (PROCESS, ALLOCATED, RESERVED):
            series.headroom_of = lambda gpu=gpu, s=series: self._gpu_headroom(gpu, s)
        if kind in (PROCESS, GPU):
            series.cause_of = self._cause
        elif kind == ALLOCATED:
            series.cause_of = lambda _s: CAUSE_TENSORS
        elif kind == RESERVED:
            series.cause_of = self._reserved_cause
        return series

    def _gpu_headroom(self, gpu: int, series: Series) -> float:
        device = self._gpus.get(gpu)
        if device is None:
            return math.inf  # the GPU's own figures are unknown: no prediction
        return device.headroom()

    def _forget_process(self, t: float, gpu: int, pid: int) -> None:
        self._pop_process(gpu, pid).forget(t, "process exited")
        others = [key[1] for key in self._keys_of_pid.get(pid, ()) if key[0] == PROCESS]
        if others:  # still on another GPU: it is alive, its plan and host series stay
            if self._gpu_of_pid.get(pid) == gpu:
                self._gpu_of_pid[pid] = others[0]
        else:
            self._drop_plan(t, pid)
            self._gpu_of_pid.pop(pid, None)
        for kind in (ALLOCATED, RESERVED):
            if (kind, gpu, pid) in self._others:
                self._pop_other((kind, gpu, pid)).forget(t, "process exited")
        self._release(pid)

    # -- process identity

    def _identify(self, t: float, pid: int, started: int | None) -> None:
        """Note which process ``pid`` names; if another than before, forget the old one."""
        if started is None:
            return  # unknown: the pid alone has to do
        known = self._started.get(pid)
        if known == started:
            return
        if known is not None:
            self._forget_pid(t, pid, "pid reused by a new process")
        self._started[pid] = started

    def _forget_pid(self, t: float, pid: int, why: str) -> None:
        """Forget every series of ``pid``: nothing of the old process carries over."""
        keys = list(self._keys_of_pid.get(pid, ()))
        for _, gpu, _ in [key for key in keys if key[0] == PROCESS]:
            self._pop_process(gpu, pid).forget(t, why)
            # The GPU's sum now holds another process: judge it afresh on the next poll.
            self._pids[gpu] = self._pids.get(gpu, frozenset()) - {pid}
        for key in [key for key in keys if key[0] != PROCESS]:
            self._pop_other(key).forget(t, why)
        self._gpu_of_pid.pop(pid, None)
        self._drop_plan(t, pid)

    def _drop_plan(self, t: float, pid: int) -> None:
        """A process gone: its plan goes, and its GPU is held only by the other plans."""
        self._outgrown.pop(pid, None)
        plan = self._plans.pop(pid, None)
        if plan is not None:
            self._gpus_plan(plan.gpu, t)

    def watches_processes(self, gpu: int) -> bool:
        """Whether the memory of processes on ``gpu`` is watched: one has a series there
        now (the process list gives its figure; one the driver hides has none)."""
        return any(key[0] == gpu for key in self._processes)

    def process_started(self, pid: int) -> int | None:
        """Start time of the process whose series are kept under ``pid`` (None: unknown)."""
        return self._started.get(pid)

    def _release(self, pid: int | None) -> None:
        """Drop the identity of ``pid`` once no series of it is left (the process is gone)."""
        if pid is not None and pid in self._started and pid not in self._keys_of_pid:
            del self._started[pid]

    def _sweep(self, t: float) -> None:
        """Forget series not seen for ``forget_after_s`` (GPU gone, process list not reported)."""
        self._next_sweep = t + SWEEP_EVERY_S
        horizon = t - self.settings.forget_after_s
        for gpu in [g for g, s in self._gpus.items() if s.last_t < horizon]:
            self._gpus.pop(gpu).forget(t, "no samples")
        for gpu, pid in [k for k, s in self._processes.items() if s.last_t < horizon]:
            self._forget_process(t, gpu, pid)
        for key in [k for k, s in self._others.items() if s.last_t < horizon]:
            self._pop_other(key).forget(t, "no samples")
        # Identities of pids with no series left (gone, or never with a figure): bounded memory.
        self._started = {pid: at for pid, at in self._started.items() if pid in self._keys_of_pid}

    # -- growth kind

    def _cause(self, series: Series) -> str | None:
        """Tell tensors kept alive, allocator cache and memory outside PyTorch apart."""
        if series.kind == GPU:
            rising = [
                s for (gpu, _), s in self._processes.items() if gpu == series.gpu and s.rate() > 0
            ]
            return self._cause(rising[0]) if len(rising) == 1 else None
        allocated = self._others.get((ALLOCATED, series.gpu, series.pid))
        reserved = self._others.get((RESERVED, series.gpu, series.pid))
        if allocated is None or reserved is None:
            return None
        rate = series.leak_rate or series.rate()
        if allocated.rate() >= CAUSE_SHARE * rate:
            return CAUSE_TENSORS
        if reserved.rate() >= CAUSE_SHARE * rate:
            return CAUSE_CACHE
        return CAUSE_OUTSIDE

    def _reserved_cause(self, series: Series) -> str | None:
        allocated = self._others.get((ALLOCATED, series.gpu, series.pid))
        if allocated is not None and allocated.rate() >= CAUSE_SHARE * series.rate():
            return CAUSE_TENSORS
        return CAUSE_CACHE

    # -- output

    def status(self) -> list[SeriesStatus]:
        """Every tracked series, GPUs first."""
        everything = [*self._gpus.values(), *self._processes.values(), *self._others.values()]
        return [series.status() for series in everything]

    def series_count(self) -> int:
        """How many series are tracked (bounded: vanished ones are forgotten)."""
        return len(self._gpus) + len(self._processes) + len(self._others)
