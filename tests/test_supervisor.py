"""The supervisor: events reach the policy, decisions reach clients, results the journal."""

from __future__ import annotations

import dataclasses
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from structlog.testing import capture_logs

from tests.factories import finding
from watchdog.config import PolicySettings
from watchdog.control.registry import AllocatorReport, CommandResult, Registration
from watchdog.daemon.state import DaemonState
from watchdog.daemon.supervisor import Supervisor
from watchdog.detectors.events import Event
from watchdog.policy.engine import Policy
from watchdog.policy.journal import Journal
from watchdog.policy.replay import decisions_over
from watchdog.policy.rules import DEFAULT_LADDER
from watchdog.samples import NVML, SIMULATED, DeviceSample, GpuProcessSample, Reading


class FakeEngine:
    """Returns the events the test queues, once each."""

    def __init__(self) -> None:
        self.queued: list[Event] = []
        self.allocator: list[tuple[float, int, int, int, int]] = []
        self.plans: list[tuple[Any, ...]] = []
        self.watched: set[int] = set()
        """GPUs whose processes' memory the engine watches (none: device figures only)."""

    def observe(self, reading: Reading) -> list[Event]:
        events, self.queued = self.queued, []
        return events

    def observe_allocator(
        self, t: float, gpu: int, pid: int, allocated: int, reserved: int
    ) -> list[Event]:
        self.allocator.append((t, gpu, pid, allocated, reserved))
        return []

    def plan_growth(
        self, t: float, gpu: int, pid: int, for_s: float, up_to: int | None
    ) -> list[Event]:
        self.plans.append((t, gpu, pid, for_s, up_to))
        return []

    def end_growth(self, t: float, pid: int) -> list[Event]:
        self.plans.append((t, pid))
        return []

    def status(self) -> list[Any]:
        return []

    def process_started(self, pid: int) -> int | None:
        return None

    def watches_processes(self, gpu: int) -> bool:
        return gpu in self.watched


@dataclass
class FakeClient:
    pid: int
    uid: int
    registration: Registration
    started: int | None = None

    @property
    def job(self) -> str:
        return self.registration.job


@dataclass
class FakeServer:
    """Answers every command with the result the test chooses."""

    clients_: list[FakeClient]
    ok: bool = True
    answer: bool = True
    """False: commands stay in flight (their futures are kept in ``pending``)."""
    sent: list[tuple[str, str]] = field(default_factory=list)
    pending: list[Future[list[CommandResult]]] = field(default_factory=list)

    def clients(self) -> list[FakeClient]:
        return self.clients_

    def send_command_async(
        self, target: str, command: str, uid: int
    ) -> Future[list[CommandResult]]:
        self.sent.append((target, command))
        future: Future[list[CommandResult]] = Future()
        if not self.answer:
            self.pending.append(future)
            return future
        future.set_result(
            [
                CommandResult(
                    pid=42,
                    job=target,
                    rank=0,
                    command=command,
                    ok=self.ok,
                    error="" if self.ok else "disk full",
                )
            ]
        )
        return future


def _supervisor(
    tmp_path: Path, server: FakeServer | None, dry_run: bool = False, origin: str = NVML
) -> tuple[Supervisor, FakeEngine, Journal]:
    engine = FakeEngine()
    journal = Journal(tmp_path)
    policy = Policy(
        DEFAULT_LADDER, cooldown_s=600, max_restarts=1, restart_window_s=86400, dry_run=dry_run
    )
    state = DaemonState(origin=origin)
    state.apply(Reading(t=0, devices=[DeviceSample(0, "GPU-x", "A100", 100, 10)]))
    wall = iter(range(1000, 100000, 10))
    sup = Supervisor(
        engine,
        policy,
        journal,
        state,
        server,
        wall=lambda: float(next(wall)),
        restart_budget=(1, 86400.0),
    )
    return sup, engine, journal


def _client(device: str = "cuda:0") -> FakeClient:
    return FakeClient(pid=42, uid=0, registration=Registration(job="train", rank=0, device=device))


