"""A GPU's leak raised before its process's waits for its culprit (docs/policy.md).

The GPU's series and its processes' are judged apart, so the GPU's leak may be
raised minutes before the leaking process's. Acted on at once, it would reach
every job on the GPU; so, where the GPU's processes are watched, it waits for a
culprit, ``min(CULPRIT_WAIT_S, CULPRIT_WAIT_SHARE * time to OOM)`` from its raise.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tests.factories import finding
from tests.test_supervisor import FakeClient, FakeEngine, FakeServer, _supervisor
from watchdog.config import PolicySettings
from watchdog.control.registry import Registration
from watchdog.daemon.supervisor import Supervisor
from watchdog.detectors.engine import DetectionEngine
from watchdog.detectors.events import Event
from watchdog.policy.engine import (
    CULPRIT_WAIT_S,
    CULPRIT_WAIT_SHARE,
    SEND,
    Decision,
    JobRef,
    Policy,
    culprit_wait,
)
from watchdog.policy.journal import Journal
from watchdog.policy.replay import decisions_over
from watchdog.policy.rules import DEFAULT_LADDER
from watchdog.samples import GpuProcessSample, Reading

JOBS_ON_GPU = {0: (42, 43), 1: (44,)}
"""The processes (each its own job ``pid:N``) on each GPU."""


def _policy() -> Policy:
    return Policy(DEFAULT_LADDER, cooldown_s=600.0, max_restarts=2, restart_window_s=86400.0)


def _jobs(policy: Policy) -> Callable[[int, int | None, str], list[JobRef]]:
    """As the daemon resolves jobs: a process's own; a GPU's culprits, else all on it."""

    def jobs(gpu: int, pid: int | None, series: str) -> list[JobRef]:
        if pid is not None:
            return [JobRef(f"pid:{pid}")]
        pids = sorted(policy.culprits(gpu)) or JOBS_ON_GPU[gpu]
        return [JobRef(f"pid:{p}") for p in pids]

    return jobs


def _watched(*gpus: int) -> Callable[[int], bool]:
    return set(gpus).__contains__


def _ask(policy: Policy, times: Iterable[float], watched: Callable[[int], bool]) -> list[Decision]:
    """Every decision asked at ``times``; each sent command answered at once."""
    decided = []
    for t in times:
        for decision in policy.decide(t, t, _jobs(policy), watched):
            decided.append(decision)
            if decision.outcome == SEND:
                policy.ledger.finished(decision.job)
    return decided


def _gpu_leak(t: float, tto: float | None = 7200.0, gpu: int = 0, kind: str = "leak") -> Event:
    return dataclasses.replace(finding(t, tto=tto, pid=None, kind=kind), gpu=gpu)


def test_the_wait_is_twenty_minutes_or_a_quarter_of_the_time_to_oom() -> None:
    """The chosen figures: the measured gaps run to 21 min; a fast leak waits little."""
    assert (CULPRIT_WAIT_S, CULPRIT_WAIT_SHARE) == (1200.0, 0.25)
    assert culprit_wait(None) == 1200.0
    assert culprit_wait(7200.0) == 1200.0
    assert culprit_wait(4000.0) == 1000.0
    assert culprit_wait(400.0) == 100.0


def test_a_gpu_leak_raised_before_its_process_s_reaches_the_culprit_only() -> None:
    """No decision while the GPU's leak waits; the culprit gets the ladder once its own
    finding arrives, and the other job on the GPU nothing, then or after the wait."""
    policy = _policy()
    policy.observe(_gpu_leak(0.0, tto=1500.0))  # waits 375 s at most
    assert _ask(policy, range(0, 120, 10), _watched(0)) == []
    policy.observe(finding(120.0, tto=1400.0, pid=42))
    decided = _ask(policy, range(120, 2000, 10), _watched(0))
    assert [(d.t, d.job, d.action) for d in decided] == [
        (120.0, "pid:42", "dump_snapshot"),
        (130.0, "pid:42", "checkpoint_and_restart"),
    ]


@pytest.mark.parametrize(("tto", "wait"), [(7200.0, 1200.0), (None, 1200.0), (400.0, 100.0)])
def test_a_gpu_leak_with_no_culprit_reaches_every_job_once_the_wait_is_over(
    tto: float | None, wait: float
) -> None:
    """Growth outside every process: after the wait (a fast leak's is at most a quarter
    of its time to OOM), the GPU's leak reaches every job on it, and not before."""
    policy = _policy()
    policy.observe(_gpu_leak(10.0, tto=tto))
    assert _ask(policy, [10.0, 10.0 + wait / 2, 10.0 + wait - 1], _watched(0)) == []
    decided = _ask(policy, [10.0 + wait], _watched(0))
    assert {(d.job, d.action) for d in decided} == {
        ("pid:42", "dump_snapshot"),
        ("pid:43", "dump_snapshot"),
    }
    assert {d.t for d in decided} == {10.0 + wait}


