"""Back to ground a series has held: a return is no leak, a climb past it may be."""

from __future__ import annotations

import math
import random
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import fresh_scenarios
import scenarios
import score

from tests.test_detect_engine import MIB, TOTAL, deadline, leaks, run, warm
from watchdog.config import DetectionSettings
from watchdog.detectors.replay import replay_lines
from watchdog.detectors.series import CAPACITY, Series, _Level

SLOT_S = 20.0
"""Each batch's buffers are drawn anew every this many seconds."""
TABLES = 0.93 * TOTAL - 600 * MIB
"""Embedding tables that fill the card to 93% and stay."""
HIGH = 0.035 * TOTAL
"""The buffers of a batch of very active users: 1.4 GiB short of the card with the tables."""
HIGH_AT = 3600.0
"""An hour in, a few such batches in a row: the series holds that height for a minute."""
RUN_AT = 4 * 3600.0
RUN_SLOTS = 12
"""Hours later, twelve batches in a row draw larger buffers than the one before."""


def buffers(keeps_climbing: bool, high_batches: bool = True) -> Callable[[float], float]:
    """Per-batch buffers: a draw per slot, the high batches at ``HIGH_AT``, the rising run.

    The run climbs from the usual size to ``HIGH`` over ``RUN_SLOTS`` slots;
    with ``keeps_climbing`` it goes on at that pace (a leak), else it falls back.
    """
    rng = random.Random(7)
    usual = 0.01 * TOTAL
    slots = [usual * rng.lognormvariate(0.0, 0.2) for _ in range(2000)]
    for k in range(3 if high_batches else 0):
        slots[int(HIGH_AT / SLOT_S) + k] = HIGH
    first = int(RUN_AT / SLOT_S)
    step = (HIGH - usual) / RUN_SLOTS
    for k in range(RUN_SLOTS):
        slots[first + k] = usual + step * (k + 1)

    def memory(t: float) -> float:
        slot = int(t // SLOT_S)
        size = slots[slot]
        if keeps_climbing and slot >= first + RUN_SLOTS:
            size = HIGH + step * (slot - first - RUN_SLOTS + 1)
        return warm(t, TABLES) + (size if t > 600 else 0.0)

    return memory


def test_a_chance_run_back_to_a_height_held_before_is_not_a_leak() -> None:
    """Twelve rising batches, 4 minutes from the card at their pace, to where it was an hour in.

    The series held that height for a minute without running out: the run
    returns to known ground, and the tables have not grown.
    """
    events, oom, _ = run(buffers(keeps_climbing=False), RUN_AT + 3600, noise=2 * MIB)
    assert oom is None
    assert leaks(events) == []


def test_the_same_run_going_on_into_new_ground_is_raised_in_time() -> None:
    """The same start that keeps climbing past what the series ever held is a leak, in time."""
    events, oom, _ = run(buffers(keeps_climbing=True), RUN_AT + 3600, noise=2 * MIB)
    assert oom is not None
    raised = leaks(events)
    assert raised
    assert RUN_AT < min(e.t for e in raised) <= deadline(RUN_AT, oom)


def test_a_run_to_a_height_never_held_is_raised_as_before() -> None:
    """Without the high batches an hour in, the same run is raised, though it stops.

    Nothing says the series has been there, and a fast leak climbs the same
    until it stops: the rule holds returns to known ground, not every climb.
    """
    events, oom, _ = run(
        buffers(keeps_climbing=False, high_batches=False), RUN_AT + 3600, noise=2 * MIB
    )
    assert oom is None
    assert leaks(events)


def test_a_fast_leak_under_a_sawtooth_is_not_held_by_its_teeth_or_spikes() -> None:
    """A sawtooth's tops and an evaluation's plateau are ground its floor never held.

    The development set's trace: teeth of 4.5 GiB every 4.5 min and evaluations
    11 GiB up, on a 94 GiB card; 4 h in, a leak of 1.9 GiB/min sets off from the
    troughs. Judged by buckets narrower than a cycle, its floor climbs through
    heights the series held, and the raise would wait past its deadline.
    """
    lines, label = scenarios.build("steady_late", 800022)
    assert label.leak
    result = replay_lines(lines, label.name)
    intervals, _ = score.project_intervals(result.events, label, result.duration_s)
    assert score.judge(label, intervals).caught


def test_a_near_full_recommender_is_not_raised_for_its_buffers() -> None:
    """The sixth set's trace: buffers redrawn every 20 s at 90-95% of a 16 GiB card, 15 h."""
    lines, label = fresh_scenarios.build(
        "recsys_embedding_full", 2 * 1_000_081 + 11, "0011-recsys_embedding_full"
    )
    assert not label.leak
    result = replay_lines(lines, label.name)
    assert [e for e in result.events if e.kind == "leak"] == []


def test_a_level_remembers_the_highest_floor_it_dropped_to_make_room() -> None:
    """What a level held stays known after its buckets are dropped, until the series restarts."""
    level = _Level(10.0)
    level.push(0.0, 5.0, 6.0)
    for i in range(1, CAPACITY + 1):
        level.push(10.0 * i, 1.0, 2.0)
    assert level.starts[0] > 0.0  # the first bucket was dropped
    assert level.held_before(10.0 * CAPACITY) == 5.0
    assert level.held_before(10.0) == 5.0

    series = Series("gpu", 0, None, DetectionSettings(), [], 0.0, 100.0)
    series.levels[0] = level
    series.restart(1000.0)
    assert level.held_before(math.inf) == -math.inf
