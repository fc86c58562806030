"""Joins detection, policy and the control channel in the live daemon.

Readings go to the detection engine; its events go to the log, the journal
and the policy; the policy's decisions go to the log, the journal and, unless
suppressed or in dry run, to the training processes through the control
server. All of it under one lock, since polls and client reports arrive on
different threads. The decision logic itself lives in the pure engines.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

import structlog
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from watchdog.daemon.state import DaemonState
from watchdog.policy.engine import SEND, SUPPRESSED, Decision, JobRef, Policy
from watchdog.policy.journal import Journal, decision_entry
from watchdog.policy.rules import Schedule
from watchdog.samples import Reading

log = structlog.get_logger("watchdog.supervisor")

_CUDA_INDEX = re.compile(r"^cuda:(\d+)$")


class Supervisor:
    """Feeds readings and client reports through detection and policy, and carries out decisions.

    Args:
        engine: The detection engine (``observe``, ``observe_allocator``, ``status``).
        policy: The policy, its ledger already rebuilt from the journal.
        journal: The audit journal.
        state: The daemon state (to map CUDA devices to GPUs).
        server: The control server, or None when no client can be reached.
        wall: Wall clock for the journal and the guards.
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
    ) -> None:
        self._engine = engine
        self._policy = policy
        self._journal = journal
        self._state = state
        self._server = server
        self._wall = wall
        self._lock = threading.Lock()
        self._last_t = 0.0
        self._findings: Counter[tuple[str, str]] = Counter()
        self._actions: Counter[tuple[str, str]] = Counter()
        self._suppressed: Counter[tuple[str, str]] = Counter()
        self._results: Counter[tuple[str, str]] = Counter()
        self._restart_budget = restart_budget

    # --- inputs ---------------------------------------------------------------------------

    def on_reading(self, reading: Reading) -> None:
        """A poll's reading: detect, then decide."""
        with self._lock:
            self._last_t = max(self._last_t, reading.t)
            events = self._engine.observe(reading)
            self._take_events(events)
            decisions = self._policy.decide(reading.t, self._wall(), self._jobs)
        self._carry_out(decisions)

    def on_report(self, client: Any, report: Any) -> None:
        """A client's heartbeat: feed its allocator figures to detection."""
        if report.allocated_bytes is None or report.reserved_bytes is None:
            return
        gpu = self._gpu_of(client)
        if gpu is None:
            return
        with self._lock:
            events = self._engine.observe_allocator(
                self._last_t, gpu, client.pid, report.allocated_bytes, report.reserved_bytes
            )
            self._take_events(events)

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

    def install_schedules(self, scheduler: Any, schedules: tuple[Schedule, ...]) -> None:
        """Add an APScheduler job per schedule (coalescing, jittered, one at a time)."""
        for index, schedule in enumerate(schedules):
            trigger = (
                IntervalTrigger(seconds=schedule.interval_s, jitter=schedule.jitter_s or None)
                if schedule.interval_s
                else CronTrigger.from_crontab(schedule.cron, timezone="UTC")
            )
            if schedule.cron and schedule.jitter_s:
                trigger.jitter = schedule.jitter_s
            scheduler.add_job(
                self.on_schedule,
                trigger,
                args=[schedule],
                id=f"schedule-{index}",
                name=f"{schedule.action} ({schedule.match.job})",
                coalesce=True,
                max_instances=1,
                # A run missed by less than a minute (a busy host) still happens.
                misfire_grace_time=60,
            )

    def monitored_pids(self) -> list[int]:
        """GPU processes and registered clients: whose host memory to read."""
        pids = set(self._state.gpu_pids())
        if self._server is not None:
            pids.update(client.pid for client in self._server.clients())
        return sorted(pids)

    # --- internals ------------------------------------------------------------------------

    def _take_events(self, events: list[Any]) -> None:
        for event in events:
            self._findings[(event.kind, event.state)] += 1
            self._policy.observe(event)
            entry = {"type": "finding", "wall": self._wall(), **event.to_json()}
            self._journal.append(entry)
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

    def _jobs(self, gpu: int, pid: int | None) -> list[JobRef]:
        """The registered jobs a finding on (gpu, pid) concerns."""
        if self._server is None:
            return []
        clients = self._server.clients()
        if pid is not None:
            chosen = [c for c in clients if c.pid == pid]
        else:
            chosen = [c for c in clients if self._gpu_of(c) == gpu]
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
        future: Future[Any] = self._server.send_command_async(decision.job, decision.action, 0)
        future.add_done_callback(lambda done: self._on_done(decision, done))

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
        for result in results:
            self._record_result(decision, result.pid, result.ok, result.error, result.duration_s)

    def _record_result(
        self, decision: Decision, pid: int | None, ok: bool, error: str, duration_s: float | None
    ) -> None:
        """Count, journal and log one answer (or the failure to get one)."""
        self._results[(decision.action, "ok" if ok else "error")] += 1
        entry = {"type": "result", "wall": self._wall(), "action": decision.action}
        entry |= {"job": decision.job, "pid": pid, "ok": ok, "error": error}
        self._journal.append({**entry, "duration_s": duration_s})
        fields = {"action": decision.action, "job": decision.job, "pid": pid, "error": error}
        if ok:
            log.info("action_result", ok=True, **fields)
        else:
            log.error("action_failed", **fields)

    # --- metrics --------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        """Findings, actions, suppressions, command results, restart budgets, journal errors."""
        with self._lock:
            findings, actions = dict(self._findings), dict(self._actions)
            suppressed, results = dict(self._suppressed), dict(self._results)
        yield _counter(
            "findings", "Detector events, by finding and state.", ("kind", "state"), findings
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
            used = self._policy.ledger.restarts_since(job, since)
            restarts.add_metric([job], used)
            budget.add_metric([job], max(0, limit - used))
        yield budget
        yield restarts
        errors = CounterMetricFamily(
            "gpu_watchdog_journal_write_errors", "Audit journal entries that could not be written."
        )
        errors.add_metric([], self._journal.write_errors)
        yield errors


def _counter(
    name: str, documentation: str, labels: tuple[str, ...], values: dict[tuple[str, str], int]
) -> CounterMetricFamily:
    family = CounterMetricFamily(f"gpu_watchdog_{name}", documentation, labels=list(labels))
    for key, value in sorted(values.items()):
        family.add_metric(list(key), value)
    return family


def _user(uid: int) -> str:
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (KeyError, ImportError):
        return str(uid)
