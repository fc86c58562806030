"""JUDGE held-out generator: the leak issue's fourteen cases, each modelled from its text alone.

An independent judge wrote this generator from the issue's list of what must and
must not raise a leak, without looking at the detector or at the other generators.
Every scenario is one GPU (gpu 0) shared by one or more processes; each process's
memory is a sum of timed allocations (a step, or a ramp over some seconds) plus a
noise model, rounded to a quantum. The device's used memory is the sum of its
processes plus a constant driver/other baseline. A leak trace is its healthy twin
plus an unbounded leak in one process, scaled so that the device reaches the
card's total about a drawn time after the leak starts; the trace ends at the first
poll whose used memory reaches the total (that poll's used == total, the leaking
process cut to fit), and that poll's t is the label's ``oom_t``. Every random draw
happens before the leak is added, so ``with_leak=False`` gives the same polls, the
same noise and the same lines up to the leak's start.

Healthy (must not raise a leak):
- judge_warmup_ramp: one trainer whose warm-up is long and large (see warm-up),
  then flat; 1-6 h.
- judge_empty_cache_sawtooth: a trainer calling ``empty_cache`` every period; the
  cache regrows in segments within each period and drops back to the same floor;
  2-12 h.
- judge_eval_spikes: a trainer with periodic evaluations whose extra memory is
  freed when each ends; 3-16 h.
- judge_saturating_lengths: a trainer whose cache grows at each new longest
  sequence length, records ever rarer, capped by the maximum length; 4-24 h.
- judge_shared_gpu_jobs: 2-4 queue slots on one GPU, each running short jobs
  back to back (new pid each), starting and exiting; 3-14 h.
- judge_checkpoint_restart: a trainer killed 1-3 times and relaunched (new pid)
  from its checkpoint, each relaunch warming up again; 2-12 h.
- judge_sized_to_95pct: a trainer or an inference server sized to 94-96 % of the
  card, flat after its warm-up (``near_oom_expected``); 1-8 h.

Leaks (label.leak, oom_t, leak_start_t; must be raised by the label's deadline):
- judge_leak_from_start: a steady leak from the first training step (during the
  warm-up); OOM log 40 min-8 h after it starts.
- judge_leak_hours_in: a steady leak that starts 1-8 h after the first step;
  OOM log 30 min-8 h after it starts.
- judge_epoch_staircase: a block kept alive at each epoch's end (from epoch 1-3
  on), 6-24 blocks to OOM, epochs of 4-90 min (at most 14 h to OOM).
- judge_sawtooth_rising_floor: the empty_cache sawtooth with a steady leak under
  it (floor rises), from the first step (40 %) or 0-2 h after it; OOM
  log max(45 min, 8 periods)-10 h after it starts.
- judge_one_pid_leaks: 2-4 processes on the GPU, one of them (label.pid) leaks
  from 10 min-3 h after its first step; OOM log 30 min-8 h after.
- judge_slow_creep: a large job (68-84 % of the card) creeping from 0-1 h after
  its first step; OOM log 10-30 h after it starts.
- judge_fast_leak: a runaway leak from log 5 min-3 h after the first step; OOM
  log 2.5-15 min after it starts (linear, or accelerating with probability 0.35).

Ranges drawn (uniform unless "log" = log-uniform):
- card: 16, 24, 32, 40, 48, 80, 94 or 141 GiB; the total NVML reports is
  93.5-100 % of it, whole MiB.
- quantum: 1, 2, 4 or 20 MiB (weights 2:2:1:1); every process figure is a
  multiple of it except the leaking process's at the OOM poll.
- driver/other baseline: 100-640 MiB, a multiple of the quantum.
- sampling: interval log 1-10 s, made coarser so a trace has at most about
  26,000 polls (its expected length / 26,000; a leak's expected length runs
  35 % of its time to OOM past the drawn OOM), and for the fast leak at most
  3/80 of its time to OOM (20 polls before its deadline); each gap times 0.98-1.02; a poll
  missed with probability 0-1 %; a daemon stall of 3-12 intervals with
  probability 0-0.05 % per poll (none in the fast leak).
- process rows: every poll (55 %), every 2-5 polls (25 %) or never
  (device only, 20 %); the multi-process scenarios always list processes.
- pids: the first 1,000-3,000,000, each new process 1-4,000 higher.
- noise (one model per trace, parameters per process, scaled to the process's
  working set W, clipped to 5 % of W and 4 % of the card, and faded in while it
  loads): flat (none); jitter (iid normal, sd 0.05-0.4 % of W); wander
  (Ornstein-Uhlenbeck, sd 0.2-1.2 % of W, time constant 2-30 min); bursts
  (normal sd 0-0.1 % of W, plus bursts of 30-100 % of 1-6 % of W for 1-5 polls,
  probability 0.2-3 % per poll); churn (0-K cached segments of 20-512 MiB, at most
  3 % of W, K 2-8, moving one up or down with probability 5-40 % per poll).
  The 95 % job draws flat, jitter or churn only, clipped to 0.8 % of the card;
  the slow creep's noise is clipped to 1.5 % of the card.
- trainer warm-up: process appears at its start with a CUDA context of
  300-900 MiB (at most 15 % of W); weights (12-40 % of the rest) load 1-20 s
  later in 1-8 shards over log 5 s-4 min; the first step 2-45 s after, the
  optimizer state (10-40 % of the rest, at most 80 % less the weights) 1-30 s
  after that; 30-70 % of the activations/cache at the first forward (0.5-5 s),
  the rest in 8-32 segments at exponential times of mean tau (log 30 s-6 min;
  judge_warmup_ramp: log 90 s-10 min, activations 40-75 % of the rest and the
  weights 30-70 % of what remains); with probability 0.35 an autotune/compile
  transient of 3-12 % of W, rising over 2-20 s 0-10 s after the first step and
  held 20 s-3 min (only where it fits under 84 % of the card).
- healthy peaks (noiseless, device) stay at or under 84 % of the card, except
  judge_sized_to_95pct. Sizes: warm-up 45-80 %; sawtooth floor 25 % to
  84 % less the amplitude, amplitude 6-25 %; evals: job 30 % to 84 % less the
  bump, bump 5-25 %; lengths: job 25 % to 84 % less the growth, growth 8-30 %;
  shared: each job 30-100 % of its slot's share of 84 %; restart: job 30-70 %,
  checkpoint-load transient 10-60 % of weights and optimizer for 10-120 s;
  leak jobs 35-80 % less any eval bump (slow creep 68-84 %; one-of-many
  40-80 % in all, split in shares drawn 0.3-1 each).
- empty_cache sawtooth: period log 2-45 min (rising floor: 2-30 min), each
  0.93-1.07 of it; per period the cache regrows 75-100 % of the amplitude in
  3-16 segments, front-loaded (exponential times, mean 10-35 % of the period)
  or spread evenly; at each empty_cache 30-80 % of the activations drop too and
  return 0.5-4 s later.
- evals: every log 15 min-2 h (0.97-1.03 of it), lasting log 1 min to the
  lesser of 15 min and a third of the period (each 0.9-1.1 of it), bump 5-25 %
  of the card (each 85-100 % of it) reached in 1-3 rises over 5-40 s and freed
  over 0-8 s; 30 % also evaluate 10-60 s after the first step. Leak jobs
  (from start, hours in, slow creep, fast): evals with probability 0.35 (every
  log 20 min-2 h, bump 3-12 %), a steady leak pausing during them with
  probability 0.5.
- saturating lengths: a step every log 0.15-2 s; lengths log-normal relative to
  the maximum, sd 0.25-0.5 in log, capped at the maximum, which a step reaches
  with probability log 1e-6-1e-4; memory for length x is growth * x^p,
  p 1-2; each new record allocates the difference.
- shared jobs: job length log 5 min-4 h, gaps log 10 s-30 min, first start
  0-20 min into the trace.
- restarts: run lengths log 20 min-4 h; a requeue relaunches log 15 s-15 min
  after the kill, or (probability 0.3) an elastic launcher 3-15 s after it while
  the killed process is still listed for 5-40 s (the new one loads its weights
  once it is gone); each relaunch's working set 0.97-1.03 of the first.
- 95 % job: trainer (no transient) or server (weights; a profiling pass of
  5-20 % of W for 3-30 s; the KV cache in one allocation; CUDA graphs of
  0.5-3 % of W over 5-60 s), device used at 94-96 % of the total once settled.
- steady leaks: a ramp whose rate is redrawn every chunk (1/60 of the time to
  OOM, at least 30 s; fast leak at least 5 s) as a mean-reverting walk
  (log rate = 0.8 * the last + normal sd 0.06, about 10 % spread, within 0.7-1.3).
  Accelerating fast leak: rate times 1 + k * elapsed / time to OOM, k 1-4.
- staircase blocks: each 0.85-1.15 of the mean, allocated over 0-60 s at the
  epoch's end (epochs 0.95-1.05 of the drawn length), with an end-of-epoch eval
  (1-10 min, at most a quarter of the epoch, bump 3-12 %) with probability 0.5.
- one-of-many: each process starts 5 s-20 min into the trace; with probability
  0.4 a healthy one exits (30 min into the trace to the end of the twin) and a
  new one of 80-100 % its size starts in its place log 10 s-10 min later.
- leak scale: the device's noiseless healthy peak over the second half of the
  leak's drawn time to OOM, plus the leak at that time, equals the total
  (staircase: half a block past the total at the last block; slow creep: the
  total less the noise's clip, so that it never OOMs before its drawn time). The
  OOM itself comes at the first poll over the total, on a peak or a burst, so
  a little before or after the drawn time.
- a leak trace's twin runs to 35 % of the time to OOM plus 20 min past the
  drawn OOM; the leak rates span about 80 MiB/h (slow creep, 16 GiB card) to
  tens of GiB/min (fast leak, 141 GiB card).
"""

