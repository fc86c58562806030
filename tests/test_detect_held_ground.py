"""Ground a process held before it freed its memory: loading as much again is no leak.

A job that now and then loads a few checkpoints onto its GPU (to average
them), or runs a nightly batch beside its server, climbs fast, holds, and
frees it all: the fall is deep enough to start the series' history again.
What the same process held before that fall still counts as ground been on,
so only the first such climb can look like a leak. A new process, or memory
freed at the card's limit (a job that caught its OOM and started over),
carries nothing over.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path

from tests.test_detect_engine import GIB, MIB, PID, TOTAL, deadline, leaks, run, warm
from watchdog.detectors import DetectionEngine, Event
from watchdog.detectors.replay import replay_lines

DATA = Path(__file__).resolve().parent / "data"

HOUR = 3600.0
EVERY_S = 3 * HOUR
FIRST_S = 2 * HOUR
CLIMB_S = 360.0
HOLD_S = 180.0
LOAD = 11 * GIB
"""Five checkpoints of a 2 GiB model and a sum: from 16 GiB to 27.5 GiB of 40."""


def averaging(t: float, climb_s: float = CLIMB_S, growth: float = 1.0) -> float:
    """A 16 GiB job that loads ``LOAD`` over ``climb_s`` every three hours and frees it.

    Each load ``growth`` times the one before.
    """
    if t < FIRST_S:
        return warm(t, 16 * GIB)
    k, into = divmod(t - FIRST_S, EVERY_S)
    load = LOAD * growth**k * min(1.0, into / climb_s) if into < climb_s + HOLD_S else 0.0
    return warm(t, 16 * GIB) + load


def load_ends(until: float) -> list[float]:
    """When each load is freed."""
    ends, start = [], FIRST_S
    while start < until:
        ends.append(start + CLIMB_S + HOLD_S)
        start += EVERY_S
    return ends


def test_loading_as_much_again_in_the_same_process_is_no_leak() -> None:
    """Five loads over 15 hours: whatever the first one raised, the next four raise nothing."""
    events, oom, _ = run(averaging, 15 * HOUR, interval=5.0)
    assert oom is None
    first_end = load_ends(15 * HOUR)[0]
    assert [e.t for e in leaks(events) if e.t > first_end] == []


def test_loading_more_than_before_is_judged_as_ever() -> None:
    """The second load, a checkpoint at a time over half an hour, is 2.5 times the first.

    It runs out of memory; past the ground the first held, it is raised in time.
    """
    climb_s = 1800.0
    events, oom, _ = run(lambda t: averaging(t, climb_s, 2.5), 15 * HOUR, interval=5.0)
    assert oom is not None
    climb = FIRST_S + EVERY_S
    assert climb < oom < climb + climb_s
    raised = [e for e in leaks(events) if e.t >= climb]
    assert raised
    assert min(e.t for e in raised) <= deadline(climb, oom)


RATE = 2 * MIB


def restarted_leak(top: float) -> tuple[Callable[[float], float], float]:
    """A leak from an hour in up to ``top``, freed at once, and the same leak an hour later.

    Returns the memory and when the second leak starts.
    """
    run_s = (top - warm(HOUR, 16 * GIB)) / RATE
    rerun = 2 * HOUR + run_s

    def memory(t: float) -> float:
        if t < HOUR + run_s:
            return warm(t, 16 * GIB) + RATE * max(0.0, t - HOUR)
        return warm(t - HOUR - run_s, 16 * GIB) + RATE * max(0.0, t - rerun)

    return memory, rerun


def assert_raised_as_soon_again(events: list[Event], oom: float | None, rerun: float) -> None:
    """The rerun is raised as soon into it as the first run was, not once past its top."""
    assert oom is not None
    first = min(e.t for e in leaks(events))
    again = min(e.t for e in leaks(events) if e.t >= rerun)
    assert again - rerun <= 1.25 * (first - HOUR)
    assert again <= deadline(rerun, oom)


def test_a_job_that_caught_its_oom_and_leaks_again_is_raised_again() -> None:
    """Freed at 97% of the card by the same process (it caught its OOM): the rerun is new."""
    memory, rerun = restarted_leak(0.97 * TOTAL)
    events, oom, _ = run(memory, 12 * HOUR, interval=5.0)
    assert_raised_as_soon_again(events, oom, rerun)


def test_where_the_processes_are_unknown_a_fall_carries_nothing_over() -> None:
    """Device figures only: the job restarted at 85% (say, by the policy) is judged anew."""
    memory, rerun = restarted_leak(0.85 * TOTAL)
    events, oom, _ = run(memory, 12 * HOUR, interval=5.0, processes=False)
    assert_raised_as_soon_again(events, oom, rerun)


def test_a_new_process_carries_nothing_over() -> None:
    """The same loads, each run by a new process (a new pid): each is judged on its own.

    Here each raises as the first did: the GPU's series, too, starts afresh
    when the processes on it change, with nothing held before.
    """
    engine = DetectionEngine()
    events: list[Event] = []
    ends = load_ends(9 * HOUR)
    t = 0.0
    while t <= 9 * HOUR:
        used = int(averaging(t)) // (2 * MIB) * (2 * MIB)
        # A new process an hour after each load: the next load is its first.
        pid = PID + sum(t >= end + HOUR for end in ends)
        events += engine.observe_step(t, [(0, used, TOTAL)], [(0, pid, used - 300 * MIB)])
        t += 5.0
    raised = [e.t for e in leaks(events) if e.pid is None]
    assert len(ends) == 3
    assert [sum(end - CLIMB_S - HOLD_S <= t <= end for t in raised) for end in ends] == [1, 1, 1]


def test_recorded_checkpoint_averaging_raises_once_not_every_time() -> None:
    """Five checkpoints loaded every 3.1 h on a 45 GiB card for 27 h (sixth set, seed 3).

    The first load climbs 11 GiB in minutes, as a fast leak does, and may be
    raised; the four after it load as much again and had each raised anew.
    """
    with gzip.open(DATA / "fresh_periodic_weight_averaging_3000335.csv.gz", "rt") as trace:
        events = replay_lines(trace.read().splitlines(), "averaging").events
    assert len([e for e in leaks(events) if e.pid is None]) <= 1
