"""A third, independent generator of labelled GPU memory traces: a fresh held-out set.

The leak detector was tuned on ``scenarios.py`` and then checked against
``field_scenarios.py``. This module models other jobs, from how current
PyTorch, JAX and LLM-serving stacks use GPU memory (FSDP/ZeRO, torch.compile
and CUDA graphs, vLLM-style KV-cache preallocation, JAX's BFC preallocation,
hyper-parameter sweeps, batch-size finders, RLHF with a colocated rollout
engine), with shapes, ranges and noise of its own, behind the same interface
(``setup``, ``build``, ``twin``, ``generate``, ``SCENARIOS``, ``HEALTHY``,
``LEAKS``, ``MULTI_PROCESS``) and the same ``scenarios.Label``.

NVML sees what the CUDA driver has handed out: for PyTorch that is the
caching allocator's *reserved* memory plus the CUDA context, which does not
drop when tensors are freed (only on ``empty_cache``, a failed ``cudaMalloc``
retry, or with an allocator that trims its pool, such as ``cudaMallocAsync``).
The shapes below follow from that.

Healthy jobs: no leak may be reported on any of them.

- ``fsdp_step_oscillation``: FSDP/ZeRO-3 on a pool that is trimmed every
  step: the memory swings by 8-30 % of the floor every 0.4-6 s (all-gathers
  and activations up through the forward, down through the backward; each
  step's peak 80-100 % of the swing), aliased by the poll; Adam's state (12-30
  % of the floor) appears at the first optimizer step; floor 30-60 % of the
  card; 2-10 h.
- ``compile_recompiles``: ``torch.compile``: 1-10 minutes of compilation at
  the weights' level, then the working set (30-70 %); 2-5 recompilations (a
  new shape, a CUDA graph pool for it: +2-9 % each, in 1-3 jumps after a
  pause), the first 5-45 min into training, each gap 1.3-2.5x the one
  before, all in the first 45 % of a 3-12 h run; flat after that.
- ``inference_kv_prealloc``: an LLM server: weights (12-55 %) loaded shard by
  shard, a profiling peak (+3-10 % for 3-25 s) then the KV cache allocated at
  once up to 85-95 % of the card, CUDA graphs (+<=1.5 %) captured in 5-30
  jumps, 0-4 small sampler-buffer steps (8-64 MiB) later on, quiet for 6-48 h
  (``near_oom_expected``).
- ``jax_preallocated``: JAX's BFC allocator. 70 %: the whole pool (75 %, or
  50-85 %) taken at the first device use; 30 %: ``PREALLOCATE=false``, the pool
  grown by regions doubling from 256 MiB-2 GiB until it covers a 20-60 %
  working set. 0-3 steps of 2-64 MiB (cuDNN/cuBLAS workspaces) in the first 30
  minutes; no noise at all (nothing else allocates); 2-24 h.
- ``hparam_sweep``: 4-14 trials one after another, each with its own working
  set (15-85 %; sorted ascending in 40 % of sweeps, a batch-size grid), 10-90
  min long (30 % pruned after 15-60 % of that). 70 %: a process per trial (new
  pid, the GPU empty for 3-120 s between); 30 %: trials in one process, memory
  back to the context plus 20-400 MiB between them.
- ``batch_size_finder``: a batch-size search before training: trial batches
  (5-60 s each) up to 2-7 doublings (Lightning's power mode, 1-3 bisection
  trials after it in binsearch mode) or down from an oversized batch by
  halving (accelerate); each failing trial fills the card to a caught OOM
  within 0-300 MiB of what is left, then ``empty_cache``; training at the
  largest batch that fitted (up to 95 % of that) for 2-10 h
  (``near_oom_expected``).
- ``regime_switch``: one permanent change 0.3-4 h in, then 2-8 h flat: a
  backbone unfrozen (55 %: +25-120 %, gradients at the first backward, Adam
  state at the next step) or layers frozen with ``empty_cache`` (45 %: -15-45
  %).
- ``long_context_schedule``: sequence length raised 1-2 times (1-6 h in, the
  second 2-6 h later), +20-70 % each; the new longer blocks are allocated
  while the old ones stay cached (an overshoot of 30-90 % of the step) until
  ``empty_cache`` 1-10 minutes later (70 %), or for good (30 %); 2-6 h flat
  after the last.
- ``fragmentation_settle``: the working set (30-70 %) creeps up by 4-15 % in
  40-300 jumps of whole 2 MiB segments (fewer, down to 10, where that is under
  4 MiB a jump) whose times are exponential with a 0.4-3 h time constant:
  fast at first, settled by the end (the trace runs 5 time constants and
  1-4 h more, at least 4 h).
- ``eval_cache_retained``: evaluations every 20-90 min for 2-15 min (generation:
  ever longer outputs); the first one grows memory by 5-30 % in 3-12 jumps
  and the allocator keeps it cached; evaluations 2 and 3 may add a last step
  of up to 1 %; nothing after; 4-16 h.
- ``rlhf_colocated``: two processes on one GPU taking turns: a rollout engine
  (awake: weights and KV cache, 25-40 %; asleep: context plus 0.1-1 GiB) for
  2-15 minutes, then the trainer (onloaded: 35-55 %; offloaded: context plus
  2-8 %) for 3-20 minutes, each phase +-40 %; 3-12 h.

Leaks: each must be reported in time. The leak is drawn in full (in units)
with the healthy job and scaled so that it reaches the headroom above the
healthy memory's highest point between the leak's start and the planned OOM
(``planned_oom_after_s``) exactly then; the trace runs on (the leak keeps
going) until the device's memory reaches the total. The healthy part of a
leak trace stays under 80 % of the card. ``leak_start_t`` is when the first
leaked byte is held: from then on the trace may differ from its twin.

- ``partial_clear_leak``: a list of GPU tensors grows by 3-15 % of the card
  every cycle (2-30 min) and is cleared, but part of each cycle's tensors stays
  referenced. 60 %: ``empty_cache`` after the clear (a sawtooth whose floor
  rises); 40 %: no ``empty_cache`` (NVML sees the allocator's high-water mark,
  which climbs late in each cycle). From the first clear 0-2 h into training;
  OOM in 1.5-14 h and at least 8.5 cycles.
- ``eval_only_leak``: each evaluation (every 15-60 min, 2-10 min long; 50 %
  visible as +3-12 % while it runs) appends its outputs to a list that is
  never cleared: a ramp during every evaluation from the 1st-3rd; OOM in 2-20
  h and at least 8.5 evaluations.
- ``bursty_leak``: a cache keyed by unusual inputs fills only while they come:
  on for 3-40 min at a rate drawn over a 10x range, off for 5-90 min; from
  10 min-3 h into training; OOM in 3-14 h.
- ``graph_capture_leak``: every 1-20 min (+-5 %) a new NCCL communicator or a
  re-captured CUDA graph pool, never released: a block of one fixed size, with
  a 2-30 s transient of 1-5 % of the card at each (the healthy twin has those
  too); OOM at the 12th-80th block, 40 min-16 h after the first.
- ``restart_then_leak``: a job runs 0.5-4 h, dies, the GPU is empty for
  30 s-10 min, and it resumes from its checkpoint under a new pid (working set
  within -5/+8 % of before) and leaks from 1-20 minutes after its warm-up: a
  per-step leak whose rate drifts by 0.6-1.5x every 5-30 min; OOM in 40 min-8 h.
- ``fsdp_hidden_leak``: the FSDP oscillation with a drifting per-step leak
  under it from 20 min-3 h into training; OOM in 1-12 h.
- ``prefix_cache_growth``: an inference server without a preallocated pool
  (weights 15-45 %, the allocator growing by 4-15 % in 2-6 jumps as traffic
  arrives) that keeps every new prompt prefix's KV cache: log-normal entries
  (sigma 0.9) arriving as a Poisson process whose rate follows the day
  (+-70 %); 150-2500 entries before an OOM 4-40 h away.
- ``post_schedule_leak``: a stage change 0.5-6 h into training (an EMA copy or
  an extra head: +5-25 % in two jumps), and 0-15 min after it a cache keyed by
  ever rarer new keys (held memory ~ t ** 0.5-0.8: concave, unbounded); OOM in
  1-10 h.
- ``rlhf_colocated_leak``: ``rlhf_colocated`` where one side (the rollout
  engine 60 %, else the trainer) keeps a block every time it releases memory;
  ``label.pid`` is it; from 10 min-2 h in; OOM at the 8th-30th release.

Sampling: a device row every 1-20 s (the shortest four intervals that keep a
trace under 30,000 polls), each poll 0-3 % of the interval late (0.4 %: up
to 40 %); 40 % of traces lose no polls, the rest 0.05-1 % of them; 50 % have
daemon restarts: 1-3 gaps of 2-15 minutes (in a leak trace, only before half
the planned time to OOM). Process rows at every poll (40 %), at every 2nd-10th
(30 %) or never (device-only, 30 %; multi-process scenarios always list).
Cards of 12-192 GB with the totals NVML reports (``card_gib`` is the marketed
size, ``params['total_bytes']`` the total); any GPU index 0-7; a driver
reservation of 0, 2-12 MiB or 250-600 MiB that no process accounts for; a
CUDA context of 280-650 MiB per process. Noise per process: none, Gaussian
(clipped at 4 sigma), Laplace (clipped at 10 b) or Gaussian with positive
spikes of 1-8 allocator segments (2 or 20 MiB, 0.2-3 % of polls); scale
0.25-16 MiB, AR(1)-correlated from poll to poll in a third of traces;
quantised to 1 B, 1 MiB or 2 MiB.

Every random draw is made in the same order whether or not the leak is
added (the scenario, the clock and the noise each have their own stream), so
a leak trace's twin (``with_leak=False``) is the same trace, line for line,
until the leak begins. ``setup(scenario, seed)`` gives the noise-free memory
behind a trace.

    python benchmarks/wild_scenarios.py --out traces/ --count 40 --seed 1
"""

