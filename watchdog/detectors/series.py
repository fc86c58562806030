"""One memory series: its floor at several time scales, and its leak and near-OOM findings.

Samples land in buckets of ``bucket_s`` seconds that keep their minimum and
maximum. A closed bucket is merged into the next level, whose buckets are
twice as long, and so on up to ``max_window_s``: each level keeps its last
``KEEP`` buckets, so memory is bounded and a slow creep over a day is judged
with as few numbers as a fast leak over two minutes. Each time a bucket
closes, the windows of 12 and 18 buckets ending there are judged
(``trend.analyze_window``) and the findings are decided from the newest
verdict of every level.

Everything here depends only on the samples and their times: no clock, no I/O.
"""

from __future__ import annotations

import itertools
import math
import operator
from array import array
from bisect import bisect_left
from collections.abc import Callable

from watchdog.config import DetectionSettings
from watchdog.detectors.events import (
    CLEARED,
    GPU,
    HOST_RSS,
    LEAK,
    NEAR_OOM,
    RAISED,
    SAWTOOTH,
    STEADY,
    UPDATED,
    Event,
    SeriesStatus,
)
from watchdog.detectors.trend import (
    SEGMENTS,
    Trend,
    analyze_window,
    kendall_tau,
    median_abs_deviation,
    shape_of,
    theil_sen_slope,
)

WINDOWS = (18, 12)
"""Window lengths judged at each level, in buckets of that level (longest first)."""
KEEP = max(WINDOWS)
MIN_WINDOW = min(WINDOWS)
CAPACITY = 2 * KEEP
"""Buckets a level stores before dropping its oldest ``KEEP`` at once."""
DROPS_KEPT = 6
DROP_NOISES = 6.0
"""A fall counts as a sawtooth drop when it is this many typical bucket-to-bucket changes."""
TOOTH_TAKEN_BACK = 0.75
"""A fall that is no drop is a short tooth's when it takes back this share of the climb since
the fall before (``Series._short_tooth``)."""
TOOTH_FILL = 0.25
"""Drops after whose cycles the floor sat, on average, this share of the fall or less above
the line from trough to trough were spikes', not a sawtooth's (``_Teeth``): the label only."""
SHORT_TOOTH_BUCKETS = 8
"""A sawtooth of this many finest buckets a cycle or fewer may have no drop recorded: it climbs
about the typical change in each bucket, and falls less than ``DROP_NOISES`` of it."""
DROP_GAP_SPREAD = 0.25
"""A sawtooth drops once a cycle: a gap between its drops within this share of the typical gap
(and a finest bucket) of it. The label only (``Series._drops_regular``)."""
SAWTOOTH_MARGIN = 1.5
"""Inside a sawtooth, a short window must rise this many tooth heights to count."""
SAWTOOTH_CYCLES = 3
"""Inside a sawtooth, a window shorter than this many cycles is a short window."""
CYCLING_FALLS = 2
CYCLING_S = 7200.0
"""A series that fell as deep as a restart ``CYCLING_FALLS`` times within ``CYCLING_S``
and falls again is cycling (a rollout engine put to sleep and woken, a trainer
offloaded), not restarting: it keeps its history, and only windows of
``SAWTOOTH_CYCLES`` of its cycles judge it."""
SHORT_EXTRAPOLATION_S = 1800.0
LONG_EXTRAPOLATION_S = 7200.0
STEPS_REACH = 1.0
"""A rise of a few steps (``trend.FEW_STEPS``) is projected this many times the time they
took at most: a planned step or two more and a leak's next steps look alike."""
UPDATE_RATE_CHANGE = 0.25
CONFIRM_WINDOW_S = SHORT_EXTRAPOLATION_S
"""A leak that only windows this short show is raised once the climb has gone on, for
up to ``leak_confirm_s`` (``Series._confirmed``): over these windows a climb that is
about to stop (a notebook cell, a cache filling) is as likely, as their short
extrapolation factor already says."""
CONFIRM_RATE = 0.5
"""Going on climbing: at least this share of the window's rate."""
CONFIRM_SHARE = 0.5
"""The watch takes at most this share of the time left before a checkpoint would be late."""
STILL_RISING_CYCLES = 8
"""Cycles (or buckets) a raised leak is followed on once no window shows it (``_still_rising``)."""
CLIMB_CYCLES = 6
"""A sawtooth no window shows rising is read over this many of its newest cycles
(``Series._cycles_climb``): ..."""
CLIMB_TOPS_ORDER = 0.7
"""... its tops must climb in order (Kendall's tau with time at least this: at most two of
the fifteen pairs of six tops out of order), ..."""
CLIMB_TROUGHS_ORDER = 0.3
"""... and its troughs more often than not (a tau of at least this), each line by a material
rise, each half of the tops at least ``saturation_ratio`` as steep as the other, ..."""
CLIMB_SPAN = 2.0
"""... where a cycle spans (top less trough, the median of the runs) at least this many times
what the climb adds in one: teeth that fall back by more than the leak lifts them. A climb
with small falls on its way (quantised noise, one long tooth's steps) is no sawtooth."""
CHECKPOINT_LEAD_S = 300.0
CHECKPOINT_SHARE = 0.25
"""A checkpoint needs the leak raised ``CHECKPOINT_LEAD_S`` before the OOM, or this
share of the climb's age plus its time to OOM if that is less (what issue 3 asks)."""
WARMUP_CLIMB_STEPS = 6
"""A climb inside the warm-up is judged (``Series._warmup_climb``) once its floor has risen
from finest bucket to finest bucket this many times after the step it began in, ..."""
WARMUP_CLIMB_LEAST = 0.25
"""... each by at least this share of the smallest material rise (``min_rise``), ..."""
WARMUP_CLIMB_ACCEL = 1.15
"""... its last third at least this many times as fast as its first (median steps), ..."""
WARMUP_CLIMB_PLATEAU = 6
"""... unless it set off from a floor held this many finest buckets (a working set the
job had settled at: a warm-up's phases run on into each other), ..."""
WARMUP_CLIMB_STEADY = 0.85
"""... when its thirds need only keep this share of its first third's pace (not slow
down, give or take the noise), ..."""
WARMUP_CLIMB_JUMP = 3.0
"""... and no step after its first more than this many times its median step: a jump
(a KV cache, Adam's state, a segment reserved) is a warm-up step, not a climb."""
SETTLE_AFTER_WARMUP_SHARE = 0.5
"""``Series._settling`` reads no floor from this first share of the warm-up, ..."""
SETTLE_CLOSEST = 4
"""... and, in a young series, reads its floor at points no closer together than a
window divided by this."""
MIB = float(1 << 20)


IDLE_BYTES = 1 << 30
"""A GPU using no more than this for a whole finest bucket holds only the driver's own
memory (and perhaps a CUDA context): no job's working set. While it does, its warm-up
grace starts again, so the next job's load is judged as a warm-up on device figures
alone, as it is where the process list shows the job arrive."""