def test_leak_on_a_registered_process_is_acted_on_and_journalled(tmp_path: Path) -> None:
    """A leak on a client's pid sends the ladder's commands, one at a time, results journalled."""
    server = FakeServer([_client()])
    sup, engine, journal = _supervisor(tmp_path, server)
    engine.queued = [finding(0, tto=600.0, cause="tensors_kept_alive")]
    sup.on_reading(Reading(t=0))
    sup.on_reading(Reading(t=1))
    assert server.sent == [("train", "dump_snapshot"), ("train", "checkpoint_and_restart")]
    types = [entry["type"] for entry in journal.read()]
    assert types.count("finding") == 1
    assert types.count("result") == 2
    text = generate_latest(_registry(sup)).decode()
    assert 'gpu_watchdog_actions_total{action="checkpoint_and_restart",outcome="send"} 1.0' in text
    assert 'gpu_watchdog_restart_budget_remaining{training_job="train"} 0.0' in text
    assert 'gpu_watchdog_job_restarts{training_job="train"} 1.0' in text
    assert 'gpu_watchdog_findings_total{kind="leak",source="nvml",state="raised"} 1.0' in text


def test_a_simulated_gpus_process_is_no_registered_job_with_the_same_pid(tmp_path: Path) -> None:
    """A trace's pid names a made-up process: a real job that happens to have that pid is
    not acted on; the job's own host series, watched for real, still is."""
    server = FakeServer([_client()])
    sup, engine, _ = _supervisor(tmp_path, server, origin=SIMULATED)
    engine.queued = [finding(0, tto=600.0)]  # the simulated GPU's process 42
    sup.on_reading(Reading(t=0))
    assert server.sent == []
    engine.queued = [dataclasses.replace(finding(1, tto=600.0), series="host_rss")]
    sup.on_reading(Reading(t=1))
    assert server.sent[0] == ("train", "dump_snapshot")


def test_a_simulated_gpus_leak_singled_out_on_a_trace_pid_spares_a_job_with_that_pid(
    tmp_path: Path,
) -> None:
    """The GPU's leak concerns the trace process singled out on it, not a registered job on
    that GPU that happens to share its pid; a job's own (allocator) finding still counts."""
    server = FakeServer([_client()])
    sup, engine, _ = _supervisor(tmp_path, server, origin=SIMULATED)
    engine.queued = [finding(0, tto=600.0), finding(0, tto=600.0, pid=None)]
    sup.on_reading(Reading(t=0))
    assert server.sent == []
    engine.queued = [dataclasses.replace(finding(1, tto=600.0), series="allocated")]
    sup.on_reading(Reading(t=1))
    assert server.sent[0] == ("train", "dump_snapshot")


def test_a_simulated_daemon_reads_host_memory_of_registered_clients_only(
    tmp_path: Path,
) -> None:
    """The simulated GPU's pids are not looked up in /proc: they name no process here."""
    for origin, expected in ((SIMULATED, [42]), (NVML, [42, 777])):
        sup, _, _ = _supervisor(tmp_path / origin, FakeServer([_client()]), origin=origin)
        sup._state.apply(Reading(t=1, processes=[GpuProcessSample(gpu=0, pid=777, used_bytes=5)]))
        assert sup.monitored_pids() == expected


def test_a_simulated_daemon_counts_its_findings_as_simulated(tmp_path: Path) -> None:
    """findings_total carries the source like the GPU figures it was found in."""
    sup, engine, _ = _supervisor(tmp_path, FakeServer([]), origin=SIMULATED)
    engine.queued = [finding(0, tto=600.0)]
    sup.on_reading(Reading(t=0))
    text = generate_latest(_registry(sup)).decode()
    assert 'gpu_watchdog_findings_total{kind="leak",source="simulated",state="raised"} 1.0' in text


def test_dry_run_sends_nothing(tmp_path: Path) -> None:
    """In dry run the decisions are journalled and counted, and no command is sent."""
    server = FakeServer([_client()])
    sup, engine, journal = _supervisor(tmp_path, server, dry_run=True)
    engine.queued = [finding(0, tto=600.0, cause="tensors_kept_alive")]
    sup.on_reading(Reading(t=0))
    assert server.sent == []
    outcomes = {e["outcome"] for e in journal.read() if e["type"] == "decision"}
    assert outcomes == {"dry_run"}


