"""A second, independent generator of labelled GPU memory traces: a held-out test set.

``scenarios.py`` grew up alongside the leak detector, so a detector tuned on
it may have learnt that generator's shapes rather than the problem. This
module models the same problem from how PyTorch training jobs actually use
memory (CUDA context, weight loading, the caching allocator's growth,
``empty_cache``, evaluation passes, variable sequence lengths, restarts,
shared GPUs), with its own shapes, parameter ranges and noise, behind the
same interface (``build``, ``twin``, ``generate``, ``SCENARIOS``, ``HEALTHY``,
``LEAKS``) and the same ``scenarios.Label``, so the scorer can take either.

Healthy jobs: no leak may be reported on any of them.

- ``allocator_warmup_slow``: context (300-600 MiB), weights, then the caching
  allocator growing to its working set in irregular, front-loaded jumps over
  3-9 minutes; flat with noise for 2-8 h. Slow warm-ups look like a ramp.
- ``dynamic_shapes``: variable sequence lengths. Memory jumps when a batch
  longer than any before arrives: the records of i.i.d. log-normal lengths
  (the k-th after some e ** k steps: every few steps at first, then hours
  apart), each of random size, never coming down, 10-40 % in all if the
  dataset's maximum length comes up; 4-12 h. Early on this is a rising curve
  that looks like a leak.
- ``periodic_empty_cache``: ``empty_cache`` every N steps: a climb (concave,
  convex or random increments) of 3-20 % over 2-40 minutes, period jittered
  +-10 %, then back to the same floor; 3-12 h.
- ``eval_and_checkpoint``: every 20-90 minutes an evaluation (5-25 % more for
  1-10 minutes, reached in a ramp of 1-6 steps) then a brief checkpoint
  spike; flat otherwise; 4-14 h.
- ``gradient_accumulation_cycles``: a 5-60 s staircase-and-drop of 1-8 % (one
  step per micro-batch, freed at the optimizer step), sampled at an interval
  at least half its period where the intervals allow: aliased; 2-8 h.
- ``curriculum_growth``: 2-4 planned steps up of 5-20 % each (batch size or
  sequence length), the first 1-3 h in and 1.5-4 h apart, each reached in
  1-4 jumps within 2 minutes; then 2-4 h flat.
- ``shared_gpu_churn``: 2-5 jobs on one GPU; the first runs throughout, the
  others start and stop at random times, each with its own warm-up; 4-12 h.
- ``restart_from_checkpoint``: the job stops 1-3 times (memory down to the
  driver's baseline for 10-120 s) and comes back under the same pid (40 %) or
  a new one, warming up again; 3-10 h.
- ``near_full_flat``: a job sized to 90-97 % of the card, flat with noise
  (``near_oom_expected``); 2-10 h.
- ``mixed``: a slow warm-up, dynamic shapes, evaluations and an empty_cache
  sawtooth together; 6-24 h.

Leaks: each must be reported in time. The time to the OOM is counted from the
leak's start (``leak_start_t``: when the first leaked byte is held), and the
rate is set from the headroom above the healthy jobs' highest point from
30 minutes before the leak to the planned OOM (``planned_oom_after_s``), so
a steady leak cannot hit an evaluation or sawtooth peak before then; random
block and jump sizes move the OOM by up to some 40 % either way. The trace
then runs on until the memory reaches the total.
Leaked memory shows up in the caching allocator's segments (2 or 20 MiB).

- ``kept_losses``: a tensor kept every step (steps of 0.1-2 s), from the first
  step (30 %) or 0.5-6 h in; OOM in 30 min-10 h; on plain training, an
  evaluation schedule or an empty_cache sawtooth (whose floor then rises).
- ``epoch_cache``: a block (+-30 %) kept alive at every epoch end (epoch
  10-90 min, at most a sixth of the time to OOM), from epoch 1-4; OOM in 2-14 h.
- ``fragmentation_creep``: 20-150 irregular jumps before the OOM, of random
  size at random (Poisson) times, at a constant average rate, from 0.3-3 h in;
  OOM in 1-12 h.
- ``slow_creep``: a tiny per-step leak starting within the first 2 h; OOM in
  10-40 h.
- ``fast_leak``: a large per-step leak (a kept autograd graph) from 20 min-4 h
  in; OOM in 3-20 min.
- ``leak_in_one_of_many``: 2-5 processes share the GPU, one leaks (per step or
  in jumps; ``label.pid`` is it) from 0.5-4 h in; OOM in 40 min-8 h.
- ``accelerating_leak``: a cache keyed by a growing set: held memory grows as
  (time since start) ** 1.4-2.5; from 0.3-4 h in; OOM in 1-8 h.

Sampling: a device row every 1-15 s on a fixed schedule with +-2 % jitter
(longer intervals for long traces, to stay under 10^5 samples), 0.3 % of
polls skipped (never more than 3 in a row); process rows at every sample, at
every 5th, or never (device-only, single-process scenarios only). Cards of
16-192 GiB; noise of 0-48 MiB, Gaussian or heavy-tailed, quantised to 1 B,
1 MiB or 2 MiB; a driver baseline of 0-300 MiB no process accounts for.

Every random draw is made in the same order whether or not the leak is
added, so a leak trace's twin (``with_leak=False``) is the same trace, line
for line, until the leak begins. ``setup(scenario, seed)`` gives the
noise-free memory behind a trace (the tests check the shapes on it).

    python benchmarks/field_scenarios.py --out traces/ --count 34 --seed 1
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scenarios import Label, write_traces

GIB = float(1 << 30)
MIB = float(1 << 20)
HOUR = 3600.0
CARDS_GIB = (16, 24, 40, 48, 80, 96, 141, 192)
INTERVALS_S = (1.0, 2.0, 3.0, 5.0, 10.0, 15.0)
MAX_SAMPLES = 100_000
SKIP_POLL = 0.003
"""Chance that a poll is missed: the sample is simply absent from the trace."""
MAX_SKIPPED_IN_A_ROW = 3
HEADER = "t,gpu,pid,used_bytes,total_bytes"

HEALTHY = (
    "allocator_warmup_slow",
    "dynamic_shapes",
    "periodic_empty_cache",
    "eval_and_checkpoint",
    "gradient_accumulation_cycles",
    "curriculum_growth",
    "shared_gpu_churn",
    "restart_from_checkpoint",
    "near_full_flat",
    "mixed",
)
LEAKS = (
    "kept_losses",
    "epoch_cache",
    "fragmentation_creep",
    "slow_creep",
    "fast_leak",
    "leak_in_one_of_many",
    "accelerating_leak",
)
SCENARIOS = HEALTHY + LEAKS
MULTI_PROCESS = ("shared_gpu_churn", "leak_in_one_of_many")

Memory = Callable[[float], float]
"""Bytes held at a time: a job's age for the parts of a job, trace time for a whole job."""
Params = dict[str, float | str]