class _Level:
    """One time scale: its open bucket and its last closed buckets, oldest first.

    The closed buckets live in three preallocated ``array('d')`` of ``CAPACITY``
    (start, minimum, maximum), filled up to ``count``: a series allocates all of
    its history when it is created and never again, so a daemon's memory does
    not creep as its levels fill over the first day (no float object per bucket,
    no list growing and shrinking).
    """

    __slots__ = (
        "carried",
        "count",
        "dropped_top",
        "has",
        "hi",
        "idx",
        "lo",
        "low",
        "low_at",
        "maxs",
        "mins",
        "result",
        "starts",
        "width",
    )

    def __init__(self, width: float) -> None:
        self.width = width
        self.idx = -1
        self.lo = 0.0
        self.hi = 0.0
        self.has = False
        self.count = 0
        self.starts = array("d", bytes(8 * CAPACITY))
        self.mins = array("d", bytes(8 * CAPACITY))
        self.maxs = array("d", bytes(8 * CAPACITY))
        self.result: _Verdict | None = None
        self.dropped_top = -math.inf
        """The highest minimum of the buckets dropped to make room (all older than those kept)."""
        self.low = math.inf
        """The lowest minimum of the newest ``KEEP`` closed buckets (``math.inf``: none)."""
        self.low_at = 0
        """Where ``low`` is stored (an index into ``mins``)."""
        self.carried = -math.inf
        """The highest minimum of a bucket before the series restarted on its processes' fall."""

    def push(self, start: float, lo: float, hi: float) -> None:
        """Store a closed bucket."""
        n = self.count
        if n == CAPACITY:
            # Drop the oldest half in one copy within each array (no reallocation).
            # Windows look back at most KEEP buckets, so what is dropped never
            # changes a verdict; only its highest floor is kept (``held_before``).
            self.dropped_top = max(self.dropped_top, *self.mins[: CAPACITY - KEEP])
            for values in (self.starts, self.mins, self.maxs):
                values[:KEEP] = values[CAPACITY - KEEP :]
            n = KEEP
            self.low_at -= CAPACITY - KEEP
        self.starts[n] = start
        self.mins[n] = lo
        self.maxs[n] = hi
        self.count = n + 1
        # The newest KEEP buckets' lowest, which every close asks for, kept as buckets
        # come: searched for again only once it is older than they are.
        if lo <= self.low:
            self.low, self.low_at = lo, n
        elif self.low_at <= n - KEEP:
            newest = self.mins[n + 1 - KEEP : n + 1]
            self.low = min(newest)
            self.low_at = n + 1 - KEEP + newest.index(self.low)

    def held_before(self, t: float) -> float:
        """The highest floor this level held for a whole bucket ending by ``t``."""
        top = self.dropped_top
        starts, mins, width = self.starts, self.mins, self.width
        for i in range(self.count):
            if starts[i] + width > t:
                break
            top = max(top, mins[i])
        return top

    def held_for(self, t: float, span: float) -> float:
        """The highest floor this level held for ``span`` in a row, in buckets from ``t`` on."""
        run = max(1, math.ceil(span / self.width - 1e-9))
        starts, mins, n = self.starts, self.mins, self.count
        first = bisect_left(starts, t - 1e-9, 0, n)
        return max((min(mins[i : i + run]) for i in range(first, n - run + 1)), default=-math.inf)

    def recent_mins(self, count: int) -> array[float]:
        """The minima of the newest ``count`` closed buckets (fewer if there are not as many)."""
        n = self.count
        return self.mins[max(0, n - count) : n]


class _Verdict:
    """The best rising window of one level, with what it means for the limit."""

    __slots__ = ("confidence", "leak", "near", "time_to_oom", "trend")

    def __init__(
        self, trend: Trend, time_to_oom: float, confidence: float, leak: bool, near: bool
    ) -> None:
        self.trend = trend
        self.time_to_oom = time_to_oom
        self.confidence = confidence
        self.leak = leak
        self.near = near


def _cycle_envelope(
    level: _Level, first: int, per_cycle: int
) -> tuple[list[float], list[float], list[float]]:
    """(start, trough, top) of each run of ``per_cycle`` of ``level``'s buckets from ``first``:
    runs that each span a sawtooth's cycle, their lowest and highest points."""
    runs = range(first, level.count, per_cycle)
    mins, maxs = level.mins, level.maxs
    return (
        [level.starts[i] for i in runs],
        [min(mins[i : i + per_cycle]) for i in runs],
        [max(maxs[i : i + per_cycle]) for i in runs],
    )


def _lower_median(values: list[float]) -> float:
    return sorted(values)[(len(values) - 1) // 2]


def extrapolation(window_s: float, least: float, most: float) -> float:
    """How far past its evidence a trend may be projected.

    ``least`` times the window up to 30 min, rising linearly to ``most`` times from 2 h.
    """
    share = (window_s - SHORT_EXTRAPOLATION_S) / (LONG_EXTRAPOLATION_S - SHORT_EXTRAPOLATION_S)
    return least + (most - least) * min(1.0, max(0.0, share))


def _fmt_bytes(value: float) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(value) >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value:.0f} B"


def _fmt_rate(rate: float) -> str:
    if abs(rate) * 60 >= 1 << 30 or abs(rate) >= 1 << 20:
        return f"{_fmt_bytes(rate * 60)}/min"
    return f"{_fmt_bytes(rate * 3600)}/h"


def _fmt_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class _Teeth:
    """What the series' falls say of its shape, for the pattern a leak is reported with
    (``Series._pattern``). No decision reads it.

    A sawtooth's tooth holds the memory up through its cycle (it climbs back,
    gradually or in segments, and falls once); an evaluation's spike holds it
    up for a few minutes of a cycle of an hour. Both record drops. ``fills``
    is, for each recent drop, how high the floor sat on average since the
    drop before, above the line joining the two troughs, as a share of the
    fall. ``short`` holds the falls of a sawtooth too short for its drops to
    be recorded (``Series._short_tooth``).
    """

    __slots__ = ("buckets", "filled", "fills", "short", "short_trough", "trough")

    def __init__(self) -> None:
        self.short: list[float] = []
        self.short_trough = math.inf
        self.fills: list[float] = []
        self.trough: float | None = None
        self.filled = 0.0
        self.buckets = 0

    def closed(self, lo: float) -> None:
        """A finest bucket whose floor is ``lo`` closed, and no drop came with it."""
        if self.trough is not None:
            self.filled += lo - self.trough
            self.buckets += 1

    def dropped(self, lo: float, size: float) -> None:
        """A drop of ``size`` to ``lo``: how full its cycle was, and the next one's trough.

        Full above the line from trough to trough: a leak lifts both, and spikes on
        a rising floor would pass for teeth."""
        if self.trough is not None and self.buckets:
            above_line = self.filled / self.buckets - (lo - self.trough) / 2
            self.fills.append(above_line / size)
            if len(self.fills) > DROPS_KEPT:
                del self.fills[0]
        self.trough, self.filled, self.buckets = lo, 0.0, 0

    def spikes(self) -> bool:
        """Whether the recent drops were spikes' (up for under ``TOOTH_FILL`` of a cycle)."""
        return bool(self.fills) and _lower_median(self.fills) < TOOTH_FILL


