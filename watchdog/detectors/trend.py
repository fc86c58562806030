"""Is the floor of a memory series rising? One window of bucket minima, judged robustly.

A window is cut into ``SEGMENTS`` equal stretches of time; the floor of each
stretch is the lowest bucket minimum in it. Spikes (eval), the peaks of a
sawtooth and noise all sit above the floor, so they do not move it. The floor
is *rising* when nearly every stretch is higher than the one before by more
than the noise, the total rise is material, and the later half rises at least
``saturation_ratio`` as fast as the earlier half (a warm-up ramp or growth
that saturates fails this). Its rate is the Theil-Sen slope through the
stretch floors: the median of the pairwise slopes, which one odd stretch
cannot drag.

A staircase whose steps are too far apart for every stretch to hold one (a
block kept alive each hour-long epoch) is judged on its steps instead: three
or more like steps, evenly spaced (``_stairs``).

A rise that has stopped is no leak, however well it filled the stretches: a
window whose floor has not risen for longer than it ever went between rises
(and longer than one stretch) is judged flat (``_stopped``).

A rise that a few steps of the floor carry is a few points, whatever the
stretches make of it: the verdict carries the time they took
(``steps_span_s``, from one spacing before the first step, as far as the
window shows that level), and the series projects it no further. Such steps
that come ever further apart are growth that saturates (a recompile for each
new shape), not a leak (``_slowing``).
"""

from __future__ import annotations

import itertools
import math
import operator
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass

from watchdog.detectors.events import SAWTOOTH, STAIRCASE, STEADY

SEGMENTS = 6
COARSE_SEGMENTS = 4
LARGEST_STEP_SHARE = 0.6
"""No one stretch-to-stretch step may carry more than this share of the rise."""
NOISE_MADS = 3.0
"""A stretch counts as higher when it beats the one before by this many MADs of bucket steps."""
SAWTOOTH_TROUGHS = 3
"""Cycles a window must hold for its sawtooth's noise to be measured on one trough per cycle."""
SMALLEST_STEP_SHARE = 0.05
"""In a 4-way cut, a step under this share of an even split of the rise is flat, noise or not."""
STAIRCASE_SHARE = 0.7
"""A rise is a staircase when its big steps (over half the largest) carry this share of it."""
FEW_STEPS = 4
"""A staircase of this many steps or fewer is judged on how long they took (``steps_span_s``)."""
STAIR_STEPS = 3
"""Steps up the floor that make a staircase on their own, whatever the stretches show."""
STAIR_SPREAD = 2.0
"""In such a staircase no step is more than this many times another, nor any gap between them."""
STAIR_HOLD = 2
"""Buckets the memory must stay up after a step before it counts."""
STAIR_MIN_GAP = 3
"""Buckets between two steps of such a staircase at the least: steps closer are a climb."""
STOPPED_SHARE = 0.02
"""The floor rises (``_stopped``) in steps of this share of the window's rise, or the noise."""
FEW_STEP_SHARE = 0.1
"""A floor step of at least this share of the rise counts towards a rise carried by few steps."""
FEW_STEPS_CARRY = 0.8
"""... and ``FEW_STEPS`` or fewer such steps that carry this share of the rise are all it is."""
SLOWING_GAPS = 1.25
"""A few steps whose gaps grow this many times each are saturating (``_slowing``)."""
SLOWING_BUCKETS = 2
"""... and by this many buckets in all: a step's time is known to a bucket."""
SETTLE_RISES = 3
"""Stretch-to-stretch rises needed before their evenness bounds how fast growth settles."""


@dataclass(frozen=True, slots=True)
class Trend:
    """The verdict on one window."""

    end_t: float
    window_s: float
    rate: float
    """Theil-Sen slope of the stretch floors, bytes per second."""
    rise: float
    """Floor of the last stretch minus floor of the first."""
    floor: float
    """Floor of the last stretch."""
    peak: float
    """Highest bucket maximum of the last stretch."""
    rising_segments: int
    """Stretch-to-stretch steps above the noise (of SEGMENTS - 1)."""
    saturating: bool
    pattern: str
    rising: bool
    """Consistent, material, not saturating: a candidate leak."""
    steps_span_s: float = 0.0
    """For a rise of ``FEW_STEPS`` steps or fewer: the time they took, one spacing
    before the first step (or the window's start, if later) to the window's end.
    0 otherwise."""
    settle_s: float = 0.0
    """The shortest time constant growth that settles could have and still rise as
    evenly as this window's floor did (``_settle_s``); 0 when some stretch did not rise."""
    stairs: bool = False
    """A staircase of like steps carried the rise (``_stairs``), sawtooth or not."""


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2.0