def test_unregistered_process_gets_no_command(tmp_path: Path) -> None:
    """A leak on a pid with no client is journalled, but nothing can be sent to it."""
    server = FakeServer([])
    sup, engine, journal = _supervisor(tmp_path, server)
    engine.queued = [finding(0, tto=600.0, cause="tensors_kept_alive", pid=777)]
    sup.on_reading(Reading(t=0))
    assert server.sent == []
    assert [e["type"] for e in journal.read()] == ["finding"]


def test_device_level_leak_targets_clients_on_that_gpu(tmp_path: Path) -> None:
    """A GPU-level finding reaches the jobs whose device is that GPU, by CUDA index."""
    server = FakeServer([_client("cuda:0")])
    sup, engine, _ = _supervisor(tmp_path, server)
    engine.queued = [finding(0, tto=600.0, cause="tensors_kept_alive", pid=None)]
    sup.on_reading(Reading(t=0))
    assert server.sent[0] == ("train", "dump_snapshot")


def test_a_gpu_level_leak_with_a_culprit_spares_the_other_jobs_on_the_gpu(tmp_path: Path) -> None:
    """Raised on the GPU and on one job's process at once: only that job is acted on.

    Replay (``decisions_over``) decides the same: the culprit, not the GPU's other jobs.
    """
    leaky = FakeClient(pid=42, uid=0, registration=Registration(job="leaky", device="cuda:0"))
    healthy = FakeClient(pid=43, uid=0, registration=Registration(job="healthy", device="cuda:0"))
    server = FakeServer([leaky, healthy])
    sup, engine, _ = _supervisor(tmp_path, server)
    events = [finding(0, tto=1380.0, pid=None), finding(0, tto=1440.0, pid=42)]
    engine.queued = list(events)
    for t in range(4):
        sup.on_reading(Reading(t=t))
    assert {job for job, _ in server.sent} == {"leaky"}
    replayed = decisions_over(events, end_t=3.0, interval_s=1.0, settings=PolicySettings())
    assert {d.job for d in replayed} == {"pid:42"}


def test_a_host_memory_leak_makes_no_job_the_culprit_of_its_gpus_leak(tmp_path: Path) -> None:
    """Only GPU-memory findings single a process out: a job whose host RSS creeps is not
    restarted for a GPU leak that another (unregistered) process's memory makes."""
    job = FakeClient(pid=42, uid=0, registration=Registration(job="train", device="cuda:0"))
    server = FakeServer([job])
    sup, engine, _ = _supervisor(tmp_path, server)
    engine.queued = [
        dataclasses.replace(finding(0, tto=3 * 86400.0, pid=42), series="host_rss"),
        finding(0, tto=1000.0, pid=777),
        finding(0, tto=1000.0, pid=None),
    ]
    for t in range(4):
        sup.on_reading(Reading(t=t))
    # The host leak's own rung (a snapshot) is all the job gets.
    assert server.sent == [("train", "dump_snapshot")]


def test_allocator_reports_feed_detection_with_the_poll_clock(tmp_path: Path) -> None:
    """Allocator figures go to the engine at the latest poll time; CPU-only reports are ignored."""
    server = FakeServer([_client()])
    sup, engine, _ = _supervisor(tmp_path, server)
    sup.on_reading(Reading(t=12.5))
    sup.on_report(_client(), AllocatorReport(step=3, allocated_bytes=10, reserved_bytes=20))
    sup.on_report(_client(), AllocatorReport(step=3))
    sup.on_report(_client("cpu"), AllocatorReport(step=3, allocated_bytes=1, reserved_bytes=2))
    assert engine.allocator == [(12.5, 0, 42, 10, 20)]


def test_a_planned_growth_reaches_the_engine_and_its_absence_ends_it(tmp_path: Path) -> None:
    """Each heartbeat renews the plan at the poll clock; one without a plan ends it."""
    server = FakeServer([_client()])
    sup, engine, _ = _supervisor(tmp_path, server)
    sup.on_reading(Reading(t=12.5))
    sup.on_report(
        _client(), AllocatorReport(step=3, growth_planned_s=90.0, growth_up_to_bytes=1 << 30)
    )
    sup.on_report(_client(), AllocatorReport(step=4))
    sup.on_report(_client("cpu"), AllocatorReport(step=5, growth_planned_s=90.0))
    # A process on no GPU plans growth of its host memory: GPU -1.
    assert engine.plans == [(12.5, 0, 42, 90.0, 1 << 30), (12.5, 42), (12.5, -1, 42, 90.0, None)]