def _log_uniform(rng: random.Random, low: float, high: float) -> float:
    return math.exp(rng.uniform(math.log(low), math.log(high)))


def _steps(times: list[float], sizes: list[float]) -> Memory:
    """Memory that goes up by ``sizes[i]`` at ``times[i]`` (sorted) and stays up."""
    levels = list(itertools.accumulate(sizes, initial=0.0))

    def memory(age: float) -> float:
        return levels[bisect.bisect_right(times, age)]

    return memory


# --- The parts of a healthy job, each a function of the job's age -----------------------------


@dataclass
class Warmup:
    """The start of every job: when it trains and when its working set is reached."""

    memory: Memory
    trains_at: float
    ready_at: float


def warmup(rng: random.Random, working_set: float, span: tuple[float, float]) -> Warmup:
    """CUDA context at once, the weights in a few chunks, then the allocator's growth."""
    context = rng.uniform(300, 600) * MIB
    load_at = rng.uniform(2, 20)  # import torch, build the model on the CPU
    load_s = rng.uniform(3, 60)
    chunks = rng.randint(1, 6)
    model = (working_set - context) * rng.uniform(0.15, 0.45)
    trains_at = load_at + load_s
    ready_at = trains_at + rng.uniform(*span)
    count = rng.randint(5, 16)
    # The first steps allocate most (activations, gradients, optimizer state);
    # later ones add odd-sized blocks the pool had no room for.
    grow = sorted(trains_at + (ready_at - trains_at) * rng.random() ** 2 for _ in range(count - 1))
    weights = [rng.expovariate(1.0) for _ in range(count)]
    rest = working_set - context - model
    times = [load_at + load_s * (i + 1) / chunks for i in range(chunks)] + [*grow, ready_at]
    sizes = [model / chunks] * chunks + [rest * w / sum(weights) for w in weights]
    loaded = _steps(times, sizes)
    return Warmup(lambda age: context + loaded(age), trains_at, ready_at)


def sawtooth(
    rng: random.Random, amplitude: float, after: float, horizon: float, info: Params
) -> Memory:
    """empty_cache every N steps: a climb over a jittered period, then the same floor."""
    period = _log_uniform(rng, 120, 2400)
    shape = rng.choice(("concave", "convex", "increments"))
    own = random.Random(rng.random())  # its own stream: as many draws as the cycles need
    bounds = [after]
    climbs: list[tuple[list[float], list[float]]] = []
    while bounds[-1] <= horizon:
        bounds.append(bounds[-1] + period * own.uniform(0.9, 1.1))
        count = own.randint(3, 30)
        # The first steps after empty_cache re-reserve just the working set: the floor.
        fractions = sorted(own.uniform(0.05, 1.0) for _ in range(count))
        weights = [own.expovariate(1.0) for _ in range(count)]
        levels = list(itertools.accumulate((w / sum(weights) for w in weights), initial=0.0))
        climbs.append((fractions, levels))
    info.update(sawtooth_period_s=period, sawtooth_bytes=amplitude, sawtooth_shape=shape)

    def memory(age: float) -> float:
        i = bisect.bisect_right(bounds, age) - 1
        if i < 0 or i >= len(climbs):
            return 0.0
        f = (age - bounds[i]) / (bounds[i + 1] - bounds[i])
        if shape == "concave":  # the pool refills fast after empty_cache, then saturates
            return amplitude * (1.0 - (1.0 - f) ** 2)
        if shape == "convex":  # fragmentation compounding until the next empty_cache
            return amplitude * f * f
        fractions, levels = climbs[i]
        return amplitude * levels[bisect.bisect_right(fractions, f)]

    return memory