class Series:
    """The detector state of one memory series (see the module docstring)."""

    __slots__ = (
        "b_end",
        "b_hi",
        "b_lo",
        "cause_of",
        "climb_floor",
        "climb_read_t",
        "confirm_t",
        "cycling_t",
        "drops",
        "falls",
        "falls_keep_ground",
        "flat_buckets",
        "gap_s",
        "gpu",
        "headroom_of",
        "key",
        "kind",
        "last_t",
        "leak_active",
        "leak_confidence",
        "leak_hold",
        "leak_ok_t",
        "leak_pattern",
        "leak_rate",
        "leak_reported_rate",
        "leak_update_t",
        "least_rise",
        "levels",
        "limit",
        "min_rise",
        "near_active",
        "near_headroom",
        "near_off",
        "near_off_since",
        "near_on",
        "near_pred",
        "out",
        "peak",
        "peak_before_climb",
        "pid",
        "planned_until",
        "reset_below",
        "saw_cycle",
        "saw_tooth",
        "settings",
        "start_floor",
        "start_t",
        "teeth",
        "tooth_climb",
        "tooth_jumps",
        "x",
        "x_before",
    )

    def __init__(
        self,
        kind: str,
        gpu: int,
        pid: int | None,
        settings: DetectionSettings,
        out: list[Event],
        t: float,
        limit: float,
    ) -> None:
        self.kind = kind
        self.gpu = gpu
        self.pid = pid
        self.key = (kind, gpu, pid)
        self.settings = settings
        self.gap_s = settings.reset_gap_s
        self.out = out
        self.headroom_of: Callable[[], float] | None = None
        """Headroom of what runs out (the GPU for a process); None: ``limit - peak``."""
        self.cause_of: Callable[[Series], str | None] | None = None
        width = settings.bucket_s
        self.levels: list[_Level] = []
        while not self.levels or MIN_WINDOW * width <= settings.max_window_s:
            self.levels.append(_Level(width))
            width *= 2
        self.leak_active = False
        self.near_active = False
        self.near_headroom = False
        self.near_pred = False
        self.near_off_since: float | None = None
        self.leak_ok_t = 0.0
        self.leak_update_t = 0.0
        self.leak_rate = 0.0
        self.leak_reported_rate = 0.0
        self.leak_confidence = 0.0
        self.leak_hold = 0.0
        self.leak_pattern: str | None = None
        self.x = self.x_before = self.limit = 0.0
        self.near_on = self.near_off = math.inf
        self.min_rise = 0.0
        self.least_rise = 0.0
        """The least rise a window may be judged on: ``min_rise``, or down to
        ``leak_min_rise_bytes`` near the limit (``_judged_rise``)."""
        self.start_t = self.last_t = t
        self.b_end = self.b_lo = self.b_hi = self.reset_below = -math.inf
        self.tooth_climb = self.tooth_jumps = self.saw_cycle = self.saw_tooth = 0.0
        self.drops: list[tuple[float, float]] = []
        self.teeth = _Teeth()
        self.falls: list[float] = []
        self.cycling_t = -math.inf
        # When ``_cycles_climb`` last read the sawtooth's cycles: it reads them once a cycle.
        self.confirm_t = self.climb_read_t = -math.inf
        self.start_floor = self.climb_floor = self.peak = self.peak_before_climb = 0.0
        self.flat_buckets = 0
        """Finest buckets the floor held before the newest climb (a climb's rising buckets
        leave it as it was: only a flat or falling one changes it)."""
        self.planned_until = math.inf
        """While a growth the job planned lasts: until when (``math.inf``: none)."""
        self.falls_keep_ground = kind != GPU
        """Whether the series' processes are known, so a fall is theirs (see ``restart``)."""
        self._set_limit(limit)
        self._start(t)

    # -- the per-sample path: kept short, it runs hundreds of thousands of times a second

    def add(self, t: float, x: float, limit: float) -> None:
        """Take one sample ``x`` of this series at ``t`` with its current limit."""
        if limit != self.limit:
            self._set_limit(limit)
        if t - self.last_t > self.gap_s:
            self.restart(t)
            self.x_before = self.x = x
        # A fall as deep as a restart's must hold for two polls: a dip one poll caught
        # (the step's activations freed for a second at an empty_cache, caught in some
        # cycles and not others) is no job ending, and restarting would wipe the
        # history a leak under the sawtooth shows in. So the previous sample is judged,
        # and only as low as a poll beside it went too.
        last = self.x
        if last < self.reset_below:
            before = self.x_before
            if last < before and last < x:  # a dip: the lower of the polls beside it
                last = before if before < x else x
            if last < self.reset_below:
                self._fell(t)
        self.x_before, self.x = self.x, x
        self.last_t = t
        if t >= self.b_end:
            self._roll(t, x)
        elif x < self.b_lo:
            self.b_lo = x
        elif x > self.b_hi:
            self.b_hi = x
        if x >= self.near_on:
            if not self.near_headroom:
                self.near_headroom = True
                self._near_changed(t)
        elif self.near_headroom and x < self.near_off:
            self.near_headroom = False
            self._near_changed(t)

    # -- bookkeeping

    def _fell(self, t: float) -> None:
        """The floor fell as deep as a restart's at ``t``: a restart, or a cycle's fall."""
        if self._cycling(t):
            self.cycling_t = t
            self.reset_below = -math.inf  # until the next bucket closes
            return
        self._fall(t)
        # Memory freed near the limit may be a job that caught its OOM and started
        # over in the same process: judged afresh, or a leak run again would pass for
        # ground held before.
        full = max(self.peak, self.b_hi) >= self.settings.near_oom_used_ratio * self.limit
        self.restart(t, keep_ground=self.falls_keep_ground and not full)

    def _set_limit(self, limit: float) -> None:
        self.limit = limit
        s = self.settings
        self.min_rise = max(float(s.leak_min_rise_bytes), s.leak_min_rise_ratio * limit)
        self.least_rise = (
            float(s.leak_min_rise_bytes) if s.leak_min_rise_headroom_share > 0 else self.min_rise
        )
        if self.kind in (GPU, HOST_RSS):
            self.near_on = s.near_oom_used_ratio * limit
            self.near_off = min(s.near_oom_clear_ratio, s.near_oom_used_ratio) * limit

    def _start(self, t: float) -> None:
        for level in self.levels:
            level.idx = -1
            level.has = False
            level.count = 0
            level.low = math.inf
            level.result = None
            level.dropped_top = -math.inf
        self.start_t = t
        self.last_t = t
        self.b_end = -math.inf
        self.confirm_t = -math.inf
        self.b_lo = self.b_hi = 0.0
        self.reset_below = -math.inf
        self.tooth_climb = self.tooth_jumps = 0.0
        # The sawtooth record (drops, cycle, tooth) survives a restart: a job restarted
        # from its checkpoint saws as before, and its first tooth is no leak either.

    def _cycling(self, t: float) -> bool:
        """Whether the series fell as deep as a restart often enough before ``t`` to be cycling."""
        falls = self.falls
        return len(falls) >= CYCLING_FALLS and t - falls[-CYCLING_FALLS] <= CYCLING_S

    def _fall(self, t: float) -> None:
        """Record a fall as deep as a restart's at ``t``."""
        if self._cycling(t):
            self.cycling_t = t
        self.falls.append(t)
        if len(self.falls) > CYCLING_FALLS + 1:
            del self.falls[0]

    def _fall_cycle(self, end_t: float) -> float:
        """The cycle of the falls a cycling series makes (0 when it is not cycling)."""
        falls = self.falls
        if self.cycling_t < 0 or len(falls) < 2:
            return 0.0
        cycle = max(b - a for a, b in itertools.pairwise(falls))
        return cycle if end_t - self.cycling_t <= SAWTOOTH_CYCLES * cycle else 0.0

    def inherit_sawtooth(self, other: Series) -> None:
        """Start with ``other``'s sawtooth record (a new process on a GPU that saws)."""
        self.drops = list(other.drops)
        self.saw_cycle, self.saw_tooth = other.saw_cycle, other.saw_tooth
        self.teeth.fills = list(other.teeth.fills)

    def restart(self, t: float, keep_ground: bool = False) -> None:
        """Judge the series afresh from ``t``: its job ended or restarted, or it was silent.

        ``keep_ground``: the same processes freed the memory (checkpoints
        averaged and dropped, a nightly batch done), so what they held before
        still counts as ground been on (``_been_here``): loading as much again
        is no leak. Never after an exit or a silence: a new job, perhaps one
        restarted after an OOM, is judged on its own.
        """
        for level in self.levels:
            level.carried = (
                max(level.carried, level.held_before(math.inf)) if keep_ground else -math.inf
            )
        self._start(t)
        self.near_pred = False
        if self.leak_active:
            self.leak_active = False
            self._emit(t, LEAK, CLEARED, "memory fell back or the series restarted")
        self._near_changed(t)

    def plan_growth(self, until_t: float) -> None:
        """Hold new leak findings until ``until_t``: the job said its memory grows until then.

        What the job plans (a model loading, a cache filling, a schedule that
        grows its batch) climbs as a leak does until it stops; only the job can
        tell them apart. near_oom is never held. When the plan ends, the series
        is judged afresh from where it stands (``end_growth``).
        """
        self.planned_until = until_t

    def end_growth(self, t: float, afresh: bool = True) -> None:
        """End a planned growth at ``t``; ``afresh``: judge from here, not from before it.

        ``afresh=False`` when the growth went past what was planned: then the
        climb that is under way is judged with everything seen before it.
        """
        if self.planned_until == math.inf:
            return
        self.planned_until = math.inf
        if afresh:
            self.restart(t)

    def forget(self, t: float, why: str) -> None:
        """Clear every active finding: the series is going away."""
        if self.leak_active:
            self.leak_active = False
            self._emit(t, LEAK, CLEARED, why)
        if self.near_active:
            self.near_active = self.near_headroom = self.near_pred = False
            self.near_off_since = None
            self._emit(t, NEAR_OOM, CLEARED, why)

    def _roll(self, t: float, x: float) -> None:
        """``t`` is past the open finest bucket: close it (and what it completes), open anew."""
        if t >= self.planned_until:
            self.end_growth(t)  # starts the series again: the bucket open before is dropped
        width = self.levels[0].width
        idx = int(t // width)
        if self.near_off_since is not None:
            self._near_expire(t)
        if self.b_end != -math.inf:
            level = self.levels[0]
            level.lo, level.hi, level.has = self.b_lo, self.b_hi, True
            self._close(0, idx)
        self.levels[0].idx = idx
        self.b_end = (idx + 1) * width
        self.b_lo = self.b_hi = x

    def _close(self, n: int, now_idx: int) -> None:
        """Close level ``n``'s open bucket, then each coarser one it completes by ``now_idx``
        (a loop, not a call a level: it runs at every finest bucket of every series)."""
        levels = self.levels
        top = len(levels) - 1
        level = levels[n]
        while True:
            lo, hi, idx = level.lo, level.hi, level.idx
            level.has = False
            start = idx * level.width
            if n == 0:
                self._floor_closed(start, lo, hi)
            level.push(start, lo, hi)
            self._judge(level, start + level.width)
            if n == top:
                return
            upper = levels[n + 1]
            upper_idx = idx >> 1
            if upper.has and upper.idx != upper_idx:
                self._close(n + 1, now_idx)  # an older bucket still open above: it goes first
            if upper.has:
                # Comparisons, not min() and max(): 1% of a replay's instructions.
                if lo < upper.lo:  # noqa: PLR1730
                    upper.lo = lo
                if hi > upper.hi:  # noqa: PLR1730
                    upper.hi = hi
            else:
                upper.idx, upper.lo, upper.hi, upper.has = upper_idx, lo, hi, True
            n += 1
            if (upper_idx + 1) << n > now_idx:
                return
            level = upper

    def _floor_closed(self, start: float, lo: float, hi: float) -> None:
        """A finest bucket closed: update the reset threshold and the sawtooth record."""
        s = self.settings
        first = self.levels[0]
        if first.count:
            step = lo - first.mins[first.count - 1]
            least = WARMUP_CLIMB_LEAST * self.min_rise
            # Conditionals, not max() and min(): this runs at every finest bucket.
            peak = self.peak
            size = abs(step)
            # A move the floor's own noise makes (a drop is DROP_NOISES of it and material).
            within_noise = size <= self.min_rise or size <= DROP_NOISES * self._noise()
            if step < least:
                # A climb may start here: what the series held before it, where from,
                # and for how long the floor had held there (give or take its noise: a
                # noisy floor dips by more than ``min_rise`` and is as settled).
                self.flat_buckets = self.flat_buckets + 1 if within_noise else 0
                self.peak_before_climb = peak if peak >= hi else hi
                self.climb_floor = lo
            if hi > peak:
                self.peak = hi
            if within_noise:
                if step < 0.0 and size > self.min_rise:
                    self._short_tooth(start, lo, size)
                climb = self.tooth_climb + step
                self.tooth_climb = climb if climb > 0.0 else 0.0
                self.teeth.closed(lo)
            elif step < 0:
                if size >= max(float(s.reset_drop_min_bytes), s.reset_drop_ratio * (lo + size)):
                    self._fall(start)  # as deep as a restart's: counts towards cycling
                # The tooth is the part of the fall the floor did not reach by jumping up:
                # all of it for a sawtooth (a gradual climb, then the drop), none for an
                # eval spike (a jump up, then back down). A spike's fall may take two
                # buckets: jumps not yet matched by a fall wait for the next one.
                jumps = self.tooth_jumps
                self._drop(start, max(0.0, size - jumps))
                self.teeth.dropped(lo, size)
                self.tooth_jumps = max(0.0, jumps - size)
                self.tooth_climb = 0.0
            else:
                self.teeth.closed(lo)
                if start - self.start_t >= s.warmup_s:
                    self.tooth_jumps += step  # the model load and warm-up steps are no spikes
            floor = first.low if first.low <= lo else lo
        else:
            floor = self.start_floor = self.climb_floor = lo
            self.peak = self.peak_before_climb = hi
            self.flat_buckets = 0
        least_drop, drop = float(s.reset_drop_min_bytes), s.reset_drop_ratio * floor
        self.reset_below = floor - (least_drop if least_drop >= drop else drop)
        if self.kind == GPU and hi <= IDLE_BYTES:
            self.start_t = start + first.width  # empty: the next climb is a job's warm-up

    def _noise(self) -> float:
        """Typical change between consecutive finest-bucket minima (their median)."""
        mins = self.levels[0].recent_mins(KEEP)
        steps = sorted(map(abs, map(operator.sub, mins[1:], mins[:-1])))
        return steps[len(steps) // 2] if steps else 0.0

    def _short_tooth(self, t: float, lo: float, size: float) -> None:
        """Note a material fall at ``t`` to ``lo`` that is a short tooth's, though not a drop.

        A sawtooth of a few finest buckets a cycle (an ``empty_cache`` every
        minute) climbs about the typical change in every bucket, so its drops
        are under ``DROP_NOISES`` of it and are not recorded: the series is
        judged as a noisy one, and a leak under it is found where buckets hold
        whole cycles. Only its pattern is read from these falls
        (``_pattern``): a fall that takes back most of what the floor climbed
        since the last such fall, and is ``DROP_NOISES`` deviations of the
        changes about their median (about it, a regular climb is no noise; pure
        noise has a median change of about nothing, and rarely falls that far).
        """
        teeth = self.teeth
        climbed = lo + size - teeth.short_trough
        teeth.short_trough = lo
        if climbed < self.min_rise or size < TOOTH_TAKEN_BACK * climbed:
            return
        mins = self.levels[0].recent_mins(KEEP)
        if size > DROP_NOISES * median_abs_deviation(list(map(operator.sub, mins[1:], mins[:-1]))):
            teeth.short.append(t)
            if len(teeth.short) > DROPS_KEPT:
                del teeth.short[0]

    def _pattern(self, trend: Trend, level: _Level) -> str:
        """The pattern a leak is reported with (``_Teeth``); the window's, but:

        - in a sawtooth whose recent drops were mostly spikes' (``_Teeth.spikes``), or
          came at no regular cycle (``_drops_regular``), the pattern the floor's own
          steps make: evaluations and noise are no sawtooth;
        - on a steady window, ``sawtooth`` where short teeth (``_short_tooth``) fell
          ``SAWTOOTH_CYCLES`` times or more in the window, once a cycle of at most
          ``SHORT_TOOTH_BUCKETS`` finest buckets (or a whole number of such cycles: a
          fall lost in the noise), the last no longer ago than two of the longest
          gaps. Noise that falls as far comes at random, hours apart.
        """
        if trend.pattern == SAWTOOTH:
            if not self.teeth.spikes() and self._drops_regular():
                return SAWTOOTH
            n = level.count  # the verdict's window is the level's newest buckets
            return shape_of(
                level.mins[max(0, n - round(trend.window_s / level.width)) : n], trend.stairs
            )
        if trend.pattern != STEADY:
            return trend.pattern
        teeth = [t for t in self.teeth.short if t >= trend.end_t - trend.window_s]
        gaps = [b - a for a, b in itertools.pairwise(teeth)]
        if len(gaps) < SAWTOOTH_CYCLES:
            return trend.pattern
        width, cycle = self.levels[0].width, min(gaps)
        regular = cycle <= SHORT_TOOTH_BUCKETS * width and all(
            abs(gap - cycle * round(gap / cycle)) <= width for gap in gaps
        )
        return SAWTOOTH if regular and trend.end_t - teeth[-1] <= 2 * max(gaps) else trend.pattern

    def _drops_regular(self) -> bool:
        """Whether the recorded drops came once a cycle, as an ``empty_cache`` every so many
        steps makes them (for the label only: the decisions read the cycle, not this).

        ``SAWTOOTH_CYCLES`` drops or more, their typical (lower median) gap longer than
        ``SHORT_TOOTH_BUCKETS`` finest buckets (a sawtooth that short drops under the
        noise, ``_short_tooth``), and every gap within ``DROP_GAP_SPREAD`` of it, or a
        short gap and the next that add up to one cycle (an extra drop), or a long gap
        and a short one that add up to two (a drop held up by a spike over it), but one
        where there are four gaps or more. Allocations that come and go record drops
        too, at random gaps; and a single drop gives the series a cycle from its start.
        """
        gaps = [b - a for (a, _), (b, _) in itertools.pairwise(self.drops)]
        if len(gaps) < SAWTOOTH_CYCLES - 1:
            return False
        width = self.levels[0].width
        typical = _lower_median(gaps)
        if typical <= SHORT_TOOTH_BUCKETS * width:
            return False
        spread = DROP_GAP_SPREAD * typical + width
        misfits = i = 0
        while i < len(gaps):
            gap = gaps[i]
            both = gap + gaps[i + 1] if i + 1 < len(gaps) else math.inf
            if abs(gap - typical) <= spread:
                i += 1
            elif gap < typical - spread and abs(both - typical) <= spread:
                i += 2  # a cycle split by an extra drop (an evaluation's, a fall over two)
            elif (
                gap > typical + spread
                and abs(both - 2 * typical) <= spread
                and gaps[i + 1] < typical - spread
            ):
                i += 2  # a drop late by what the next came early: held up, not extra
            else:
                misfits += 1
                i += 1
        return misfits <= (1 if len(gaps) >= 4 else 0)

    def _sawtooth(self, end_t: float) -> tuple[float, float]:
        """(cycle, tooth height) of the sawtooth the series is in now; (0, 0) if none."""
        cycle = self.saw_cycle
        if not cycle or end_t - self.drops[-1][0] > 3 * cycle:
            return 0.0, 0.0
        return cycle, self.saw_tooth

    def _drop(self, t: float, height: float) -> None:
        """Record a sawtooth drop: the cycle is the longest gap between recent drops."""
        drops = self.drops
        drops.append((t, height))
        if len(drops) > DROPS_KEPT:
            del drops[0]
        if len(drops) == 1:
            self.saw_cycle = t - self.start_t
        else:
            self.saw_cycle = max(b[0] - a[0] for a, b in itertools.pairwise(drops))
        self.saw_tooth = max(h for _, h in drops)

    def recent_peak(self) -> float:
        """The highest sample of the open finest bucket and the one before it."""
        first = self.levels[0]
        return max(self.b_hi, first.maxs[first.count - 1]) if first.count else self.b_hi

    def headroom(self) -> float:
        """Bytes left before the limit, measured from the recent peak."""
        if self.headroom_of is not None:
            return self.headroom_of()
        return self.limit - self.recent_peak()

    # -- judging

    def _judge(self, level: _Level, end_t: float) -> None:
        n = level.count
        best: _Verdict | None = None
        if n >= SEGMENTS and (rise := level.mins[n - 1] - level.low) >= self.least_rise:
            best = self._best_window(level, end_t, rise)
            if best is None and level is self.levels[0] and rise >= self.min_rise:
                best = self._warmup_climb(level, end_t)
        if (
            self.saw_cycle
            # Cheap tests first, at every close: the cycles are read once a cycle, and
            # runs of buckets that each span a cycle hold fewer than the buckets.
            and end_t - self.climb_read_t >= self.saw_cycle
            and level.count * level.width >= CLIMB_CYCLES * self.saw_cycle
            and not self.leak_active  # a raised leak stands while it climbs (_still_rising)
            and (best is None or not best.leak)
        ):
            climb = self._cycles_climb(level, end_t)
            if climb is not None and climb.leak:
                best = climb
        if best is not None or level.result is not None:
            level.result = best
            self._decide(end_t)
        elif self.leak_active or self.near_pred:
            self._decide(end_t)

    def _judged_rise(self) -> float:
        """The rise a window must show to be judged: ``min_rise``, or less near the limit.

        Near the limit a rise short of ``min_rise`` can be most of what is
        left: a creep of megabytes an hour into the last percent of a large
        card runs out before it rises by 0.5% of the card. Such a rise counts
        once it is ``leak_min_rise_headroom_share`` of the headroom (never
        under ``leak_min_rise_bytes``).
        """
        share = self.settings.leak_min_rise_headroom_share
        if share <= 0.0:
            return self.min_rise
        least = max(float(self.settings.leak_min_rise_bytes), share * max(0.0, self.headroom()))
        return min(self.min_rise, least)

    def _best_window(self, level: _Level, end_t: float, rise: float) -> _Verdict | None:
        """The most confident rising window of ``level`` ending at ``end_t``, if any; ``rise``
        is how far its newest bucket's floor sits above the lowest of the newest ``KEEP``."""
        cycle, tooth = self._sawtooth(end_t)
        if (
            cycle
            and KEEP * level.width < SAWTOOTH_CYCLES * cycle
            and rise < SAWTOOTH_MARGIN * tooth
        ):
            # Every window lies inside the teeth, and no floor rose by a tooth: none
            # passes the check on its newest sixth below (most closes of a sawtooth).
            return None
        s = self.settings
        judged_rise = self._judged_rise()
        if rise < judged_rise:
            return None  # nor does any window: its floor rose less
        best: _Verdict | None = None
        # Buckets of this level that lie wholly after the warm-up. While the series is
        # too young for the longest window, that window is all of them instead: as
        # much evidence as the history holds, not just the shorter window's (a leak
        # from the job's start would wait for the whole longest window to pass the
        # warm-up, up to half as long again as the evidence it already has). That is
        # so from the moment the history past the warm-up is longer than the finer
        # level's longest window (KEEP of its buckets, half as wide): no history is
        # left unjudged between the two levels.
        after_warmup = int((end_t - self.start_t - s.warmup_s) / level.width + 1e-9)
        # A cycling series (phases that free most of its memory and take it back) shows a
        # leak only across whole cycles: a shorter window sees the climb into a phase.
        shortest_s = SAWTOOTH_CYCLES * self._fall_cycle(end_t)
        for index, standard in enumerate(WINDOWS):
            young = index == 0 and KEEP // 2 < after_warmup < standard
            count = after_warmup if young else standard
            window_s = count * level.width
            if (
                window_s > s.max_window_s
                or window_s < shortest_s
                or end_t - window_s < self.start_t + s.warmup_s
            ):
                continue
            min_rise = judged_rise
            short_of_cycles = cycle and window_s < SAWTOOTH_CYCLES * cycle
            if short_of_cycles:
                min_rise = max(min_rise, SAWTOOTH_MARGIN * tooth)
            # Cheap necessary condition: the newest sixth sits materially above the lowest point.
            n, mins = level.count, level.mins
            lowest = level.low if count == KEEP else min(mins[max(0, n - count) : n])
            if min(mins[max(0, n - count // 6) : n]) - lowest < min_rise:
                continue
            if short_of_cycles:
                # Inside one tooth (or across drops the troughs did not climb) only a
                # climb beyond a tooth counts, and beyond as many teeth as cycles have
                # passed since the last drop: a drop hidden under a spike lets a normal
                # tooth climb on.
                since_drop = end_t - self.drops[-1][0]
                inside = since_drop >= window_s
                if (
                    inside or not self._troughs_rise(level, end_t - window_s, end_t)
                ) and self.tooth_climb < min_rise * max(1.0, since_drop / cycle):
                    continue
            # A window holds at most ``count`` buckets: hand over only those.
            first = max(0, n - count)
            trend = analyze_window(
                level.starts[first:n],
                level.mins[first:n],
                level.maxs[first:n],
                end_t,
                window_s,
                level.width,
                min_rise,
                s.saturation_ratio,
                sawtooth=bool(cycle),
                envelope=math.ceil(cycle / level.width) + 1 if cycle > level.width else 1,
            )
            if trend is None or not trend.rising:
                continue
            verdict = self._verdict(trend)
            if verdict.leak and trend.pattern == STEADY and self._settling(trend, verdict):
                verdict.leak = False
            if best is None or verdict.confidence > best.confidence:
                best = verdict
            if verdict.leak:
                break  # the longer window is the stronger evidence; the shorter adds nothing
        return best

    def _settling(self, trend: Trend, verdict: _Verdict) -> bool:
        """Whether the floor has been slowing down so that it settles before the limit.

        A window sees the pace of its own stretch. Growth that settles (an
        allocator approaching its working set over minutes, ``C - A exp(-t / tau)``)
        rises by ``q = exp(-D / tau)`` times as much over each stretch of ``D``
        as over the one before, and has ``q / (1 - q)`` times its last rise left
        to grow. The floor is read at four points a window apart (closer, down
        to a quarter of a window, where the history is shorter; each the lowest
        of a sixth of a window, as the windows read it), on one level so that
        each reading falls as late in its bucket. Where each stretch rose
        less than the one before (once is chance: a leak in bursts) and the
        slower of the two slowings says the floor settles short of the limit,
        the window is no leak yet.
        """
        window = trend.window_s
        # None from the first half of the warm-up: the load and the first steps are
        # bursts, no curve that settles.
        settled_from = self.start_t + SETTLE_AFTER_WARMUP_SHARE * self.settings.warmup_s
        reach_back = max(settled_from, trend.end_t - window / SEGMENTS - 3 * window)
        level = next((lv for lv in self.levels if lv.count and lv.starts[0] <= reach_back), None)
        if level is None:
            return False
        width, starts = level.width, level.starts
        span = max(1, round(window / SEGMENTS / width))
        newest = level.count - span
        oldest = next((i for i in range(level.count) if starts[i] >= reach_back), level.count)
        # A window too young to have three windows of history behind it is read at
        # points closer together, down to a quarter of a window: one that holds about
        # all the history past the warm-up (growth bending over hours, a few hours in)
        # is read inside itself.
        gap = min(round(window / width), (newest - oldest) // 3)
        if gap < 2 or gap * width < window / SETTLE_CLOSEST:
            return False
        mins = level.mins
        floors = [min(mins[i : i + span]) for i in range(newest - 3 * gap, newest + 1, gap)]
        rises = [b - a for a, b in itertools.pairwise(floors)]
        if not rises[0] > rises[1] > rises[2] > 0.0:
            return False
        q = max(rises[1] / rises[0], rises[2] / rises[1])
        left = verdict.time_to_oom * trend.rate + trend.floor - floors[-1]
        return rises[2] * q / (1.0 - q) < left

    def _warmup_climb(self, level: _Level, end_t: float) -> _Verdict | None:
        """A fast leak begun inside the warm-up that would run out before windows may judge it.

        No window starts inside ``warmup_s``: a ramp to the working set is the
        same line as a leak until it stops. A graph kept alive at every step
        (``backward(retain_graph=True)``) grows from the first steps on and can
        fill the card minutes later, inside the grace. It differs from a warm-up
        in four ways, all required: it sets off from a working set the job had
        reached, not from the memory it started with (a load, a restart's
        reload); its floor rises through every finest bucket, evenly, with no
        jump (a warm-up grows in allocations of its own size); it speeds up
        (each step keeps a little more), where a warm-up ramp is steady or
        slows down; and it climbs into memory the series never held, on pace to
        run out within as long again as it has climbed. A climb from a floor the
        job had settled at need not speed up, but is raised nearer its end.
        """
        width = level.width
        if end_t > self.start_t + self.settings.warmup_s + KEEP * width:
            return None  # windows past the warm-up judge it from here on
        n, mins = level.count, level.mins
        least = WARMUP_CLIMB_LEAST * self.min_rise
        first = n - 1
        while first > 0 and mins[first] - mins[first - 1] >= least:
            first -= 1
        climbed = n - 1 - first  # fewer than the climb's rises once a halving dropped its start
        rise = mins[n - 1] - self.climb_floor
        if (
            climbed <= WARMUP_CLIMB_STEPS
            or level.starts[first] >= self.start_t + self.settings.warmup_s
            # From the memory the series started with: a load, or a restart's reload.
            or self.climb_floor - self.start_floor < max(self.min_rise, rise / 2)
            or mins[n - 1] <= self.peak_before_climb
        ):
            return None
        # The first step holds the climb's start somewhere inside its bucket: a part
        # step, which says nothing of the climb's pace.
        steps = [mins[i + 1] - mins[i] for i in range(first + 1, n - 1)]
        if max(steps) > WARMUP_CLIMB_JUMP * _lower_median(steps):
            return None
        third = len(steps) // 3
        early, middle, late = (
            _lower_median(part) / width
            for part in (steps[:third], steps[third:-third], steps[-third:])
        )
        duration = climbed * width
        # It must speed up, as a kept graph does; or set off from a floor the job had
        # settled at and not slow down (a warm-up's phases run on into each other, and
        # its ramps slow down). A ramp started after a pause (a compile, a data load)
        # does that too, until it reaches its working set: such a climb is raised
        # nearer its end (``warmup_settled_climb_reach``, 0.5 by default). A leak is
        # then still raised with half as much time again as its checkpoint needs (a
        # quarter of its whole climb left is a third of what it has climbed).
        settled_reach = self.settings.warmup_settled_climb_reach
        speeding = middle >= early and late >= WARMUP_CLIMB_ACCEL * early
        even = (
            settled_reach > 0.0
            and self.flat_buckets >= WARMUP_CLIMB_PLATEAU
            and middle >= WARMUP_CLIMB_STEADY * early
            and late >= WARMUP_CLIMB_STEADY * early
        )
        reach = 1.0 if speeding else settled_reach
        if (
            late <= 0.0  # flat buckets count as rises when no rise is material
            or not (speeding or even)
            or max(0.0, self.headroom()) > reach * late * duration
        ):
            return None
        trend = Trend(
            end_t=end_t,
            window_s=duration + width,
            rate=late,
            rise=rise,
            floor=mins[n - 1],
            peak=max(level.maxs[first:n]),
            rising_segments=SEGMENTS - 1,
            saturating=False,
            pattern=STEADY,
            rising=True,
        )
        return self._verdict(trend)

    def _cycles_climb(self, level: _Level, end_t: float) -> _Verdict | None:
        """The whole sawtooth climbing over its newest ``CLIMB_CYCLES`` cycles, where no window
        shows its floor rising.

        At each ``empty_cache`` a poll may land in the second for which a step's
        activations are freed, in some cycles and not in others, and catch a dip
        of any depth under the trough. The stretch floors a window compares are
        then dips or troughs by chance, and the noise tolerance measured on them
        buries a leak's rise: a sawtooth that climbed from 38 to 88 GiB of a
        90 GiB card in three hours was never raised. Read cycle by cycle, the
        climb shows. Each run of the level's buckets that spans a cycle gives
        a top, which no dip reaches, and a trough, which no spike reaches. The
        sawtooth climbs where its tops rise in order (``CLIMB_TOPS_ORDER``), its
        troughs more often than not (``CLIMB_TROUGHS_ORDER``), both by a
        material rise on their Theil-Sen lines, each half of the tops at least
        ``saturation_ratio`` as steep as the other (not growth that saturates,
        nor an evaluation's jump at the end), and each cycle falls back by more
        than the climb adds in it (``CLIMB_SPAN``). Teeth growing from a flat
        floor (longer sequences) lift the tops alone; dips that happen to come
        out shallower lift the troughs alone; the steps of one long tooth, with
        the quantised noise falling between them, are a climb with small falls
        on its way, no sawtooth.

        The verdict is judged as a window's (``_verdict``) at the slower of the
        two lines' rates; the finest level holding the cycles reads them, once a
        cycle, and only runs wholly past the warm-up.
        """
        per_cycle = self._cycles_read_on(level, self._sawtooth(end_t)[0])
        if not per_cycle:
            return None
        self.climb_read_t = end_t  # read once a cycle (``_judge``)
        first = level.count - CLIMB_CYCLES * per_cycle
        times, troughs, tops = _cycle_envelope(level, first, per_cycle)
        # Order first: it is the cheaper test, and tops in order are rare where nothing leaks.
        if kendall_tau(tops) < CLIMB_TOPS_ORDER or kendall_tau(troughs) < CLIMB_TROUGHS_ORDER:
            return None
        span = times[-1] - times[0]
        troughs_rate = theil_sen_slope(times, troughs)
        rate = min(troughs_rate, theil_sen_slope(times, tops))
        half = CLIMB_CYCLES // 2
        older = theil_sen_slope(times[: half + 1], tops[: half + 1])
        newer = theil_sen_slope(times[half:], tops[half:])
        ratio = self.settings.saturation_ratio
        spans = sorted(top - low for low, top in zip(troughs, tops, strict=True))
        if (
            rate * span < self.min_rise
            # Each half as steep as the other, give or take: not saturating (the newer
            # flatter), nor a step (an evaluation's jump: the older flat).
            or newer < ratio * older
            or older < ratio * newer
            or spans[len(spans) // 2] < CLIMB_SPAN * rate * per_cycle * level.width
        ):
            return None
        intercept = sorted(low - troughs_rate * t for low, t in zip(troughs, times, strict=True))
        trend = Trend(
            end_t=end_t,
            window_s=CLIMB_CYCLES * per_cycle * level.width,
            rate=rate,
            rise=rate * span,
            floor=intercept[len(intercept) // 2] + troughs_rate * times[-1],
            peak=tops[-1],
            rising_segments=SEGMENTS - 1,
            saturating=False,
            pattern=SAWTOOTH,
            rising=True,
        )
        return self._verdict(trend)

    def _cycles_read_on(self, level: _Level, cycle: float) -> int:
        """Buckets of ``level`` to a run spanning ``cycle`` where ``level`` is the finest level
        holding ``CLIMB_CYCLES`` such runs, all past the warm-up (a finer one reads them more
        recently); 0 where it is not, or where there is no cycle."""
        if not cycle:
            return 0
        for finest in self.levels:
            per_cycle = max(1, math.ceil(cycle / finest.width - 1e-9))
            if finest.count >= CLIMB_CYCLES * per_cycle:
                break
        else:
            return 0
        if finest is not level:
            return 0
        first = level.count - CLIMB_CYCLES * per_cycle
        past_warmup = level.starts[first] >= self.start_t + self.settings.warmup_s
        return per_cycle if past_warmup else 0

    def _troughs_rise(self, level: _Level, start_t: float, end_t: float) -> bool:
        """Whether the sawtooth's lowest point rose at every drop in the window, twice or more."""
        bounds = [start_t, *(t for t, _ in self.drops if start_t < t < end_t), end_t]
        troughs = [math.inf] * (len(bounds) - 1)
        stretch = 0
        for i in range(level.count):
            start = level.starts[i]
            if start < start_t:
                continue
            # A bucket that holds a drop holds the trough after it.
            while start + level.width > bounds[stretch + 1]:
                stretch += 1
            troughs[stretch] = min(troughs[stretch], level.mins[i])
        rises = [b - a for a, b in itertools.pairwise(t for t in troughs if t != math.inf)]
        # One higher trough is a step (an eval spike landing on a tooth); a trend
        # lifts trough after trough.
        return len(rises) >= 2 and min(rises) > 0

    def _verdict(self, trend: Trend) -> _Verdict:
        s = self.settings
        headroom = self.headroom()
        if self.headroom_of is None:
            headroom = min(headroom, self.limit - trend.peak)
        else:
            # What runs out is measured from its own recent peak, which holds this
            # series' recent peak already: only a higher peak of the trend is more.
            headroom -= max(0.0, trend.peak - self.recent_peak())
        time_to_oom = max(0.0, headroom) / trend.rate  # inf when the limit is unknown
        factor = extrapolation(trend.window_s, s.leak_extrapolation_short, s.leak_extrapolation)
        if trend.window_s >= SHORT_EXTRAPOLATION_S and not trend.steps_span_s:
            # A floor that rose too evenly to be settling faster than ``settle_s`` has at
            # least its rate times that left to grow: an OOM within it comes, settling or
            # not. Over shorter windows a climb that simply stops (an evaluation, a
            # notebook cell) is likelier than either, and stays at the short factor.
            factor = max(factor, min(s.leak_extrapolation, trend.settle_s / trend.window_s))
        reach = factor * trend.window_s
        if trend.steps_span_s:
            # A few steps are a few points: as many again is as far as they foretell.
            reach = min(reach, STEPS_REACH * trend.steps_span_s)
        evidence = reach / time_to_oom if time_to_oom > 0 else math.inf
        confidence = min(0.99, (1.0 - math.exp(-evidence)) * trend.rising_segments / 5.0)
        leak = time_to_oom <= reach and time_to_oom <= s.leak_max_time_to_oom_s
        near = time_to_oom <= s.near_oom_horizon_s and time_to_oom <= max(
            2.0 * trend.window_s, reach
        )
        return _Verdict(trend, time_to_oom, confidence, leak, near)

    def _decide(self, t: float) -> None:
        best: _Verdict | None = None
        best_level = self.levels[0]
        near = False
        for level in self.levels:
            verdict = level.result
            if verdict is None:
                continue
            near = near or verdict.near
            if verdict.leak and (best is None or verdict.confidence > best.confidence):
                best, best_level = verdict, level
        if (
            best is not None
            and not self.leak_active
            and (
                self.planned_until < math.inf
                or self._been_here(best.trend)
                or not self._confirmed(t, best, best_level)
            )
        ):
            best = None
        elif best is None:
            self.confirm_t = -math.inf
        if best is not None:
            self.leak_ok_t = t
            # What a window showed is refuted only by as long without it.
            self.leak_hold = max(self.settings.leak_clear_after_s, best.trend.window_s)
            self.leak_rate = best.trend.rate
            self.leak_confidence = best.confidence
            self.leak_pattern = self._pattern(best.trend, best_level)
            if not self.leak_active:
                self.leak_active = True
                self.leak_update_t = t
                self.leak_reported_rate = self.leak_rate
                self._emit(t, LEAK, RAISED, "")
            elif (
                t - self.leak_update_t >= self.settings.update_min_interval_s
                and abs(self.leak_rate - self.leak_reported_rate)
                > UPDATE_RATE_CHANGE * self.leak_reported_rate
            ):
                self.leak_update_t = t
                self.leak_reported_rate = self.leak_rate
                self._emit(t, LEAK, UPDATED, "")
        elif self.leak_active and t - self.leak_ok_t >= self.leak_hold:
            if self._still_rising(t):
                self.leak_ok_t = t  # no window proves it, but the memory has not stopped
            else:
                self.leak_active = False
                self._emit(t, LEAK, CLEARED, "the floor stopped rising")
        if near != self.near_pred:
            self.near_pred = near
            self._near_changed(t)

    def _still_rising(self, t: float) -> bool:
        """Whether a raised leak's memory went on climbing while no window showed it.

        A leak is cleared when its memory stops climbing, not when the windows
        stop proving that its floor does: under a sawtooth whose troughs a poll
        catches in a dip in some cycles (the step's activations freed for a
        second at an ``empty_cache``) and not in others, the stretch floors
        scatter by the dips' depth, and a leak raised once went unproven for
        hours and was cleared before its OOM.

        The cycles of the hold that went unproven, at least
        ``STILL_RISING_CYCLES`` of them (buckets where there is no sawtooth),
        are read twice: their troughs, which spikes do not reach, and their
        tops, which dips do not reach. The memory still climbs while both rise
        on their Theil-Sen lines (a minority of dips or spikes does not drag
        them) by ``min_rise`` a hold: the whole sawtooth moving up, not its
        teeth growing (tops only) nor its troughs scattering (troughs only).
        With too few cycles to read (a young series under long teeth, whose
        climb may be a buffer filling to its cap) the leak clears as before.
        """
        cycle, _ = self._sawtooth(t)
        since = t - self.leak_hold
        for level in self.levels:
            n = level.count
            starts = level.starts
            if n == 0 or (starts[0] > since and starts[0] > self.start_t + level.width):
                continue  # holds neither the whole hold nor the whole series
            per_cycle = max(1, math.ceil(cycle / level.width - 1e-9))
            count = max((n - bisect_left(starts, since, 0, n)) // per_cycle, STILL_RISING_CYCLES)
            first = n - count * per_cycle
            if first < 0:
                continue  # too few cycles here: a coarser level may hold them
            times, troughs, tops = _cycle_envelope(level, first, per_cycle)
            least = self.min_rise / self.leak_hold
            if theil_sen_slope(times, troughs) < least:
                return False
            # The tops of the newest half only: a reach back past the hold (a sawtooth
            # of long cycles) must not carry a climb that stopped within it.
            return theil_sen_slope(times[count // 2 :], tops[count // 2 :]) >= least
        return False  # too few cycles yet to read: the windows' silence stands, as it did

    def _been_here(self, trend: Trend) -> bool:
        """Whether the series held the trend's newest floor, half a stretch or longer, before.

        Before the window began, that is, and since the series (re)started, or
        before that restart where its processes freed the memory (``restart``
        with ``keep_ground``: the ground each level ``carried`` over).

        A leak takes the floor where it has not been; levels that come and go
        (a buffer redrawn per batch in a job sized to its card) line up in a
        rising run now and then, back to heights the series held before
        without running out.
        """
        half_segment = trend.window_s / SEGMENTS / 2
        shortest = half_segment
        floor = trend.floor
        cycle, tooth = self._sawtooth(trend.end_t)
        if tooth > 0.0:
            # A bucket that holds a whole cycle has a trough for its minimum; a
            # narrower one may hold only a tooth's top, ground a rising floor has not.
            shortest = max(shortest, cycle)
            # The newest stretch's floor may be a dip below the troughs, where a poll
            # caught a step's activations freed at an ``empty_cache`` (in some cycles,
            # not in others). What the series holds now is, like what it held before,
            # the highest floor it held for a whole cycle.
            newest = trend.end_t - trend.window_s / SEGMENTS
            floor = max(floor, *(level.held_for(newest, cycle) for level in self.levels))
        since = trend.end_t - trend.window_s
        # Ground held before the processes freed it counts, tooth's top or not: they
        # climbed there and came back down without running out. Not in a cycling
        # series: its troughs are its ground, and a phase's top says nothing of them.
        carried_must_reach = math.inf if self._fall_cycle(trend.end_t) else trend.floor
        return any(
            level.carried >= carried_must_reach
            or (level.width >= shortest and level.held_before(since) >= floor)
            for level in self.levels
            if level.width >= half_segment
        )

    def _confirmed(self, t: float, best: _Verdict, level: _Level) -> bool:
        """Whether a leak that only windows of 30 min or less show has gone on long enough.

        A climb of minutes is a fast leak or a climb about to stop (a
        notebook cell, activation checkpointing switched off, an evaluation cache
        kept in a few blocks). Where the time to OOM leaves room before a
        checkpoint would be late, the raise waits until the floor has kept
        climbing at ``CONFIRM_RATE`` of the window's rate or more since the climb
        was first judged a leak, over the whole wait and in its newest bucket;
        where it leaves none, the leak is raised at once.
        """
        trend = best.trend
        finest = self.levels[0]
        width = finest.width
        n = finest.count
        quarter = max(1, round(trend.window_s / level.width) // 4)
        if (
            trend.window_s > CONFIRM_WINDOW_S
            or quarter >= level.count
            # A climb that may have begun inside the warm-up is older than its window.
            or trend.end_t - trend.window_s < self.start_t + self.settings.warmup_s + level.width
        ):
            return True
        pending = self.confirm_t != -math.inf
        # An accelerating climb runs out sooner than the window's rate says: the
        # newest quarter's rate, if faster, bounds the time there is to wait.
        mins, last = level.mins, level.count - 1
        rate = max(trend.rate, (mins[last] - mins[last - quarter]) / (quarter * level.width))
        time_to_oom = best.time_to_oom * trend.rate / rate
        # Taken to be as old as its window: had it climbed as fast for longer, a
        # longer window would have shown it.
        age = trend.window_s + (t - self.confirm_t if pending else 0.0)
        room = time_to_oom - min(CHECKPOINT_LEAD_S, (age + time_to_oom) * CHECKPOINT_SHARE)
        # The finest level holds KEEP buckets at least: a longer wait could not be judged.
        wait = min(int(min(room * CONFIRM_SHARE, self.settings.leak_confirm_s) / width), KEEP - 1)
        if wait < 2 or wait >= n:
            return True
        if not pending:
            self.confirm_t = t
        if t - wait * width < self.confirm_t:
            return False
        newest = finest.mins[n - 1]
        return all(
            newest - finest.mins[n - 1 - k] >= CONFIRM_RATE * trend.rate * k * width
            for k in (wait, 1)
        )

    def _near_changed(self, t: float) -> None:
        """Raise at once; clear only once the cause has been gone ``near_oom_clear_after_s``."""
        if self.near_headroom or self.near_pred:
            self.near_off_since = None
            if not self.near_active:
                self.near_active = True
                self._emit(t, NEAR_OOM, RAISED, "")
        elif self.near_active and self.near_off_since is None:
            self.near_off_since = t
        self._near_expire(t)

    def _near_expire(self, t: float) -> None:
        since = self.near_off_since
        if since is not None and t - since >= self.settings.near_oom_clear_after_s:
            self.near_off_since = None
            self.near_active = False
            self._emit(t, NEAR_OOM, CLEARED, "headroom is back")

    # -- reporting

    def rate(self) -> float:
        """The floor's current growth rate: the steepest rising verdict of any level, or 0."""
        rates = [lv.result.trend.rate for lv in self.levels if lv.result is not None]
        return max(rates) if rates else 0.0

    def time_to_oom(self) -> float | None:
        """Predicted seconds until the limit is reached, None when the floor is not rising."""
        rate = self.leak_rate if self.leak_active else self.rate()
        headroom = self.headroom()
        if rate <= 0 or headroom == math.inf:
            return None
        return max(0.0, headroom) / rate

    def describe(self) -> str:
        """``GPU 0`` or ``GPU 0 pid 123 (host RSS)``."""
        where = f"GPU {self.gpu}" if self.gpu >= 0 else "host"
        if self.pid is not None:
            where += f" pid {self.pid}"
        if self.kind not in (GPU, "process"):
            where += f" ({self.kind.replace('_', ' ')})"
        return where

    def _emit(self, t: float, kind: str, state: str, why: str) -> None:
        rate = self.leak_rate if kind == LEAK else self.rate()
        time_to_oom = None if state == CLEARED else self.time_to_oom()
        cause = self.cause_of(self) if self.cause_of is not None and kind == LEAK else None
        where = self.describe()
        if state == CLEARED:
            message = f"{where}: {kind.replace('_', '-')} cleared ({why or 'recovered'})"
        elif kind == LEAK:
            message = (
                f"{where}: memory leak, floor rising {_fmt_rate(rate)} "
                f"({self.leak_pattern}{', ' + cause.replace('_', ' ') if cause else ''})"
                + (f", OOM in ~{_fmt_duration(time_to_oom)}" if time_to_oom is not None else "")
                + f", confidence {self.leak_confidence:.2f}"
            )
        else:
            if self.kind in (GPU, HOST_RSS):
                used = f"{_fmt_bytes(self.x)} of {_fmt_bytes(self.limit)} used"
            else:
                used = f"{self.kind.replace('_', ' ')} {_fmt_bytes(self.x)} and growing"
            message = f"{where}: near OOM, {used}" + (
                f", OOM predicted in ~{_fmt_duration(time_to_oom)}"
                if time_to_oom is not None
                else ""
            )
        self.out.append(
            Event(
                t=t,
                kind=kind,
                state=state,
                gpu=self.gpu,
                pid=self.pid,
                series=self.kind,
                rate_bytes_per_s=rate,
                time_to_oom_s=time_to_oom,
                confidence=self.leak_confidence if kind == LEAK else 1.0,
                pattern=self.leak_pattern if kind == LEAK else None,
                cause=cause,
                message=message,
                used_bytes=int(self.x),
                limit_bytes=int(self.limit),
            )
        )

    def status(self) -> SeriesStatus:
        """Where this series stands now."""
        state = "+".join(
            name for name, on in ((LEAK, self.leak_active), (NEAR_OOM, self.near_active)) if on
        )
        return SeriesStatus(
            series=self.kind,
            gpu=self.gpu,
            pid=self.pid,
            state=state or "ok",
            leak=self.leak_active,
            near_oom=self.near_active,
            rate_bytes_per_s=self.leak_rate if self.leak_active else self.rate(),
            time_to_oom_s=self.time_to_oom(),
            confidence=self.leak_confidence if self.leak_active else 0.0,
            pattern=self.leak_pattern if self.leak_active else None,
            cause=self.cause_of(self) if self.cause_of is not None and self.leak_active else None,
            used_bytes=int(self.x),
            limit_bytes=int(self.limit),
            growth_planned=self.planned_until < math.inf,
        )