from __future__ import annotations

import bisect
import math
import random
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scenarios import Label, write_traces

GIB = float(1 << 30)
MIB = float(1 << 20)
MINUTE = 60.0
HOUR = 3600.0
DAY = 86400.0
HEADER = "t,gpu,pid,used_bytes,total_bytes"

# Marketed size (GB) -> the total NVML reports (MiB) for a typical board of that size:
# RTX 3060, RTX 4090, A100 40GB, L40S, H100 SXM, RTX PRO 6000, H200, B200.
CARDS_MIB = {
    12: 12288,
    24: 24564,
    40: 40960,
    48: 49140,
    80: 81559,
    96: 97887,
    141: 143771,
    192: 183359,
}
INTERVALS_S = (1.0, 2.0, 3.0, 5.0, 10.0, 15.0, 20.0)
POLL_BUDGET = 30_000
"""Polls a trace is planned to take (a leak that OOMs late may take twice that)."""
MAX_SAMPLES = 100_000
"""The hard limit: no trace has more device rows."""

HEALTHY = (
    "fsdp_step_oscillation",
    "compile_recompiles",
    "inference_kv_prealloc",
    "jax_preallocated",
    "hparam_sweep",
    "batch_size_finder",
    "regime_switch",
    "long_context_schedule",
    "fragmentation_settle",
    "eval_cache_retained",
    "rlhf_colocated",
)
LEAKS = (
    "partial_clear_leak",
    "eval_only_leak",
    "bursty_leak",
    "graph_capture_leak",
    "restart_then_leak",
    "fsdp_hidden_leak",
    "prefix_cache_growth",
    "post_schedule_leak",
    "rlhf_colocated_leak",
)
SCENARIOS = HEALTHY + LEAKS
MULTI_PROCESS = ("rlhf_colocated", "rlhf_colocated_leak")
"""Scenarios where several processes hold the GPU at once (and a leak names its pid)."""
NEAR_FULL = ("inference_kv_prealloc", "batch_size_finder")
"""Scenarios sized near the card on purpose: ``near_oom_expected``."""
MIN_CARD_GIB = {"rlhf_colocated": 40, "rlhf_colocated_leak": 40}

Params = dict[str, float | str]


def _lu(rng: random.Random, low: float, high: float) -> float:
    """Log-uniform in [low, high]: scales (sizes, periods) spread over orders of magnitude."""
    return math.exp(rng.uniform(math.log(low), math.log(high)))


# --- noise-free memory over time ------------------------------------------------------------


class Curve:
    """Piecewise-linear memory over time, flat beyond its ends.

    A step is two points at the same time (the value before, then after): the
    curve is right-continuous, so at a step's time it already has the new value.
    """

    __slots__ = ("ts", "vs")

    def __init__(self, points: list[tuple[float, float]]) -> None:
        self.ts = [t for t, _ in points]
        self.vs = [v for _, v in points]
        if not points or any(b < a for a, b in zip(self.ts, self.ts[1:], strict=False)):
            raise ValueError("a curve needs points in time order")

    def at(self, t: float) -> float:
        """The value at ``t`` (after any step at ``t``)."""
        ts, vs = self.ts, self.vs
        i = bisect.bisect_right(ts, t)
        if i == 0:
            return vs[0]
        if i == len(ts):
            return vs[-1]
        t0 = ts[i - 1]
        if t0 == t:
            return vs[i - 1]
        return vs[i - 1] + (vs[i] - vs[i - 1]) * (t - t0) / (ts[i] - t0)

    def left(self, t: float) -> float:
        """The value just before ``t`` (before any step at ``t``)."""
        ts, vs = self.ts, self.vs
        i = bisect.bisect_left(ts, t)
        if i == 0:
            return vs[0]
        if i == len(ts):
            return vs[-1]
        if ts[i] == t:
            return vs[i]
        t0 = ts[i - 1]
        return vs[i - 1] + (vs[i] - vs[i - 1]) * (t - t0) / (ts[i] - t0)

    def peak(self, t0: float, t1: float) -> float:
        """The highest value on [t0, t1]: at an end or at a point between."""
        best = max(self.at(t0), self.at(t1))
        i = bisect.bisect_right(self.ts, t0)
        j = bisect.bisect_right(self.ts, t1)
        if i < j:
            best = max(best, *self.vs[i:j])
        return best

    def scaled(self, k: float) -> Curve:
        """The curve times ``k``."""
        return Curve([(t, v * k) for t, v in zip(self.ts, self.vs, strict=True)])

    def __add__(self, other: Curve) -> Curve:
        points: list[tuple[float, float]] = []
        for t in sorted(set(self.ts) | set(other.ts)):
            before = self.left(t) + other.left(t)
            after = self.at(t) + other.at(t)
            if before != after:
                points.append((t, before))
            points.append((t, after))
        return Curve(points)

    def envelope(self) -> Curve:
        """The running maximum: what a caching allocator keeps reserved."""
        points = [(self.ts[0], self.vs[0])]
        high = self.vs[0]
        for j in range(1, len(self.ts)):
            t0, v0, t1, v1 = self.ts[j - 1], self.vs[j - 1], self.ts[j], self.vs[j]
            if v1 <= high:
                points.append((t1, high))
                continue
            if t1 > t0 and v0 < high:
                points.append((t0 + (high - v0) / (v1 - v0) * (t1 - t0), high))
            points.append((t1, v1))
            high = v1
        return Curve(points)

    def cursor(self) -> Callable[[float], float]:
        """``at`` for times that never go backwards, in amortised constant time."""
        ts, vs, n = self.ts, self.vs, len(self.ts)
        state = [0]

        def value(t: float) -> float:
            i = state[0]
            while i < n and ts[i] <= t:
                i += 1
            state[0] = i
            if i == 0:
                return vs[0]
            if i == n:
                return vs[-1]
            t0 = ts[i - 1]
            if t0 == t:
                return vs[i - 1]
            return vs[i - 1] + (vs[i] - vs[i - 1]) * (t - t0) / (ts[i] - t0)

        return value


class Shape:
    """Builds a ``Curve`` forwards in time, from a process's start."""

    def __init__(self, t: float, v: float = 0.0) -> None:
        self.points = [(t, v)]

    @property
    def t(self) -> float:
        """The time of the last point."""
        return self.points[-1][0]

    @property
    def v(self) -> float:
        """The value at the last point."""
        return self.points[-1][1]

    def hold(self, t: float) -> None:
        """Stay at the current value until ``t``."""
        if t > self.t:
            self.points.append((t, self.v))

    def jump(self, t: float, v: float) -> None:
        """Hold until ``t``, then step to ``v`` at once."""
        self.hold(t)
        self.points.append((self.t, v))

    def ramp(self, t: float, v: float) -> None:
        """Move in a straight line to ``v`` at ``t``."""
        self.points.append((max(t, self.t), v))

    def curve(self) -> Curve:
        """The curve drawn so far."""
        return Curve(self.points)

    def process(
        self, pid: int, end: float = math.inf, *, wave: Wave | None = None, role: str = "train"
    ) -> Process:
        """The process whose memory this shape draws, alive from its first point to ``end``."""
        return Process(pid, self.curve(), self.points[0][0], end, wave, role)


@dataclass(frozen=True)
class Wave:
    """A per-step oscillation (FSDP all-gathers, activations): far faster than the poll."""

    start: float
    period: float
    amplitude: float
    rise: float
    """Fraction of a step spent rising (the forward pass)."""
    wander: float
    """Phase drift in steps (step times vary), slow enough that time never runs backwards."""
    wander_period: float
    phase: float

    def at(self, t: float) -> float:
        """Memory above the floor at ``t``."""
        if t < self.start:
            return 0.0
        x = (t - self.start) / self.period + self.phase
        x += self.wander * math.sin(2 * math.pi * t / self.wander_period)
        step = math.floor(x)
        phi = x - step
        # Steps differ (sequence lengths, batch content): each one peaks at 80-100 % of the swing.
        h = math.sin(step * 12.9898) * 43758.5453
        size = 0.8 + 0.2 * (h - math.floor(h))
        shape = phi / self.rise if phi < self.rise else (1.0 - phi) / (1.0 - self.rise)
        return self.amplitude * size * shape