def evaluations(
    rng: random.Random, working_set: float, after: float, horizon: float, info: Params
) -> Memory:
    """An evaluation pass every 20-90 minutes, then a brief checkpoint spike."""
    every = rng.uniform(20, 90) * 60
    length = rng.uniform(60, 600)
    size = working_set * rng.uniform(0.05, 0.25)
    ramp = length * rng.uniform(0.05, 0.4)
    ramp_steps = rng.randint(1, 6)
    spike = working_set * rng.uniform(0.02, 0.10)
    spike_gap = rng.uniform(5, 60)
    spike_s = rng.uniform(5, 40)
    own = random.Random(rng.random())
    starts = [after + every * own.uniform(0.2, 1.0)]
    while starts[-1] <= horizon:
        starts.append(starts[-1] + every * own.uniform(0.9, 1.1))
    info.update(eval_every_s=every, eval_length_s=length, eval_bytes=size, spike_bytes=spike)

    def memory(age: float) -> float:
        i = bisect.bisect_right(starts, age) - 1
        if i < 0:
            return 0.0
        into = age - starts[i]
        if into < length:
            return size * min(1.0, math.ceil(into / ramp * ramp_steps) / ramp_steps)
        if 0 <= into - length - spike_gap < spike_s:
            return spike
        return 0.0

    return memory


def dynamic_shapes(rng: random.Random, growth: float, trains_at: float, horizon: float) -> Memory:
    """Jumps at each new longest batch from the first step on, ``growth`` in all at the cap.

    Lengths are i.i.d. log-normal, truncated at the dataset's maximum. While
    the longest batch so far is outdone by a fraction ``tail`` of all batches,
    the next record comes after a geometric number of steps (mean 1 / tail)
    and its length is a draw from that tail, so ``tail`` shrinks by a uniform
    factor at every record: the jumps thin out geometrically, most of them
    during the warm-up, a few in the first hours, then hours or days apart.
    Memory grows with the longest length ** power.
    """
    step_s = rng.uniform(0.15, 2.0)
    spread = rng.uniform(0.3, 0.9)  # sequence lengths have a long right tail
    cap = _log_uniform(rng, 1e-8, 1e-5)  # the share of batches at the maximum length
    power = rng.choice((1.0, 1.0, 1.5, 2.0))  # attention without flash kernels: quadratic
    own = random.Random(rng.random())
    normal = NormalDist()

    def size(tail: float) -> float:
        z = normal.inv_cdf(1.0 - max(tail, cap)) - normal.inv_cdf(1.0 - cap)
        return math.exp(spread * z * power)

    tail = min(max(1.0 - own.random(), 1e-6), 1.0 - 1e-6)  # the first batch
    first = previous = size(tail)
    step = 1.0
    times, sizes = [], []
    while tail > cap:
        step += math.floor(math.log(1.0 - own.random()) / math.log1p(-tail)) + 1
        t = trains_at + step * step_s
        if t > horizon:
            break
        tail *= 1.0 - own.random()
        current = size(tail)
        times.append(t)
        sizes.append(current - previous)
        previous = current
    scale = growth / (1.0 - first)
    return _steps(times, [s * scale for s in sizes])


def curriculum(
    rng: random.Random, working_set: float, after: float, info: Params
) -> tuple[Memory, float]:
    """2-4 planned steps up, hours apart; and when the last one is done."""
    count = rng.randint(2, 4)
    t = after + rng.uniform(1, 3) * HOUR
    level, last = working_set, t
    times: list[float] = []
    sizes: list[float] = []
    for _ in range(count):
        grow = level * rng.uniform(0.05, 0.2)
        parts = rng.randint(1, 4)  # the allocator takes the new batch shape in a few bites
        spread = rng.uniform(10, 120)
        times += [t + spread * p / parts for p in range(parts)]
        sizes += [grow / parts] * parts
        level += grow
        last = t + spread
        t += rng.uniform(1.5, 4) * HOUR
    info.update(curriculum_steps=count, curriculum_last_s=last)
    return _steps(times, sizes), last


def accumulation(rng: random.Random, amplitude: float, info: Params) -> Memory:
    """Gradient accumulation: one step up per micro-batch, freed at the optimizer step."""
    period = _log_uniform(rng, 5, 60)
    micro = rng.randint(2, 8)
    phase = rng.uniform(0, period)
    info.update(cycle_period_s=period, cycle_bytes=amplitude)

    def memory(age: float) -> float:
        f = ((age + phase) % period) / period
        return amplitude * math.floor(f * micro) / (micro - 1)

    return memory


