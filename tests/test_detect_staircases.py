"""Staircases: blocks kept each epoch are a leak; planned steps and saturating growth are not.

The recorded traces in ``tests/data/field_*.csv.gz`` come from the held-out
generator (``benchmarks/field_scenarios.py``; the first ones from an earlier
version of it), ``wild_*`` from the third one (``benchmarks/wild_scenarios.py``);
the detector once got each of them wrong.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from watchdog.detectors import Event
from watchdog.detectors.replay import replay_lines
from watchdog.detectors.trend import Trend, analyze_window

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
        # Four curriculum steps of uneven height (5-20 %): to the stretches and the bucket
        # minima a climb, so the few-steps limit passed them by, and an OOM 21 and 28 h
        # away was projected from a window of 7-8 h. The floor's own steps tell.
        "field_curriculum_growth_2000028",
        "field_curriculum_growth_3000031",
        # Three steps 3.6 and 1.4 h apart: the level before the first was taken to hold
        # for one (mean) spacing, 2.5 h, where the window showed 0.7 h of it, and the
        # steps foretold an OOM 10.5 h away. The window is all the evidence there is.
        "field_curriculum_growth_8000148",
    ],
)
def test_healthy_growth_that_once_passed_for_a_staircase_is_no_leak(name: str) -> None:
    """Planned steps, saturating steps and quick steps inside an eval raise no leak."""
    assert [e for e in replayed(name) if e.kind == "leak"] == []


@pytest.mark.parametrize(
    "name",
    [
        # Time constants of 41-45 minutes, 2 MiB jumps: over its first 1.5-2 h the floor
        # still rose late 0.6 as fast as early, and projected 5x its history (from windows
        # of 1 h) it foretold an OOM 7-8.5 h away; 4x, reached at windows of 2 h, does not.
        "wild_fragmentation_settle_1000061",
        "wild_fragmentation_settle_8000332",
        # Time constants of 71 and 114 minutes: 2 h 40 min in, the floor had risen evenly
        # enough to pass for a leak, and projected 4x its history the card was full within
        # 9-10 h. 3x does not reach it before the floor has flattened.
        "wild_fragmentation_settle_1000161",
        "wild_fragmentation_settle_4000200",
    ],
)
def test_growth_settling_over_an_hour_or_two_is_no_leak(name: str) -> None:
    """Fragmentation settling towards a ceiling: a rising floor that keeps slowing down."""
    assert [e for e in replayed(name) if e.kind == "leak"] == []


@pytest.mark.parametrize(
    "name",
    [
        # Recompiles 23, 47, 106, 182 and 305 min into training, flat after: the steps
        # in windows of 6-7 h foretold an OOM 3-5 h away, raised 2 h after the last.
        "wild_compile_recompiles_6000199",
        # Recompiles 28, 56, 106 and 197 min in; 36, 83, 167 and 307 min in.
        "wild_compile_recompiles_5000266",
        "wild_compile_recompiles_3000120",
    ],
)
def test_steps_ever_further_apart_are_no_leak(name: str) -> None:
    """torch.compile recompiling for new shapes: a few steps, each gap longer than the last."""
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


def analyze_levels(levels: list[float], width: float = 640.0, buckets: int = 0) -> Trend | None:
    """The verdict on the window of the last ``buckets`` (all) of ``levels`` (GiB minima)."""
    mins = [level * GIB for level in levels]
    starts = [i * width for i in range(len(mins))]
    end = len(mins) * width
    window = (buckets or len(mins)) * width
    return analyze_window(starts, mins, mins, end, window, width, 0.5 * GIB, 0.5)


def window_trend(levels: list[float], buckets: int = 0) -> Trend:
    """``analyze_levels`` of a window that has a verdict."""
    trend = analyze_levels(levels, buckets=buckets)
    assert trend is not None
    return trend


def judge_floor(levels: list[float], width: float = 640.0) -> bool:
    """Whether one window whose bucket minima are ``levels`` (GiB) is a rising floor."""
    trend = analyze_levels(levels, width)
    return trend is not None and trend.rising


def test_a_floor_no_cut_sees_rising_gets_no_verdict() -> None:
    """Teeth of six buckets on a flat floor: the newest stretch sits on a tooth, a GiB
    and more above the lowest, but neither the stretches nor a staircase rise. Most
    windows a series judges are such; building a verdict for them only to drop it
    cost the replay a third of its time on traces of short sawtooth cycles."""
    assert analyze_levels([0.0, 1.0, 2.0, 3.0, 4.0, 5.0] * 3) is None


def test_three_like_steps_evenly_spaced_are_a_staircase() -> None:
    """A block kept every five buckets: the steps of the floor make the staircase."""
    assert judge_floor([0.0] * 4 + [1.0] * 5 + [2.0] * 5 + [3.0] * 4)


def test_steps_slowing_down_are_no_staircase() -> None:
    """Steps of 1, 0.8 and 0.55 GiB, 4 then 7 buckets apart: growth that saturates."""
    assert not judge_floor([0.0] * 4 + [1.0] * 4 + [1.8] * 7 + [2.35] * 3)


def test_like_steps_ever_further_apart_are_no_staircase() -> None:
    """Three 1 GiB steps, 3 then 6 buckets apart: growth that comes rarer and rarer.

    Alike in height, within 2x in spacing and not slower in rate than half the
    first: a staircase of like steps but for the gaps growing.
    """
    assert not judge_floor([0.0] * 3 + [1.0] * 3 + [2.0] * 6 + [3.0] * 6)


def test_like_steps_a_bucket_further_apart_are_still_a_staircase() -> None:
    """Gaps of 4 and 5 buckets: a step's time is known to a bucket, so this is an epoch's pace."""
    assert judge_floor([0.0] * 5 + [1.0] * 4 + [2.0] * 5 + [3.0] * 4)


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
    """Three steps 4 buckets apart: judged on 4 spacings (one before the first step).

    The level before the first step counts only as far as the window shows it.
    Many steps are evidence enough to be projected as a climb is: no span then.
    """
    width = 640.0
    trend = window_trend([0.0] * 6 + [1.0] * 4 + [2.0] * 4 + [3.0] * 4)
    assert trend.rising
    assert trend.steps_span_s == pytest.approx((18 - 6 + 4) * width)
    # 4 buckets of the level before the first step, steps 5 apart: the window's 18.
    trend = window_trend([0.0] * 4 + [1.0] * 5 + [2.0] * 5 + [3.0] * 4)
    assert trend.steps_span_s == pytest.approx(18 * width)
    trend = window_trend([float(i // 2) for i in range(18)])  # a step every other bucket: 8
    assert trend.rising
    assert trend.steps_span_s == 0.0


def test_a_few_uneven_steps_that_read_as_a_climb_carry_their_span() -> None:
    """Steps of 0.5, 1, 0.45 and 0.9 GiB: no staircase of like steps, yet four steps.

    The big ones carry under 70 % of the rise, so the bucket minima call the
    pattern steady; the floor's four steps carry all of it, so the window still
    foretells only as long as they took: from one spacing (3.7 buckets) before
    the first step, here the window's start 3 buckets before it.
    """
    width = 640.0
    levels = [0.0] * 3 + [0.5] * 4 + [1.5] * 4 + [1.95] * 3 + [2.85] * 4
    trend = window_trend(levels)
    assert trend.rising
    assert trend.pattern == "steady"
    assert trend.steps_span_s == pytest.approx(18 * width)
    trend = window_trend(levels, buckets=17)  # a bucket less of the level before
    assert trend.rising
    assert trend.steps_span_s == pytest.approx(17 * width)
