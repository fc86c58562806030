"""Faults: a new process with an old pid inherits none of the old one's history or commands.

A process is (pid, start time). Each layer that keys state by pid is fed a
process, then another process under the same pid, and must treat the second
as new: detection series, the registry and its pending commands, the
supervisor's mapping of findings to jobs, the policy's guards, and traces.
The last test makes the kernel reuse a pid for real, in a pid namespace.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO
from control_helpers import RawPeer, wait_for
from fault_helpers import journal

from tests.factories import finding
from watchdog.config import DetectionSettings
from watchdog.control.registry import CommandResult, Registration
from watchdog.daemon.state import DaemonState
from watchdog.daemon.supervisor import Supervisor
from watchdog.detectors import DetectionEngine, Event
from watchdog.detectors.replay import replay_file
from watchdog.identity import start_ticks
from watchdog.policy.engine import SEND, JobRef, Policy
from watchdog.policy.journal import Journal
from watchdog.policy.rules import DEFAULT_LADDER
from watchdog.samples import DeviceSample, HostMemory, HostProcessSample, Reading
from watchdog.sources.simulated import SimulatedSource, load_steps

pytest_plugins = ["control_fixtures"]

GIB = 1 << 30
MIB = 1 << 20
PID = 4242
OLD, NEW = 1000, 2000
"""Start times (clock ticks since boot) of the old process and of the one that got its pid."""
FAST = DetectionSettings(
    bucket_s=1.0,
    warmup_s=5.0,
    leak_min_rise_bytes=64 * MIB,
    leak_min_rise_ratio=0.0,
    leak_extrapolation_short=100.0,
    leak_extrapolation=100.0,
    leak_clear_after_s=600.0,
)
"""Detection in seconds; a raised leak holds for 10 minutes once the floor stops rising."""


# --- identity ----------------------------------------------------------------------------------


def test_start_ticks_reads_starttime_after_an_odd_command_name(tmp_path: Path) -> None:
    """Field 22 of stat is found even when the command name holds spaces and parentheses."""
    after_comm = ["S", *[str(n) for n in range(4, 22)], "987654", "0", "0"]
    (tmp_path / "77").mkdir()
    (tmp_path / "77" / "stat").write_text(f"77 (py (x) y) {' '.join(after_comm)}\n")
    assert start_ticks(77, tmp_path) == 987654
    assert start_ticks(78, tmp_path) is None  # gone
    assert start_ticks(0, tmp_path) is None  # a peer in another pid namespace
    (tmp_path / "79").mkdir()
    (tmp_path / "79" / "stat").write_text("79 (cut")
    assert start_ticks(79, tmp_path) is None


def test_start_ticks_of_real_processes_stays_put_and_tells_them_apart() -> None:
    """A live process keeps its start time; a process started later has a later one."""
    mine = start_ticks(os.getpid())
    assert mine is not None
    assert start_ticks(os.getpid()) == mine
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        theirs = wait_for(lambda: start_ticks(child.pid), what="the child's stat")
        assert theirs >= mine
    finally:
        child.kill()
        child.wait()
    assert start_ticks(child.pid) is None


# --- detection ---------------------------------------------------------------------------------


def _host(t: float, rss: int, started: int | None) -> Reading:
    total = 16 * GIB
    return Reading(
        t=t,
        host_processes=[HostProcessSample(pid=PID, rss_bytes=rss, started=started)],
        host_memory=HostMemory(total_bytes=total, available_bytes=total - rss),
    )


def _feed_leaking_then_reused(
    reuse_at: float, end: float
) -> tuple[DetectionEngine, list[Event], list[Event]]:
    """Old process leaking 32 MiB/s on GPU 0 and in host RSS; from ``reuse_at`` a flat new one.

    The new process sits exactly where the old one stopped, so no memory heuristic
    (a fall, a gap) can tell them apart: only the start time does.
    """
    engine = DetectionEngine(FAST)
    before: list[Event] = []
    after: list[Event] = []
    level = 0
    t = 0.0
    while t <= end:
        reused = t >= reuse_at
        if not reused:
            level = 2 * GIB + int(t * 32 * MIB)
        events = engine.observe_step(t, [(0, level + GIB, 80 * GIB)], [(0, PID, level)])
        events += engine.observe(_host(t, level, NEW if reused else OLD))
        (after if reused else before).extend(events)
        t += 0.5
    return engine, before, after


def test_new_process_under_a_reused_pid_starts_with_no_history() -> None:
    """The old process's leaks are cleared at the reuse; the new one raises nothing."""
    engine, before, after = _feed_leaking_then_reused(reuse_at=60.0, end=240.0)
    raised = {(e.series, e.pid) for e in before if e.kind == "leak" and e.state == "raised"}
    assert {("process", PID), ("host_rss", PID)} <= raised
    cleared = [e for e in after if e.state == "cleared" and e.pid == PID]
    assert {e.series for e in cleared} == {"process", "host_rss"}
    assert all(e.t == 60.0 and "pid reused" in e.message for e in cleared)
    assert not [e for e in after if e.state == "raised"]
    assert engine.process_started(PID) == NEW
    assert [s for s in engine.status() if s.leak or s.near_oom] == []