# --- Jobs ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Traits:
    """Which behaviours a healthy job shows on top of its warm-up."""

    sawtooth: bool = False
    evals: bool = False
    dynamic: bool = False
    curriculum: bool = False
    accumulation: bool = False

    def peak_factor(self) -> float:
        """The most the job can hold, as a multiple of its working set."""
        return (
            1.0
            + 0.2 * self.sawtooth
            + 0.25 * self.evals  # the checkpoint spike (<= 10 %) comes after the evaluation
            + 0.4 * self.dynamic
            + (1.2**4 - 1.0) * self.curriculum
            + 0.08 * self.accumulation
        )


@dataclass
class Job:
    """One process: its memory as a function of trace time while it lives."""

    pid: int
    start: float
    end: float
    memory: Memory
    trains_at: float
    ready_at: float

    def alive(self, t: float) -> bool:
        return self.start <= t < self.end


def healthy_job(
    rng: random.Random,
    pid: int,
    start: float,
    end: float,
    working_set: float,
    traits: Traits,
    horizon: float,
    warm_span: tuple[float, float] = (20, 240),
    info: Params | None = None,
) -> Job:
    """A job that warms up to ``working_set`` and then shows ``traits``; never leaks."""
    info = {} if info is None else info
    warm = warmup(rng, working_set, warm_span)
    ready = warm.ready_at
    span = horizon - start
    parts = [warm.memory]
    if traits.sawtooth:
        amplitude = working_set * rng.uniform(0.03, 0.2)
        parts.append(sawtooth(rng, amplitude, ready, span, info))
    if traits.evals:
        parts.append(evaluations(rng, working_set, ready, span, info))
    if traits.dynamic:
        growth = working_set * rng.uniform(0.1, 0.4)
        parts.append(dynamic_shapes(rng, growth, warm.trains_at, span))
    if traits.curriculum:
        parts.append(curriculum(rng, working_set, ready, info)[0])
        info["curriculum_last_s"] = float(info["curriculum_last_s"]) + start
    if traits.accumulation:
        parts.append(accumulation(rng, working_set * rng.uniform(0.01, 0.08), info))
    info.setdefault("working_set_bytes", working_set)

    def memory(t: float) -> float:
        return sum(part(t - start) for part in parts)

    return Job(pid, start, end, memory, start + warm.trains_at, start + ready)


def _pid(rng: random.Random) -> int:
    return rng.randint(1000, 4_000_000)


def _working_set(total: float, baseline: float, fill: float, traits: Traits, share: int) -> float:
    """The working set whose peak, with ``share`` such jobs, keeps the GPU under ``fill``."""
    return (fill * total - baseline) / share / traits.peak_factor()


# --- Scenarios ----------------------------------------------------------------------------------


@dataclass
class LeakPlan:
    """What leaks, where, from when, and how long until the planned OOM."""

    kind: str  # per_step, epoch, jumps or accelerating
    job: int
    start: float
    oom_after: float
    params: Params = field(default_factory=dict)


@dataclass
class World:
    """The processes on the GPU and how long to watch them."""

    jobs: list[Job]
    duration: float
    info: Params
    leak: LeakPlan | None = None
    interval_at_least: float = 0.0


Builder = Callable[[random.Random, float, float], World]


def _single(
    rng: random.Random,
    total: float,
    baseline: float,
    traits: Traits,
    hours: tuple[float, float],
    fill: tuple[float, float] = (0.4, 0.85),
    warm_span: tuple[float, float] = (20, 240),
) -> World:
    """One healthy job alone on the GPU."""
    duration = rng.uniform(*hours) * HOUR
    fraction = rng.uniform(*fill)
    info: Params = {"fill": fraction}
    working_set = _working_set(total, baseline, fraction, traits, 1)
    job = healthy_job(rng, _pid(rng), 0.0, math.inf, working_set, traits, duration, warm_span, info)
    return World([job], duration, info)


def _allocator_warmup_slow(rng: random.Random, total: float, baseline: float) -> World:
    return _single(rng, total, baseline, Traits(), (2, 8), warm_span=(180, 540))


def _dynamic_shapes(rng: random.Random, total: float, baseline: float) -> World:
    return _single(rng, total, baseline, Traits(dynamic=True), (4, 12))


def _periodic_empty_cache(rng: random.Random, total: float, baseline: float) -> World:
    return _single(rng, total, baseline, Traits(sawtooth=True), (3, 12))


def _eval_and_checkpoint(rng: random.Random, total: float, baseline: float) -> World:
    return _single(rng, total, baseline, Traits(evals=True), (4, 14))


def _gradient_accumulation(rng: random.Random, total: float, baseline: float) -> World:
    world = _single(rng, total, baseline, Traits(accumulation=True), (2, 8))
    # Aliasing needs samples at least half a period apart.
    world.interval_at_least = float(world.info["cycle_period_s"]) / 2
    return world