@dataclass
class Process:
    """One process on the GPU: alive on [start, end), its memory a curve plus a wave."""

    pid: int
    curve: Curve
    start: float
    end: float = math.inf
    wave: Wave | None = None
    role: str = "train"

    def alive(self, t: float) -> bool:
        """Whether the process holds the GPU at ``t``."""
        return self.start <= t < self.end


@dataclass
class LeakPlan:
    """A leak drawn in full with the healthy job, added only to the leak trace."""

    process: int
    """Index of the leaking process in ``World.processes``."""
    start: float
    """When the first leaked byte is held."""
    planned_after: float
    """Planned time from ``start`` to the OOM: the leak reaches the headroom then."""
    units: Curve
    """Leaked memory in arbitrary units (0 before ``start``), scaled to the headroom."""
    raw: Curve | None = None
    """For a leak seen through the allocator's high-water mark: the healthy memory before it."""


@dataclass(frozen=True)
class Noise:
    """Reading-to-reading variation of one process's memory."""

    kind: str
    scale: float
    rho: float
    clip: float
    spike_p: float
    spike_bytes: float
    quantum: int

    @property
    def bound(self) -> float:
        """The most a reading can stray from the noise-free memory."""
        return self.clip + 8 * self.spike_bytes + self.quantum

    def draw(self, rng: random.Random, state: float) -> tuple[float, float]:
        """(this reading's noise, the state carried to the next reading)."""
        if self.kind == "none":
            return 0.0, 0.0
        if self.kind == "laplace":
            e = self.scale * math.log((1.0 - rng.random()) / (1.0 - rng.random()))
        else:
            e = rng.gauss(0.0, self.scale)
        if self.rho:
            e = self.rho * state + math.sqrt(1.0 - self.rho * self.rho) * e
        e = max(-self.clip, min(self.clip, e))
        if self.kind == "spiky" and rng.random() < self.spike_p:
            return e + self.spike_bytes * rng.randint(1, 8), e
        return e, e


@dataclass(frozen=True)
class Clock:
    """When the daemon polled: a fixed schedule, late polls, lost polls and restarts."""

    interval: float
    skip_p: float
    gaps: tuple[tuple[float, float], ...]
    """(start, length) of each daemon restart: no polls then."""

    def times(self, rng: random.Random) -> Iterator[float]:
        """Poll times (ms resolution), from 0 on, forever."""
        k = 0
        gap = 0
        while True:
            nominal = k * self.interval
            late = self.interval * 0.03 * rng.random()
            if rng.random() < 0.004:
                late += self.interval * 0.4 * rng.random()
            lost = rng.random() < self.skip_p
            k += 1
            while gap < len(self.gaps) and nominal >= self.gaps[gap][0] + self.gaps[gap][1]:
                gap += 1
            if gap < len(self.gaps) and nominal >= self.gaps[gap][0]:
                continue
            if lost and k > 1:
                continue
            yield round(nominal + late, 3) if k > 1 else 0.0


@dataclass
class Draw:
    """What a scenario builder draws from: the card, its noise, the random stream."""

    rng: random.Random
    total: float
    baseline: float
    noise: Noise

    def room(self, processes: int = 1) -> float:
        """The most noise-free memory jobs may hold and never reach the total, noise and all."""
        return self.total - self.baseline - processes * self.noise.bound - 64 * MIB

    def ctx(self) -> float:
        """A CUDA context (and cuBLAS/cuDNN handles): depends on driver, card and lazy loading."""
        return _lu(self.rng, 280, 650) * MIB

    def pid(self) -> int:
        """A fresh process id."""
        return self.rng.randint(1000, 4_000_000)


@dataclass
class Built:
    """A scenario builder's result: the healthy processes, and a leak where there is one."""

    processes: list[Process]
    duration: float
    """Healthy: the trace's length. Leak: how far the jobs are drawn (past any OOM)."""
    info: Params
    leak: LeakPlan | None = None
    quiet: bool = False
    """No noise at all (a process whose allocations never change between polls)."""


@dataclass
class World:
    """Everything behind one trace, before noise."""

    scenario: str
    seed: int
    card_gib: int
    total: int
    baseline: int
    gpu: int
    processes: list[Process]
    duration: float
    info: Params
    noise: Noise
    clock: Clock
    listing: int
    """Process rows at every ``listing``-th poll; 0: never (device-only)."""
    leak: LeakPlan | None = None
    leaky: Curve | None = None
    """The leaking process's memory with the leak in it."""
    extra: dict[str, float] = field(default_factory=dict)

    def held(self, t: float, *, with_leak: bool = False) -> float:
        """Noise-free device memory at ``t``."""
        used = float(self.baseline)
        for i, p in enumerate(self.processes):
            if not p.alive(t):
                continue
            curve = p.curve
            if with_leak and self.leak is not None and i == self.leak.process:
                assert self.leaky is not None
                curve = self.leaky
            used += curve.at(t) + (p.wave.at(t) if p.wave else 0.0)
        return used

    def leaked(self, t: float) -> float:
        """Noise-free leaked bytes at ``t``."""
        if self.leak is None or self.leaky is None:
            return 0.0
        return self.leaky.at(t) - self.processes[self.leak.process].curve.at(t)


def healthy_peak(processes: list[Process], baseline: float, t0: float, t1: float) -> float:
    """The highest noise-free device memory on [t0, t1] (waves counted at their full swing)."""
    times = {t0, t1}
    waves = 0.0
    for p in processes:
        if p.end <= t0 or p.start > t1:
            continue
        ts = p.curve.ts
        times.update(ts[bisect.bisect_left(ts, t0) : bisect.bisect_right(ts, t1)])
        times.update(edge for edge in (p.start, p.end) if t0 <= edge <= t1)
        if p.wave is not None:
            waves += p.wave.amplitude
    best = 0.0
    for t in times:
        now = sum(p.curve.at(t) for p in processes if p.start <= t < p.end)
        before = sum(p.curve.left(t) for p in processes if p.start < t <= p.end)
        best = max(best, now, before)
    return baseline + best + waves


# --- building blocks of jobs -------------------------------------------------------------


def _load(shape: Shape, rng: random.Random, to: float, span: tuple[float, float] = (2, 20)) -> None:
    """Weights copied to the GPU shard by shard: a ramp per shard, short pauses between."""
    shards = rng.randint(1, 6)
    start = shape.v
    for i in range(shards):
        shape.hold(shape.t + rng.uniform(0.2, 3.0))
        shape.ramp(shape.t + _lu(rng, *span), start + (to - start) * (i + 1) / shards)


def _train_start(shape: Shape, rng: random.Random, weights: float, working: float) -> float:
    """From the context on: weights, the first backward's activations and gradients, then
    Adam's state at the first optimizer step. Returns when the working set is reached."""
    shape.hold(shape.t + _lu(rng, 2, 20))  # model built on the CPU, dataset opened
    _load(shape, rng, weights)
    first = shape.t + _lu(rng, 5, 90)  # data-loader workers, the first batch
    shape.jump(first, weights + (working - weights) * rng.uniform(0.45, 0.8))
    shape.jump(first + _lu(rng, 1, 12), working)
    return shape.t


def _weights(rng: random.Random, ctx: float, working: float, low: float = 0.15) -> float:
    """The memory after loading the weights: a share of what the job will hold."""
    return ctx + (working - ctx) * rng.uniform(low, 0.5)


def _plain_job(d: Draw, cap: float, low: float, high: float) -> tuple[Shape, float, float]:
    """A training job at a flat working set of low-high of the card (under ``cap``).

    Returns its shape (up to the working set), the working set and when it is reached."""
    rng = d.rng
    working = min(rng.uniform(low, high) * d.total, cap)
    ctx = d.ctx()
    shape = Shape(rng.uniform(1, 30), ctx)
    trained = _train_start(shape, rng, _weights(rng, ctx, working), working)
    return shape, working, trained


def _drifting_rate(rng: random.Random, start: float, end: float) -> Curve:
    """A per-step leak at the poll's scale: linear, its rate drifting 0.6-1.5x every 5-30 min
    (step times vary with the data and the other jobs on the node)."""
    shape = Shape(start, 0.0)
    while shape.t < end:
        dt = _lu(rng, 5, 30) * MINUTE
        shape.ramp(shape.t + dt, shape.v + dt * rng.uniform(0.6, 1.5))
    return shape.curve()