def test_the_wait_counts_from_the_raise_not_from_the_last_update() -> None:
    """An updated GPU leak (a new prediction) does not start its wait again."""
    policy = _policy()
    policy.observe(_gpu_leak(0.0, tto=7200.0))
    policy.observe(dataclasses.replace(_gpu_leak(1000.0, tto=6000.0), state="updated"))
    assert _ask(policy, [1000.0, 1199.0], _watched(0)) == []
    assert {d.job for d in _ask(policy, [1200.0], _watched(0))} == {"pid:42", "pid:43"}


def test_near_oom_on_the_gpu_is_acted_on_at_once_while_its_leak_waits() -> None:
    """Headroom is short whoever is to blame: near_oom does not wait; the leak does."""
    policy = _policy()
    policy.observe(_gpu_leak(0.0, tto=7200.0))
    policy.observe(_gpu_leak(0.0, tto=7200.0, kind="near_oom"))
    decided = _ask(policy, [0.0, 10.0], _watched(0))
    assert {(d.job, d.action, d.finding) for d in decided} == {
        ("pid:42", "empty_cache", "near_oom"),
        ("pid:43", "empty_cache", "near_oom"),
    }


def test_a_gpu_whose_processes_are_not_watched_is_acted_on_at_once() -> None:
    """Device figures only (per-process memory hidden): no culprit can come, no wait."""
    policy = _policy()
    policy.observe(_gpu_leak(0.0, gpu=0))
    policy.observe(_gpu_leak(0.0, gpu=1))
    decided = _ask(policy, [0.0, 10.0], _watched(0))
    assert {(d.job, d.action) for d in decided} == {("pid:44", "dump_snapshot")}
    # By default (a caller that watches no process) nothing waits, as before the rule.
    assert {d.job for d in _ask(policy, [20.0], lambda gpu: False)} == {"pid:42", "pid:43"}


def test_next_change_wakes_at_the_end_of_the_wait() -> None:
    """The replay loop, which skips asks until the next change, asks when the wait ends;
    with a culprit singled out there is no wait to wake for."""
    policy = _policy()
    policy.observe(_gpu_leak(100.0, tto=7200.0))
    # The wait ends at 100 + 1200, before the restart rung's due time (100 + 7200 - 1800).
    assert policy.next_change(100.0) == 1300.0
    policy.observe(finding(200.0, tto=7200.0, pid=42))
    assert policy.next_change(200.0) == 5500.0


def _two_jobs_sharing_gpu_0(tmp_path: Path) -> tuple[Supervisor, FakeEngine, Journal, FakeServer]:
    leaky = FakeClient(pid=42, uid=0, registration=Registration(job="leaky", device="cuda:0"))
    healthy = FakeClient(pid=43, uid=0, registration=Registration(job="healthy", device="cuda:0"))
    server = FakeServer([leaky, healthy])
    sup, engine, journal = _supervisor(tmp_path, server)
    engine.watched = {0}
    return sup, engine, journal, server