def _curriculum_growth(rng: random.Random, total: float, baseline: float) -> World:
    world = _single(rng, total, baseline, Traits(curriculum=True), (30, 30))
    world.duration = float(world.info["curriculum_last_s"]) + rng.uniform(2, 4) * HOUR
    return world


def _near_full_flat(rng: random.Random, total: float, baseline: float) -> World:
    return _single(rng, total, baseline, Traits(), (2, 10), fill=(0.90, 0.97))


def _mixed(rng: random.Random, total: float, baseline: float) -> World:
    traits = Traits(sawtooth=True, evals=True, dynamic=True)
    return _single(rng, total, baseline, traits, (6, 24), warm_span=(180, 540))


def _shared_gpu_churn(rng: random.Random, total: float, baseline: float) -> World:
    """2-5 jobs: the first runs throughout, the others come and go."""
    duration = rng.uniform(4, 12) * HOUR
    count = rng.randint(2, 5)
    fraction = rng.uniform(0.5, 0.85)
    info: Params = {"fill": fraction, "jobs": count}
    jobs = []
    for i in range(count):
        traits = rng.choice((Traits(), Traits(evals=True), Traits(sawtooth=True)))
        start = 0.0 if i == 0 else rng.uniform(0, 0.7) * duration
        lifetime = rng.uniform(0.5 * HOUR, duration)
        end = math.inf if i == 0 or start + lifetime > duration else start + lifetime
        working_set = _working_set(total, baseline, fraction, traits, count)
        jobs.append(healthy_job(rng, _pid(rng), start, end, working_set, traits, duration))
    return World(jobs, duration, info)


def _restart_from_checkpoint(rng: random.Random, total: float, baseline: float) -> World:
    """The job stops 1-3 times and comes back from its checkpoint after 10-120 s."""
    duration = rng.uniform(3, 10) * HOUR
    fraction = rng.uniform(0.4, 0.85)
    traits = rng.choice((Traits(), Traits(evals=True)))
    working_set = _working_set(total, baseline, fraction, traits, 1)
    restarts = rng.randint(1, 3)
    stops = [duration * (k + rng.uniform(0.2, 0.8)) / (restarts + 1) for k in range(restarts)]
    jobs, start, pid = [], 0.0, _pid(rng)
    gaps = []
    for stop in [*stops, math.inf]:
        jobs.append(healthy_job(rng, pid, start, stop, working_set, traits, duration))
        gap = rng.uniform(10, 120)
        gaps.append(gap)
        start = stop + gap
        pid = pid if rng.random() < 0.4 else _pid(rng)
    info: Params = {"fill": fraction, "restarts": restarts, "stops_s": _join(stops)}
    info["gaps_s"] = _join(gaps[:-1])
    return World(jobs, duration, info)


def _join(values: list[float]) -> str:
    return " ".join(f"{v:.0f}" for v in values)


def _leaky_single(
    rng: random.Random,
    total: float,
    baseline: float,
    traits: Traits,
    plan: LeakPlan,
    from_first_step: bool = False,
) -> World:
    """One job that will leak as ``plan`` says.

    With ``from_first_step``, ``plan.start`` counts from the job's first
    training step (0: the leak begins with it); otherwise from the trace's start.
    """
    fraction = rng.uniform(0.3, 0.75)
    # The weights are loaded and training runs within 80 s of the job's start.
    horizon = plan.start + 80 + 4 * plan.oom_after + 2 * HOUR
    info: Params = {"fill": fraction}
    working_set = _working_set(total, baseline, fraction, traits, 1)
    job = healthy_job(rng, _pid(rng), 0.0, math.inf, working_set, traits, horizon, info=info)
    if from_first_step:
        plan.start += job.trains_at
    plan.start = max(plan.start, job.trains_at)
    return World([job], horizon, info, plan)


def _plain_evals_or_sawtooth(rng: random.Random) -> Traits:
    return rng.choice((Traits(), Traits(evals=True), Traits(sawtooth=True)))


def _kept_losses(rng: random.Random, total: float, baseline: float) -> World:
    traits = _plain_evals_or_sawtooth(rng)
    from_first_step = rng.random() < 0.3
    late = rng.uniform(0.5, 6) * HOUR
    plan = LeakPlan("per_step", 0, 0.0 if from_first_step else late, 0.0)
    plan.oom_after = _log_uniform(rng, 1800, 10 * HOUR)
    plan.params["step_s"] = rng.uniform(0.1, 2.0)
    return _leaky_single(rng, total, baseline, traits, plan, from_first_step)


def _epoch_cache(rng: random.Random, total: float, baseline: float) -> World:
    traits = rng.choice((Traits(), Traits(evals=True)))
    oom_after = _log_uniform(rng, 2 * HOUR, 14 * HOUR)
    # Some five steps or more before the OOM: a block or two is no staircase anyone could call.
    epoch = min(rng.uniform(10, 90) * 60, oom_after / 6)
    plan = LeakPlan("epoch", 0, rng.randint(1, 4) * epoch, oom_after, {"epoch_s": epoch})
    return _leaky_single(rng, total, baseline, traits, plan, from_first_step=True)


