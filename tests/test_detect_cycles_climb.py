"""A sawtooth whose tops and troughs climb cycle after cycle is a leak, where no window says so.

At each ``empty_cache`` a poll may land in the second for which a step's
activations are freed, in some cycles and not in others, and catch a dip of
any depth under the trough. A window's stretch floors are then dips or troughs
by chance, and the noise tolerance measured on them buries the rise: the judge
set's seeds 21-28 missed six leaks under sawtooths this way, one of them
climbing from 38 to 88 GiB of a 90 GiB card in three hours without a raise.
The series now also reads its newest cycles as tops and troughs
(``Series._cycles_climb``).
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from tests.judge_traces import judged
from tests.test_detect_engine import GIB, MIB, deadline, leaks, run
from tests.test_detect_still_rising import NOW, WIDTH, _dipped
from tests.test_detect_still_rising import _series as sawtooth_series
from watchdog.detectors.events import SAWTOOTH
from watchdog.detectors.series import CLIMB_CYCLES, Series, _Verdict
from watchdog.detectors.trend import kendall_tau

Line = Callable[[int, float], float]


def _series(troughs: Line, tops: Line, cycles: int = CLIMB_CYCLES) -> Series:
    """The still-rising tests' sawtooth (580 s cycles, two 320 s buckets each, up to
    ``NOW``, on an 80 GiB card) with the given troughs and tops, no leak raised."""
    series = sawtooth_series(troughs, tops, cycles)
    series.leak_active = False
    return series


def _climb(series: Series) -> _Verdict | None:
    level = next(lv for lv in series.levels if lv.width == WIDTH)
    return series._cycles_climb(level, NOW)


def _rising(t: float) -> float:
    """A leak of 60 MiB a minute: at ``NOW`` it has 8 GiB left under the tops."""
    return 65 * GIB - 60 * MIB * (NOW - t) / 60


def test_kendall_tau_counts_pairs_in_order() -> None:
    assert kendall_tau([1.0, 2.0, 3.0, 4.0]) == 1.0
    assert kendall_tau([4.0, 3.0, 2.0, 1.0]) == -1.0
    assert kendall_tau([1.0, 3.0, 2.0, 4.0]) == pytest.approx(4 / 6)
    assert kendall_tau([2.0, 2.0]) == 0.0
    assert kendall_tau([5.0]) == 0.0


def test_tops_and_troughs_under_dips_both_climbing_are_a_leak() -> None:
    series = _series(lambda k, t: _rising(t) - _dipped(k), lambda k, t: _rising(t) + 7 * GIB)
    verdict = _climb(series)
    assert verdict is not None
    assert verdict.leak
    assert verdict.trend.pattern == SAWTOOTH
    assert verdict.trend.rate == pytest.approx(60 * MIB / 60, rel=0.3)
    # 8 GiB left under the tops, at no more than the tops' rate.
    assert verdict.time_to_oom == pytest.approx(8 * GIB / (60 * MIB / 60), rel=0.3)


def test_a_flat_sawtooth_under_the_same_dips_is_no_climb() -> None:
    series = _series(lambda k, t: 30 * GIB - _dipped(k), lambda k, t: 37 * GIB)
    assert _climb(series) is None


def test_teeth_growing_from_a_flat_floor_are_no_climb() -> None:
    """Its tops climb (longer sequences), its troughs do not: no floor rises."""
    series = _series(lambda k, t: 30 * GIB, lambda k, t: _rising(t) + 7 * GIB)
    assert _climb(series) is None


def test_troughs_that_come_out_higher_by_chance_under_flat_tops_are_no_climb() -> None:
    """The dips happened to be deep early and shallow late: the troughs' line rises."""
    series = _series(lambda k, t: 30 * GIB - (12 - 2 * k) * GIB, lambda k, t: 37 * GIB)
    assert _climb(series) is None


def test_tops_out_of_order_are_no_climb() -> None:
    """Tops that rise on their line but zigzag (evaluations landing in some cycles)."""
    zigzag = [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]
    series = _series(lambda k, t: 30 * GIB + k * GIB, lambda k, t: (40 + zigzag[k]) * GIB)
    assert kendall_tau(zigzag) < 0.7
    assert _climb(series) is None