def test_a_plan_is_logged_when_it_starts_and_when_it_ends(tmp_path: Path) -> None:
    """One line each, not one per heartbeat."""
    server = FakeServer([_client()])
    sup, _, _ = _supervisor(tmp_path, server)
    with capture_logs() as logs:
        for planned in (600.0, 595.0, None, None):
            sup.on_report(_client(), AllocatorReport(step=1, growth_planned_s=planned))
    assert [entry["event"] for entry in logs] == ["growth_planned", "growth_plan_ended"]
    assert logs[0]["for_s"] == 600.0


def test_failed_command_is_journalled_and_frees_the_job(tmp_path: Path) -> None:
    """An error result is recorded and the job may receive its next command."""
    server = FakeServer([_client()], ok=False)
    sup, engine, journal = _supervisor(tmp_path, server)
    engine.queued = [finding(0, tto=600.0, cause="tensors_kept_alive")]
    sup.on_reading(Reading(t=0))
    sup.on_reading(Reading(t=1))
    results = [e for e in journal.read() if e["type"] == "result"]
    assert results[0]["ok"] is False
    assert results[0]["error"] == "disk full"
    assert len(server.sent) == 2


def test_monitored_pids_include_clients(tmp_path: Path) -> None:
    """Host memory is read for registered clients too, not only for NVML's GPU processes."""
    sup, _, _ = _supervisor(tmp_path, FakeServer([_client()]))
    assert sup.monitored_pids() == [42]


def _registry(sup: Supervisor) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(sup)  # type: ignore[arg-type]
    return registry


def test_schedule_runs_its_action_on_matching_jobs_within_guards(tmp_path: Path) -> None:
    """A fired schedule sends its action to each matching job once; cooldown stops a repeat."""
    from watchdog.policy.rules import parse_schedules

    other = FakeClient(pid=43, uid=0, registration=Registration(job="eval", rank=0))
    rank1 = FakeClient(pid=44, uid=0, registration=Registration(job="train", rank=1))
    server = FakeServer([_client(), rank1, other])
    sup, _, journal = _supervisor(tmp_path, server)
    [schedule] = parse_schedules([{"action": "empty_cache", "interval_s": 1800, "job": "tr*"}])
    sup.on_schedule(schedule)
    assert server.sent == [("train", "empty_cache")]
    sup.on_schedule(schedule)
    assert server.sent == [("train", "empty_cache")]
    reasons = [e["reason"] for e in journal.read() if e["type"] == "decision"]
    assert reasons == ["schedule: every 1800s -> empty_cache", "cooldown"]


def test_a_schedule_run_stopped_by_a_command_in_flight_is_journalled(tmp_path: Path) -> None:
    """Two schedules firing together: the second run is recorded as suppressed, every time."""
    from watchdog.policy.rules import parse_schedules

    server = FakeServer([_client()], answer=False)
    sup, _, journal = _supervisor(tmp_path, server)
    snapshot, empty = parse_schedules(
        [
            {"action": "dump_snapshot", "cron": "0 * * * *"},
            {"action": "empty_cache", "cron": "0 * * * *"},
        ]
    )
    sup.on_schedule(snapshot)
    sup.on_schedule(empty)
    sup.on_schedule(empty)  # the next hour, the snapshot still running
    assert server.sent == [("train", "dump_snapshot")]
    decisions = [
        (e["action"], e["outcome"], e["reason"]) for e in journal.read() if e["type"] == "decision"
    ]
    assert decisions[1:] == [("empty_cache", "suppressed", "in_flight")] * 2