def _steps_at(times: list[float], sizes: list[float] | None = None) -> Curve:
    """Units held: a step at each time (of 1 or of the given size)."""
    shape = Shape(times[0], 0.0)
    for i, t in enumerate(times):
        shape.jump(t, shape.v + (1.0 if sizes is None else sizes[i]))
    return shape.curve()


def _fsdp_job(d: Draw, cap: float) -> tuple[Process, float, Params]:
    """An FSDP/ZeRO-3 rank whose pool is trimmed every step: a floor and a fast swing."""
    rng = d.rng
    floor = rng.uniform(0.30, 0.60) * d.total
    swing = rng.uniform(0.08, 0.30) * floor
    fit = min(1.0, cap / (floor + swing))
    floor, swing = floor * fit, swing * fit
    optimizer = rng.uniform(0.12, 0.30) * floor
    ctx = d.ctx()
    shape = Shape(rng.uniform(1, 30), ctx)
    shape.hold(shape.t + _lu(rng, 2, 20))
    sharded = floor - optimizer
    _load(shape, rng, ctx + (sharded - ctx) * rng.uniform(0.3, 0.6))
    first = shape.t + _lu(rng, 10, 120)  # lazy FSDP init, the first batch
    shape.jump(first, sharded)
    period = _lu(rng, 0.4, 6.0)
    # Adam's exp_avg and exp_avg_sq shards are created at the first optimizer step.
    shape.jump(first + period * rng.uniform(1, 3), floor)
    wander_period = _lu(rng, 60, 900)
    wave = Wave(
        start=first,
        period=period,
        amplitude=swing,
        rise=rng.uniform(0.25, 0.45),
        wander=rng.uniform(0.0, 0.4) * wander_period / (2 * math.pi * period),
        wander_period=wander_period,
        phase=rng.random(),
    )
    info: Params = {
        "floor_bytes": floor,
        "swing_bytes": swing,
        "step_s": period,
        "optimizer_bytes": optimizer,
        "trained_s": shape.t,
    }
    return shape.process(d.pid(), wave=wave), shape.t, info


# --- healthy scenarios ---------------------------------------------------------------------


def _fsdp_step_oscillation(d: Draw) -> Built:
    process, _, info = _fsdp_job(d, min(0.88 * d.total, d.room()))
    return Built([process], d.rng.uniform(2, 10) * HOUR, info)


def _compile_recompiles(d: Draw) -> Built:
    rng = d.rng
    duration = rng.uniform(3, 12) * HOUR
    cap = min(0.88 * d.total, d.room())
    working = rng.uniform(0.30, 0.70) * d.total
    increments = [rng.uniform(0.02, 0.09) * working for _ in range(rng.randint(2, 5))]
    fit = min(1.0, cap / (working + sum(increments)))
    working *= fit
    increments = [size * fit for size in increments]
    ctx = d.ctx()
    shape = Shape(rng.uniform(1, 30), ctx)
    shape.hold(shape.t + _lu(rng, 2, 20))
    weights = _weights(rng, ctx, working)
    _load(shape, rng, weights)
    compiling = _lu(rng, 60, 600)  # Dynamo tracing, Inductor codegen and autotuning: no steps
    first = shape.t + compiling
    shape.jump(first, weights + (working - weights) * rng.uniform(0.45, 0.8))
    shape.jump(first + _lu(rng, 1, 12), working)
    trained = shape.t
    gap = _lu(rng, 5, 45) * MINUTE
    times = []
    t = trained
    for _ in increments:
        t += gap
        times.append(t)
        gap *= rng.uniform(1.3, 2.5)  # after a recompile or two, automatic dynamic shapes kick in
    squeeze = min(1.0, (0.45 * duration - trained) / (times[-1] - trained))
    for t, size in zip(times, increments, strict=True):
        at = trained + (t - trained) * squeeze
        shape.hold(at + _lu(rng, 20, 300))  # the recompile stalls training; memory unchanged
        jumps = rng.randint(1, 3)
        for _ in range(jumps):
            # Warm-up run, then the capture of the CUDA graph into its own pool.
            shape.jump(shape.t + rng.uniform(1, 5), shape.v + size / jumps)
    info: Params = {
        "working_set_bytes": working,
        "compile_s": compiling,
        "recompiles": float(len(increments)),
        "recompile_bytes": sum(increments),
        "last_recompile_s": shape.t,
    }
    return Built([shape.process(d.pid())], duration, info)


def _inference_kv_prealloc(d: Draw) -> Built:
    rng = d.rng
    duration = _lu(rng, 6, 48) * HOUR
    cap = min(0.965 * d.total, d.room())
    utilisation = rng.uniform(0.85, 0.95)
    graphs = min(_lu(rng, 0.25, 1.5) * GIB, 0.015 * d.total)
    sampler = [_lu(rng, 8, 64) * MIB for _ in range(rng.randint(0, 4))]
    pool = min(utilisation * d.total, cap - graphs - sum(sampler))
    weights = min(rng.uniform(0.12, 0.55) * d.total, pool - 0.2 * d.total)
    ctx = d.ctx()
    shape = Shape(rng.uniform(2, 40), ctx)
    shape.hold(shape.t + _lu(rng, 5, 60))  # server imports, tokenizer
    _load(shape, rng, weights, span=(3, 40))
    # The profiling run measures the activation peak, then empties the cache.
    profile = weights + rng.uniform(0.03, 0.10) * d.total
    shape.jump(shape.t + rng.uniform(2, 10), min(profile, pool))
    shape.jump(shape.t + rng.uniform(3, 25), weights)
    shape.jump(shape.t + rng.uniform(1, 5), pool)  # the KV cache: one allocation per layer
    captures = rng.randint(5, 30)
    span = _lu(rng, 10, 90)
    for _ in range(captures):
        shape.jump(shape.t + span / captures, shape.v + graphs / captures)
    ready = shape.t
    for t, size in sorted(
        (ready + rng.uniform(0, 0.25) * (duration - ready), size) for size in sampler
    ):
        shape.jump(t, shape.v + size)  # a new largest batch's logits and sampler buffers
    info: Params = {
        "utilisation": utilisation,
        "weights_bytes": weights,
        "pool_bytes": pool,
        "graph_bytes": graphs,
        "ready_s": ready,
    }
    return Built([shape.process(d.pid())], duration, info)


def _jax_preallocated(d: Draw) -> Built:
    rng = d.rng
    duration = _lu(rng, 2, 24) * HOUR
    cap = min(0.9 * d.total, d.room())
    ctx = d.ctx()
    shape = Shape(rng.uniform(3, 30), ctx)
    first = shape.t + _lu(rng, 2, 40)  # the first device_put
    info: Params = {}
    if rng.random() < 0.7:
        fraction = 0.75 if rng.random() < 0.5 else rng.uniform(0.5, 0.85)
        shape.jump(first, min(ctx + fraction * d.total, cap))
        info.update(variant="preallocate", fraction=fraction)
    else:
        need = rng.uniform(0.2, 0.6) * d.total
        region = _lu(rng, 256, 2048) * MIB
        shape.hold(first)
        while shape.v - ctx < need and shape.v < cap:
            # The BFC allocator extends its pool by a region twice the size of the last.
            shape.jump(shape.t + _lu(rng, 2, 120), min(shape.v + region, cap))
            region *= 2
        info.update(variant="grow", need_bytes=need)
    pool_at = shape.t
    for t, size in sorted(
        (pool_at + rng.uniform(0, 30 * MINUTE), _lu(rng, 2, 64) * MIB)
        for _ in range(rng.randint(0, 3))
    ):
        shape.jump(t, min(shape.v + size, cap))  # cuDNN/cuBLAS workspaces, outside the pool
    info["pool_bytes"] = shape.v
    process = shape.process(d.pid())
    return Built([process], duration, info, quiet=True)


def _hparam_sweep(d: Draw) -> Built:
    rng = d.rng
    cap = min(0.9 * d.total, d.room())
    trials = rng.randint(4, 14)
    in_process = rng.random() < 0.3
    sizes = [min(rng.uniform(0.15, 0.85) * d.total, cap) for _ in range(trials)]
    if rng.random() < 0.4:
        sizes.sort()  # a grid over batch sizes, smallest first
    residual = _lu(rng, 20, 400) * MIB
    t = rng.uniform(1, 20)
    pid = d.pid()
    processes = []
    shape: Shape | None = None
    ctx = d.ctx()
    for working in sizes:
        length = _lu(rng, 10, 90) * MINUTE
        if rng.random() < 0.3:
            length *= rng.uniform(0.15, 0.6)  # pruned by the sweep's early-stopping rule
        if shape is None or not in_process:
            shape = Shape(t, ctx)
        else:
            shape.hold(t)
        trained = _train_start(shape, rng, _weights(rng, shape.v, working), working)
        end = max(t + length, trained + MINUTE)
        shape.hold(end)
        if in_process:
            # del model, optimizer; gc.collect(); torch.cuda.empty_cache()
            shape.jump(end, ctx + residual)
            t = end + _lu(rng, 2, 30)
        else:
            processes.append(shape.process(pid, end))
            pid += rng.randint(20, 5000)
            t = end + _lu(rng, 3, 120)
    if in_process:
        assert shape is not None
        processes.append(shape.process(pid, t))
    info: Params = {
        "trials": float(trials),
        "mode": "in_process" if in_process else "process_per_trial",
        "largest_bytes": max(sizes),
    }
    return Built(processes, t + rng.uniform(30, 300), info)