from __future__ import annotations

import itertools
import math
import random
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist

from scenarios import Label, write_traces

MIB = 1 << 20
GIB = 1 << 30
MINUTE = 60.0
HOUR = 3600.0
HEADER = "t,gpu,pid,used_bytes,total_bytes"
CARDS_GIB = (16, 24, 32, 40, 48, 80, 94, 141)
MAX_POLLS = 26_000
HEALTHY_CAP = 0.84
"""The highest a healthy job's noiseless device memory goes, as a fraction of the card."""
NOISE_KINDS = ("flat", "jitter", "wander", "bursts", "churn")

HEALTHY = (
    "judge_warmup_ramp",
    "judge_empty_cache_sawtooth",
    "judge_eval_spikes",
    "judge_saturating_lengths",
    "judge_shared_gpu_jobs",
    "judge_checkpoint_restart",
    "judge_sized_to_95pct",
)
LEAKS = (
    "judge_leak_from_start",
    "judge_leak_hours_in",
    "judge_epoch_staircase",
    "judge_sawtooth_rising_floor",
    "judge_one_pid_leaks",
    "judge_slow_creep",
    "judge_fast_leak",
)
SCENARIOS = HEALTHY + LEAKS
MULTI_PROCESS = ("judge_shared_gpu_jobs", "judge_one_pid_leaks")
"""Scenarios with several processes on the GPU at once: they always list processes."""
NEAR_FULL = ("judge_sized_to_95pct",)
"""Healthy scenarios where a near_oom (not a leak) is expected."""

Segment = tuple[float, float, float]
"""An allocation (positive) or a release (negative): (start t, seconds it takes, bytes)."""


def _log_uniform(rng: random.Random, low: float, high: float) -> float:
    return math.exp(rng.uniform(math.log(low), math.log(high)))


def _evaluate(segments: list[Segment], times: list[float]) -> list[float]:
    """The sum of ``segments`` (sorted by start) at each of the increasing ``times``."""
    out: list[float] = []
    done = 0.0
    active: list[Segment] = []
    i, n = 0, len(segments)
    for t in times:
        while i < n and segments[i][0] <= t:
            active.append(segments[i])
            i += 1
        if not active:
            out.append(done)
            continue
        partial = 0.0
        still: list[Segment] = []
        for seg in active:
            start, dur, delta = seg
            if t >= start + dur:
                done += delta
            else:
                partial += delta * (t - start) / dur
                still.append(seg)
        active = still
        out.append(done + partial)
    return out


