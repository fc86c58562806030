"""A sawtooth's floor noise is measured on one trough per cycle.

The noise tolerance of step 4 is the deviation of the changes between
troughs. The troughs were the lowest bucket of a cycle's worth starting at
every bucket: neighbouring runs share their lowest bucket, most changes came
out zero and so did the tolerance. At each ``empty_cache`` a poll catches the
step's activations freed for a second in some cycles and not in others, at
whatever depth it lands; with a tolerance of zero, troughs that came out deep
early in a window and shallow late beat it as surely as a leak (the judge
set's healthy ``judge_empty_cache_sawtooth`` traces 3:0057 and 4:0099).
"""

from __future__ import annotations

import pytest

from tests.judge_traces import judged
from watchdog.detectors.trend import NOISE_MADS, noise_tolerance

GIB = float(1 << 30)
CYCLE = 6
"""Buckets per sawtooth cycle."""


def _sawtooth(troughs: list[float]) -> list[float]:
    """Bucket minima of a sawtooth: each cycle climbs 1 GiB a bucket from its trough."""
    return [trough + k * GIB for trough in troughs for k in range(CYCLE)]


def test_troughs_that_scatter_from_cycle_to_cycle_make_the_tolerance() -> None:
    scattered = [20.0, 22.0, 20.5, 21.5, 20.0, 22.0]
    tolerance = noise_tolerance(_sawtooth([t * GIB for t in scattered]), envelope=CYCLE)
    # Changes 2, -1.5, 1, -1.5, 2 GiB: median 1, deviations 1, 2.5, 0, 2.5, 1.
    assert tolerance == pytest.approx(NOISE_MADS * GIB)


def test_troughs_that_rise_evenly_leave_no_noise() -> None:
    rising = [20.0 + 0.5 * cycle for cycle in range(6)]
    assert noise_tolerance(_sawtooth([t * GIB for t in rising]), envelope=CYCLE) == 0.0


def test_cycles_are_counted_back_from_the_newest_bucket() -> None:
    """A partial cycle at the window's start is left out, not made a trough of its own."""
    scattered = [20.0, 22.0, 20.5, 21.5, 20.0, 22.0]
    mins = _sawtooth([t * GIB for t in scattered])
    assert noise_tolerance([0.0, 0.0, *mins], envelope=CYCLE) == noise_tolerance(
        mins, envelope=CYCLE
    )


def test_without_a_sawtooth_the_tolerance_is_on_bucket_steps() -> None:
    mins = [10.0, 11.0, 13.0, 14.0, 16.0, 17.0]  # steps 1, 2, 1, 2, 1: median 1, MAD 0
    assert noise_tolerance(mins) == 0.0
    mins = [10.0, 12.0, 11.0, 14.0, 12.0, 15.0]  # steps 2, -1, 3, -2, 3: median 2, MAD 1
    assert noise_tolerance(mins) == pytest.approx(NOISE_MADS)


@pytest.mark.parametrize(("seed", "index"), [(3, 57), (4, 99)])
def test_a_healthy_sawtooth_whose_dips_came_deep_then_shallow_raises_no_leak(
    seed: int, index: int
) -> None:
    label, intervals, _ = judged(seed, index)
    assert label.scenario == "judge_empty_cache_sawtooth"
    assert not label.leak
    assert not intervals