def _fragmentation_creep(rng: random.Random, total: float, baseline: float) -> World:
    traits = rng.choice((Traits(), Traits(evals=True)))
    plan = LeakPlan("jumps", 0, rng.uniform(0.3, 3) * HOUR, _log_uniform(rng, HOUR, 12 * HOUR))
    plan.params["jumps"] = rng.randint(20, 150)
    return _leaky_single(rng, total, baseline, traits, plan)


def _slow_creep(rng: random.Random, total: float, baseline: float) -> World:
    traits = rng.choice((Traits(), Traits(evals=True), Traits(sawtooth=True)))
    plan = LeakPlan("per_step", 0, rng.uniform(0, 2) * HOUR, rng.uniform(10, 40) * HOUR)
    plan.params["step_s"] = rng.uniform(0.1, 2.0)
    return _leaky_single(rng, total, baseline, traits, plan)


def _fast_leak(rng: random.Random, total: float, baseline: float) -> World:
    traits = _plain_evals_or_sawtooth(rng)
    plan = LeakPlan("per_step", 0, rng.uniform(20 * 60, 4 * HOUR), _log_uniform(rng, 180, 1200))
    plan.params["step_s"] = rng.uniform(0.1, 2.0)
    return _leaky_single(rng, total, baseline, traits, plan)


def _accelerating_leak(rng: random.Random, total: float, baseline: float) -> World:
    traits = rng.choice((Traits(), Traits(evals=True)))
    plan = LeakPlan(
        "accelerating", 0, rng.uniform(0.3, 4) * HOUR, _log_uniform(rng, HOUR, 8 * HOUR)
    )
    plan.params["power"] = rng.uniform(1.4, 2.5)
    return _leaky_single(rng, total, baseline, traits, plan)


def _leak_in_one_of_many(rng: random.Random, total: float, baseline: float) -> World:
    """2-5 long-running processes on one GPU; one of them leaks."""
    count = rng.randint(2, 5)
    fraction = rng.uniform(0.35, 0.75)
    plan = LeakPlan("per_step", 0, rng.uniform(0.5, 4) * HOUR, _log_uniform(rng, 2400, 8 * HOUR))
    plan.kind = rng.choice(("per_step", "jumps"))
    plan.params.update(step_s=rng.uniform(0.1, 2.0), jumps=rng.randint(20, 150))
    horizon = plan.start + 4 * plan.oom_after + 2 * HOUR
    jobs = []
    for i in range(count):
        traits = rng.choice((Traits(), Traits(evals=True)))
        start = 0.0 if i == 0 else rng.uniform(0, HOUR)
        working_set = _working_set(total, baseline, fraction, traits, count)
        jobs.append(healthy_job(rng, _pid(rng), start, math.inf, working_set, traits, horizon))
    plan.job = rng.randrange(count)
    plan.start = max(plan.start, jobs[plan.job].trains_at + 60)
    return World(jobs, horizon, {"fill": fraction, "jobs": count}, plan)


BUILDERS: dict[str, Builder] = {
    "allocator_warmup_slow": _allocator_warmup_slow,
    "dynamic_shapes": _dynamic_shapes,
    "periodic_empty_cache": _periodic_empty_cache,
    "eval_and_checkpoint": _eval_and_checkpoint,
    "gradient_accumulation_cycles": _gradient_accumulation,
    "curriculum_growth": _curriculum_growth,
    "shared_gpu_churn": _shared_gpu_churn,
    "restart_from_checkpoint": _restart_from_checkpoint,
    "near_full_flat": _near_full_flat,
    "mixed": _mixed,
    "kept_losses": _kept_losses,
    "epoch_cache": _epoch_cache,
    "fragmentation_creep": _fragmentation_creep,
    "slow_creep": _slow_creep,
    "fast_leak": _fast_leak,
    "leak_in_one_of_many": _leak_in_one_of_many,
    "accelerating_leak": _accelerating_leak,
}


# --- Leaks --------------------------------------------------------------------------------------


def leak_memory(plan: LeakPlan, rng: random.Random, headroom: float, until: float) -> Memory:
    """Memory the leak holds at trace time t: ``headroom`` is full after ``plan.oom_after``."""
    rate = headroom / plan.oom_after
    # Leaked blocks live in the caching allocator's segments: the GPU sees whole segments.
    segment = rng.choice((2 * MIB, 2 * MIB, 20 * MIB))
    own = random.Random(rng.random())
    start = plan.start
    held: Memory
    if plan.kind == "per_step":
        step_s = float(plan.params["step_s"])
        per_step = rate * step_s

        def held(t: float) -> float:
            return per_step * (math.floor((t - start) / step_s) + 1)

    elif plan.kind == "epoch":
        epoch = float(plan.params["epoch_s"])
        count = math.ceil((until - start) / epoch) + 1
        times = [start + k * epoch for k in range(count)]
        held = _steps(times, [rate * epoch * own.uniform(0.7, 1.3) for _ in times])
    elif plan.kind == "jumps":
        mean_gap = plan.oom_after / float(plan.params["jumps"])
        times = [start]
        while times[-1] <= until:
            times.append(times[-1] + own.expovariate(1.0 / mean_gap))
        held = _steps(times, [rate * mean_gap * own.expovariate(1.0) for _ in times])
    else:
        power, oom_after = float(plan.params["power"]), plan.oom_after

        def held(t: float) -> float:
            return headroom * math.pow((t - start) / oom_after, power)

    def memory(t: float) -> float:
        return math.ceil(held(t) / segment) * segment if t >= start else 0.0

    return memory