def _batch_size_finder(d: Draw) -> Built:
    rng = d.rng
    duration = rng.uniform(2, 10) * HOUR
    ctx = d.ctx()
    room = d.room()
    ceiling = room - rng.uniform(0, 300) * MIB  # a failed cudaMalloc leaves less than it asked
    base = min(rng.uniform(0.15, 0.45) * d.total, 0.5 * ceiling)
    # The largest batch that fits: more than half-way from the base to the ceiling, or
    # doubling it would have fitted too.
    largest = rng.uniform(0.51 * (ceiling + base), 0.95 * ceiling)
    shape = Shape(rng.uniform(1, 30), ctx)
    _train_start(shape, rng, _weights(rng, ctx, base), base)

    def trial(level: float) -> None:
        fits = level <= 0.95 * ceiling
        # The first forward and backward at this batch; one that does not fit allocates
        # until a cudaMalloc fails (caught), with the card all but full.
        shape.ramp(shape.t + rng.uniform(2, 8), level if fits else ceiling)
        shape.hold(shape.t + (_lu(rng, 5, 60) if fits else rng.uniform(1, 8)))
        shape.jump(shape.t, base)  # gc.collect(); torch.cuda.empty_cache()
        shape.hold(shape.t + rng.uniform(1, 5))

    mode = rng.choice(("power", "binsearch", "halving"))
    found = largest
    if mode == "halving":
        fails = rng.randint(1, 4)
        for j in range(fails, 0, -1):
            trial(base + (largest - base) * 2**j)
        trial(largest)
    else:
        doublings = rng.randint(2, 7)
        for k in range(doublings):
            trial(base + (largest - base) / 2 ** (doublings - 1 - k))
        trial(base + 2 * (largest - base))
        if mode == "binsearch":
            low, high = largest, base + 2 * (largest - base)
            for _ in range(rng.randint(1, 3)):
                middle = (low + high) / 2
                trial(middle)
                if middle <= 0.95 * ceiling:  # as trial() decides
                    low = middle
                else:
                    high = middle
            found = low
    searched = shape.t
    shape.jump(shape.t + _lu(rng, 5, 40), found)  # training at the batch found
    info: Params = {
        "mode": mode,
        "base_bytes": base,
        "found_bytes": found,
        "ceiling_bytes": ceiling,
        "searched_s": searched,
    }
    return Built([shape.process(d.pid())], duration, info)


def _regime_switch(d: Draw) -> Built:
    rng = d.rng
    cap = min(0.9 * d.total, d.room())
    up = rng.random() < 0.55
    ratio = 1 + rng.uniform(0.25, 1.2) if up else 1 - rng.uniform(0.15, 0.45)
    shape, before, trained = _plain_job(d, cap / max(ratio, 1.0), 0.25, 0.6)
    after = before * ratio
    switch = trained + _lu(rng, 0.3, 4) * HOUR
    if up:
        # Gradients of the unfrozen backbone at the first backward, its Adam state at the step.
        shape.jump(switch, before + (after - before) * rng.uniform(0.4, 0.7))
        shape.jump(switch + _lu(rng, 1, 15), after)
    else:
        shape.jump(switch, after)  # frozen layers' gradients and state dropped, cache emptied
    info: Params = {
        "direction": "up" if up else "down",
        "switch_s": switch,
        "before_bytes": before,
        "after_bytes": after,
    }
    duration = shape.t + _lu(rng, 2, 8) * HOUR
    return Built([shape.process(d.pid())], duration, info)


def _long_context_schedule(d: Draw) -> Built:
    rng = d.rng
    cap = min(0.9 * d.total, d.room())
    stages = rng.randint(1, 2)
    growth = [rng.uniform(0.2, 0.7) for _ in range(stages)]
    overshoot = [rng.uniform(0.3, 0.9) for _ in range(stages)]
    released = [rng.random() < 0.7 for _ in range(stages)]
    # Levels relative to the first working set, to size it so the highest one fits.
    level, high, relative = 1.0, 1.0, []
    for g, o, r in zip(growth, overshoot, released, strict=True):
        step = level * g
        high = max(high, level + step + o * step)
        level += step + (0.0 if r else o * step)
        relative.append((step, o * step, r))
    shape, working, trained = _plain_job(d, cap / high, 0.25, 0.5)
    t = trained
    switches: list[float] = []
    for step, extra, release in relative:
        t += _lu(rng, 1, 6) * HOUR if not switches else _lu(rng, 2, 6) * HOUR
        switches.append(t)
        new = shape.v + step * working
        # Longer sequences need larger blocks; the old ones stay cached meanwhile.
        shape.jump(t, new + extra * working * rng.uniform(0.3, 0.7))
        shape.jump(t + rng.uniform(2, 30), new + extra * working)
        if release:
            shape.jump(shape.t + _lu(rng, 1, 10) * MINUTE, new)
        t = shape.t
    info: Params = {
        "stages": float(stages),
        "first_switch_s": switches[0],
        "working_set_bytes": working,
        "final_bytes": shape.v,
    }
    duration = shape.t + _lu(rng, 2, 6) * HOUR
    return Built([shape.process(d.pid())], duration, info)


def _fragmentation_settle(d: Draw) -> Built:
    rng = d.rng
    cap = min(0.88 * d.total, d.room())
    drift_share = rng.uniform(0.04, 0.15)
    shape, working, trained = _plain_job(d, cap / (1 + drift_share), 0.3, 0.7)
    drift = drift_share * working
    tau = _lu(rng, 0.4, 3) * HOUR
    duration = trained + max(5 * tau + _lu(rng, 1, 4) * HOUR, 4 * HOUR)
    # Each jump is at least an allocator segment, so a small drift comes in fewer jumps.
    jumps = min(rng.randint(40, 300), max(10, int(drift / (4 * MIB))))
    weights = [rng.lognormvariate(0, 0.6) for _ in range(jumps)]
    times = sorted(trained + rng.expovariate(1 / tau) for _ in range(jumps))
    scale = drift / sum(weights)
    segment = 2 * MIB
    for t, w in zip(times, weights, strict=True):
        if t < duration:
            shape.jump(t, shape.v + max(segment, round(w * scale / segment) * segment))
    info: Params = {
        "working_set_bytes": working,
        "drift_bytes": shape.v - working,
        "tau_s": tau,
        "trained_s": trained,
    }
    return Built([shape.process(d.pid())], duration, info)


def _eval_cache_retained(d: Draw) -> Built:
    rng = d.rng
    cap = min(0.9 * d.total, d.room())
    extra_share = rng.uniform(0.05, 0.3)
    shape, working, trained = _plain_job(d, cap / (1.02 + extra_share), 0.3, 0.7)
    every = _lu(rng, 20, 90) * MINUTE
    length = min(rng.uniform(2, 15) * MINUTE, 0.5 * every)
    duration = max(_lu(rng, 4, 16) * HOUR, trained + 3.5 * every)
    first = trained + every * rng.uniform(0.9, 1.1)
    # Generation: ever longer outputs need ever larger KV and logits blocks, cached after.
    jumps = rng.randint(3, 12)
    span = length * rng.uniform(0.3, 1.0)
    parts = [rng.random() + 0.1 for _ in range(jumps)]
    at = sorted(first + rng.uniform(0, span) for _ in range(jumps))
    for t, part in zip(at, parts, strict=True):
        shape.jump(t, shape.v + extra_share * working * part / sum(parts))
    for k in (1, 2):
        late = rng.random() < 0.5
        size = rng.uniform(0.001, 0.01) * working
        if late:  # a longer last batch in evaluation 2 or 3
            shape.jump(first + k * every + rng.uniform(0, length), shape.v + size)
    info: Params = {
        "working_set_bytes": working,
        "eval_every_s": every,
        "eval_length_s": length,
        "first_eval_s": first,
        "eval_bytes": shape.v - working,
    }
    return Built([shape.process(d.pid())], duration, info)


@dataclass
class Colocated:
    """A trainer and a rollout engine taking turns on one GPU."""

    trainer: Shape
    engine: Shape
    sleeps: list[float]
    offloads: list[float]
    cycle_s: float
    info: Params


