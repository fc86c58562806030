"""Staircases: blocks kept each epoch are a leak; planned steps and saturating growth are not.

The recorded traces in ``tests/data/field_*.csv.gz`` come from a first
version of the held-out generator (``benchmarks/field_scenarios.py``); the
detector once got each of them wrong.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from watchdog.detectors import Event
from watchdog.detectors.replay import replay_lines
from watchdog.detectors.trend import analyze_window

GIB = float(1 << 30)
DATA = Path(__file__).resolve().parent / "data"


def replayed(name: str) -> list[Event]:
    """The events of the recorded trace ``tests/data/NAME.csv.gz``."""
    with gzip.open(DATA / f"{name}.csv.gz", "rt") as trace:
        return replay_lines(trace.read().splitlines(), name).events


@pytest.mark.parametrize(
    "name",
    [
        # Steps at 3, 5.6 and 8 h (a curriculum), flat since: the median pairwise slope of
        # stretch floors that bunch the steps made the rate twice what the memory rose over
        # the time it took, and an OOM 42 h away was raised 3.4 h after the last step.
        "field_curriculum_growth_200022",
        # New longest batches, each step smaller and later than the last: three of them
        # passed for a staircase of like steps (within 2x in height and spacing).
        "field_dynamic_shapes_100052",
        # An evaluation's ramp with a batch-shape step inside it at a window's end: three
        # steps 40-60 s apart passed for a staircase 6 minutes from an OOM.
        "field_mixed_300077",
        # Curriculum steps of 3 and 4 planned steps, 1.5-4 h apart, then flat: the steps
        # projected four times the window ahead made an OOM 20 h away, raised 1-2 h
        # after the last step. A few steps foretell no more than the time they took.
        "field_curriculum_growth_5000037",
        "field_curriculum_growth_8000063",
    ],
)
def test_healthy_growth_that_once_passed_for_a_staircase_is_no_leak(name: str) -> None:
    """Planned steps, saturating steps and quick steps inside an eval raise no leak."""
    assert [e for e in replayed(name) if e.kind == "leak"] == []


def test_a_young_staircase_is_judged_on_all_its_history() -> None:
    """Blocks kept every 90 minutes are raised by the deadline, judged on all three.

    The first block is kept at 2254 s, the OOM (an evaluation on top of the
    third block) comes at 15777 s: the deadline is 15477 s. At the third block
    the history past the warm-up (3.6 h) was longer than a level's longest
    window (3.2 h, two blocks) and too short for the next level's shortest
    (4.3 h): no window held the three blocks until after the OOM.
    """
    raised = [
        e for e in replayed("field_epoch_cache_400045") if e.kind == "leak" and e.state == "raised"
    ]
    assert raised
    assert raised[0].t <= 15476.7


def judge_floor(levels: list[float], width: float = 640.0) -> bool:
    """Whether one window whose bucket minima are ``levels`` (GiB) is a rising floor."""
    mins = [level * GIB for level in levels]
    starts = [i * width for i in range(len(mins))]
    end = len(mins) * width
    trend = analyze_window(starts, mins, mins, end, end, width, 0.5 * GIB, 0.5)
    return trend is not None and trend.rising


def test_three_like_steps_evenly_spaced_are_a_staircase() -> None:
    """A block kept every five buckets: the steps of the floor make the staircase."""
    assert judge_floor([0.0] * 4 + [1.0] * 5 + [2.0] * 5 + [3.0] * 4)


def test_steps_slowing_down_are_no_staircase() -> None:
    """Steps of 1, 0.8 and 0.55 GiB, 4 then 7 buckets apart: growth that saturates."""
    assert not judge_floor([0.0] * 4 + [1.0] * 4 + [1.8] * 7 + [2.35] * 3)


def test_steps_a_bucket_or_two_apart_are_a_climb_not_a_staircase() -> None:
    """Three like steps two buckets apart at the window's end are judged by the stretches."""
    assert not judge_floor([10.0] * 12 + [10.5, 10.5, 11.0, 11.0, 11.5, 11.5], width=20.0)


def test_a_climb_that_stopped_is_no_leak() -> None:
    """A ramp that fills the window's stretches, then holds for a stretch and more.

    An evaluation's batches arriving, or a checkpoint loaded in pieces: every
    stretch of the window is higher than the one before, yet the floor has not
    risen for 50 s, five times as long as it ever went between rises.
    """
    climb = [0.2 * i for i in range(14)]
    assert not judge_floor(climb + [climb[-1]] * 4, width=10.0)


def test_the_same_climb_still_going_is_a_leak() -> None:
    """The same ramp up to the window's end: a fast leak, raised while it climbs."""
    assert judge_floor([0.2 * i for i in range(18)], width=10.0)
    climb = [0.2 * i for i in range(16)]
    assert judge_floor(climb + [climb[-1]] * 2, width=10.0)  # quiet for under a stretch


def test_a_few_steps_carry_the_time_they_took() -> None:
    """Three steps 5 buckets apart: judged on 3 spacings (one before the first step).

    Many steps are evidence enough to be projected as a climb is: no span then.
    """
    width = 640.0
    levels = [0.0] * 4 + [1.0] * 5 + [2.0] * 5 + [3.0] * 4
    mins = [level * GIB for level in levels]
    starts = [i * width for i in range(len(mins))]
    end = len(mins) * width
    trend = analyze_window(starts, mins, mins, end, end, width, 0.5 * GIB, 0.5)
    assert trend is not None
    assert trend.rising
    assert trend.steps_span_s == pytest.approx(end - 4 * width + 5 * width)
    many = [float(i // 2) for i in range(18)]  # a step every other bucket: 8 steps
    mins = [level * GIB for level in many]
    trend = analyze_window(starts, mins, mins, end, end, width, 0.5 * GIB, 0.5)
    assert trend is not None
    assert trend.rising
    assert trend.steps_span_s == 0.0