@dataclass
class Setup:
    """A scenario's GPU before noise and polling: what ``build`` samples."""

    rng: random.Random  # build goes on drawing from it: noise, polling, the leak
    card_gib: int
    baseline: float  # driver and other memory that no process row accounts for
    world: World

    @property
    def total(self) -> float:
        return self.card_gib * GIB

    def held(self, t: float) -> float:
        """Bytes the GPU holds at ``t``, before noise: the baseline and every live job."""
        return self.baseline + sum(job.memory(t) for job in self.world.jobs if job.alive(t))

    def peak(self, low: float, high: float, step: float = 5.0) -> float:
        """The most the GPU holds (without noise) between ``low`` and ``high``."""
        low = max(0.0, low)
        return max(self.held(low + k * step) for k in range(math.ceil((high - low) / step) + 1))


def setup(scenario: str, seed: int) -> Setup:
    """Draw a scenario's card, baseline and jobs; a leak is planned but not yet added."""
    if scenario not in BUILDERS:
        raise ValueError(f"unknown scenario {scenario!r}; choose from {', '.join(SCENARIOS)}")
    rng = random.Random(f"field_scenarios:{scenario}:{seed}")
    card_gib = rng.choice(CARDS_GIB)
    baseline = rng.uniform(0, 300) * MIB
    return Setup(rng, card_gib, baseline, BUILDERS[scenario](rng, card_gib * GIB, baseline))