def _colocated(d: Draw, cap: float, until: Callable[[float, float], float]) -> Colocated:
    """Draw the two jobs; ``until(first cycle's start, longest cycle)`` says how long to run."""
    rng = d.rng
    trainer_ctx, engine_ctx = d.ctx(), d.ctx()
    active = rng.uniform(0.35, 0.55) * d.total
    offloaded = trainer_ctx + rng.uniform(0.02, 0.08) * d.total
    awake = rng.uniform(0.25, 0.40) * d.total
    asleep = engine_ctx + _lu(rng, 100, 1000) * MIB
    fit = min(1.0, (cap - asleep) / active, (cap - offloaded) / awake)
    active, awake = active * fit, awake * fit
    weights = engine_ctx + (awake - engine_ctx) * rng.uniform(0.3, 0.6)
    rollout_s = _lu(rng, 2, 15) * MINUTE
    train_s = _lu(rng, 3, 20) * MINUTE
    trainer = Shape(rng.uniform(1, 20), trainer_ctx)
    trainer.hold(trainer.t + _lu(rng, 2, 20))
    _load(trainer, rng, trainer_ctx + (active - trainer_ctx) * rng.uniform(0.2, 0.4))
    trainer.jump(trainer.t + rng.uniform(1, 5), offloaded)  # to the CPU before rollouts
    engine = Shape(trainer.points[0][0] + rng.uniform(5, 30), engine_ctx)
    engine.hold(trainer.t + rng.uniform(1, 5))
    _load(engine, rng, weights, span=(3, 30))
    engine.jump(engine.t + rng.uniform(1, 5), awake)  # KV cache
    start = engine.t
    cycle = 1.4 * (rollout_s + train_s) + 50  # the longest a rollout and a training phase take
    end = until(start, cycle)
    sleeps, offloads = [], []
    t = start
    while t < end:
        t += rollout_s * rng.uniform(0.7, 1.4)  # generation lengths vary
        engine.jump(t, asleep)  # sleep: KV cache discarded, weights to the CPU
        sleeps.append(t)
        trainer.hold(t + rng.uniform(0.5, 3))
        trainer.ramp(trainer.t + _lu(rng, 3, 20), active)  # weights and optimizer state back
        t = trainer.t + train_s * rng.uniform(0.7, 1.4)
        trainer.jump(t, offloaded)
        offloads.append(t)
        engine.hold(t + rng.uniform(0.5, 3))
        engine.ramp(engine.t + _lu(rng, 3, 20), weights)  # wake up: weights, then the cache
        engine.jump(engine.t + rng.uniform(0.5, 3), awake)
        t = engine.t
    info: Params = {
        "trainer_active_bytes": active,
        "engine_awake_bytes": awake,
        "rollout_s": rollout_s,
        "train_s": train_s,
        "first_cycle_s": start,
    }
    return Colocated(trainer, engine, sleeps, offloads, cycle, info)


def _rlhf_colocated(d: Draw) -> Built:
    duration = _lu(d.rng, 3, 12) * HOUR
    pair = _colocated(d, min(0.9 * d.total, d.room(2)), lambda _first, _cycle: duration)
    processes = [
        pair.trainer.process(d.pid(), role="trainer"),
        pair.engine.process(d.pid(), role="rollout"),
    ]
    return Built(processes, duration, pair.info)


# --- leaks -------------------------------------------------------------------------------


def _leak_cap(d: Draw, processes: int = 1) -> float:
    """Leak scenarios leave room for the leak: healthy jobs stay under 80 % of the card."""
    return min(0.8 * d.total, d.room(processes))


def _partial_clear_leak(d: Draw) -> Built:
    rng = d.rng
    cap = _leak_cap(d)
    growth = rng.uniform(0.03, 0.15) * d.total
    shape, working, trained = _plain_job(d, cap - growth, 0.25, 0.5)
    period = _lu(rng, 2, 30) * MINUTE
    empties = rng.random() < 0.6
    planned = max(_lu(rng, 1.5, 14) * HOUR, 8.5 * period)
    leak_from = trained + rng.uniform(0, 2) * HOUR
    clears = []
    while shape.t < leak_from + 3 * planned + 3 * period:
        end = shape.t + period * rng.uniform(0.9, 1.1)
        shape.ramp(end, working + growth)  # a tensor appended every step
        shape.jump(end, working)  # list.clear(), then (maybe) torch.cuda.empty_cache()
        clears.append(end)
    kept = [t for t in clears if t >= leak_from]
    raw = shape.curve()
    healthy = raw if empties else raw.envelope()
    info: Params = {
        "cycle_s": period,
        "cycle_bytes": growth,
        "empty_cache": "yes" if empties else "no",
        "working_set_bytes": working,
    }
    plan = LeakPlan(0, kept[0], planned, _steps_at(kept), raw=None if empties else raw)
    process = Process(d.pid(), healthy, shape.points[0][0])
    return Built([process], kept[0] + 3 * planned, info, plan)


def _eval_only_leak(d: Draw) -> Built:
    rng = d.rng
    cap = _leak_cap(d)
    visible = rng.random() < 0.5
    transient_share = rng.uniform(0.03, 0.12) if visible else 0.0
    shape, working, trained = _plain_job(d, cap / (1 + transient_share), 0.3, 0.6)
    every = _lu(rng, 15, 60) * MINUTE
    length = min(rng.uniform(2, 10) * MINUTE, 0.4 * every)
    planned = max(_lu(rng, 2, 20) * HOUR, 8.5 * every)
    first_leaky = rng.randint(0, 2)
    evals = []
    t = trained
    while t < trained + (first_leaky + 2) * 1.1 * every + 3 * planned:
        t += every * rng.uniform(0.95, 1.05)
        ends = t + length * rng.uniform(0.9, 1.1)
        if visible:  # evaluation activations, freed by empty_cache() at its end
            shape.jump(t, working * (1 + transient_share))
            shape.jump(ends, working)
        evals.append((t, ends))
    units = Shape(evals[first_leaky][0], 0.0)
    for begins, ends in evals[first_leaky:]:
        units.hold(begins)
        units.ramp(ends, units.v + 1.0)  # validation_step outputs appended batch by batch
    info: Params = {
        "eval_every_s": every,
        "eval_length_s": length,
        "eval_visible": "yes" if visible else "no",
        "working_set_bytes": working,
    }
    plan = LeakPlan(0, evals[first_leaky][0], planned, units.curve())
    process = shape.process(d.pid())
    return Built([process], plan.start + 3 * planned, info, plan)


def _bursty_leak(d: Draw) -> Built:
    rng = d.rng
    shape, working, trained = _plain_job(d, _leak_cap(d), 0.3, 0.65)
    start = trained + _lu(rng, 10, 180) * MINUTE
    planned = _lu(rng, 3, 14) * HOUR
    units = Shape(start, 0.0)
    bursts = 0
    while units.t < start + 3 * planned:
        on = _lu(rng, 3, 40) * MINUTE
        units.ramp(units.t + on, units.v + on * _lu(rng, 1, 10))
        units.hold(units.t + _lu(rng, 5, 90) * MINUTE)
        bursts += 1
    info: Params = {"working_set_bytes": working, "bursts_drawn": float(bursts)}
    plan = LeakPlan(0, start, planned, units.curve())
    process = shape.process(d.pid())
    return Built([process], start + 3 * planned, info, plan)


def _graph_capture_leak(d: Draw) -> Built:
    rng = d.rng
    transient = rng.uniform(0.01, 0.05) * d.total
    shape, working, trained = _plain_job(d, _leak_cap(d) - transient, 0.3, 0.65)
    period = _lu(rng, 1, 20) * MINUTE
    blocks = rng.randint(12, 80)
    blocks = min(max(blocks, math.ceil(40 * MINUTE / period)), math.floor(16 * HOUR / period))
    first = trained + rng.uniform(0.2, 1.5) * period
    events = []
    t = first
    while t < first + 3.2 * blocks * period + period:
        events.append(t)
        # new_group() + its first collective, or a warm-up run and capture: short-lived buffers.
        shape.jump(t, working + transient)
        shape.jump(t + _lu(rng, 2, 30), working)
        t += period * rng.uniform(0.95, 1.05)
    planned = events[blocks - 1] - first + 1.0
    info: Params = {
        "variant": rng.choice(("nccl_communicator", "cuda_graph_pool")),
        "period_s": period,
        "blocks_to_oom": float(blocks),
        "transient_bytes": transient,
        "working_set_bytes": working,
    }
    plan = LeakPlan(0, first, planned, _steps_at(events))
    process = shape.process(d.pid())
    return Built([process], first + 3 * planned, info, plan)


