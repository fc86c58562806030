"""Joins detection, policy and the control channel in the live daemon.

Readings go to the detection engine; its events go to the log, the journal
and the policy; the policy's decisions go to the log, the journal and, unless
suppressed or in dry run, to the training processes through the control
server. Client heartbeats and departures go to the stall detector (hung
jobs, lost ranks), whose findings also make the daemon ask the processes
concerned for their stacks; every poll, the latest readings go to the orphan
detector. All of it under one lock, since polls and client reports arrive on
different threads. The decision logic itself lives in the pure detectors and
engines.
"""

from __future__ import annotations

import functools
import itertools
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import structlog
from apscheduler.triggers.interval import IntervalTrigger
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from watchdog.control.server import STOPPING_ERROR
from watchdog.daemon import hang_metrics, stacks
from watchdog.daemon.state import DaemonState
from watchdog.detectors.events import PROCESS, RAISED
from watchdog.detectors.orphans import ORPHANED_MEMORY, OrphanDetector
from watchdog.detectors.stall import RANK_LOST, STALLED, StallDetector
from watchdog.policy.engine import SEND, SUPPRESSED, Decision, JobRef, Policy
from watchdog.policy.journal import Journal, decision_entry
from watchdog.policy.rules import Schedule, cron_trigger
from watchdog.samples import SIMULATED, Reading
from watchdog.sources.host import process_exited, sees_host_pids

log = structlog.get_logger("watchdog.supervisor")

_CUDA_INDEX = re.compile(r"^cuda:(\d+)$")
GROUP_RESTART = "restart_group"
STACKS_TIMEOUT_S = 30.0
"""A stack dump is answered by the client's background thread at once; a client that
does not answer in this long has a stuck background thread too."""