class _Noise:
    """One process's measurement noise: a stateful sampler with its own random stream."""

    def __init__(self, kind: str, size: float, clip: float, rng: random.Random) -> None:
        self.kind = kind
        self.size = size
        self.clip = clip
        self.seed = rng.getrandbits(63)
        # Every kind draws the same number of parameters, so a trace's other draws
        # never depend on which kind it got.
        a, b, c, d = rng.random(), rng.random(), rng.random(), rng.random()
        self.sd = 0.0
        self.tau = 1.0
        self.p = 0.0
        self.height = 0.0
        self.block = 0.0
        self.top = 0
        if kind == "jitter":
            self.sd = size * (0.0005 + 0.0035 * a)
        elif kind == "wander":
            self.sd = size * (0.002 + 0.01 * a)
            self.tau = 120.0 * math.exp(b * math.log(15.0))  # 2-30 min, log
        elif kind == "bursts":
            self.sd = size * 0.001 * a
            self.height = size * (0.01 + 0.05 * b)
            self.p = 0.002 * math.exp(c * math.log(15.0))  # 0.2-3 %, log
        elif kind == "churn":
            sizes = (20, 64, 128, 256, 512)
            block = sizes[int(a * len(sizes))] * MIB
            self.block = max(2.0 * MIB, min(block, 0.03 * size))
            self.top = 2 + int(b * 7)
            self.p = 0.05 + 0.35 * c
        del d  # reserved, keeps the draws aligned

    def sampler(self) -> Callable[[float], float]:
        """A fresh sampler: call it with the seconds since this process's last poll."""
        rng = random.Random(self.seed)
        kind, sd, clip = self.kind, self.sd, self.clip
        state = {"x": 0.0, "left": 0, "burst": 0.0, "k": self.top // 2}

        def sample(dt: float) -> float:
            if kind == "flat":
                value = 0.0
            elif kind == "jitter":
                value = rng.gauss(0.0, sd)
            elif kind == "wander":
                keep = math.exp(-dt / self.tau)
                state["x"] = state["x"] * keep + sd * math.sqrt(1 - keep * keep) * rng.gauss(0, 1)
                value = state["x"]
            elif kind == "bursts":
                value = rng.gauss(0.0, sd) if sd else 0.0
                if state["left"] > 0:
                    state["left"] -= 1
                    value += state["burst"]
                elif rng.random() < self.p:
                    state["left"] = rng.randint(0, 4)
                    state["burst"] = self.height * rng.uniform(0.3, 1.0)
                    value += state["burst"]
            else:  # churn
                if rng.random() < self.p:
                    step = 1 if rng.random() < 0.5 else -1
                    state["k"] = min(self.top, max(0, state["k"] + step))
                value = (state["k"] - self.top / 2) * self.block
            return max(-clip, min(clip, value))

        return sample


@dataclass
class _Proc:
    """One process on the GPU: listed from ``start`` until ``stop``."""

    pid: int
    start: float
    stop: float
    segments: list[Segment]
    size: float
    """Its working set (bytes): the scale of its noise."""
    noise: _Noise
    floor: float
    """The least it ever holds while listed (its CUDA context)."""
    leak: list[Segment] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.segments.sort()
        self.leak.sort()


@dataclass
class _Job:
    """A trainer's allocations and the times of its warm-up."""

    segments: list[Segment]
    first_step: float
    settled: float
    context: float
    weights: float
    optimizer: float
    activations: float


@dataclass
class _Plan:
    """What a scenario maker decided: the processes and, for a leak, when and where."""

    procs: list[_Proc]
    duration: float
    """Healthy: the trace's length. Leak: how far its twin runs (past the drawn OOM)."""
    leak_proc: int | None = None
    leak_start: float | None = None
    target: float | None = None
    """The leak's drawn OOM time: leak_start plus the drawn time to OOM."""
    leak_ref: float = 1.0
    """The leak's unscaled size that the scale maps onto the headroom."""
    max_interval: float | None = None
    stalls: bool = True
    noise_margin: bool = False
    """Scale the leak to fill the headroom less the noise's reach (no OOM before ``target``)."""


class _World:
    """The draws every scenario shares: card, quantum, sampling, rows, noise, pids."""

    def __init__(self, scenario: str, seed: int) -> None:
        rng = random.Random(seed)
        self.rng = rng
        self.scenario = scenario
        self.card_gib = rng.choice(CARDS_GIB)
        self.total = int(self.card_gib * GIB * rng.uniform(0.935, 1.0)) // MIB * MIB
        self.quantum = rng.choice((1, 1, 2, 2, 4, 20)) * MIB
        other = rng.uniform(100.0, 640.0) * MIB
        self.other = max(1, round(other / self.quantum)) * self.quantum
        self.interval = _log_uniform(rng, 1.0, 10.0)
        self.p_miss = rng.uniform(0.0, 0.01)
        self.p_stall = rng.uniform(0.0, 0.0005)
        self.clock_seed = rng.getrandbits(63)
        rows = rng.choices(("every", "sparse", "never"), weights=(55, 25, 20))[0]
        every = rng.randint(2, 5)
        if scenario in MULTI_PROCESS and rows == "never":
            rows = "every"
        self.rows = rows
        self.every = 1 if rows == "every" else every
        self.noise_kind = rng.choice(NOISE_KINDS)
        self.next_pid = rng.randint(1_000, 3_000_000)
        self.params: dict[str, float | str] = {}

    def frac(self, fraction: float) -> float:
        """``fraction`` of the card, in bytes."""
        return fraction * self.total

    def budget(self, fraction: float) -> float:
        """Bytes the processes may hold for the device to sit at ``fraction`` of the card."""
        return fraction * self.total - self.other

    def pid(self) -> int:
        """A new process's pid."""
        self.next_pid += self.rng.randint(1, 4_000)
        if self.next_pid >= 4_194_304:
            self.next_pid = 1_000 + self.next_pid % 1_000
        return self.next_pid

    def noise(self, size: float, kind: str | None = None, clip: float | None = None) -> _Noise:
        """A noise model for a process of working set ``size``."""
        limit = min(0.05 * size, 0.04 * self.total) if clip is None else clip
        return _Noise(kind or self.noise_kind, size, limit, self.rng)

    def proc(
        self,
        start: float,
        job: _Job,
        size: float,
        stop: float = math.inf,
        clip: float | None = None,
    ) -> _Proc:
        """A process running ``job``, listed from ``start`` until ``stop``."""
        return _Proc(
            pid=self.pid(),
            start=start,
            stop=stop,
            segments=job.segments,
            size=size,
            noise=self.noise(size, clip=clip),
            floor=job.context,
        )


def _trainer(
    w: _World,
    start: float,
    size: float,
    *,
    tau: tuple[float, float] = (30.0, 360.0),
    activations: tuple[float, float] | None = None,
    room: float = 0.0,
    load_delay: float = 0.0,
) -> _Job:
    """A training process's warm-up to a working set of ``size`` bytes.

    CUDA context at ``start``; weights in shards; optimizer state at the first
    step; activations and cache partly at the first forward and the rest in
    allocator segments ever rarer (exponential arrival times of mean ``tau``).
    ``room``: bytes above ``size`` a compile/autotune transient may use.
    """
    rng = w.rng
    context = min(rng.uniform(300.0, 900.0) * MIB, 0.15 * size)
    rest = size - context
    if activations is None:
        weight_share = rng.uniform(0.12, 0.40)
        optimizer_share = min(rng.uniform(0.10, 0.40), 0.80 - weight_share)
    else:
        act_share = rng.uniform(*activations)
        weight_share = (1.0 - act_share) * rng.uniform(0.3, 0.7)
        optimizer_share = 1.0 - act_share - weight_share
    weights = weight_share * rest
    optimizer = optimizer_share * rest
    acts = rest - weights - optimizer
    segs: list[Segment] = [(start, 0.0, context)]
    t = start + load_delay + rng.uniform(1.0, 20.0)
    load_s = _log_uniform(rng, 5.0, 240.0)
    shards = rng.randint(1, 8)
    cuts = sorted(rng.random() for _ in range(shards - 1))
    bounds = [0.0, *cuts, 1.0]
    for a, b in itertools.pairwise(bounds):
        segs.append((t + a * load_s, max((b - a) * load_s, 0.5), (b - a) * weights))
    first_step = t + load_s + rng.uniform(2.0, 45.0)
    segs.append((first_step + rng.uniform(1.0, 30.0), 0.0, optimizer))
    first = rng.uniform(0.3, 0.7)
    segs.append((first_step + rng.uniform(0.5, 5.0), rng.uniform(0.5, 3.0), first * acts))
    n = rng.randint(8, 32)
    mean = _log_uniform(rng, *tau)
    times = [first_step + mean * rng.expovariate(1.0) for _ in range(n)]
    shares = [rng.expovariate(1.0) for _ in range(n)]
    norm = sum(shares)
    for when, share in zip(times, shares, strict=True):
        segs.append((when, 0.0, (1.0 - first) * acts * share / norm))
    spike = rng.random() < 0.35
    height = rng.uniform(0.03, 0.12) * size
    hold = rng.uniform(20.0, 180.0)
    if spike and room > 0.0:
        height = min(height, room)
        up = first_step + rng.uniform(0.0, 10.0)
        rise = rng.uniform(2.0, 20.0)
        segs += [(up, rise, height), (up + rise + hold, 0.0, -height)]
    settled = max(at + dur for at, dur, _ in segs)
    return _Job(segs, first_step, settled, context, weights, optimizer, acts)


def _evals(
    w: _World,
    first: float,
    end: float,
    every: float,
    length: float,
    bump: float,
) -> tuple[list[Segment], list[tuple[float, float]]]:
    """Evaluations from ``first`` every ``every`` s: ``bump`` bytes, freed when each ends."""
    rng = w.rng
    segs: list[Segment] = []
    windows: list[tuple[float, float]] = []
    t = first
    while t < end:
        rises = rng.randint(1, 3)
        span = rng.uniform(5.0, 40.0)
        size = bump * rng.uniform(0.85, 1.0)
        for k in range(rises):
            segs.append((t + span * k / rises, span / rises, size / rises))
        stop = t + length * rng.uniform(0.9, 1.1)
        segs.append((stop, rng.uniform(0.0, 8.0), -size))
        windows.append((t, stop))
        t += every * rng.uniform(0.97, 1.03)
    return segs, windows


def _sawtooth(
    w: _World, first: float, end: float, period: float, amplitude: float, acts: float
) -> list[Segment]:
    """``empty_cache`` every ``period``: the cache regrows in segments and drops to the floor."""
    rng = w.rng
    front = rng.random() < 0.5
    spread = rng.uniform(0.10, 0.35)
    back = rng.uniform(0.3, 0.8) * acts
    segs: list[Segment] = []
    t = first
    while t < end:
        length = period * rng.uniform(0.93, 1.07)
        grown = amplitude * rng.uniform(0.75, 1.0)
        n = rng.randint(3, 16)
        if front:
            offsets = [min(rng.expovariate(1.0) * spread, 0.97) for _ in range(n)]
        else:
            offsets = [rng.uniform(0.0, 0.97) for _ in range(n)]
        shares = [rng.expovariate(1.0) for _ in range(n)]
        norm = sum(shares)
        segs += [
            (t + o * length, 0.0, grown * s / norm) for o, s in zip(offsets, shares, strict=True)
        ]
        clear = t + length
        segs.append((clear, 0.0, -grown - back))
        segs.append((clear + rng.uniform(0.5, 4.0), rng.uniform(0.5, 2.0), back))
        t = clear + 5.0
    return segs


def _steady_leak(
    w: _World,
    start: float,
    stop: float,
    chunk: float,
    pauses: Sequence[tuple[float, float]] = (),
    accelerate: float = 0.0,
    to_oom: float = 1.0,
) -> list[Segment]:
    """A leak of about one byte per second of training from ``start``, unscaled.

    The rate follows the job's throughput (mean-reverting, redrawn per ``chunk``), stops
    during ``pauses``, and grows by ``accelerate`` times per ``to_oom`` seconds.
    """
    rng = w.rng
    segs: list[Segment] = []
    rate = 1.0
    t = start
    while t < stop:
        nxt = min(t + chunk, stop)
        rate = min(1.3, max(0.7, math.exp(0.8 * math.log(rate) + rng.gauss(0.0, 0.06))))
        scale = rate * (1.0 + accelerate * ((t + nxt) / 2 - start) / to_oom)
        a = t
        for p0, p1 in pauses:
            if p1 <= a or p0 >= nxt:
                continue
            if p0 > a:
                segs.append((a, p0 - a, scale * (p0 - a)))
            a = max(a, p1)
        if a < nxt:
            segs.append((a, nxt - a, scale * (nxt - a)))
        t = nxt
    return segs


def _leak_chunk(to_oom: float) -> float:
    return max(30.0, to_oom / 60.0)


def _leak_horizon(target: float, to_oom: float) -> float:
    return target + 0.35 * to_oom + 20 * MINUTE


# ---------------------------------------------------------------- healthy


def _warmup_ramp(w: _World) -> _Plan:
    rng = w.rng
    duration = _log_uniform(rng, 1 * HOUR, 6 * HOUR)
    peak = rng.uniform(0.45, 0.80)
    size = w.budget(peak)
    start = rng.uniform(5.0, 90.0)
    room = w.budget(HEALTHY_CAP) - size
    job = _trainer(w, start, size, tau=(90.0, 600.0), activations=(0.40, 0.75), room=room)
    w.params.update(peak_frac=peak, settled_t=round(job.settled, 1))
    return _Plan([w.proc(start, job, size)], duration)


def _sawtooth_job(
    w: _World, period_range: tuple[float, float], end_of: float
) -> tuple[_Job, float, float, float]:
    """A trainer with the empty_cache sawtooth; returns (job, start, size, period)."""
    rng = w.rng
    period = _log_uniform(rng, *period_range)
    amplitude = rng.uniform(0.06, 0.25)
    floor = rng.uniform(0.25, HEALTHY_CAP - amplitude)
    size = w.budget(floor)
    start = rng.uniform(5.0, 90.0)
    job = _trainer(w, start, size)
    first = job.settled + period * rng.uniform(0.2, 1.0)
    job.segments += _sawtooth(w, first, end_of, period, w.frac(amplitude), job.activations)
    w.params.update(
        period_s=round(period, 1), amplitude_frac=amplitude, peak_frac=floor + amplitude
    )
    return job, start, size, period


def _empty_cache_sawtooth(w: _World) -> _Plan:
    duration = _log_uniform(w.rng, 2 * HOUR, 12 * HOUR)
    job, start, size, _ = _sawtooth_job(w, (2 * MINUTE, 45 * MINUTE), duration)
    return _Plan([w.proc(start, job, size)], duration)


def _eval_spikes(w: _World) -> _Plan:
    rng = w.rng
    duration = _log_uniform(rng, 3 * HOUR, 16 * HOUR)
    every = _log_uniform(rng, 15 * MINUTE, 2 * HOUR)
    length = _log_uniform(rng, 1 * MINUTE, min(15 * MINUTE, every / 3))
    bump = rng.uniform(0.05, 0.25)
    base = rng.uniform(0.30, HEALTHY_CAP - bump)
    size = w.budget(base)
    start = rng.uniform(5.0, 90.0)
    job = _trainer(w, start, size, room=w.budget(HEALTHY_CAP) - size)
    at_start = rng.random() < 0.3
    first = job.first_step + (rng.uniform(10.0, 60.0) if at_start else every)
    segs, _ = _evals(w, first, duration, every, length, w.frac(bump))
    job.segments += segs
    w.params.update(
        eval_every_s=round(every, 1),
        eval_length_s=round(length, 1),
        bump_frac=bump,
        peak_frac=base + bump,
    )
    return _Plan([w.proc(start, job, size)], duration)


def _saturating_lengths(w: _World) -> _Plan:
    rng = w.rng
    duration = _log_uniform(rng, 4 * HOUR, 24 * HOUR)
    step_s = _log_uniform(rng, 0.15, 2.0)
    p_cap = _log_uniform(rng, 1e-6, 1e-4)
    sigma = rng.uniform(0.25, 0.5)
    power = rng.uniform(1.0, 2.0)
    growth = rng.uniform(0.08, 0.30)
    base = rng.uniform(0.25, HEALTHY_CAP - growth)
    size = w.budget(base)
    start = rng.uniform(5.0, 90.0)
    job = _trainer(w, start, size)
    normal = NormalDist()
    mu = -sigma * normal.inv_cdf(1.0 - p_cap)  # log of the median length / max
    at_max = normal.cdf(-mu / sigma)  # F(1): a length below the maximum
    scale = w.frac(growth)
    best, step, records = 0.0, 0, 0
    while best < 1.0:
        # The next record comes after a geometric number of steps, and is drawn
        # from the lengths above the longest so far.
        below = normal.cdf((math.log(best) - mu) / sigma) if best > 0.0 else 0.0
        p_new = 1.0 - below
        if p_new <= 0.0:
            break
        if p_new >= 1.0:
            step += 1
        else:
            step += int(math.log(1.0 - rng.random()) / math.log1p(-p_new)) + 1
        t = job.first_step + step * step_s
        if t > duration:
            break
        u = rng.uniform(below, 1.0)
        if u >= at_max:
            length = 1.0
        else:
            length = min(1.0, math.exp(mu + sigma * normal.inv_cdf(max(u, 1e-12))))
        job.segments.append((t, 0.0, scale * (length**power - best**power)))
        best = length
        records += 1
    w.params.update(
        step_s=round(step_s, 3),
        p_max_length=p_cap,
        length_sigma=sigma,
        length_power=power,
        growth_frac=growth,
        peak_frac=base + growth,
        records=float(records),
    )
    return _Plan([w.proc(start, job, size)], duration)


def _shared_gpu_jobs(w: _World) -> _Plan:
    rng = w.rng
    duration = _log_uniform(rng, 3 * HOUR, 14 * HOUR)
    slots = rng.randint(2, 4)
    share = w.budget(HEALTHY_CAP) / slots
    procs: list[_Proc] = []
    for _ in range(slots):
        t = rng.uniform(0.0, 20 * MINUTE)
        while t < duration:
            size = share * rng.uniform(0.30, 1.0)
            job = _trainer(w, t, size, room=share - size)
            stop = t + _log_uniform(rng, 5 * MINUTE, 4 * HOUR)
            procs.append(w.proc(t, job, size, stop=stop))
            t = stop + _log_uniform(rng, 10.0, 30 * MINUTE)
    procs.sort(key=lambda p: p.start)
    w.params.update(slots=float(slots), jobs=float(len(procs)))
    return _Plan(procs, duration)


def _checkpoint_restart(w: _World) -> _Plan:
    rng = w.rng
    duration = _log_uniform(rng, 2 * HOUR, 12 * HOUR)
    restarts = rng.randint(1, 3)
    base = rng.uniform(0.30, 0.70)
    size0 = w.budget(base)
    procs: list[_Proc] = []
    t = rng.uniform(5.0, 90.0)
    delay = 0.0
    done = 0
    for run in range(restarts + 1):
        size = size0 * (1.0 if run == 0 else rng.uniform(0.97, 1.03))
        job = _trainer(w, t, size, load_delay=delay)
        if run > 0:
            # Loading the checkpoint to the GPU holds a second copy for a moment.
            extra = rng.uniform(0.10, 0.60) * (job.weights + job.optimizer)
            extra = min(extra, w.budget(HEALTHY_CAP) - size)
            at = job.first_step - rng.uniform(1.0, 2.0)
            job.segments += [(at, 2.0, extra), (at + rng.uniform(10.0, 120.0), 0.0, -extra)]
        length = _log_uniform(rng, 20 * MINUTE, 4 * HOUR)
        # A scheduler requeues the job; an elastic launcher relaunches it at once,
        # while the killed process is still listed (the driver tearing it down).
        elastic = rng.random() < 0.3
        gap = rng.uniform(3.0, 15.0) if elastic else _log_uniform(rng, 15.0, 15 * MINUTE)
        linger = rng.uniform(5.0, 40.0) if elastic else 0.0
        last = run == restarts or t + length + gap > duration - 20 * MINUTE
        procs.append(w.proc(t, job, size, stop=math.inf if last else t + length + linger))
        if last:
            break
        done += 1
        delay = max(0.0, linger - gap)  # the new process loads once the old one is gone
        t += length + gap
    w.params.update(restarts=float(done), peak_frac=base)
    return _Plan(procs, duration)


def _sized_to_95pct(w: _World) -> _Plan:
    rng = w.rng
    duration = _log_uniform(rng, 1 * HOUR, 8 * HOUR)
    level = rng.uniform(0.94, 0.96)
    size = w.budget(level)
    start = rng.uniform(5.0, 90.0)
    kind = rng.choice(("trainer", "server"))
    noise = rng.choice(("flat", "jitter", "churn"))
    if kind == "trainer":
        job = _trainer(w, start, size)
    else:
        context = min(rng.uniform(300.0, 900.0) * MIB, 0.1 * size)
        weights = rng.uniform(0.15, 0.6) * size
        graphs = rng.uniform(0.005, 0.03) * size
        t = start + rng.uniform(1.0, 20.0)
        load_s = _log_uniform(rng, 10.0, 240.0)
        profile = rng.uniform(0.05, 0.20) * size
        segs: list[Segment] = [(start, 0.0, context), (t, load_s, weights)]
        t += load_s + rng.uniform(1.0, 10.0)
        hold = rng.uniform(3.0, 30.0)
        segs += [(t, 1.0, profile), (t + hold, 0.0, -profile)]
        t += hold + rng.uniform(1.0, 5.0)
        segs.append((t, 1.0, size - context - weights - graphs))
        capture = rng.uniform(5.0, 60.0)
        segs.append((t + 2.0, capture, graphs))
        settled = t + 2.0 + capture
        job = _Job(segs, t, settled, context, weights, 0.0, 0.0)
    w.noise_kind = noise
    proc = w.proc(start, job, size, clip=min(0.05 * size, 0.008 * w.total))
    w.params.update(kind=kind, level_frac=level, settled_t=round(job.settled + 5.0, 1))
    return _Plan([proc], duration)


# ---------------------------------------------------------------- leaks


def _leak_job(
    w: _World, peak: tuple[float, float]
) -> tuple[_Job, float, float, list[tuple[float, float]], float]:
    """A trainer for a leak to grow on, with periodic evals with probability 0.35.

    Returns (job, start, size, eval windows, eval period); the evals run to 60 h.
    """
    rng = w.rng
    with_evals = rng.random() < 0.35
    bump = rng.uniform(0.03, 0.12) if with_evals else 0.0
    base = rng.uniform(peak[0], peak[1] - bump)
    size = w.budget(base)
    start = rng.uniform(5.0, 90.0)
    job = _trainer(w, start, size, room=w.budget(HEALTHY_CAP) - size - w.frac(bump))
    windows: list[tuple[float, float]] = []
    every = 0.0
    if with_evals:
        every = _log_uniform(rng, 20 * MINUTE, 2 * HOUR)
        length = _log_uniform(rng, 1 * MINUTE, min(15 * MINUTE, every / 3))
        segs, windows = _evals(w, job.first_step + every, 60 * HOUR, every, length, w.frac(bump))
        job.segments += segs
    w.params.update(peak_frac=base + bump, eval_every_s=round(every, 1), bump_frac=bump)
    return job, start, size, windows, every


def _steady_plan(
    w: _World, onset: float, to_oom: float, peak: tuple[float, float], *, margin: bool = False
) -> _Plan:
    """A trainer (with evals sometimes) leaking steadily ``onset`` s after its first step."""
    rng = w.rng
    job, start, size, windows, _ = _leak_job(w, peak)
    pause = rng.random() < 0.5
    leak_start = job.first_step + onset
    target = leak_start + to_oom
    horizon = _leak_horizon(target, to_oom)
    leak = _steady_leak(w, leak_start, horizon, _leak_chunk(to_oom), windows if pause else [])
    # The slow creep's noise is held under 1.5 % of the card: its leak is scaled to
    # the headroom less that, so it never OOMs before its drawn time (10+ h).
    clip = min(0.05 * size, 0.015 * w.total) if margin else None
    proc = w.proc(start, job, size, clip=clip)
    proc.leak = sorted(leak)
    w.params.update(oom_after_s=round(to_oom, 1), leak_pauses_in_eval="yes" if pause else "no")
    ref = _evaluate(proc.leak, [target])[0]
    return _Plan([proc], horizon, 0, leak_start, target, ref, noise_margin=margin)


def _leak_from_start(w: _World) -> _Plan:
    to_oom = _log_uniform(w.rng, 40 * MINUTE, 8 * HOUR)
    return _steady_plan(w, 0.0, to_oom, (0.35, 0.80))


def _leak_hours_in(w: _World) -> _Plan:
    onset = w.rng.uniform(1 * HOUR, 8 * HOUR)
    to_oom = _log_uniform(w.rng, 30 * MINUTE, 8 * HOUR)
    return _steady_plan(w, onset, to_oom, (0.35, 0.80))


def _slow_creep(w: _World) -> _Plan:
    onset = w.rng.uniform(0.0, 1 * HOUR)
    to_oom = _log_uniform(w.rng, 10 * HOUR, 30 * HOUR)
    return _steady_plan(w, onset, to_oom, (0.68, 0.84), margin=True)


def _fast_leak(w: _World) -> _Plan:
    rng = w.rng
    onset = _log_uniform(rng, 5 * MINUTE, 3 * HOUR)
    to_oom = _log_uniform(rng, 2.5 * MINUTE, 15 * MINUTE)
    accelerate = rng.uniform(1.0, 4.0) if rng.random() < 0.35 else 0.0
    job, start, size, _, _ = _leak_job(w, (0.35, 0.80))
    leak_start = job.first_step + onset
    target = leak_start + to_oom
    horizon = _leak_horizon(target, to_oom)
    proc = w.proc(start, job, size)
    chunk = max(5.0, to_oom / 60.0)
    proc.leak = _steady_leak(w, leak_start, horizon, chunk, [], accelerate, to_oom)
    w.params.update(oom_after_s=round(to_oom, 1), accelerate=accelerate)
    ref = _evaluate(proc.leak, [target])[0]
    return _Plan([proc], horizon, 0, leak_start, target, ref, 0.75 * to_oom / 20, stalls=False)


def _epoch_staircase(w: _World) -> _Plan:
    rng = w.rng
    blocks = rng.randint(6, 24)
    epoch = _log_uniform(rng, 4 * MINUTE, min(90 * MINUTE, 14 * HOUR / (blocks - 1)))
    first_epoch = rng.randint(1, 3)
    with_evals = rng.random() < 0.5
    bump = rng.uniform(0.03, 0.12) if with_evals else 0.0
    base = rng.uniform(0.35, 0.80 - bump)
    size = w.budget(base)
    start = rng.uniform(5.0, 90.0)
    job = _trainer(w, start, size)
    ends: list[float] = []
    t = job.first_step
    limit = job.first_step + (first_epoch + blocks) * epoch * 1.3 + 2 * HOUR
    while t < limit:
        t += epoch * rng.uniform(0.95, 1.05)
        ends.append(t)
    eval_len = rng.uniform(1 * MINUTE, min(10 * MINUTE, epoch / 4))
    leak: list[Segment] = []
    for k, end in enumerate(ends):
        if with_evals:
            segs, _ = _evals(w, end, end + 1.0, epoch, eval_len, w.frac(bump))
            job.segments += segs
        size_k = rng.uniform(0.85, 1.15)
        dur = rng.uniform(0.0, 60.0)
        if k >= first_epoch - 1:
            leak.append((end + 1.0, dur, size_k))
    proc = w.proc(start, job, size)
    proc.leak = leak
    leak_start = leak[0][0]
    last = leak[blocks - 1]
    target = last[0] + last[1]
    ref = sum(seg[2] for seg in leak[:blocks]) - 0.5 * last[2]
    to_oom = target - leak_start
    w.params.update(
        oom_after_s=round(to_oom, 1),
        epoch_s=round(epoch, 1),
        blocks_to_oom=float(blocks),
        first_leaking_epoch=float(first_epoch),
        peak_frac=base + bump,
        bump_frac=bump,
    )
    horizon = _leak_horizon(target, to_oom)
    return _Plan([proc], horizon, 0, leak_start, target, ref)


def _sawtooth_rising_floor(w: _World) -> _Plan:
    rng = w.rng
    onset = 0.0 if rng.random() < 0.4 else rng.uniform(0.0, 2 * HOUR)
    draw = rng.random()
    job, start, size, period = _sawtooth_job(w, (2 * MINUTE, 30 * MINUTE), 17 * HOUR)
    low = max(45 * MINUTE, 8 * period)
    to_oom = math.exp(math.log(low) + draw * (math.log(10 * HOUR) - math.log(low)))
    leak_start = job.first_step + onset
    target = leak_start + to_oom
    horizon = _leak_horizon(target, to_oom)
    proc = w.proc(start, job, size)
    proc.leak = _steady_leak(w, leak_start, horizon, _leak_chunk(to_oom))
    w.params.update(oom_after_s=round(to_oom, 1))
    return _Plan([proc], horizon, 0, leak_start, target, _evaluate(proc.leak, [target])[0])


def _one_pid_leaks(w: _World) -> _Plan:
    rng = w.rng
    count = rng.randint(2, 4)
    peak = rng.uniform(0.40, 0.80)
    budget = w.budget(peak)
    shares = [rng.uniform(0.3, 1.0) for _ in range(count)]
    norm = sum(shares)
    sizes = [budget * x / norm for x in shares]
    leaker = rng.randrange(count)
    onset = rng.uniform(10 * MINUTE, 3 * HOUR)
    to_oom = _log_uniform(rng, 30 * MINUTE, 8 * HOUR)
    replace = rng.random() < 0.4
    procs: list[_Proc] = []
    jobs: list[_Job] = []
    for size in sizes:
        start = rng.uniform(5.0, 20 * MINUTE)
        job = _trainer(w, start, size)
        jobs.append(job)
        procs.append(w.proc(start, job, size))
    leak_start = jobs[leaker].first_step + onset
    target = leak_start + to_oom
    horizon = _leak_horizon(target, to_oom)
    # Another user's job on the same GPU finishes and a new one takes its place.
    swap = rng.choice([i for i in range(count) if i != leaker])
    stop = rng.uniform(30 * MINUTE, max(horizon, 1 * HOUR))
    gap = _log_uniform(rng, 10.0, 10 * MINUTE)
    if replace:
        procs[swap].stop = stop
        size = sizes[swap] * rng.uniform(0.8, 1.0)
        job = _trainer(w, stop + gap, size)
        procs.append(w.proc(stop + gap, job, size))
    procs[leaker].leak = _steady_leak(w, leak_start, horizon, _leak_chunk(to_oom))
    w.params.update(
        processes=float(count),
        oom_after_s=round(to_oom, 1),
        peak_frac=peak,
        replaced="yes" if replace else "no",
    )
    ref = _evaluate(procs[leaker].leak, [target])[0]
    return _Plan(procs, horizon, leaker, leak_start, target, ref)


MAKERS: dict[str, Callable[[_World], _Plan]] = {
    "judge_warmup_ramp": _warmup_ramp,
    "judge_empty_cache_sawtooth": _empty_cache_sawtooth,
    "judge_eval_spikes": _eval_spikes,
    "judge_saturating_lengths": _saturating_lengths,
    "judge_shared_gpu_jobs": _shared_gpu_jobs,
    "judge_checkpoint_restart": _checkpoint_restart,
    "judge_sized_to_95pct": _sized_to_95pct,
    "judge_leak_from_start": _leak_from_start,
    "judge_leak_hours_in": _leak_hours_in,
    "judge_epoch_staircase": _epoch_staircase,
    "judge_sawtooth_rising_floor": _sawtooth_rising_floor,
    "judge_one_pid_leaks": _one_pid_leaks,
    "judge_slow_creep": _slow_creep,
    "judge_fast_leak": _fast_leak,
}


# ---------------------------------------------------------------- polling


def _poll_times(w: _World, interval: float, stalls: bool, end: float) -> list[float]:
    """The daemon's poll times up to ``end``: jittered, sometimes missed or stalled."""
    clock = random.Random(w.clock_seed)
    p_stall = w.p_stall if stalls else 0.0
    times: list[float] = []
    t = clock.uniform(0.0, min(interval, 5.0))
    while True:
        now = round(t, 3)
        if now > end:
            return times
        if clock.random() >= w.p_miss:
            times.append(now)
        gap = interval * clock.uniform(0.98, 1.02)
        if clock.random() < p_stall:
            gap += interval * clock.uniform(3.0, 12.0)
        t += gap


def _headroom_peak(w: _World, plan: _Plan) -> float:
    """The device's noiseless healthy peak over the second half of the leak's drawn run."""
    assert plan.leak_start is not None
    assert plan.target is not None
    lo = plan.leak_start + 0.5 * (plan.target - plan.leak_start)
    n = 600
    grid = [lo + (plan.target - lo) * k / n for k in range(n + 1)]
    device = [float(w.other)] * len(grid)
    for p in plan.procs:
        values = _evaluate(p.segments, grid)
        for k, t in enumerate(grid):
            if p.start <= t < p.stop:
                device[k] += values[k]
    return max(device)


def _fmt_t(t: float) -> str:
    return f"{t:.3f}".rstrip("0").rstrip(".") if t != int(t) else str(int(t))


def build(  # noqa: PLR0912, PLR0915 - the poll loop reads best in one place
    scenario: str,
    seed: int,
    name: str | None = None,
    *,
    with_leak: bool = True,
    until: float | None = None,
) -> tuple[list[str], Label]:
    """One trace (CSV lines) and its label; ``with_leak=False``: the leak-free twin.

    Deterministic in (scenario, seed). ``until`` cuts the trace at that time.
    """
    maker = MAKERS.get(scenario)
    if maker is None:
        raise ValueError(f"unknown scenario {scenario!r}")
    w = _World(scenario, seed)
    plan = maker(w)
    is_leak = plan.leak_start is not None
    expected = plan.duration
    if plan.target is not None and plan.leak_start is not None:
        expected = plan.target + 0.35 * (plan.target - plan.leak_start)  # a late OOM's room
    interval = max(w.interval, expected / MAX_POLLS)
    if plan.max_interval is not None:
        interval = min(interval, plan.max_interval)
    total, quantum, other = w.total, w.quantum, w.other
    amp = 0.0
    if is_leak:
        amp = total - _headroom_peak(w, plan)
        if plan.noise_margin:
            amp -= sum(p.noise.clip for p in plan.procs)
    w.params.update(
        noise=w.noise_kind,
        quantum_mib=float(quantum // MIB),
        rows=w.rows,
        every=float(w.every),
        interval_s=round(interval, 3),
        total_mib=float(total // MIB),
        other_mib=float(other // MIB),
    )
    leaker = plan.procs[plan.leak_proc] if plan.leak_proc is not None else None
    label = Label(
        name=name or f"{scenario}-{seed}",
        scenario=scenario,
        seed=seed,
        leak=is_leak,
        pid=leaker.pid if leaker is not None and scenario in MULTI_PROCESS else None,
        leak_start_t=round(plan.leak_start, 3) if plan.leak_start is not None else None,
        near_oom_expected=scenario in NEAR_FULL,
        card_gib=w.card_gib,
        interval_s=round(interval, 3),
        device_only=w.rows == "never",
        params=w.params,
    )
    end = plan.duration if until is None else min(plan.duration, until)
    times = _poll_times(w, interval, plan.stalls, end)
    healthy = [_evaluate(p.segments, times) for p in plan.procs]
    leaked = [0.0] * len(times)
    if is_leak and with_leak and leaker is not None:
        scale = amp / plan.leak_ref
        leaked = [scale * x for x in _evaluate(leaker.leak, times)]
    samplers = [p.noise.sampler() for p in plan.procs]
    seen: list[float | None] = [None] * len(plan.procs)
    lines = [HEADER]
    last = 0.0
    for i, now in enumerate(times):
        rows: list[tuple[int, int]] = []
        used = other
        mine = -1
        for j, p in enumerate(plan.procs):
            if not p.start <= now < p.stop:
                continue
            h = healthy[j][i]
            before = seen[j]
            seen[j] = now
            wobble = samplers[j](now - before if before is not None else interval)
            v = max(h + wobble * min(1.0, h / p.size), p.floor)
            if p is leaker:
                mine = len(rows)
                v += leaked[i]
            q = max(1, round(v / quantum)) * quantum
            rows.append((p.pid, q))
            used += q
        oom = used >= total
        cut = 0
        if oom:
            if not (is_leak and with_leak) or mine < 0:
                raise RuntimeError(f"{scenario} seed {seed}: healthy memory reached the card")
            cut = used - total
            pid, q = rows[mine]
            rows[mine] = (pid, q - cut)
            used = total
        lines.append(f"{_fmt_t(now)},0,,{used},{total}")
        if w.rows != "never" and i % w.every == 0:
            lines.extend(f"{_fmt_t(now)},0,{pid},{q}," for pid, q in rows)
        last = now
        if oom:
            label.oom_t = now
            assert label.leak_start_t is not None
            held = float(round(leaked[i] - cut))  # what the leak holds at the OOM
            label.rate_bytes_per_s = held / max(now - label.leak_start_t, 1e-3)
            w.params["leaked_bytes_at_oom"] = held
            break
    else:
        if is_leak and with_leak and until is None:
            raise RuntimeError(f"{scenario} seed {seed}: the leak never reached the card")
    label.duration_s = last
    return lines, label


def twin(label: Label) -> list[str]:
    """The leak-free twin of a leak trace, up to the leak trace's OOM (see ``build``)."""
    lines, _ = build(label.scenario, label.seed, label.name, with_leak=False, until=label.oom_t)
    return lines


def generate(
    count: int, seed: int, scenarios: tuple[str, ...] = SCENARIOS
) -> Iterator[tuple[list[str], Label]]:
    """``count`` traces, cycling through ``scenarios``, each with its own derived seed."""
    for i in range(count):
        scenario = scenarios[i % len(scenarios)]
        yield build(scenario, seed * 1_000_039 + i, f"{i:04d}-{scenario}")


def main(argv: list[str] | None = None) -> int:
    """Write traces and labels.jsonl to a folder."""
    return write_traces(argv, (__doc__ or "").split("\n\n")[0], SCENARIOS, generate)


if __name__ == "__main__":
    sys.exit(main())