def _restart_then_leak(d: Draw) -> Built:
    rng = d.rng
    cap = min(0.7 * d.total, d.room())
    resumed_share = rng.uniform(0.95, 1.08)
    shape, working, trained = _plain_job(d, cap / 1.08, 0.3, 0.6)
    crash = trained + _lu(rng, 0.5, 4) * HOUR  # a NaN check, a lost node, a preemption
    first = shape.process(d.pid(), crash)
    back = crash + _lu(rng, 30, 600)
    ctx = d.ctx()
    resumed = Shape(back, ctx)
    again = working * resumed_share
    # The checkpoint brings weights and optimizer state back before the first step.
    ready = _train_start(resumed, rng, ctx + (again - ctx) * rng.uniform(0.5, 0.8), again)
    start = ready + _lu(rng, 1, 20) * MINUTE
    planned = _lu(rng, 40 * MINUTE, 8 * HOUR)
    second = Process(first.pid + rng.randint(20, 5000), resumed.curve(), back)
    info: Params = {
        "crash_s": crash,
        "restart_s": back,
        "working_set_bytes": working,
        "resumed_bytes": again,
    }
    plan = LeakPlan(1, start, planned, _drifting_rate(rng, start, start + 3 * planned))
    return Built([first, second], start + 3 * planned, info, plan)


def _fsdp_hidden_leak(d: Draw) -> Built:
    rng = d.rng
    process, trained, info = _fsdp_job(d, _leak_cap(d))
    start = trained + _lu(rng, 20, 180) * MINUTE
    planned = _lu(rng, 1, 12) * HOUR
    plan = LeakPlan(0, start, planned, _drifting_rate(rng, start, start + 3 * planned))
    return Built([process], start + 3 * planned, info, plan)


def _prefix_cache_growth(d: Draw) -> Built:
    rng = d.rng
    cap = min(0.65 * d.total, d.room())
    weights = rng.uniform(0.15, 0.45) * d.total
    working = rng.uniform(0.04, 0.15) * d.total
    fit = min(1.0, cap / (weights + working))
    weights, working = weights * fit, working * fit
    ctx = d.ctx()
    shape = Shape(rng.uniform(2, 40), ctx)
    shape.hold(shape.t + _lu(rng, 5, 60))
    _load(shape, rng, weights, span=(3, 40))
    ready = shape.t + _lu(rng, 5, 60)  # the warm-up request
    # The allocator grows to the busiest batch seen so far: a few records as traffic arrives.
    records = rng.randint(2, 6)
    parts = [rng.random() + 0.2 for _ in range(records)]
    span = _lu(rng, 10, 90) * MINUTE
    for t, part in sorted((ready + rng.uniform(0, span), p) for p in parts):
        shape.jump(t, shape.v + working * part / sum(parts))
    planned = _lu(rng, 4, 40) * HOUR
    entries = rng.randint(150, 2500)
    phase = rng.uniform(0, DAY)
    rate = entries / planned
    arrivals: list[float] = []
    sizes: list[float] = []
    t = ready
    while True:
        # A Poisson process following the day (thinning); each new prefix's KV blocks kept.
        t += rng.expovariate(1.7 * rate)
        if t >= ready + 3 * planned + HOUR:
            break
        if rng.random() < (1 + 0.7 * math.sin(2 * math.pi * (t + phase) / DAY)) / 1.7:
            arrivals.append(t)
            sizes.append(rng.lognormvariate(0, 0.9))
    info: Params = {
        "weights_bytes": weights,
        "serving_bytes": working,
        "entries_to_oom": float(entries),
        "day_phase_s": phase,
    }
    plan = LeakPlan(0, arrivals[0], planned, _steps_at(arrivals, sizes))
    process = shape.process(d.pid(), role="inference")
    return Built([process], arrivals[0] + 3 * planned, info, plan)


def _post_schedule_leak(d: Draw) -> Built:
    rng = d.rng
    stage_share = rng.uniform(0.05, 0.25)
    shape, working, trained = _plain_job(d, _leak_cap(d) / (1 + stage_share), 0.3, 0.55)
    switch = trained + _lu(rng, 0.5, 6) * HOUR
    stage = working * stage_share
    shape.jump(switch, working + stage * rng.uniform(0.5, 0.8))  # the EMA copy or new head
    shape.jump(switch + _lu(rng, 2, 30), working + stage)  # its state at the first step
    start = shape.t + rng.uniform(0.5, 15) * MINUTE
    beta = rng.uniform(0.5, 0.8)
    planned = _lu(rng, 1, 10) * HOUR
    # Distinct keys seen grow like Heaps' law: ever rarer, never done.
    grid = [1e-3 * (3.0 / 1e-3) ** (j / 80) for j in range(81)]
    units = Curve([(start, 0.0)] + [(start + planned * x, x**beta) for x in grid])
    info: Params = {"switch_s": switch, "stage_bytes": stage, "beta": beta}
    plan = LeakPlan(0, start, planned, units)
    process = shape.process(d.pid())
    return Built([process], start + 3 * planned, info, plan)


def _rlhf_colocated_leak(d: Draw) -> Built:
    rng = d.rng
    engine_leaks = rng.random() < 0.6
    blocks = rng.randint(8, 30)
    leak_from = _lu(rng, 10, 120) * MINUTE
    pair = _colocated(
        d, _leak_cap(d, 2), lambda first, cycle: first + leak_from + (3 * blocks + 3) * cycle
    )
    releases = pair.sleeps if engine_leaks else pair.offloads
    first_cycle = float(pair.info["first_cycle_s"])
    kept = [t for t in releases if t >= first_cycle + leak_from]
    planned = kept[blocks - 1] - kept[0] + 1.0
    processes = [
        pair.trainer.process(d.pid(), role="trainer"),
        pair.engine.process(d.pid(), role="rollout"),
    ]
    info = dict(pair.info)
    info.update(leaker="rollout" if engine_leaks else "trainer", blocks_to_oom=float(blocks))
    plan = LeakPlan(1 if engine_leaks else 0, kept[0], planned, _steps_at(kept))
    return Built(processes, kept[0] + 3 * planned, info, plan)


BUILDERS: dict[str, Callable[[Draw], Built]] = {
    "fsdp_step_oscillation": _fsdp_step_oscillation,
    "compile_recompiles": _compile_recompiles,
    "inference_kv_prealloc": _inference_kv_prealloc,
    "jax_preallocated": _jax_preallocated,
    "hparam_sweep": _hparam_sweep,
    "batch_size_finder": _batch_size_finder,
    "regime_switch": _regime_switch,
    "long_context_schedule": _long_context_schedule,
    "fragmentation_settle": _fragmentation_settle,
    "eval_cache_retained": _eval_cache_retained,
    "rlhf_colocated": _rlhf_colocated,
    "partial_clear_leak": _partial_clear_leak,
    "eval_only_leak": _eval_only_leak,
    "bursty_leak": _bursty_leak,
    "graph_capture_leak": _graph_capture_leak,
    "restart_then_leak": _restart_then_leak,
    "fsdp_hidden_leak": _fsdp_hidden_leak,
    "prefix_cache_growth": _prefix_cache_growth,
    "post_schedule_leak": _post_schedule_leak,
    "rlhf_colocated_leak": _rlhf_colocated_leak,
}


# --- measurement ---------------------------------------------------------------------------


def _baseline(rng: random.Random) -> int:
    """Memory the driver holds that no process accounts for."""
    kind = rng.random()
    if kind < 0.25:
        return 0
    if kind < 0.5:
        return int(rng.uniform(2, 12) * MIB) // 4096 * 4096  # older drivers: a few MiB
    return int(rng.uniform(250, 600) * MIB) // 65536 * 65536  # recent drivers on large cards


def _noise(rng: random.Random) -> Noise:
    kind = rng.choices(("none", "gauss", "laplace", "spiky"), weights=(1, 4, 3, 2))[0]
    scale = _lu(rng, 0.25, 16) * MIB
    correlated = rng.random() < 1 / 3
    rho = rng.uniform(0.3, 0.9)
    spike_p = _lu(rng, 0.002, 0.03)
    segment = rng.choice((2 * MIB, 20 * MIB))
    quantum = rng.choice((1, 1 << 20, 2 << 20))
    clip = {"none": 0.0, "gauss": 4 * scale, "laplace": 10 * scale, "spiky": 3 * scale}[kind]
    return Noise(
        kind=kind,
        scale=scale if kind != "none" else 0.0,
        rho=rho if correlated and kind != "none" else 0.0,
        clip=clip,
        spike_p=spike_p if kind == "spiky" else 0.0,
        spike_bytes=segment if kind == "spiky" else 0.0,
        quantum=quantum,
    )


def _interval(rng: random.Random, expected_s: float) -> float:
    """One of the four shortest intervals that keep the planned trace within the budget."""
    allowed = [i for i in INTERVALS_S if expected_s / i <= POLL_BUDGET] or [INTERVALS_S[-1]]
    return rng.choice(allowed[:4])