class Supervisor:
    """Feeds readings and client reports through detection and policy, and carries out decisions.

    Args:
        engine: The detection engine (``observe``, ``observe_allocator``, ``status``,
            ``watches_processes``...).
        policy: The policy, its ledger already rebuilt from the journal.
        journal: The audit journal.
        state: The daemon state (to map CUDA devices to GPUs).
        server: The control server, or None when no client can be reached.
        wall: Wall clock for the journal and the guards.
        restart_budget: (max_restarts, restart_window_s) of the policy, for its metrics.
        detection: The detection settings (stall and orphan thresholds); defaults if None.
        clock: Monotonic clock of the stall and orphan detectors.
        proc_root: procfs, to tell whether the host's pid namespace is visible.
        exited: Whether a process (pid, start time) has exited (or does so in a moment).
    """

    def __init__(
        self,
        engine: Any,
        policy: Policy,
        journal: Journal,
        state: DaemonState,
        server: Any = None,
        wall: Callable[[], float] = time.time,
        restart_budget: tuple[int, float] = (3, 86400.0),
        detection: Any = None,
        clock: Callable[[], float] = time.monotonic,
        proc_root: Path = Path("/proc"),
        exited: Callable[[int, int | None], bool] = process_exited,
    ) -> None:
        self._engine = engine
        self._policy = policy
        self._journal = journal
        self._state = state
        self._server = server
        self._wall = wall
        self._lock = threading.Lock()
        self._installed_schedules: tuple[Any, list[tuple[Schedule, str]]] | None = None
        """The scheduler and, per schedule installed on it, its APScheduler job's id."""
        self._last_t = 0.0
        self._findings: Counter[tuple[str, str]] = Counter()
        self._actions: Counter[tuple[str, str]] = Counter()
        self._suppressed: Counter[tuple[str, str]] = Counter()
        self._results: Counter[tuple[str, str]] = Counter()
        self._restart_budget = restart_budget
        self._clock = clock
        self._exited = exited
        self._stalls, self._orphans = _hang_detectors(detection, proc_root)
        # Orphans are judged on the state's latest readings, but only on kinds that some
        # source has reported: an empty process list that nobody polled explains nothing.
        self._reported: set[str] = set()
        self._planning: set[int] = set()
        """pids whose last report planned a growth (logged when a plan starts and ends)."""
        self._stack_requests: list[tuple[int, Any]] = []

    # --- inputs ---------------------------------------------------------------------------

    def on_reading(self, reading: Reading) -> None:
        """A poll's reading: detect, then decide."""
        with self._lock:
            self._last_t = max(self._last_t, reading.t)
            events = self._engine.observe(reading)
            self._take_events(events)
            now = self._clock()
            self._take_events(self._stalls.tick(now))
            self._take_events(self._judge_orphans(reading, now))
            decisions = self._decide(reading.t)
        self._request_stacks()
        self._carry_out(decisions)

    def on_report(self, client: Any, report: Any) -> None:
        """A client's heartbeat: its step to stall detection, its allocator figures and the
        growth it plans (``Watchdog.expect_growth``) to leaks."""
        gpu = self._gpu_of(client)
        registration = client.registration
        with self._lock:
            self._take_events(
                self._stalls.heartbeat(
                    self._clock(),
                    client.pid,
                    client.job,
                    report.step,
                    rank=registration.rank,
                    world_size=registration.world_size,
                    gpu=-1 if gpu is None else gpu,
                )
            )
            if gpu is not None and None not in (report.allocated_bytes, report.reserved_bytes):
                events = self._engine.observe_allocator(
                    self._last_t, gpu, client.pid, report.allocated_bytes, report.reserved_bytes
                )
                self._take_events(events)
            if report.growth_planned_s is not None:
                # A process on no GPU (yet) plans growth of its host memory: gpu -1.
                if client.pid not in self._planning:
                    self._planning.add(client.pid)
                    log.info(
                        "growth_planned",
                        pid=client.pid,
                        job=client.job,
                        gpu=gpu,
                        for_s=report.growth_planned_s,
                        up_to_bytes=report.growth_up_to_bytes,
                    )
                self._take_events(
                    self._engine.plan_growth(
                        self._last_t,
                        -1 if gpu is None else gpu,
                        client.pid,
                        report.growth_planned_s,
                        report.growth_up_to_bytes,
                    )
                )
            else:
                if client.pid in self._planning:
                    self._planning.discard(client.pid)
                    log.info("growth_plan_ended", pid=client.pid, job=client.job)
                self._take_events(self._engine.end_growth(self._last_t, client.pid))
        self._request_stacks()

    def on_leave(self, client: Any, detached: bool, error: str, peer_gone: bool = True) -> None:
        """A client's connection closed: a rank of a multi-rank job may have died.

        ``peer_gone``: the process closed it (False: the daemon dropped a live, misbehaving
        or silent client, which is no death).
        """
        # A clean goodbye needs no look at the process; without one, wait a moment for it to die.
        gone = peer_gone and not detached and self._exited(client.pid, client.started)
        with self._lock:
            self._planning.discard(client.pid)
            self._take_events(
                self._stalls.left(
                    self._clock(), client.pid, detached=detached, gone=gone, error=error
                )
            )
            decisions = self._decide(self._last_t)
        self._request_stacks()
        self._carry_out(decisions)

    def on_request_sent(self, requester_uid: int, command: str, clients: list[Any]) -> None:
        """A command someone sent by hand (``gpu-watchdog send``): journalled, for the audit."""
        wall = self._wall()
        for client in clients:
            self._journal.append(
                {
                    "type": "request",
                    "wall": wall,
                    "command": command,
                    "job": client.job,
                    "pid": client.pid,
                    "rank": client.registration.rank,
                    "requester_uid": requester_uid,
                }
            )

    def on_request_done(self, requester_uid: int, results: list[Any]) -> None:
        """The results of a command sent by hand: journalled, apart from the policy's."""
        wall = self._wall()
        for result in results:
            self._journal.append(
                {
                    "type": "request_result",
                    "wall": wall,
                    "command": result.command,
                    "job": result.job,
                    "pid": result.pid,
                    "ok": result.ok,
                    "error": result.error,
                    "duration_s": result.duration_s,
                    "requester_uid": requester_uid,
                }
            )

    def detection_status(self) -> list[Any]:
        """The detection engine's per-series status, read under the lock."""
        with self._lock:
            return list(self._engine.status())

    def on_schedule(self, schedule: Schedule) -> None:
        """A schedule fired: its action for every registered job it matches, through the guards."""
        if self._server is None:
            return
        label = (
            f"every {schedule.interval_s:g}s" if schedule.interval_s else f"cron {schedule.cron}"
        )
        decisions = []
        with self._lock:
            wall = self._wall()
            seen: set[str] = set()
            for client in self._server.clients():
                gpu = self._gpu_of(client)
                user = _user(client.uid)
                if client.job in seen or not schedule.match.matches(client.job, user, gpu):
                    continue
                seen.add(client.job)
                decision = self._policy.scheduled(
                    schedule.action,
                    JobRef(client.job, user),
                    -1 if gpu is None else gpu,
                    self._last_t,
                    wall,
                    reason=f"schedule: {label} -> {schedule.action}",
                )
                if decision is not None:
                    decisions.append(decision)
        self._carry_out(decisions)

    def reconfigure_policy(self, settings: Any) -> None:
        """Apply new policy settings (SIGHUP); findings, history and budgets carry over."""
        with self._lock:
            self._policy.reconfigure(settings)
            self._restart_budget = (settings.max_restarts, settings.restart_window_s)
        self._journal.set_limits(settings.journal_max_bytes, settings.journal_keep)

    def install_schedules(self, scheduler: Any, schedules: tuple[Schedule, ...]) -> None:
        """Add an APScheduler job per schedule (coalescing, jittered, one at a time).

        Called again (a reload), it removes the jobs of schedules no longer given and
        adds jobs for new ones; a schedule given again keeps its job, and its timer.
        """
        installed = []
        if self._installed_schedules is not None and self._installed_schedules[0] is scheduler:
            installed = self._installed_schedules[1]
        wanted = list(schedules)
        kept: list[tuple[Schedule, str]] = []
        for schedule, job_id in installed:
            if schedule in wanted:
                wanted.remove(schedule)
                kept.append((schedule, job_id))
            else:
                scheduler.remove_job(job_id)
        used = {job_id for _, job_id in kept}
        free_ids = (f"schedule-{n}" for n in itertools.count() if f"schedule-{n}" not in used)
        for schedule in wanted:
            job_id = next(free_ids)
            kept.append((schedule, job_id))
            trigger = (
                IntervalTrigger(seconds=schedule.interval_s, jitter=schedule.jitter_s or None)
                if schedule.interval_s
                else cron_trigger(schedule.cron)
            )
            if schedule.cron and schedule.jitter_s:
                trigger.jitter = schedule.jitter_s
            scheduler.add_job(
                self.on_schedule,
                trigger,
                args=[schedule],
                id=job_id,
                name=f"{schedule.action} ({schedule.match.job})",
                coalesce=True,
                max_instances=1,
                # A run missed by less than a minute (a busy host) still happens.
                misfire_grace_time=60,
            )
        self._installed_schedules = (scheduler, kept)

    def monitored_pids(self) -> list[int]:
        """GPU processes and registered clients: whose host memory to read.

        A simulated GPU's pids come from its trace and name no process here: reading
        ``/proc`` for them would watch whatever unrelated process has that pid now.
        """
        simulated = self._state.origin == SIMULATED
        pids = set() if simulated else set(self._state.gpu_pids())
        if self._server is not None:
            pids.update(client.pid for client in self._server.clients())
        return sorted(pids)

    # --- internals ------------------------------------------------------------------------

    def _take_events(self, events: list[Any]) -> None:
        for event in events:
            self._findings[(event.kind, event.state)] += 1
            if event.kind != ORPHANED_MEMORY:  # held by no job: nothing for the policy to act on
                self._policy.observe(event)
            entry = {"type": "finding", "wall": self._wall(), **event.to_json()}
            self._journal.append(entry)
            if hasattr(event, "log_fields"):  # hangs and orphans: no memory-series figures
                log.warning(f"{event.kind}_{event.state}", **event.log_fields())
                self._want_stacks(event)
                continue
            log.warning(
                f"{event.kind}_{event.state}",
                gpu=event.gpu,
                pid=event.pid,
                series=event.series,
                rate_bytes_per_s=round(event.rate_bytes_per_s),
                time_to_oom_s=event.time_to_oom_s,
                cause=event.cause,
                message=event.message,
            )

    def _decide(self, t: float) -> list[Decision]:
        """The policy's decisions at ``t`` (under the lock)."""
        return self._policy.decide(t, self._wall(), self._jobs, self._watches_processes)

    def _watches_processes(self, gpu: int) -> bool:
        """Whether the engine watches the memory of processes on ``gpu``: there, a leak of
        the GPU's waits a while for the process behind it to be singled out."""
        return bool(self._engine.watches_processes(gpu))

    def _jobs(self, gpu: int, pid: int | None, series: str) -> list[JobRef]:
        """The registered jobs a finding on (gpu, pid) of a ``series`` kind concerns."""
        if self._server is None:
            return []
        simulated = self._state.origin == SIMULATED
        if series == PROCESS and simulated:
            # A process of the simulated GPU's trace: a registered job with its pid is
            # another process that happens to have the same number.
            return []
        clients = self._server.clients()
        if pid is not None:
            # Only the process the finding is about: one that got its pid after it exited
            # (both start times known, and different) is another process, maybe another job.
            known = self._engine.process_started(pid)
            chosen = [c for c in clients if c.pid == pid and _same_process(known, c.started)]
            lost_job = self._stalls.job_of_lost(pid)
            if not chosen and lost_job is not None:  # a dead rank: act on the ranks left
                chosen = [c for c in clients if c.job == lost_job]
        else:
            # The GPU's finding is the processes' singled out on it, where any are (an
            # unregistered one included: then no job here is to blame); else every job's.
            culprits = self._policy.culprits(gpu)
            if culprits and simulated:
                # Only a registered process's own finding names it, not a trace pid alike.
                culprits = self._policy.culprits(gpu, excluding=PROCESS)
                if not culprits:
                    return []  # the trace's processes are to blame: no job here
            chosen = [
                c for c in clients if self._gpu_of(c) == gpu and (not culprits or c.pid in culprits)
            ]
        refs = {c.job: JobRef(c.job, _user(c.uid)) for c in chosen}
        return list(refs.values())

    def _gpu_of(self, client: Any) -> int | None:
        registration = client.registration
        if registration.device_uuid:
            for device in self._state.snapshot().devices:
                if device.uuid == registration.device_uuid:
                    return device.gpu
        match = _CUDA_INDEX.match(registration.device or "")
        return int(match.group(1)) if match else None

    def _carry_out(self, decisions: list[Decision]) -> None:
        for decision in decisions:
            self._journal.append(decision_entry(decision))
            if decision.outcome == SUPPRESSED:
                self._suppressed[(decision.action, decision.reason)] += 1
            self._actions[(decision.action, decision.outcome)] += 1
            log.warning(
                "action",
                action=decision.action,
                outcome=decision.outcome,
                reason=decision.reason,
                job=decision.job,
                gpu=decision.gpu,
                pid=decision.pid,
                time_to_oom_s=decision.time_to_oom_s,
            )
            if decision.outcome == SEND:
                self._send(decision)

    def _send(self, decision: Decision) -> None:
        if self._server is None:
            self._finished(decision, [], "no control server")
            return
        args = self._command_args(decision)
        future: Future[Any] = self._server.send_command_async(
            decision.job, decision.action, 0, **({"args": args} if args else {})
        )
        future.add_done_callback(lambda done: self._on_done(decision, done))

    def _command_args(self, decision: Decision) -> dict[str, Any]:
        """Arguments of a command: for a group restart, the step each rank was seen stuck at.

        A rank that has stepped on by the time the command arrives refuses it, so a job
        that recovers in the meantime is not restarted.
        """
        if decision.action != GROUP_RESTART or self._server is None:
            return {}
        with self._lock:
            steps = {
                str(c.pid): step
                for c in self._server.clients()
                if c.job == decision.job and (step := self._stalls.step_of(c.pid)) is not None
            }
        return {"steps": steps}

    # --- hung jobs and orphaned memory ----------------------------------------------------

    def _judge_orphans(self, reading: Reading, now: float) -> list[Any]:
        """Orphan detection on the latest readings of every source (under the lock)."""
        kinds = {"processes": reading.processes, "host": reading.host_processes}
        self._reported.update(kind for kind, value in kinds.items() if value is not None)
        snapshot = self._state.snapshot()
        live = [c.pid for c in self._server.clients()] if self._server is not None else []
        # A simulated GPU's pids are made up: no host process can tell anything about them.
        hosted = "host" in self._reported and snapshot.origin != SIMULATED
        return list(
            self._orphans.observe(
                now,
                snapshot.devices,
                snapshot.processes if "processes" in self._reported else None,
                snapshot.host_processes if hosted else None,
                live,
            )
        )

    def _want_stacks(self, event: Any) -> None:
        """Ask for the stacks of a stalled process, or of the ranks left waiting on a dead one.

        Once per raised finding: a stall that lasts an hour is dumped once.
        """
        if event.state != RAISED or self._server is None:
            return
        if event.kind == STALLED:
            self._stack_requests.append((event.pid, event))
        elif event.kind == RANK_LOST:
            self._stack_requests += [(pid, event) for pid in event.waiting]

    def _request_stacks(self) -> None:
        """Send the ``dump_stacks`` requests gathered under the lock (never under it)."""
        with self._lock:
            requests, self._stack_requests = self._stack_requests, []
        for pid, event in requests:
            future: Future[Any] = self._server.send_command_async(
                pid, "dump_stacks", 0, timeout_s=STACKS_TIMEOUT_S
            )
            future.add_done_callback(functools.partial(self._log_stacks, pid, event))

    def _log_stacks(self, pid: int, event: Any, future: Future[Any]) -> None:
        """Log (and journal) where each thread of ``pid`` is, compactly."""
        try:
            results = future.result()
        except Exception as exc:  # the client left meanwhile
            log.warning("stacks_unavailable", pid=pid, job=event.job, error=str(exc))
            return
        for result in results:
            if not result.ok:
                log.warning("stacks_unavailable", pid=pid, job=event.job, error=result.error)
                continue
            threads = stacks.summarize(result.details)
            log.warning(
                "stacks",
                finding=event.kind,
                job=event.job,
                pid=pid,
                rank=result.rank,
                threads=threads,
            )
            self._journal.append(
                {
                    "type": "stacks",
                    "wall": self._wall(),
                    "finding": event.kind,
                    "job": event.job,
                    "pid": pid,
                    "rank": result.rank,
                    "threads": threads,
                }
            )

    def _on_done(self, decision: Decision, future: Future[Any]) -> None:
        try:
            results = future.result()
        except Exception as exc:  # unknown target, server stopping: the job is gone
            self._finished(decision, [], str(exc))
            return
        self._finished(decision, results, "")

    def _finished(self, decision: Decision, results: list[Any], error: str) -> None:
        with self._lock:
            self._policy.ledger.finished(decision.job)
        if error:
            self._record_result(decision, None, False, error, None)
        # The ranks the daemon's stop cut off last: read back, they leave the job in flight
        # whatever the others answered.
        for result in sorted(results, key=lambda r: r.error == STOPPING_ERROR):
            self._record_result(decision, result.pid, result.ok, result.error, result.duration_s)

    def _record_result(
        self, decision: Decision, pid: int | None, ok: bool, error: str, duration_s: float | None
    ) -> None:
        """Count, journal and log one answer (or the failure to get one)."""
        self._results[(decision.action, "ok" if ok else "error")] += 1
        entry = {"type": "result", "wall": self._wall(), "action": decision.action}
        entry |= {"job": decision.job, "pid": pid, "ok": ok, "error": error}
        if error == STOPPING_ERROR:
            # Cut by our own stop, not answered: the next daemon holds the job in flight.
            entry["unanswered"] = True
        self._journal.append({**entry, "duration_s": duration_s})
        fields = {"action": decision.action, "job": decision.job, "pid": pid, "error": error}
        if ok:
            log.info("action_result", ok=True, **fields)
        else:
            log.error("action_failed", **fields)

    # --- metrics --------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        """Findings, actions, suppressions, command results, restart budgets, journal errors,
        stalls, lost ranks and orphaned memory."""
        with self._lock:
            findings, actions = dict(self._findings), dict(self._actions)
            suppressed, results = dict(self._suppressed), dict(self._results)
        origin = self._state.origin
        yield _counter(
            "findings",
            "Detector events, by finding and state.",
            ("kind", "state", "source"),
            {(kind, state, origin): n for (kind, state), n in findings.items()},
        )
        yield _counter(
            "actions",
            "Policy decisions, by action and outcome (send, dry_run, suppressed).",
            ("action", "outcome"),
            actions,
        )
        yield _counter(
            "actions_suppressed",
            "Decisions a guard stopped, by action and guard.",
            ("action", "reason"),
            suppressed,
        )
        yield _counter(
            "action_results",
            "Answers of training processes to commands the policy sent.",
            ("action", "result"),
            results,
        )
        budget = GaugeMetricFamily(
            "gpu_watchdog_restart_budget_remaining",
            "Checkpoint-and-restarts the policy may still do for a registered job in its window.",
            labels=["training_job"],
        )
        restarts = GaugeMetricFamily(
            "gpu_watchdog_job_restarts",
            "Checkpoint-and-restarts of a registered job within the restart window.",
            labels=["training_job"],
        )
        limit, window = self._restart_budget
        jobs = {c.job for c in self._server.clients()} if self._server is not None else set()
        since = self._wall() - window
        for job in sorted(jobs):
            used = self._policy.ledger.restarts_since(job, since, self._policy.dry_run)
            restarts.add_metric([job], used)
            budget.add_metric([job], max(0, limit - used))
        yield budget
        yield restarts
        errors = CounterMetricFamily(
            "gpu_watchdog_journal_write_errors", "Audit journal entries that could not be written."
        )
        errors.add_metric([], self._journal.write_errors)
        yield errors
        clients = self._server.clients() if self._server is not None else []
        with self._lock:
            now = self._clock()
            hangs = (self._stalls.clients(now), self._stalls.lost_ranks())
            orphans = (self._orphans.active(), self._orphans.unattributed_bytes())
        yield from hang_metrics.families(clients, *hangs, *orphans, origin=origin)


def _counter(
    name: str, documentation: str, labels: tuple[str, ...], values: Mapping[Any, int]
) -> CounterMetricFamily:
    family = CounterMetricFamily(f"gpu_watchdog_{name}", documentation, labels=list(labels))
    for key, value in sorted(values.items()):
        family.add_metric(list(key), value)
    return family


def _hang_detectors(detection: Any, proc_root: Path) -> tuple[StallDetector, OrphanDetector]:
    """The stall and orphan detectors as the detection settings ask (defaults without)."""
    if detection is None:
        return StallDetector(), OrphanDetector(unattributed=sees_host_pids(proc_root))
    claim = detection.orphan_unattributed
    unattributed = claim == "on" or (claim == "auto" and sees_host_pids(proc_root))
    return (
        StallDetector(detection.stall_step_factor, detection.stall_min_s),
        OrphanDetector(
            detection.orphan_min_age_s, detection.orphan_unattributed_min_bytes, unattributed
        ),
    )


def _same_process(started: int | None, other: int | None) -> bool:
    """False only when both start times are known and differ: the pid was reused."""
    return started is None or other is None or started == other


def _user(uid: int) -> str:
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (KeyError, ImportError):
        return str(uid)
