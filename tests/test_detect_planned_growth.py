"""Growth a process planned (``Watchdog.expect_growth``) holds leaks; nothing else does.

Each held case is checked against the same memory without the plan, which must
raise the leak: the plan is what keeps it quiet, not the shape.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from watchdog.detectors import DetectionEngine, Event
from watchdog.detectors.engine import MAX_PLANNED_GROWTH_S
from watchdog.samples import (
    DeviceSample,
    GpuProcessSample,
    HostMemory,
    HostProcessSample,
    Reading,
)

GIB = 1 << 30
MIB = 1 << 20
TOTAL = 40 * GIB
PID, OTHER = 4242, 777

Memory = Callable[[float], float]
Plan = Callable[[DetectionEngine, float], list[Event]]


def feed(
    memories: dict[int, Memory],
    duration: float,
    plan: Plan | None = None,
    interval: float = 2.0,
    seed: int = 1,
) -> list[Event]:
    """Feed one GPU whose processes use ``memories[pid](t)`` (<= 0: not running)."""
    rng = random.Random(seed)
    engine = DetectionEngine()
    events: list[Event] = []
    t = 0.0
    while t <= duration:
        rows = []
        for pid, memory in memories.items():
            value = memory(t)
            if value > 0:
                rows.append((0, pid, int(value + rng.gauss(0, 8 * MIB)) // (2 * MIB) * (2 * MIB)))
        used = 300 * MIB + sum(row[2] for row in rows)
        if used >= TOTAL:
            break
        if plan is not None:
            events += plan(engine, t)
        events += engine.observe_step(t, [(0, used, TOTAL)], rows)
        t += interval
    return events


def leaks(events: list[Event], pid: int | None = PID) -> list[Event]:
    """Leaks raised on ``pid``'s series (None: the GPU's)."""
    return [e for e in events if e.kind == "leak" and e.state == "raised" and e.pid == pid]


def second_model(t: float) -> float:
    """A server at 10 GiB that loads a second model of 20 GiB at 4 GiB/min at 30 min."""
    return 10 * GIB + min(max(t - 1800.0, 0.0) / 300.0, 1.0) * 20 * GIB


def every_heartbeat(start: float, for_s: float, up_to: int | None = None, pid: int = PID) -> Plan:
    """The plan a client sends with each 5 s heartbeat from ``start`` for ``for_s``."""

    def plan(engine: DetectionEngine, t: float) -> list[Event]:
        if t % 5.0 >= 2.0 or t < start:
            return []
        left = start + for_s - t
        if left <= 0:
            return engine.end_growth(t, pid)
        return engine.plan_growth(t, 0, pid, left, up_to)

    return plan


def test_a_planned_load_raises_no_leak_where_the_same_load_unplanned_does() -> None:
    unplanned = feed({PID: second_model}, 4 * 3600)
    assert leaks(unplanned)
    assert leaks(unplanned, None)
    planned = feed({PID: second_model}, 4 * 3600, every_heartbeat(1790.0, 600.0))
    assert leaks(planned) == []
    assert leaks(planned, None) == []


def test_near_oom_is_never_held() -> None:
    def near_full(t: float) -> float:
        return 10 * GIB + min(max(t - 1800.0, 0.0) / 300.0, 1.0) * 28 * GIB

    planned = feed({PID: near_full}, 3 * 3600, every_heartbeat(1790.0, 600.0))
    assert any(e.kind == "near_oom" and e.state == "raised" for e in planned)


def test_growth_past_the_planned_size_is_judged_with_the_climb_before_it() -> None:
    def leak_after_load(t: float) -> float:
        # The load the job planned (to 30 GiB), and then a leak of 1 GiB/min on top.
        return second_model(t) + max(t - 2100.0, 0.0) / 60.0 * GIB

    plan = every_heartbeat(1790.0, 3600.0, 30 * GIB)
    raised = leaks(feed({PID: leak_after_load}, 3 * 3600, plan))
    assert raised, "a climb past the planned size must be raised"
    assert 2100.0 < raised[0].t < 2100.0 + 300.0


def test_when_the_plan_ends_the_series_is_judged_again() -> None:
    def load_then_leak(t: float) -> float:
        return second_model(t) + max(t - 2100.0, 0.0) * 0.5 * MIB  # 30 MiB/min after the load

    raised = leaks(feed({PID: load_then_leak}, 6 * 3600, every_heartbeat(1790.0, 600.0)))
    assert raised
    assert raised[0].t > 2390.0


def test_a_plan_that_is_no_longer_renewed_runs_out() -> None:
    def one_message(engine: DetectionEngine, t: float) -> list[Event]:
        return engine.plan_growth(t, 0, PID, 600.0) if t == 1790.0 else []

    def load_then_leak(t: float) -> float:
        return second_model(t) + max(t - 2100.0, 0.0) * 0.5 * MIB

    raised = leaks(feed({PID: load_then_leak}, 6 * 3600, one_message))
    assert raised
    assert raised[0].t > 2390.0


def test_a_plan_is_capped() -> None:
    engine = DetectionEngine()
    engine.observe_step(0.0, [(0, GIB, TOTAL)], [(0, PID, GIB)])
    engine.plan_growth(0.0, 0, PID, 1e12)
    assert engine._plans[PID].until_t == MAX_PLANNED_GROWTH_S


def test_one_process_s_plan_does_not_hold_a_neighbour_s_leak() -> None:
    def neighbour_leak(t: float) -> float:
        return 5 * GIB + max(t - 1800.0, 0.0) / 60.0 * 0.2 * GIB

    memories = {PID: lambda t: 10 * GIB, OTHER: neighbour_leak}
    planned = feed(memories, 4 * 3600, every_heartbeat(1790.0, 4 * 3600.0))
    assert leaks(planned, OTHER), "the leaking neighbour's own series is not held"
    assert leaks(planned, None) == [], "the GPU's is, while the plan lasts"


def test_a_process_that_exits_takes_its_plan_with_it() -> None:
    def planner(t: float) -> float:
        return 10 * GIB if t < 1800.0 else 0.0

    def late_leak(t: float) -> float:
        return 5 * GIB + max(t - 2400.0, 0.0) / 60.0 * 0.2 * GIB

    def once(engine: DetectionEngine, t: float) -> list[Event]:
        return engine.plan_growth(t, 0, PID, MAX_PLANNED_GROWTH_S) if t == 1000.0 else []

    events = feed({PID: planner, OTHER: late_leak}, 4 * 3600, once)
    assert leaks(events, None), "the GPU is judged again once the planner is gone"


def test_a_plan_ended_early_judges_again_from_then() -> None:
    def early_end(engine: DetectionEngine, t: float) -> list[Event]:
        if t == 2400.0:
            return engine.end_growth(t, PID)
        return every_heartbeat(1790.0, 3 * 3600.0)(engine, t) if t < 2400.0 else []

    def load_then_leak(t: float) -> float:
        return second_model(t) + max(t - 2100.0, 0.0) * 0.5 * MIB

    raised = leaks(feed({PID: load_then_leak}, 6 * 3600, early_end))
    assert raised
    assert 2400.0 < raised[0].t < 1790.0 + 3 * 3600.0


def test_the_status_shows_which_series_a_plan_holds() -> None:
    engine = DetectionEngine()
    engine.observe_step(0.0, [(0, 2 * GIB, TOTAL)], [(0, PID, GIB), (0, OTHER, GIB)])
    engine.plan_growth(0.0, 0, PID, 60.0)
    held = {(s.series, s.pid) for s in engine.status() if s.growth_planned}
    assert held == {("gpu", None), ("process", PID)}
    engine.end_growth(1.0, PID)
    assert not any(s.growth_planned for s in engine.status())


def test_growing_past_a_plan_loses_none_of_the_poll_s_other_events() -> None:
    """The poll where a process passes its planned size reports its GPU's near_oom too."""
    engine = DetectionEngine()
    for t in range(0, 300, 5):
        if t == 100:
            engine.plan_growth(float(t), 0, PID, 3600.0, up_to_bytes=30 * GIB)
        engine.observe_step(float(t), [(0, 21 * GIB, TOTAL)], [(0, PID, 20 * GIB)])
    # One poll: past the planned 30 GiB, and the GPU at 95 %.
    events = engine.observe_step(300.0, [(0, 38 * GIB, TOTAL)], [(0, PID, 37 * GIB)])
    assert ("near_oom", "raised", None) in [(e.kind, e.state, e.pid) for e in events]


