"""The supervisor's side of hung jobs and orphans: stacks asked once, lost ranks, group restarts."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from watchdog.config import DetectionSettings, PolicySettings
from watchdog.control.registry import AllocatorReport, CommandResult, Registration
from watchdog.daemon.state import DaemonState
from watchdog.daemon.supervisor import Supervisor
from watchdog.detectors.events import Event
from watchdog.policy.engine import Policy
from watchdog.policy.journal import Journal
from watchdog.samples import DeviceSample, GpuProcessSample, Reading

STACKS = (
    "Thread 0x0000000000000001 (most recent call first):\n"
    '  File "/venv/torch/distributed/distributed_c10d.py", line 3252 in all_reduce\n'
    '  File "/job/train.py", line 59 in main\n'
)


class NoEngine:
    """A detection engine that never finds a leak."""

    def observe(self, reading: Reading) -> list[Event]:
        return []

    def observe_allocator(self, *args: Any) -> list[Event]:
        return []

    def plan_growth(self, *args: Any) -> list[Event]:
        return []

    def end_growth(self, *args: Any) -> list[Event]:
        return []

    def status(self) -> list[Any]:
        return []

    def process_started(self, pid: int) -> int | None:
        return None


@dataclass
class Client:
    pid: int
    registration: Registration
    uid: int = 1000
    started: int | None = None

    @property
    def job(self) -> str:
        return self.registration.job


@dataclass
class Server:
    """Records commands (with their arguments) and answers them at once."""

    clients_: list[Client]
    sent: list[tuple[Any, str, dict[str, Any]]] = field(default_factory=list)

    def clients(self) -> list[Client]:
        return list(self.clients_)

    def send_command_async(
        self, target: Any, command: str, uid: int, **kw: Any
    ) -> Future[list[CommandResult]]:
        self.sent.append((target, command, kw.get("args", {})))
        details = {"stacks": STACKS, "threads": {"0x0000000000000001": "MainThread"}}
        future: Future[list[CommandResult]] = Future()
        future.set_result(
            [
                CommandResult(
                    pid=target if isinstance(target, int) else 0,
                    job="j",
                    rank=0,
                    command=command,
                    ok=True,
                    details=details if command == "dump_stacks" else {},
                )
            ]
        )
        return future


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def ranks(count: int) -> list[Client]:
    """Ranks 0..count-1 of job "j", pids 100 + rank."""
    return [
        Client(100 + r, Registration(job="j", rank=r, world_size=count, device="cpu"))
        for r in range(count)
    ]


def make(
    tmp_path: Path, server: Server, exited: Any = None, **policy: Any
) -> tuple[Supervisor, Clock, Journal, DaemonState]:
    clock = Clock()
    journal = Journal(tmp_path)
    state = DaemonState()
    settings = replace(PolicySettings(), **policy)
    detection = replace(
        DetectionSettings(),
        stall_min_s=5.0,
        stall_step_factor=10.0,
        orphan_min_age_s=0.0,
        orphan_unattributed="on",
    )
    sup = Supervisor(
        NoEngine(),
        Policy.from_settings(settings),
        journal,
        state,
        server,
        detection=detection,
        clock=clock,
        exited=exited or (lambda pid, started: True),
    )
    return sup, clock, journal, state


def entries(journal: Journal) -> list[dict[str, Any]]:
    return list(journal.read())


def step_all(sup: Supervisor, server: Server, clock: Clock, until: float) -> None:
    """Every rank reports a step per second until ``until``."""
    while clock.now <= until:
        for client in server.clients_:
            sup.on_report(client, AllocatorReport(step=int(clock.now)))
        sup.on_reading(Reading(t=clock.now))
        clock.now += 1.0


def test_stall_asks_each_process_for_its_stacks_once_and_journals_them(tmp_path: Path) -> None:
    """Raised once per rank; one dump_stacks each; the summary lands in the journal."""
    server = Server(ranks(2))
    sup, clock, journal, _ = make(tmp_path, server)
    step_all(sup, server, clock, until=10)
    for _ in range(20):  # twenty more polls of a stall: still one request per rank
        clock.now += 1.0
        sup.on_reading(Reading(t=clock.now))
    assert [(t, c) for t, c, _ in server.sent] == [(100, "dump_stacks"), (101, "dump_stacks")]
    found = [e for e in entries(journal) if e["type"] == "finding"]
    assert [(e["kind"], e["state"], e["pid"]) for e in found] == [
        ("stalled", "raised", 100),
        ("stalled", "raised", 101),
    ]
    stacks = [e for e in entries(journal) if e["type"] == "stacks"]
    assert stacks[0]["threads"] == [
        "MainThread: distributed/distributed_c10d.py:3252 all_reduce < job/train.py:59 main"
    ]
    metrics = generate_latest(_registry(sup)).decode()
    assert (
        'gpu_watchdog_client_stalled{device="cpu",pid="100",rank="0",training_job="j"} 1.0'
        in metrics
    )


def test_killed_rank_is_lost_at_once_and_its_survivors_are_asked_for_stacks(
    tmp_path: Path,
) -> None:
    """No goodbye, process gone: rank_lost names it; the survivor's stacks are requested."""
    server = Server(ranks(2))
    sup, clock, journal, _ = make(tmp_path, server)
    step_all(sup, server, clock, until=3)
    dead = server.clients_.pop(1)
    sup.on_leave(dead, False, "")
    lost = [e for e in entries(journal) if e.get("kind") == "rank_lost"]
    assert [(e["state"], e["pid"], e["rank"], e["waiting"]) for e in lost] == [
        ("raised", 101, 1, [100])
    ]
    assert server.sent == [(100, "dump_stacks", {})]
    assert (
        'gpu_watchdog_rank_lost{pid="101",rank="1",training_job="j"} 1.0'
        in generate_latest(_registry(sup)).decode()
    )