def test_a_climb_that_slows_down_is_saturating_not_a_leak() -> None:
    """Both lines rise, but the newer half of the tops at a third of the older's pace."""
    steps = [0.0, 3.0, 6.0, 9.0, 10.0, 11.0]
    series = _series(lambda k, t: (30 + steps[k]) * GIB, lambda k, t: (37 + steps[k]) * GIB)
    assert _climb(series) is None
    even = _series(lambda k, t: (30 + 3 * k) * GIB, lambda k, t: (37 + 3 * k) * GIB)
    assert _climb(even) is not None


def test_a_step_up_in_the_newest_cycles_is_no_climb() -> None:
    """An evaluation begins two cycles before the read: the tops and troughs of those two
    sit 2 GiB higher, and the noise happens to put the older four in order too, but the
    older half of the cycles is flat."""

    def lift(k: int) -> float:
        return 10 * MIB * k + (2 * GIB if k >= CLIMB_CYCLES - 2 else 0.0)

    series = _series(lambda k, t: 30 * GIB + lift(k), lambda k, t: 37 * GIB + lift(k))
    assert _climb(series) is None


def test_a_climb_with_small_falls_on_its_way_is_no_sawtooth() -> None:
    """One long tooth climbing in steps, quantised noise falling between them: each cycle
    the series counts spans little more than the climb adds in it."""
    run_climb = 60 * MIB / 60 * 2 * WIDTH  # what the leak adds over one run (two buckets)

    def troughs(k: int, t: float) -> float:
        return _rising(t)

    def small_falls(k: int, t: float) -> float:
        return _rising(t) + 1.2 * run_climb

    def teeth(k: int, t: float) -> float:
        return _rising(t) + 3 * run_climb

    assert _climb(_series(troughs, small_falls)) is None
    assert _climb(_series(troughs, teeth)) is not None


def test_fewer_cycles_than_it_reads_say_nothing() -> None:
    def troughs(k: int, t: float) -> float:
        return _rising(t)

    def tops(k: int, t: float) -> float:
        return _rising(t) + 7 * GIB

    assert _climb(_series(troughs, tops, cycles=CLIMB_CYCLES - 1)) is None
    assert _climb(_series(troughs, tops)) is not None


def test_cycles_inside_the_warm_up_are_not_read() -> None:
    series = _series(lambda k, t: _rising(t), lambda k, t: _rising(t) + 7 * GIB)
    series.start_t = NOW - 2 * CLIMB_CYCLES * WIDTH  # the whole read lies in the warm-up
    assert _climb(series) is None


def _dipped_sawtooth(seed: int, rate: float) -> Callable[[float], float]:
    """A 14 GiB job under 1000 s teeth of 4 GiB, on a 40 GiB card, leaking ``rate`` bytes
    a second from 100 s. For 3 s after each ``empty_cache`` a step's activations are
    freed, 2-8 GiB in 60% of the cycles: a poll every 6 s catches that dip or not."""
    rng = random.Random(seed)
    dips = [rng.uniform(2, 8) * GIB if rng.random() < 0.6 else 0.0 for _ in range(64)]

    def memory(t: float) -> float:
        cycle, phase = divmod(t, 1000.0)
        base = 14 * GIB * min(1.0, t / 120) + rate * max(0.0, t - 100.0)
        dip = dips[int(cycle)] if phase < 3.0 else 0.0
        return base + 4 * GIB * phase / 1000.0 - dip

    return memory


@pytest.mark.parametrize("seed", [1, 3])
def test_a_leak_under_dips_no_window_shows_is_raised_in_time(seed: int) -> None:
    """Without the cycles' read these two leaks (14 to 40 GiB in 4.4 hours) are never raised."""
    events, oom, _ = run(
        _dipped_sawtooth(seed, 1.5 * MIB), 10 * 3600, interval=6.0, processes=False
    )
    assert oom is not None
    raised = leaks(events)
    assert raised
    assert 100.0 < raised[0].t <= deadline(100.0, oom)
    assert raised[0].pattern == SAWTOOTH


@pytest.mark.parametrize("seed", [1, 3])
def test_the_same_sawtooth_without_the_leak_raises_nothing(seed: int) -> None:
    events, oom, _ = run(_dipped_sawtooth(seed, 0.0), 10 * 3600, interval=6.0, processes=False)
    assert oom is None
    assert leaks(events) == []


@pytest.mark.parametrize(("seed", "index"), [(24, 108), (28, 66)])
def test_judge_sawtooth_leaks_never_raised_before_are_caught(seed: int, index: int) -> None:
    trace = judged(seed, index)
    assert trace.outcome.caught, trace.intervals
    assert trace.outcome.lead_s is not None
    assert trace.outcome.lead_s >= 300