def _pattern(mins: Sequence[float], sawtooth: bool, stairs: bool) -> str:
    """Sawtooth if the series drops regularly; staircase if a few big steps carry the rise."""
    if sawtooth:
        return SAWTOOTH
    if stairs:
        return STAIRCASE
    steps, big = _big_steps(mins)
    rise = mins[-1] - min(mins)
    if rise <= 0 or not steps:
        return STEADY
    if sum(steps[i] for i in big) >= STAIRCASE_SHARE * rise and len(big) <= len(steps) // 2:
        return STAIRCASE
    return STEADY


def shape_of(mins: Sequence[float], stairs: bool) -> str:
    """The pattern a window's bucket minima make on their own, sawtooth or not."""
    return _pattern(mins, False, stairs)


def _few_steps_span(steps: Sequence[float], start_t: float, end_t: float) -> float:
    """The time ``steps`` (``_few_steps``) took: one spacing before the first to ``end_t``.

    The level before the first step counts only as far as the window (from
    ``start_t``) shows it. 0 for none: more than a few steps are evidence
    enough to be projected as a climb is.
    """
    if not steps:
        return 0.0
    spacing = (steps[-1] - steps[0]) / (len(steps) - 1) if len(steps) > 1 else 0.0
    return end_t - max(start_t, steps[0] - spacing)


def _few_steps(
    starts: Sequence[float],
    mins: Sequence[float],
    floor: Sequence[float],
    first: int,
    stairs: tuple[list[float], list[float]] | None,
    pattern: str,
    tolerance: float,
) -> list[float]:
    """When the few steps that carry a rising window's rise came; empty if more (or none) do.

    ``mins`` are the window's bucket minima, ``floor`` the lowest the memory
    went from each of them on (both from ``starts[first]``). A staircase of
    like steps (``stairs``) has its steps; any other window the floor's own
    (``_floor_steps``: a curriculum's uneven steps read as a climb to the
    stretches and the bucket minima), or where more than a few make its rise,
    the big bucket-to-bucket steps of a ``pattern`` that a few of them carry.
    """
    if stairs is not None:
        steps = stairs[1]
    else:
        steps = _floor_steps(starts, floor, first, tolerance)
        if not steps and pattern == STAIRCASE:
            steps = [starts[first + i + 1] for i in _big_steps(mins)[1]]
    return steps if len(steps) <= FEW_STEPS else []


def _slowing(steps: Sequence[float], width: float) -> bool:
    """Whether the gaps between ``steps`` grow, as they do in growth that saturates.

    Such growth comes rarer and rarer (a recompile for each new shape, a new
    longest sequence); a block kept each epoch comes at the epoch's pace. No
    gap may be shorter than the one before, and the last must be
    ``SLOWING_GAPS`` times the first for each gap after it, and
    ``SLOWING_BUCKETS`` buckets longer: a step's time is known to a bucket, so
    a regular staircase's gaps differ by a bucket at most.
    """
    if len(steps) < STAIR_STEPS:
        return False
    gaps = [b - a for a, b in itertools.pairwise(steps)]
    return (
        all(later >= earlier for earlier, later in itertools.pairwise(gaps))
        and gaps[-1] >= SLOWING_GAPS ** (len(gaps) - 1) * gaps[0]
        and gaps[-1] - gaps[0] >= SLOWING_BUCKETS * width
    )


def _floor_steps(
    starts: Sequence[float], floor: Sequence[float], first: int, tolerance: float
) -> list[float]:
    """When the floor took the steps that carry its rise, if ``FEW_STEPS`` or fewer do.

    ``floor`` is the lowest the memory went from each bucket on (``_lowest_from``).
    A step is a bucket-to-bucket rise of at least ``FEW_STEP_SHARE`` of the whole
    rise (and above the noise ``tolerance``); when a few such steps carry
    ``FEW_STEPS_CARRY`` of it, the rise is those steps, whatever the stretches
    or the bucket minima make of it. Empty when the rise is not a few steps.
    """
    rise = floor[-1] - floor[0]
    if rise <= 0:
        return []
    least = max(tolerance, FEW_STEP_SHARE * rise)
    times: list[float] = []
    carried = 0.0
    for j in range(1, len(floor)):
        step = floor[j] - floor[j - 1]
        if step >= least:
            if len(times) == FEW_STEPS:
                return []
            times.append(starts[first + j])
            carried += step
    return times if carried >= FEW_STEPS_CARRY * rise else []


