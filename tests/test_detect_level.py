"""A level's running lowest: what every bucket close asks for, kept without a search."""

from __future__ import annotations

import math
import random

from watchdog.config import DetectionSettings
from watchdog.detectors.series import CAPACITY, KEEP, Series, _Level


def test_low_is_the_lowest_of_the_newest_keep_minima_through_every_halving() -> None:
    """Falling, rising, flat and tied minima, far past CAPACITY (the oldest half dropped
    again and again): ``low`` always equals a search of the newest KEEP."""
    rng = random.Random(3)
    level = _Level(10.0)
    value = 1000.0
    for i in range(10 * CAPACITY):
        value += rng.choice((-5.0, 0.0, 0.0, 3.0, 7.0, -40.0 if i % 50 == 0 else 1.0))
        level.push(10.0 * i, value, value + 1.0)
        n = level.count
        assert level.low == min(level.mins[max(0, n - KEEP) : n])
        assert level.mins[level.low_at] == level.low
        assert n - KEEP <= level.low_at < n


def test_a_restart_forgets_the_lowest() -> None:
    """After a restart the lowest is that of the buckets since, not of those before."""
    series = Series("gpu", 0, None, DetectionSettings(), [], 0.0, 100.0)
    level = series.levels[0]
    level.push(0.0, 1.0, 2.0)
    series.restart(1000.0)
    assert level.low == math.inf
    level.push(1000.0, 50.0, 60.0)
    assert level.low == 50.0