def _gaps(rng: random.Random, limit: float) -> tuple[tuple[float, float], ...]:
    """Daemon restarts: 1-3 gaps of 2-15 minutes in half the traces, all before ``limit``."""
    count = rng.choices((0, 1, 2, 3), weights=(5, 3, 1, 1))[0]
    gaps = []
    for _ in range(count):
        length = _lu(rng, 2, 15) * MINUTE
        start = rng.uniform(10 * MINUTE, max(10 * MINUTE, limit - length))
        if start + length <= limit:
            gaps.append((start, length))
    merged: list[tuple[float, float]] = []
    for start, length in sorted(gaps):
        if merged and start <= merged[-1][0] + merged[-1][1]:
            begin = merged[-1][0]
            merged[-1] = (begin, max(merged[-1][1], start + length - begin))
        else:
            merged.append((start, length))
    return tuple(merged)


def _concurrency(processes: list[Process]) -> int:
    """The most processes alive at once."""
    return max(sum(1 for q in processes if q.alive(p.start)) for p in processes)


def setup(scenario: str, seed: int) -> World:
    """Draw a scenario's card, noise, clock and jobs; a leak is planned and scaled, not added."""
    if scenario not in BUILDERS:
        raise ValueError(f"unknown scenario {scenario!r}; known: {', '.join(SCENARIOS)}")
    rng = random.Random(f"wild:{scenario}:{seed}")
    cards = [gib for gib in CARDS_MIB if gib >= MIN_CARD_GIB.get(scenario, 0)]
    card = rng.choice(cards)
    total = CARDS_MIB[card] << 20
    baseline = _baseline(rng)
    noise = _noise(rng)
    gpu = 0 if rng.random() < 0.5 else rng.randint(1, 7)
    built = BUILDERS[scenario](Draw(rng, float(total), float(baseline), noise))
    if built.quiet:
        noise = Noise("none", 0.0, 0.0, 0.0, 0.0, 0.0, noise.quantum)
    plan = built.leak
    if plan is None:
        expected, gap_limit = built.duration, built.duration
    else:
        expected = plan.start + 1.3 * plan.planned_after
        gap_limit = plan.start + 0.5 * plan.planned_after
    interval = _interval(rng, expected)
    listed = rng.random()
    every = rng.randint(2, 10)
    if scenario in MULTI_PROCESS:
        listing = 1 if listed < 0.6 else every
    else:
        listing = 0 if listed < 0.3 else 1 if listed < 0.7 else every
    skip_p = 0.0 if rng.random() < 0.4 else _lu(rng, 0.0005, 0.01)
    clock = Clock(interval, skip_p, _gaps(rng, gap_limit))
    world = World(
        scenario=scenario,
        seed=seed,
        card_gib=card,
        total=total,
        baseline=baseline,
        gpu=gpu,
        processes=built.processes,
        duration=built.duration,
        info=dict(built.info),
        noise=noise,
        clock=clock,
        listing=listing,
        leak=plan,
    )
    # Healthy memory must never reach the total, whatever the noise does.
    highest = healthy_peak(built.processes, baseline, 0.0, built.duration)
    margin = _concurrency(built.processes) * noise.bound
    if highest + margin >= total:
        raise AssertionError(f"{scenario} seed {seed}: healthy memory can reach the total")
    world.extra["healthy_peak_bytes"] = highest
    if plan is not None:
        planned_oom = plan.start + plan.planned_after
        headroom = total - healthy_peak(built.processes, baseline, plan.start, planned_oom)
        if headroom < 0.05 * total:
            raise AssertionError(f"{scenario} seed {seed}: no room for a leak")
        scale = headroom / plan.units.peak(plan.start, planned_oom)
        added = plan.units.scaled(scale)
        if plan.raw is not None:
            world.leaky = (plan.raw + added).envelope()
        else:
            world.leaky = built.processes[plan.process].curve + added
        world.extra.update(headroom_bytes=headroom, bytes_per_unit=scale)
    world.info.update(
        total_bytes=float(total),
        baseline_bytes=float(baseline),
        noise=noise.kind,
        noise_mib=noise.scale / MIB,
        noise_rho=noise.rho,
        quantum_bytes=float(noise.quantum),
        processes_every=float(listing),
        skip_p=skip_p,
        daemon_gaps=float(len(clock.gaps)),
        healthy_peak_bytes=highest,
    )
    if plan is not None:
        world.info.update(
            planned_oom_after_s=plan.planned_after,
            headroom_bytes=world.extra["headroom_bytes"],
        )
    return world


def _stamp(t: float) -> str:
    return f"{t:.3f}".rstrip("0").rstrip(".")


@dataclass
class Polled:
    """What sampling a world gave: the CSV lines and where they ended."""

    lines: list[str]
    polls: int
    last: float
    oom_t: float | None


def _poll(world: World, with_leak: bool, end: float) -> Polled:
    """Poll the world up to ``end``, or up to the OOM: the first poll that finds it full."""
    plan = world.leak
    processes = world.processes
    curves = [p.curve for p in processes]
    leaker = -1
    if with_leak and plan is not None and world.leaky is not None:
        leaker = plan.process
        curves[leaker] = world.leaky
    cursors = [curve.cursor() for curve in curves]
    noise = world.noise
    quantum = noise.quantum
    # Separate streams: the same noise and poll times whether or not the leak is in.
    noise_rng = random.Random(f"wild-noise:{world.scenario}:{world.seed}")
    clock_rng = random.Random(f"wild-clock:{world.scenario}:{world.seed}")
    total, baseline, gpu = world.total, world.baseline, world.gpu
    states = [0.0] * len(processes)
    out = Polled([HEADER], 0, 0.0, None)
    for t in world.clock.times(clock_rng):
        if t > end:
            break
        held: list[tuple[int, int]] = []
        used = baseline
        for i, p in enumerate(processes):
            if not p.start <= t < p.end:
                continue
            value = cursors[i](t)
            if p.wave is not None:
                value += p.wave.at(t)
            e, states[i] = noise.draw(noise_rng, states[i])
            reading = max(quantum, round((value + e) / quantum) * quantum)
            held.append((i, reading))
            used += reading
        full = used >= total
        if full:
            if leaker < 0:
                raise AssertionError(f"{world.scenario} {world.seed}: healthy memory filled it")
            # The OOM: the allocation fails with the card full; the leaker holds what is left.
            excess = used - total
            held = [(i, v - excess if i == leaker else v) for i, v in held]
            used = total
        stamp = _stamp(t)
        out.lines.append(f"{stamp},{gpu},,{used},{total}")
        if world.listing and out.polls % world.listing == 0:
            out.lines.extend(f"{stamp},{gpu},{processes[i].pid},{v}," for i, v in held)
        out.polls += 1
        out.last = t
        if full:
            out.oom_t = t
            break
    if out.polls > MAX_SAMPLES:
        raise AssertionError(f"{world.scenario} seed {world.seed}: {out.polls} polls")
    return out


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
    poll times with the leak's memory left out. ``until`` ends the trace after
    that time. A leak trace ends at its OOM: the first poll at which the
    device's used memory reaches the total.
    """
    world = setup(scenario, seed)
    plan = world.leak
    leaking = plan is not None and with_leak
    end = world.duration if until is None else min(until, world.duration)
    polled = _poll(world, leaking, end)
    if leaking and polled.oom_t is None and until is None:
        raise AssertionError(f"{scenario} seed {seed}: the leak never filled the card")
    label = Label(
        name=name or f"{scenario}-{seed}",
        scenario=scenario,
        seed=seed,
        leak=leaking,
        gpu=world.gpu,
        card_gib=world.card_gib,
        interval_s=world.clock.interval,
        duration_s=polled.last,
        near_oom_expected=scenario in NEAR_FULL,
        device_only=world.listing == 0,
        params=dict(world.info),
    )
    if leaking and plan is not None:
        label.leak_start_t = round(plan.start, 3)
        label.oom_t = polled.oom_t
        if scenario in MULTI_PROCESS:
            label.pid = world.processes[plan.process].pid
        if polled.oom_t is not None:
            label.rate_bytes_per_s = world.leaked(polled.oom_t) / (polled.oom_t - plan.start)
    return polled.lines, label


def twin(label: Label) -> list[str]:
    """The leak trace's twin without the leak, up to the leak trace's OOM."""
    return build(label.scenario, label.seed, label.name, with_leak=False, until=label.oom_t)[0]


def generate(
    count: int, seed: int, scenarios: tuple[str, ...] = SCENARIOS
) -> Iterator[tuple[list[str], Label]]:
    """``count`` traces cycling through ``scenarios``, each seeded from (seed, index)."""
    for i in range(count):
        scenario = scenarios[i % len(scenarios)]
        yield build(scenario, seed * 1_000_033 + i, f"{i:04d}-{scenario}")


def main(argv: list[str] | None = None) -> int:
    """Write traces and labels.jsonl to a folder."""
    return write_traces(argv, __doc__.split("\n\n")[0], SCENARIOS, generate)


if __name__ == "__main__":
    raise SystemExit(main())
