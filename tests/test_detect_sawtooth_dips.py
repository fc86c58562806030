"""A leak under a sawtooth whose troughs a poll sometimes catches in a dip.

At each ``empty_cache`` a step's activations are freed too, for a second or
so, and a poll lands in that second in some cycles and not in others: the
lowest sample of a cycle is its trough, or a dip some GiB below it. Two rules
kept such dips from hiding a leak under the sawtooth (the judge set's
``judge_sawtooth_rising_floor`` 2:0122 and 3:0052, both missed before):

- Where a bucket holds more than a cycle, its minimum is a dip or a trough by
  chance, and the changes between buckets swung by the dip's depth: the noise
  tolerance measured on them came out as deep as the dips. It is now at most
  the minima's scatter about their line (``scatter_tolerance``).
- "Back to ground it has held" compared the newest stretch's floor, a dip,
  with the highest floor held for a whole cycle before the window, a trough:
  the leak's floor had to climb the dip's depth above the old troughs before
  it could be raised. The floor now is likewise the highest held for a whole
  cycle in the newest stretch.
"""

from __future__ import annotations

import pytest

from tests.judge_traces import judged
from watchdog.detectors.series import _Level
from watchdog.detectors.trend import NOISE_MADS, analyze_window, noise_tolerance, scatter_tolerance

GIB = float(1 << 30)
WIDTH = 640.0
"""A bucket of about four 2.6-minute cycles."""
DIPPED_RISE = [17.3, 17.7, 24.8, 21.4, 19.0, 19.6, 20.2, 20.7, 20.8, 22.1, 21.9, 28.7]
"""Judge 3:0052's GPU minima (GiB) two hours into its leak: most buckets caught a
dip 6.6 GiB below the troughs, three did not."""


def _judge(minima_gib: list[float], sawtooth: bool) -> bool:
    mins = [m * GIB for m in minima_gib]
    starts = [i * WIDTH for i in range(len(mins))]
    trend = analyze_window(
        starts,
        mins,
        [m + 7 * GIB for m in mins],
        end_t=len(mins) * WIDTH,
        window_s=len(mins) * WIDTH,
        width=WIDTH,
        min_rise=0.2 * GIB,
        saturation_ratio=0.5,
        sawtooth=sawtooth,
        envelope=1,
    )
    return trend is not None and trend.rising


def test_minima_off_their_line_in_a_minority_of_buckets_leave_little_scatter() -> None:
    mins = [20.0 + 0.25 * i for i in range(18)]
    for i in (1, 3, 6, 8, 11, 13, 16):
        mins[i] -= 6.0  # 7 of 18 buckets caught a dip
    starts = [i * WIDTH for i in range(18)]
    assert scatter_tolerance(starts, [m * GIB for m in mins]) < 0.1 * GIB
    # Bucket to bucket, the dips swing 14 of the 17 changes by their depth.
    assert noise_tolerance([m * GIB for m in mins]) > 15 * GIB


def test_on_noise_alone_the_scatter_is_about_the_change_tolerance() -> None:
    noise = [0.0, 0.3, -0.2, 0.1, -0.3, 0.2, 0.0, -0.1, 0.3, -0.2, 0.1, -0.3]
    starts = [i * WIDTH for i in range(len(noise))]
    mins = [(20.0 + n) * GIB for n in noise]
    scatter, changes = scatter_tolerance(starts, mins), noise_tolerance(mins)
    assert 0.5 * changes < scatter < 2.0 * changes
    assert scatter == pytest.approx(NOISE_MADS * 2**0.5 * 0.15 * GIB, rel=0.35)


def test_a_rise_under_dips_in_a_sawtooth_of_short_cycles_is_rising() -> None:
    assert _judge(DIPPED_RISE, sawtooth=True)
    # Judged on the changes between buckets (no sawtooth known), the dips bury it.
    assert not _judge(DIPPED_RISE, sawtooth=False)


def test_the_same_dips_on_a_flat_floor_are_not_rising() -> None:
    flat = [m - 0.4 * i for i, m in enumerate(DIPPED_RISE)]
    assert not _judge(flat, sawtooth=True)


def test_held_for_is_the_highest_floor_held_for_the_span_in_a_row() -> None:
    level = _Level(10.0)
    for i, low in enumerate([5.0, 9.0, 8.0, 2.0, 7.0, 7.5, 6.0, 1.0]):
        level.push(i * 10.0, low, low + 1.0)
    assert level.held_for(0.0, 30.0) == 6.0  # 7.0, 7.5, 6.0: the best run of three
    assert level.held_for(0.0, 20.0) == 8.0  # 9.0, 8.0
    assert level.held_for(40.0, 10.0) == 7.5  # from the fifth bucket on
    assert level.held_for(40.0, 50.0) == float("-inf")  # no run that long from there


@pytest.mark.parametrize(("seed", "index"), [(2, 122), (3, 52)])
def test_the_judge_sets_leaks_under_dipping_sawtooths_are_caught_in_time(
    seed: int, index: int
) -> None:
    label, _, outcome = judged(seed, index)
    assert label.scenario == "judge_sawtooth_rising_floor"
    assert label.leak
    assert outcome.caught
    assert outcome.lead_s is not None
    assert outcome.lead_s >= 15 * 60