def test_a_goodbye_is_taken_at_its_word(tmp_path: Path) -> None:
    """A clean detach is no lost rank, and the process is not even looked at."""
    looked: list[int] = []
    server = Server(ranks(2))
    sup, clock, journal, _ = make(tmp_path, server, exited=lambda pid, s: looked.append(pid))
    step_all(sup, server, clock, until=3)
    sup.on_leave(server.clients_.pop(1), True, "")
    assert looked == []
    assert not [e for e in entries(journal) if e.get("kind") == "rank_lost"]


def test_group_restart_sends_restart_group_with_each_ranks_stuck_step(tmp_path: Path) -> None:
    """With policy.group_restart, a stall leads to one restart_group for the job."""
    server = Server(ranks(2))
    sup, clock, journal, _ = make(tmp_path, server, group_restart=True)
    step_all(sup, server, clock, until=10)
    for _ in range(10):
        clock.now += 1.0
        sup.on_reading(Reading(t=clock.now))
    restarts = [(t, a) for t, c, a in server.sent if c == "restart_group"]
    assert restarts == [("j", {"steps": {"100": 10, "101": 10}})]
    decisions = [e for e in entries(journal) if e["type"] == "decision"]
    assert [(d["action"], d["outcome"], d["finding"]) for d in decisions] == [
        ("restart_group", "send", "stalled")
    ]


def test_orphaned_memory_is_journalled_and_exported_but_never_acted_on(tmp_path: Path) -> None:
    """Unattributed memory raises a finding; the policy, which acts on jobs, never sees it."""
    server = Server(ranks(1))
    server.clients_[0].registration = Registration(job="j", device="cuda:0")
    sup, _clock, journal, state = make(tmp_path, server)
    reading = Reading(
        t=0,
        devices=[DeviceSample(0, "GPU-0", "A100", 80 << 30, 10 << 30)],
        processes=[GpuProcessSample(0, 100, 2 << 30)],
    )
    state.apply(reading)
    sup.on_reading(reading)
    found = [e for e in entries(journal) if e["type"] == "finding"]
    assert [(e["kind"], e["reason"], e["used_bytes"]) for e in found] == [
        ("orphaned_memory", "unattributed", 8 << 30)
    ]
    assert not [e for e in entries(journal) if e["type"] == "decision"]
    assert sup._policy.active == []
    metrics = generate_latest(_registry(sup)).decode()
    assert (
        'gpu_watchdog_gpu_memory_unattributed_bytes{gpu="0",source="nvml"} 8.589934592e+09'
        in metrics
    )


def _registry(sup: Supervisor) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(sup)
    return registry