def test_install_schedules_adds_jittered_coalescing_jobs(tmp_path: Path) -> None:
    """Each schedule becomes one APScheduler job with its trigger, jitter and misfire grace."""
    from apscheduler.schedulers.background import BackgroundScheduler

    from watchdog.policy.rules import parse_schedules

    sup, _, _ = _supervisor(tmp_path, FakeServer([]))
    schedules = parse_schedules(
        [
            {"action": "checkpoint_and_restart", "interval_s": 14400, "jitter_s": 300},
            {"action": "empty_cache", "cron": "*/30 * * * *", "jitter_s": 30},
        ]
    )
    scheduler = BackgroundScheduler(timezone="UTC")
    sup.install_schedules(scheduler, schedules)
    jobs = {job.id: job for job in scheduler.get_jobs()}
    assert set(jobs) == {"schedule-0", "schedule-1"}
    assert jobs["schedule-0"].trigger.interval.total_seconds() == 14400
    assert jobs["schedule-0"].trigger.jitter == 300
    assert jobs["schedule-1"].trigger.jitter == 30
    assert all(job.coalesce and job.max_instances == 1 for job in jobs.values())
    assert all(job.misfire_grace_time == 60 for job in jobs.values())
    # A reload: the same schedules keep their jobs (and timers); others replace them.
    scheduler.start(paused=True)
    try:
        due = {job.id: job.next_run_time for job in scheduler.get_jobs()}
        sup.install_schedules(scheduler, schedules)
        assert {job.id: job.next_run_time for job in scheduler.get_jobs()} == due
        # One schedule changed, one not: the unchanged one keeps its timer.
        changed = parse_schedules(
            [
                {"action": "checkpoint_and_restart", "interval_s": 7200},
                {"action": "empty_cache", "cron": "*/30 * * * *", "jitter_s": 30},
            ]
        )
        sup.install_schedules(scheduler, changed)
        now = {job.id: (job.args[0].action, job.next_run_time) for job in scheduler.get_jobs()}
        assert now["schedule-1"] == ("empty_cache", due["schedule-1"])
        assert now["schedule-0"][0] == "checkpoint_and_restart"
        assert scheduler.get_job("schedule-0").trigger.interval.total_seconds() == 7200
        sup.install_schedules(scheduler, changed[1:])
        (only,) = scheduler.get_jobs()
        assert (only.id, only.args[0].action) == ("schedule-1", "empty_cache")
    finally:
        scheduler.shutdown(wait=False)


def test_a_command_cut_by_the_daemon_s_stop_keeps_its_job_in_flight_after(
    tmp_path: Path,
) -> None:
    """SIGTERM while a checkpoint runs: the next daemon does not take it for answered."""
    from watchdog.control.server import STOPPING_ERROR
    from watchdog.policy.journal import ledger_from

    server = FakeServer([_client()], answer=False)
    sup, engine, journal = _supervisor(tmp_path, server)
    engine.queued = [finding(0, tto=600.0, cause="tensors_kept_alive")]
    sup.on_reading(Reading(t=0))
    (pending,) = server.pending
    command = server.sent[-1][1]
    # Rank 1 answered before the stop; rank 0 was still checkpointing when it came.
    pending.set_result(
        [
            CommandResult(
                pid=42, job="train", rank=0, command=command, ok=False, error=STOPPING_ERROR
            ),
            CommandResult(pid=43, job="train", rank=1, command=command, ok=True),
        ]
    )
    results = [e for e in journal.read() if e["type"] == "result"]
    assert [(e["pid"], e.get("unanswered")) for e in results] == [(43, None), (42, True)]
    sent_at = max(e["wall"] for e in journal.read() if e["type"] == "decision")
    ledger = ledger_from(journal.read(), unanswered_for_s=600.0)
    assert ledger.in_flight("train", sent_at + 300.0)
    assert not ledger.in_flight("train", sent_at + 601.0)


def test_a_reload_applies_the_journal_s_new_size_limits(tmp_path: Path) -> None:
    """policy.journal_max_bytes and journal_keep, changed by SIGHUP, rotate the next entries."""
    sup, _, journal = _supervisor(tmp_path, FakeServer([]))
    sup.reconfigure_policy(PolicySettings(journal_max_bytes=4096, journal_keep=1))
    for index in range(200):
        journal.append({"type": "note", "index": index, "pad": "x" * 40})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["journal.jsonl", "journal.jsonl.1"]
    assert journal.path.stat().st_size <= 4096