# --- Sampling -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Noise:
    """How the driver's readings stray from the memory held, and their resolution."""

    sigma: float
    quantum: float
    heavy: bool

    def draw(self, rng: random.Random) -> float:
        """One reading's error; the same two draws every time, whatever comes of them."""
        z, u = rng.gauss(0.0, 1.0), rng.random()
        if self.heavy and u < 0.03:
            z *= 3.0 + 5.0 * u / 0.03  # now and then a reading far off the usual
        return max(-10.0, min(10.0, z)) * self.sigma

    def read(self, held: float, error: float) -> int:
        return max(0, int((held + error) // self.quantum * self.quantum))


def _noise(rng: random.Random, near_full: bool) -> Noise:
    sigma = rng.choice((0.0, 0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 48.0)) * MIB
    if near_full:
        sigma = min(sigma, 16 * MIB)  # 10 sigma must stay inside the last 3 % of a 16 GiB card
    return Noise(sigma, rng.choice((1.0, MIB, MIB, 2 * MIB)), rng.random() < 0.4)


def _interval(rng: random.Random, expected_s: float, at_least: float) -> float:
    """A polling interval that keeps the trace under MAX_SAMPLES samples."""
    fits = [i for i in INTERVALS_S if expected_s / i <= MAX_SAMPLES]
    slow_enough = [i for i in fits if i >= at_least]
    return rng.choice(slow_enough or fits[-1:] or INTERVALS_S[-1:])


@dataclass
class Poller:
    """How the trace is read off the simulated GPU."""

    total: int
    baseline: float
    interval: float
    noise: Noise
    process_rows: str  # every, fifth or none
    leak_pid: int | None


def _stamp(t: float) -> str:
    return f"{t:.3f}".rstrip("0").rstrip(".")


def _trim(values: list[tuple[int, int]], excess: int, pid: int | None) -> list[tuple[int, int]]:
    """Take an OOM sample's excess off the leaker (or the largest): processes fit the card."""
    if not values:
        return values
    target = pid if pid in {p for p, _ in values} else max(values, key=lambda pv: pv[1])[0]
    return [(p, max(0, v - excess) if p == target else v) for p, v in values]


def sample(
    jobs: list[Job], rng: random.Random, poller: Poller, end: float, allow_oom: bool
) -> tuple[list[str], float | None, float]:
    """Poll until ``end`` or the first sample at the total: (lines, OOM time, last sample's t)."""
    lines = [HEADER]
    total = poller.total
    poll, skipped_run, last_t = 0, 0, 0.0
    oom_t: float | None = None
    while True:
        # A timer-driven poller: jitter around a fixed schedule, not accumulating.
        jitter = rng.uniform(-0.02, 0.02) * poller.interval if poll else 0.0
        t = round(poll * poller.interval + jitter, 3)
        skip_draw = rng.random()
        errors = [poller.noise.draw(rng) for _ in jobs]
        if t > end:
            break
        values = [
            (job.pid, poller.noise.read(job.memory(t), error))
            for job, error in zip(jobs, errors, strict=True)
            if job.alive(t)
        ]
        used = int(poller.baseline) + sum(v for _, v in values)
        full = used >= total
        if full and not allow_oom:
            raise RuntimeError(f"a trace without a leak reached the total at t={t}")
        if not full and poll and skip_draw < SKIP_POLL and skipped_run < MAX_SKIPPED_IN_A_ROW:
            skipped_run += 1
        else:
            skipped_run = 0
            if full:
                values = _trim(values, used - total, poller.leak_pid)
                used = total
            stamp = _stamp(t)
            lines.append(f"{stamp},0,,{used},{total}")
            mode = poller.process_rows
            if mode == "every" or (mode == "fifth" and poll % 5 == 0):
                lines.extend(f"{stamp},0,{pid},{value}," for pid, value in values)
            last_t = t
        if full:
            oom_t = t
            break
        poll += 1
    return lines, oom_t, last_t


# --- The interface ------------------------------------------------------------------------------


def build(
    scenario: str,
    seed: int,
    name: str | None = None,
    *,
    with_leak: bool = True,
    until: float | None = None,
) -> tuple[list[str], Label]:
    """One trace of ``scenario``: CSV lines (header first) and its label.

    ``with_leak=False`` gives the leak trace's twin: the same jobs, noise and
    sample times with the leak's memory left out. ``until`` ends the trace
    after that time.
    """
    drawn = setup(scenario, seed)
    rng, world, baseline = drawn.rng, drawn.world, drawn.baseline
    noise = _noise(rng, scenario == "near_full_flat")
    modes = ("every", "every", "fifth") + (() if scenario in MULTI_PROCESS else ("none",))
    process_rows = rng.choice(modes)
    plan = world.leak
    expected = plan.start + 1.5 * plan.oom_after if plan else world.duration
    interval = _interval(rng, expected, world.interval_at_least)
    params: Params = {
        **world.info,
        "process_rows": process_rows,
        "noise_mib": noise.sigma / MIB,
        "heavy_tail": "yes" if noise.heavy else "no",
        "quantum_bytes": noise.quantum,
        "baseline_bytes": baseline,
    }
    label = Label(
        name=name or f"{scenario}-{seed}",
        scenario=scenario,
        seed=seed,
        leak=plan is not None,
        card_gib=drawn.card_gib,
        interval_s=interval,
        near_oom_expected=scenario == "near_full_flat",
        device_only=process_rows == "none",
        params=params,
    )
    leak_pid = None
    if plan is not None:
        leak_pid = _add_leak(drawn, plan, with_leak, params)
        label.leak_start_t = plan.start
        label.rate_bytes_per_s = float(params["headroom_bytes"]) / plan.oom_after
        label.pid = leak_pid if scenario in MULTI_PROCESS else None
    end = world.duration if until is None else min(world.duration, until)
    poller = Poller(int(drawn.total), baseline, interval, noise, process_rows, leak_pid)
    lines, oom_t, last_t = sample(world.jobs, rng, poller, end, allow_oom=with_leak)
    if plan is not None and with_leak and until is None and oom_t is None:
        raise RuntimeError(f"{label.name}: a leak trace that never ran out of memory")
    label.oom_t = oom_t
    label.duration_s = last_t
    return lines, label


def _add_leak(drawn: Setup, plan: LeakPlan, with_leak: bool, params: Params) -> int:
    """Size the leak from the headroom at the healthy peaks and (maybe) add it; its pid."""
    headroom = drawn.total - drawn.peak(plan.start - 1800, plan.start + plan.oom_after)
    if headroom < 0.1 * drawn.total:
        raise RuntimeError("the healthy jobs leave no room for a leak; the fill is wrong")
    leak = leak_memory(plan, drawn.rng, headroom, drawn.world.duration)
    job = drawn.world.jobs[plan.job]
    if with_leak:
        healthy = job.memory
        job.memory = lambda t: healthy(t) + leak(t)
    params.update(plan.params)
    params.update(leak_kind=plan.kind, planned_oom_after_s=plan.oom_after, headroom_bytes=headroom)
    return job.pid


def twin(label: Label) -> list[str]:
    """The leak trace's twin without the leak, up to the leak trace's OOM."""
    return build(label.scenario, label.seed, label.name, with_leak=False, until=label.oom_t)[0]


def generate(
    count: int, seed: int, scenarios: tuple[str, ...] = SCENARIOS
) -> Iterator[tuple[list[str], Label]]:
    """``count`` traces cycling through ``scenarios``, each seeded from (seed, index)."""
    for i in range(count):
        scenario = scenarios[i % len(scenarios)]
        yield build(scenario, seed * 1_000_003 + i, f"{i:04d}-{scenario}")


def main(argv: list[str] | None = None) -> int:
    """Write traces and labels.jsonl to a folder."""
    return write_traces(argv, __doc__.split("\n\n")[0], SCENARIOS, generate)


if __name__ == "__main__":
    sys.exit(main())