def _run_live(
    sup: Supervisor, engine: FakeEngine, events: list[Event], times: Iterable[int]
) -> None:
    for t in times:
        engine.queued = [e for e in events if e.t == t]
        sup.on_reading(Reading(t=t))


def test_the_daemon_spares_the_healthy_job_while_the_gpu_leak_waits(tmp_path: Path) -> None:
    """Live: the GPU's leak raised 120 s before the process's sends nothing, logs and
    journals no decision; the culprit's job then gets the ladder, the other job nothing.
    Replay (``decisions_over``) decides the same for the same events."""
    sup, engine, journal, server = _two_jobs_sharing_gpu_0(tmp_path)
    events = [_gpu_leak(0.0, tto=1500.0), finding(120.0, tto=1400.0, pid=42)]
    engine.queued = [events[0]]
    sup.on_reading(Reading(t=0))
    with capture_logs() as logs:
        _run_live(sup, engine, events, range(1, 120))
    assert server.sent == []
    assert logs == []  # nothing logged per poll while it waits
    assert [e for e in journal.read() if e["type"] != "finding"] == []
    _run_live(sup, engine, events, range(120, 2000))
    assert server.sent == [("leaky", "dump_snapshot"), ("leaky", "checkpoint_and_restart")]
    live = [(e["t"], e["action"], e["outcome"]) for e in journal.read() if e["type"] == "decision"]
    replayed = decisions_over(
        events, end_t=1999.0, interval_s=1.0, settings=PolicySettings(), watched_gpus={0}
    )
    assert [(d.t, d.action, d.outcome) for d in replayed] == live
    assert {d.job for d in replayed} == {"pid:42"}


def test_the_daemon_acts_on_every_job_once_a_culprit_never_comes(tmp_path: Path) -> None:
    """Live: after the wait with no process singled out, every job on the GPU, not before;
    replay decides the same."""
    sup, engine, journal, server = _two_jobs_sharing_gpu_0(tmp_path)
    events = [_gpu_leak(0.0, tto=7200.0)]
    _run_live(sup, engine, events, range(0, 1200, 10))
    assert server.sent == []
    _run_live(sup, engine, events, [1200])
    assert sorted(server.sent) == [("healthy", "dump_snapshot"), ("leaky", "dump_snapshot")]
    live = [(e["t"], e["action"]) for e in journal.read() if e["type"] == "decision"]
    replayed = decisions_over(
        events, end_t=1200.0, interval_s=10.0, settings=PolicySettings(), watched_gpus={0}
    )
    assert [(d.t, d.action) for d in replayed] == live[:1]
    assert {d.job for d in replayed} == {"gpu:0"}


def test_the_daemon_does_not_hold_a_leak_on_a_gpu_whose_processes_it_cannot_see(
    tmp_path: Path,
) -> None:
    """Live: a GPU with device figures only is acted on at once; a watched one waits."""
    on_0 = FakeClient(pid=42, uid=0, registration=Registration(job="zero", device="cuda:0"))
    on_1 = FakeClient(pid=44, uid=0, registration=Registration(job="one", device="cuda:1"))
    server = FakeServer([on_0, on_1])
    sup, engine, _ = _supervisor(tmp_path, server)
    engine.watched = {0}
    engine.queued = [_gpu_leak(0.0, gpu=0), _gpu_leak(0.0, gpu=1)]
    sup.on_reading(Reading(t=0))
    sup.on_reading(Reading(t=1))
    assert server.sent == [("one", "dump_snapshot")]


def test_the_engine_watches_processes_with_figures_only() -> None:
    """``watches_processes``: a process with its memory on the GPU; a hidden one is none."""
    engine = DetectionEngine()
    engine.observe_step(0.0, [(0, 1 << 30, 80 << 30), (1, 1 << 30, 80 << 30)], [(0, 42, 1 << 29)])
    assert engine.watches_processes(0)
    assert not engine.watches_processes(1)
    hidden = DetectionEngine()
    hidden.observe(Reading(t=0.0, processes=[GpuProcessSample(gpu=0, pid=42, used_bytes=None)]))
    assert not hidden.watches_processes(0)