def test_without_start_times_the_pid_alone_is_the_identity() -> None:
    """A source that cannot tell start times leaves series keyed by pid, as before."""
    engine = DetectionEngine(FAST)
    for step in range(120):
        engine.observe(_host(step * 0.5, 2 * GIB + step * 16 * MIB, None))
    assert engine.process_started(PID) is None
    assert [s.leak for s in engine.status() if s.series == "host_rss"] == [True]


def test_process_that_left_and_came_back_is_new() -> None:
    """A pid missing from a full process list has exited; showing again, it starts afresh."""
    engine = DetectionEngine(FAST)
    events: list[Event] = []
    for step in range(240):
        t = step * 0.5
        old = 2 * GIB + int(min(t, 60.0) * 32 * MIB)
        if t < 60.0:
            processes = [(0, PID, old), (0, 7, GIB)]
        elif t == 60.0:
            processes = [(0, 7, GIB)]  # the gap: the pid's process exited
        else:
            processes = [(0, PID, old), (0, 7, GIB)]  # a new one with the pid, at the old level
        events += engine.observe_step(t, [(0, old + 2 * GIB, 80 * GIB)], processes)
    mine = [(e.t, e.state) for e in events if e.pid == PID and e.kind == "leak"]
    assert [state for _, state in mine] == ["raised", "cleared"]
    assert mine[1][0] == 60.0


def test_identity_of_a_pid_is_dropped_once_its_process_is_gone() -> None:
    """After the process exits, the pid names nobody: the next process is simply new."""
    engine = DetectionEngine(FAST)
    engine.observe(_host(0.0, GIB, OLD))
    assert engine.process_started(PID) == OLD
    engine.observe(Reading(t=1.0, host_processes=[], host_memory=HostMemory(16 * GIB, 15 * GIB)))
    assert engine.process_started(PID) is None
    assert engine.series_count() == 0


# --- traces: replay and the simulated GPU agree ---------------------------------------------


def _trace(path: Path, gap: str) -> Path:
    """Pid 77 leaks 32 MiB/s for a minute, is absent at t=60, then a flat process has it.

    ``gap`` "other": the step at 60 lists pid 88 only (77 exited). "none": it lists no
    process (processes not sampled then). Process rows come every other second, as in
    a recording where processes are polled less often than the device.
    """
    rows = ["t,gpu,pid,used_bytes,total_bytes"]
    for step in range(241):
        t = step * 0.5
        level = 2 * GIB + int(min(t, 60.0) * 32 * MIB)
        rows.append(f"{t:g},0,,{level + GIB},{80 * GIB}")
        if step % 4 and t != 60.0:
            continue
        if t != 60.0 or gap == "other":
            rows.append(f"{t:g},0,88,{GIB},")
        if t != 60.0:
            rows.append(f"{t:g},0,77,{level},")
    path.write_text("\n".join(rows) + "\n")
    return path


def _played(trace: Path) -> list[tuple[float, str, str, int | None]]:
    """Events of the simulated GPU playing ``trace``, as the live daemon would see them."""
    steps = load_steps(str(trace))
    now = [0.0]
    source = SimulatedSource(steps, interval_s=0.5, clock=lambda: now[0])
    engine = DetectionEngine(FAST)
    events = []
    for step in steps:
        now[0] = step.t
        events += engine.observe(source.poll())
    return [(e.t, e.kind, e.state, e.pid) for e in events]