def _big_steps(mins: Sequence[float]) -> tuple[list[float], list[int]]:
    """The bucket-to-bucket steps of ``mins``, and which are big (over half the largest)."""
    steps = [b - a for a, b in itertools.pairwise(mins)]
    largest = max(steps, default=0.0)
    return steps, [i for i, step in enumerate(steps) if step > 0.5 * largest]


def _floors(
    starts: Sequence[float],
    mins: Sequence[float],
    first: int,
    start_t: float,
    window_s: float,
    count: int,
) -> tuple[list[float], list[float]] | None:
    """The floor of each of ``count`` equal stretches of time, and when it was reached."""
    segment_s = window_s / count
    last = count - 1
    floors = [math.inf] * count
    times = [0.0] * count
    for i in range(first, len(starts)):
        segment = min(int((starts[i] - start_t) / segment_s), last)
        if mins[i] < floors[segment]:
            floors[segment] = mins[i]
            times[segment] = starts[i]
    if math.inf in floors:
        return None
    return floors, times


def _floors_contiguous(
    starts: Sequence[float], mins: Sequence[float], first: int, count: int
) -> tuple[list[float], list[float]]:
    """``_floors`` for a window with no missing bucket: slices, no Python loop per bucket."""
    n = len(mins) - first
    floors = []
    times = []
    for j in range(count):
        lo = first + (j * n) // count
        chunk = mins[lo : first + ((j + 1) * n) // count]
        low = min(chunk)
        floors.append(low)
        times.append(starts[lo + chunk.index(low)])
    return floors, times


def _lowest_from(mins: Sequence[float], first: int) -> list[float]:
    """The lowest the memory went from each bucket on (from ``first``): spikes never lift it."""
    floor = list(itertools.accumulate(reversed(mins[first:]), min))
    floor.reverse()
    return floor


def _stairs(
    starts: Sequence[float],
    floor: Sequence[float],
    first: int,
    end_t: float,
    width: float,
    least: float,
    tolerance: float,
    saturation_ratio: float,
) -> tuple[list[float], list[float]] | None:
    """The floor after each step of a regular staircase, and when each step came.

    ``floor`` is the lowest the memory went from each bucket on (``_lowest_from``,
    from ``starts[first]``), so a spike or a sawtooth's tooth never makes a step,
    and a step shows only once the memory has stayed up after it. Rises in
    consecutive buckets are one step (a steady climb is one long step, not a
    staircase). A staircase is
    ``STAIR_STEPS`` or more steps of at least ``least`` each, alike in height and
    spacing within ``STAIR_SPREAD``, ``STAIR_MIN_GAP`` buckets apart or more (closer
    steps are a climb, which the stretches judge), the last not longer ago than the
    spacing allows, and not slowing down: the last step's rate (its height over the
    time since the step before) at least ``saturation_ratio`` of the second's, as
    growth that saturates comes in smaller and rarer steps. None if not.
    """
    if floor[-STAIR_HOLD] - floor[0] < STAIR_STEPS * least:
        return None  # the steps it would take rise further than the floor does
    levels: list[float] = []
    times: list[float] = []
    climbing = False
    for j in range(1, len(floor) - STAIR_HOLD + 1):
        step = floor[j] - floor[j - 1]
        if step <= tolerance:  # never negative: a rise, or no step
            climbing = False
            continue
        if climbing:
            levels[-1] = floor[j]
        else:
            levels.append(floor[j])
            times.append(starts[first + j])
        climbing = True
    heights = [b - a for a, b in itertools.pairwise([floor[0], *levels])]
    if len(heights) < STAIR_STEPS or min(heights) < least:
        return None
    gaps = [b - a for a, b in itertools.pairwise(times)]
    if (
        min(gaps) < STAIR_MIN_GAP * width
        or heights[-1] / gaps[-1] < saturation_ratio * heights[1] / gaps[0]
        or max(heights) > STAIR_SPREAD * min(heights)
        or max(gaps) > STAIR_SPREAD * min(gaps)
        or end_t - times[-1] > STAIR_SPREAD * max(gaps)
    ):
        return None
    return levels, times


def _stopped(
    starts: Sequence[float],
    floor: Sequence[float],
    first: int,
    end_t: float,
    window_s: float,
    least: float,
) -> bool:
    """Whether the floor has not risen for longer than it ever went between rises.

    ``floor`` is the lowest the memory went from each bucket on (``_lowest_from``;
    a spike never lifts it); it rises each time it passes the level of its last rise by
    more than ``least``, so a climb in steps under the noise still rises. A
    phase that ramps up in steps and then holds (an evaluation's batches
    arriving, curriculum steps that ended) fills the stretches of a window as a
    leak would; that it stopped is what tells. A silence up to one stretch of
    the window (``window_s / SEGMENTS``) always passes.
    """
    level = floor[0]
    rises = []
    for j in range(1, len(floor)):
        if floor[j] - level > least:
            rises.append(starts[first + j])
            level = floor[j]
    if not rises:
        return True
    longest = max(map(operator.sub, rises[1:], rises), default=0.0)  # between two rises
    return end_t - rises[-1] > max(longest, window_s / SEGMENTS)


def _consistent(
    floors: list[float], tolerance: float, saturation_ratio: float, share: float = 0.0
) -> tuple[int, bool, bool]:
    """(steps above the noise, consistent rise, saturating) for one set of stretch floors.

    A step counts as rising above the noise ``tolerance`` and, with ``share``, above that
    share of an even split of the rise: without noise the tolerance is zero, and a
    stretch a rounding error higher than the last would count. For floors that
    fall by more than the noise, or rise by more than ``LARGEST_STEP_SHARE`` in
    one step, it says no before counting: (0, False, False); no caller reads the
    steps or saturating of a rise that is not consistent.
    """
    increments = list(map(operator.sub, floors[1:], floors[:-1]))
    rise = floors[-1] - floors[0]
    if min(increments) < -tolerance or max(increments) > LARGEST_STEP_SHARE * rise:
        return 0, False, False  # most windows judged: no count needed to say no
    climb = max(tolerance, share * rise / len(increments))
    rising = sum(inc > climb for inc in increments)
    third = max(1, len(floors) // 3)
    early = floors[third] - floors[0]
    late = floors[-1] - floors[-1 - third]
    saturating = early > 0 and late < saturation_ratio * early
    consistent = rising >= len(increments) - (1 if len(floors) >= SEGMENTS else 0)
    return rising, consistent, saturating


def _settle_s(floors: Sequence[float], times: Sequence[float]) -> float:
    """The shortest time constant of growth that settles, given how evenly ``floors`` rose.

    Growth that settles towards a ceiling, ``C - A exp(-t / tau)``, rises by
    less each stretch, ``exp(-spacing / tau)`` times the last, and has its
    current rate times ``tau`` left to grow. A floor whose smallest rise is
    ``r`` times its largest cannot be settling faster than
    ``tau = (rises - 1) * spacing / -ln(r)``: what it has left is at least its
    rate times that. (The series projects the window's rate, which for rises
    this alike is at most about 1.4 times the latest.) Infinite for rises all
    alike; 0 when a stretch did not rise or there are too few to tell.
    """
    rises = [b - a for a, b in itertools.pairwise(floors)]
    if len(rises) < SETTLE_RISES or min(rises) <= 0 or times[-1] <= times[0]:
        return 0.0
    evenness = min(rises) / max(rises)
    if evenness >= 1.0:
        return math.inf
    spacing = (times[-1] - times[0]) / len(rises)
    return (len(rises) - 1) * spacing / -math.log(evenness)


def _rate(floors: Sequence[float], times: Sequence[float], bunched_steps: bool) -> float:
    """The median pairwise slope of the floors; for ``bunched_steps``, no more than the mean.

    The median slope of stretches that hold a few steps overstates the rate
    when the steps bunch (flat stretches, then two steps): a staircase's rate
    is what it rose over the time it took.
    """
    points = zip(floors, times, strict=True)
    slopes = [
        (later - earlier) / (later_t - earlier_t)
        for (earlier, earlier_t), (later, later_t) in itertools.combinations(points, 2)
        if later_t > earlier_t
    ]
    rate = _median(slopes) if slopes else 0.0
    if bunched_steps and times[-1] > times[0]:
        rate = min(rate, (floors[-1] - floors[0]) / (times[-1] - times[0]))
    return rate


def median_abs_deviation(values: list[float]) -> float:
    """The median absolute deviation of ``values`` from their median."""
    centre = _median(values)
    return _median([abs(value - centre) for value in values])


def noise_tolerance(mins: Sequence[float], envelope: int = 1) -> float:
    """How far a floor may move by chance: ``NOISE_MADS`` median absolute deviations of
    the changes between consecutive bucket minima, or in a sawtooth (``envelope``
    buckets per cycle) between consecutive troughs, the lowest bucket of each cycle.

    A sawtooth's troughs are cycles apart: the lowest of each run of ``envelope``
    buckets, runs laid end to end from the newest bucket back. Runs that overlap
    (one starting at every bucket) share their lowest bucket with their
    neighbours, so most of their changes are zero and the deviation came out
    zero: a trough that a poll caught deep in one cycle and shallow in the next
    (the step's activations freed for a second at an ``empty_cache``) then beat
    the tolerance as surely as a leak. With fewer than three cycles in the
    window there are too few troughs for a deviation, and the overlapping runs
    are used.
    """
    troughs: Sequence[float] = mins
    if envelope > 1 and len(mins) > envelope:
        per_cycle = len(mins) >= SAWTOOTH_TROUGHS * envelope
        first, stride = (len(mins) % envelope, envelope) if per_cycle else (0, 1)
        last = len(mins) - envelope
        troughs = [min(mins[i : i + envelope]) for i in range(first, last + 1, stride)]
    return NOISE_MADS * median_abs_deviation(list(map(operator.sub, troughs[1:], troughs[:-1])))


def theil_sen_slope(times: Sequence[float], values: Sequence[float]) -> float:
    """The median of the pairwise slopes of ``values`` over ``times``: no outlier drags it."""
    return _rate(values, times, bunched_steps=False)


def kendall_tau(values: Sequence[float]) -> float:
    """Kendall's rank correlation of ``values`` with their order: 1 when each is higher than
    every one before it, about 0 for values in no order, -1 when each is lower."""
    in_order = 0  # pairs in order less pairs out of order (ties count neither)
    for i, earlier in enumerate(values):
        for later in values[i + 1 :]:
            in_order += (later > earlier) - (later < earlier)
    pairs = len(values) * (len(values) - 1) // 2
    return in_order / pairs if pairs else 0.0


def scatter_tolerance(times: Sequence[float], mins: Sequence[float]) -> float:
    """How far a floor may move by chance, from the minima's scatter about their line.

    ``NOISE_MADS`` median absolute deviations of ``mins`` from their Theil-Sen
    line, times the square root of 2 (a change is the difference of two such
    deviations), so that on noise alone it is about what ``noise_tolerance``
    gives. A minimum well off the line in a minority of buckets does not move
    it: a dip a poll caught in some buckets and not in others.
    """
    slope = theil_sen_slope(times, mins)
    residuals = [low - slope * t for low, t in zip(mins, times, strict=True)]
    return NOISE_MADS * math.sqrt(2.0) * median_abs_deviation(residuals)


def analyze_window(
    starts: Sequence[float],
    mins: Sequence[float],
    maxs: Sequence[float],
    end_t: float,
    window_s: float,
    width: float,
    min_rise: float,
    saturation_ratio: float,
    sawtooth: bool = False,
    envelope: int = 1,
) -> Trend | None:
    """Judge the buckets that start within ``window_s`` before ``end_t``.

    The window is cut twice, into 6 and into 4 stretches: 6 sees a steady
    rise in finer detail, 4 sees a staircase whose steps are few and far apart.
    The rise must be spread over the stretches (no one step may carry more
    than ``LARGEST_STEP_SHARE`` of it), so a single jump such as an eval spike
    is not a trend.

    Args:
        starts, mins, maxs: closed buckets, oldest first: start time, minimum, maximum.
        end_t: end of the window (end of the newest bucket).
        window_s: length of the window.
        width: length of one bucket.
        min_rise: smallest rise (bytes) that counts as material.
        saturation_ratio: a later rate below this fraction of the earlier one
            means the growth is saturating.
        sawtooth: the series drops regularly: labels the pattern and, with ``envelope``
            1, bounds the noise tolerance (below).
        envelope: buckets per sawtooth cycle (1: no sawtooth, or cycles shorter than a
            bucket). The noise is then measured on the troughs (the lowest of each
            ``envelope`` consecutive buckets), not on the teeth's own climbs and
            drops: those are the sawtooth, not noise about its floor. In a
            sawtooth of cycles shorter than a bucket, it is at most the minima's
            scatter about their line (``scatter_tolerance``).

    Returns:
        None when some stretch of the window has no bucket (too little history),
        or when neither the stretches nor a staircase rise consistently. A
        verdict may still be not ``rising``: too small a rise, or saturating.
    """
    start_t = end_t - window_s
    first = bisect_left(starts, start_t - 1e-9)  # starts rise: the first inside the window
    present = len(starts) - first
    if present < SEGMENTS:
        return None
    contiguous = present == round(window_s / width)

    def cut(count: int) -> tuple[list[float], list[float]] | None:
        if contiguous:
            return _floors_contiguous(starts, mins, first, count)
        return _floors(starts, mins, first, start_t, window_s, count)

    fine = cut(SEGMENTS)
    if fine is None or fine[0][-1] - min(fine[0]) < min_rise:
        return None  # a stretch without data, or the last is not materially above the lowest
    window_mins = mins[first:]
    tolerance = noise_tolerance(window_mins, envelope)
    if sawtooth and envelope == 1:
        # Cycles shorter than a bucket: each minimum is a trough, or a dip below it where
        # a poll caught a step's activations freed at an ``empty_cache``, in some buckets
        # and not in others. The changes then swing by the dip's depth from bucket to
        # bucket, and so did the tolerance (19 GiB on a 39 GiB card), burying any rise;
        # about their line the dips are the minority they are.
        tolerance = min(tolerance, scatter_tolerance(starts[first:], window_mins))
    rising_segments, consistent, saturating = _consistent(fine[0], tolerance, saturation_ratio)
    floors, times = fine
    if not consistent:
        coarse = cut(COARSE_SEGMENTS)
        if coarse is not None:
            _, consistent, saturating = _consistent(
                coarse[0], tolerance, saturation_ratio, SMALLEST_STEP_SHARE
            )
            if consistent:
                floors, times = coarse
                rising_segments = SEGMENTS - 1
    lowest = _lowest_from(mins, first)
    if consistent and _stopped(
        starts,
        lowest,
        first,
        end_t,
        window_s,
        max(tolerance, STOPPED_SHARE * (floors[-1] - floors[0])),
    ):
        consistent = False
    stairs = None
    if not consistent:
        stairs = _stairs(
            starts, lowest, first, end_t, width, 0.5 * min_rise, tolerance, saturation_ratio
        )
        if stairs is not None:
            consistent, saturating = True, False
            floors, times = stairs
            rising_segments = min(SEGMENTS - 1, len(floors) + 1)
    if not consistent:
        return None  # neither the stretches nor a staircase rise: no verdict to build
    rise = floors[-1] - (min(window_mins) if stairs else floors[0])
    peak = max(maxs[bisect_left(starts, end_t - window_s / 4, first) : len(starts)])
    pattern = _pattern(window_mins, sawtooth, stairs is not None)
    rate = _rate(floors, times, pattern == STAIRCASE and stairs is None)
    rising = rise >= min_rise and rise > tolerance and not saturating and rate > 0
    few: list[float] = []
    if rising:
        few = _few_steps(starts, window_mins, lowest, first, stairs, pattern, tolerance)
        if _slowing(few, width):
            rising, saturating = False, True
    return Trend(
        stairs=stairs is not None,
        steps_span_s=_few_steps_span(few, start_t, end_t) if rising else 0.0,
        settle_s=_settle_s(floors, times) if rising else 0.0,
        end_t=end_t,
        window_s=window_s,
        rate=rate,
        rise=rise,
        floor=floors[-1],
        peak=peak,
        rising_segments=rising_segments,
        saturating=saturating,
        pattern=pattern if rising else STEADY,
        rising=rising,
    )