def test_a_hidden_process_that_exits_takes_its_plan_with_it() -> None:
    """Where the driver hides per-process memory there is no series to forget: the plan goes.

    A plan left behind held the GPU for its next job's leak (up to six hours), and
    the plans of such jobs piled up in the engine.
    """
    engine = DetectionEngine()

    def poll(t: float, used: float, pid: int) -> list[Event]:
        return engine.observe(
            Reading(
                t=t,
                devices=[DeviceSample(gpu=0, used_bytes=int(used), total_bytes=TOTAL)],
                processes=[GpuProcessSample(gpu=0, pid=pid, used_bytes=None)],
            )
        )

    for t in range(0, 600, 5):
        if t == 300:
            engine.plan_growth(float(t), 0, OTHER, 3600.0, up_to_bytes=20 * GIB)
        poll(float(t), 10 * GIB, OTHER)
    raised = None
    for t in range(600, 4 * 3600, 5):  # the next job: no plan, a leak of 3 MiB/s from 1200 s
        used = 10 * GIB + max(0, t - 1200) * 3 * MIB
        if used >= TOTAL or raised is not None:
            break
        if leaks(poll(float(t), used, PID), None):
            raised = t
    assert raised is not None
    assert raised < 4500  # 4160 s; with the old plan left, 6560
    assert (engine._plans, engine._outgrown) == ({}, {})


def _host_job(plan: Plan | None, duration: float = 3600.0) -> list[Event]:
    """A process on no GPU whose host RSS loads 30 GiB at 3 GiB/min from 20 min in."""
    engine = DetectionEngine()
    host_total = 64 * GIB
    events: list[Event] = []
    for step in range(int(duration / 5)):
        t = step * 5.0
        rss = 4 * GIB + min(max(t - 1200.0, 0.0) / 600.0, 1.0) * 30 * GIB
        if plan is not None:
            events += plan(engine, t)
        events += engine.observe(
            Reading(
                t=t,
                host_processes=[HostProcessSample(pid=PID, rss_bytes=int(rss))],
                host_memory=HostMemory(
                    total_bytes=host_total, available_bytes=int(host_total - rss - 8 * GIB)
                ),
            )
        )
    return [e for e in events if e.kind == "leak" and e.state == "raised"]


def test_a_process_on_no_gpu_plans_growth_of_its_host_memory() -> None:
    """A CPU process's plan (GPU -1) holds its host series, and its size is host memory."""

    def on_no_gpu(up_to: int | None) -> Plan:
        def plan(engine: DetectionEngine, t: float) -> list[Event]:
            return engine.plan_growth(t, -1, PID, 3600.0, up_to) if t % 5.0 == 0 else []

        return plan

    assert [e.series for e in _host_job(None)] == ["host_rss"]  # unplanned: a leak
    assert _host_job(on_no_gpu(None)) == []
    assert _host_job(on_no_gpu(40 * GIB)) == []
    assert [e.series for e in _host_job(on_no_gpu(8 * GIB))] == ["host_rss"]  # past its size