@pytest.mark.parametrize("gap", ["other", "none"])
def test_trace_pid_gap_means_the_same_live_and_in_replay(tmp_path: Path, gap: str) -> None:
    """A pid left out of a step that lists processes is a new process later; replay = live."""
    trace = _trace(tmp_path / "t.csv", gap)
    replayed = [(e.t, e.kind, e.state, e.pid) for e in replay_file(trace, FAST).events]
    assert _played(trace) == replayed
    mine = [(t, state) for t, kind, state, pid in replayed if pid == 77 and kind == "leak"]
    if gap == "other":  # 77 exited at 60: its leak ends there and the new 77 raises nothing
        assert mine == [(mine[0][0], "raised"), (60.0, "cleared")]
    else:  # not sampled at 60: the pid's process goes on, leak and all
        assert [state for _, state in mine] == ["raised"]


# --- the registry ------------------------------------------------------------------------------


@pytest.fixture
def start_times(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """What the server reads as the start time of the next connecting process (this one)."""
    current = [OLD]
    monkeypatch.setattr("watchdog.control.server.start_ticks", lambda pid, root: current[0])
    return current


def test_new_process_with_the_pid_never_gets_the_old_ones_command(
    server_factory: Any, short_dir: Path, start_times: list[int]
) -> None:
    """A command pending for the old process fails with it; the new process never sees it."""
    server = server_factory()
    old = RawPeer(server.socket_path)
    assert old.register(job="old-job")["type"] == "registered"
    pending = server.send_command_async(os.getpid(), "checkpoint", 0)
    assert old.recv()["type"] == "command"  # delivered, and never answered
    start_times[0] = NEW
    new = RawPeer(server.socket_path)
    assert new.register(job="new-job")["type"] == "registered"
    [result] = pending.result(10)
    assert (result.ok, result.job) == (False, "old-job")
    assert "disconnected" in result.error
    new.send({"type": "ping", "id": 1})
    assert new.recv()["type"] == "pong"  # nothing was queued before it
    assert old.closed_by_server()
    [client] = server.clients()
    assert (client.job, client.started) == ("new-job", NEW)
    left = [kw for _, event, kw in _calls(server) if event == "control_client_left"]
    assert [kw["reason"] for kw in left] == ["pid reused by a new process"]


def test_same_process_registering_again_is_a_replacement(
    server_factory: Any, short_dir: Path, start_times: list[int]
) -> None:
    """Same pid and start time (an exec'd image, a second attach) replaces, not reuses."""
    server = server_factory()
    first = RawPeer(server.socket_path)
    first.register(job="job")
    second = RawPeer(server.socket_path)
    second.register(job="job")
    assert first.closed_by_server()
    left = [kw for _, event, kw in _calls(server) if event == "control_client_left"]
    assert [kw["reason"] for kw in left] == ["replaced by a new registration"]


def _calls(server: Any) -> list[tuple[str, str, dict[str, Any]]]:
    return [(c.method_name, c.kwargs.get("event", ""), c.kwargs) for c in server.log_calls]


# --- supervisor and policy ---------------------------------------------------------------------


class _Engine:
    """Returns queued events; knows one pid's start time."""

    def __init__(self, started: int | None) -> None:
        self.queued: list[Event] = []
        self.started = started

    def observe(self, reading: Reading) -> list[Event]:
        events, self.queued = self.queued, []
        return events

    def observe_allocator(self, *args: Any) -> list[Event]:
        return []

    def plan_growth(self, *args: Any) -> list[Event]:
        return []

    def end_growth(self, *args: Any) -> list[Event]:
        return []

    def status(self) -> list[Any]:
        return []

    def process_started(self, pid: int) -> int | None:
        return self.started if pid == PID else None


@dataclass
class _Client:
    pid: int
    uid: int
    registration: Registration
    started: int | None

    @property
    def job(self) -> str:
        return self.registration.job


@dataclass
class _Server:
    clients_: list[_Client]
    sent: list[tuple[str, str]] = field(default_factory=list)

    def clients(self) -> list[_Client]:
        return self.clients_

    def send_command_async(
        self, target: str, command: str, uid: int, **options: Any
    ) -> Future[list[CommandResult]]:
        self.sent.append((target, command))
        future: Future[list[CommandResult]] = Future()
        future.set_result([CommandResult(pid=PID, job=target, rank=0, command=command, ok=True)])
        return future


@pytest.mark.parametrize(
    ("finding_of", "client_is", "acted"),
    [(OLD, NEW, False), (OLD, OLD, True), (None, NEW, True), (OLD, None, True)],
)
def test_finding_goes_only_to_the_process_it_is_about(
    tmp_path: Path, finding_of: int | None, client_is: int | None, acted: bool
) -> None:
    """A finding on the old process is not acted on through a new client holding its pid."""
    engine = _Engine(started=finding_of)
    server = _Server([_Client(PID, 0, Registration(job="new-job", device="cuda:0"), client_is)])
    policy = Policy(DEFAULT_LADDER, cooldown_s=600, max_restarts=1, restart_window_s=86400)
    supervisor = Supervisor(engine, policy, Journal(tmp_path), DaemonState(), server)
    engine.queued = [finding(0.0, pid=PID)]
    supervisor.on_reading(Reading(t=0.0, devices=[DeviceSample(0, "GPU-x", "A100", 100, 10)]))
    assert bool(server.sent) is acted


def test_new_job_on_a_reused_pid_inherits_no_cooldown() -> None:
    """Guards are per job: another job's process with the old pid is acted on at once."""
    policy = Policy(DEFAULT_LADDER, cooldown_s=600, max_restarts=1, restart_window_s=86400)
    policy.observe(finding(0.0, pid=PID))
    [first] = policy.decide(0.0, 1000.0, lambda gpu, pid, series: [JobRef("old-job")])
    assert (first.action, first.outcome) == ("dump_snapshot", SEND)
    policy.ledger.finished("old-job")
    policy.observe(finding(10.0, pid=PID, state="cleared"))  # the old process went away
    policy.observe(finding(20.0, pid=PID))  # the new one with its pid leaks too
    again = policy.decide(20.0, 1020.0, lambda gpu, pid, series: [JobRef("old-job")])
    assert [(d.action, d.reason) for d in again] == [("dump_snapshot", "cooldown")]
    other = policy.decide(20.0, 1020.0, lambda gpu, pid, series: [JobRef("new-job")])
    assert [(d.action, d.outcome) for d in other] == [("dump_snapshot", SEND)]


# --- real processes, a real pid reused ---------------------------------------------------------


@pytest.fixture
def pid_namespace() -> list[str]:
    """The command prefix that runs a program as pid 1 of a new pid namespace; skips without."""
    unshare = shutil.which("unshare")
    prefix = [unshare or "unshare", "--pid", "--fork", "--mount-proc"]
    works = (
        unshare is not None
        and os.geteuid() == 0
        and subprocess.run(
            [*prefix, "true"], capture_output=True, timeout=30, check=False
        ).returncode
        == 0
    )
    if not works:
        if os.environ.get("WATCHDOG_REQUIRE_TOOLS"):
            pytest.fail("pid namespaces are required here (WATCHDOG_REQUIRE_TOOLS is set)")
        pytest.skip("needs root and unshare(1) with pid namespaces")
    return prefix


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_kernel_reuses_a_pid_for_another_job(pid_namespace: list[str], short_dir: Path) -> None:
    """A leaking job is killed and its pid given to a new job: the new job gets nothing."""
    run = subprocess.run(
        [
            *pid_namespace,
            sys.executable,
            str(REPO / "tests" / "pid_reuse_launcher.py"),
            str(short_dir),
        ],
        capture_output=True,
        text=True,
        timeout=200,
        cwd=REPO,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    pid = summary["pid"]
    assert summary["a"] == summary["b"] == pid  # the kernel gave B the pid A had
    a_out = (short_dir / "a.out").read_text()
    b_out = (short_dir / "b.out").read_text()
    assert "checkpoint end" in a_out  # the old job was acted on, so the ladder works ...
    assert "registered 1" in b_out
    assert "checkpoint" not in b_out  # ... and the new job, on the same pid, got nothing
    entries = journal(short_dir)
    assert not [e for e in entries if e.get("job") == "new-job"]
    mine = [
        (e["kind"], e["state"], e["message"])
        for e in entries
        if e.get("type") == "finding" and e.get("pid") == pid
    ]
    assert [m[:2] for m in mine] == [("leak", "raised"), ("leak", "cleared")]
    assert "pid reused by a new process" in mine[1][2]
