"""Sixth held-out set: labelled GPU memory traces of jobs no other generator names.

This set was written without reading the leak detector, its policy, its
documentation or the scorer's body, and was never run through the detector:
its traces are meant to be realistic, not easy or hard for any detector. It
shares only the trace format, the ``Label`` type and the command line with
``scenarios.py``, and its interface with ``sealed_scenarios.py``.

    python benchmarks/fresh_scenarios.py --out traces/ --count 44 --seed 1

writes ``NAME.csv`` traces and ``labels.jsonl``.

Sampling model
--------------
Every draw comes from one ``random.Random(seed)``: the card and the other
shared draws first, then the scenario's parameters; event streams, the poll
clock and each process's noise get generators of their own, seeded from it.
The leak is added on top of the healthy memory and never changes a draw, so
``build(..., with_leak=False)`` (the twin) is the same trace, byte for byte,
up to the leak start.

* Card: T4 16, V100 16/32, A10 24, L4 24, RTX 4090 24, A100 40/80, L40S 48,
  H100 PCIe 80, H100 SXM 80, H100 NVL 94 or H200 141 GiB, with the total NVML
  reports (a little under nominal). Sizes are fractions of the card.
* Device ``used`` = the processes on the GPU + a driver/other baseline of
  120-480 MiB. Each process has a CUDA context of 250-550 MiB and loads its
  weights over tens of seconds; a process that exits leaves the rows.
* Quantum 1, 2, 8 or 20 MiB (each process's ``used`` is a multiple).
* Noise on each process: ``gauss`` (0.04-0.25 % of the card per poll),
  ``laplace`` (heavier tails, same scale), ``spikes`` (0.4-2 % of the card for
  1-4 polls, 0.2-1.5 % of polls), ``drift`` (a bounded Ornstein-Uhlenbeck
  wander of 0.2-1 %, 5 min-3 h memory) or ``flicker`` (allocator segments
  appearing and going). Near-full scenarios draw only the milder kinds.
* Polls every 1-10 s (drawn per scenario, coarser for long traces, so a trace
  has at most 30,000 polls), 2-4 % jitter, 0-1.5 % of polls missed and rare
  15-150 s stalls of the poller. Times are rounded to ms.
* Process rows every poll (45 %), every 2-8 polls (35 %) or never (20 %,
  device only; never for the multi-process scenarios).
* Healthy jobs are sized to a drawn peak of 55-85 % of the card and never
  reach the card (under ~93 % with noise); the two near-full ones live at
  90-97 %. A leak scenario's healthy part is sized to 40-70 %; the leak is a
  shape scaled so that the device reaches the card total (the OOM) at a drawn
  ``oom_after_s`` after the leak start, on top of the healthy part's highest
  point near that time (step-shaped leaks overshoot it by a little, so their
  OOM is the step that lands there). The trace ends at that poll, whose
  device ``used`` is exactly the total. Every leak is unbounded.

Healthy scenarios
-----------------
gradcache_batch_rampup
    Contrastive trainer with cached micro-batch embeddings (GradCache): the
    global batch ramps up in 3-6 stages over the first 10-40 % of a 2-20 h run
    by raising the micro-batch count; packing varies it +-1 per step and the
    caching allocator keeps the high-water mark: a staircase, then flat.
capacity_factor_anneal
    Mixture-of-depths / token dropping on ``cudaMallocAsync``: the routed
    capacity is annealed from 25-50 % to 100-125 % in 4-10 updates over the
    first 20-50 % of a 2-18 h run; memory follows the routed tokens per 30 s
    window (85-100 % of capacity).
gpu_decode_workers_respawn (multi-process)
    A trainer and 2-6 GPU image-decode workers (nvJPEG pools whose high-water
    mark grows over each worker's first minutes); every 20-120 min epoch the
    workers exit and new ones (new pids) spawn 2-20 s later. 2-16 h.
cudagraph_bucket_pools
    Sequence-length buckets (8-24, Zipf-like frequencies) each captured as a
    CUDA graph on first sight: a pool proportional to the bucket length and a
    3-20 s capture transient; rare buckets turn up hours in (coupon
    collecting), and the pools stop when every bucket has been seen. 2-20 h.
periodic_weight_averaging
    Every 2-6 h the job loads 2-5 past checkpoints onto the GPU (all at once,
    60 %, or one at a time into a running sum), averages, saves and calls
    ``empty_cache``: a rare staircase up and a drop. 6-36 h.
borrowed_gpu_guest_job (multi-process)
    A host job and 1-4 visits of a guest job (new pid each) whose memory
    climbs over 5-40 min (warm-up and a dataset cache filling) to up to 8-25 % of
    the card, stays 20 min-3 h and leaves. 4-24 h.
continual_task_heads
    Continual learning: a new task every 1-5 h adds a head and its optimizer
    state (0.5-2.5 % of the card) and a replay slice; evaluation over all
    tasks seen grows with them; 3-8 tasks in all, then the last one runs on.
    6-36 h.
nightly_offline_scoring
    A small online model server (load follows the day) whose process loads a
    second model every night at the same hour for a 1-3 h batch-scoring run,
    then unloads it and empties the cache. 24-36 h.
elastic_relaunch_after_hang
    A trainer hangs in an NCCL collective 1-8 h in (flat for the 10-30 min
    timeout), is killed (teardown 5-60 s) and relaunched by the elastic agent
    with a new pid that reloads the checkpoint (a transient of the optimizer
    state) and warms up; once or twice. 3-20 h.
gpu_shard_cache_lru
    A GPU-resident dataset cache: shards (0.5-3 % each) load on first use
    through the first epoch (30 min-4 h) up to a cap of 10-35 % of the card;
    past the cap, each new shard loads before the oldest is dropped (one shard
    extra for 2-20 s). 3-24 h.
tf_allow_growth_full (near full)
    TensorFlow ``allow_growth``: the BFC allocator extends its regions by
    doubling over the first 3-15 min until it holds 91.5-96.5 % of the card, and
    never gives any back. 2-16 h.
recsys_embedding_full (near full)
    Recommender training whose embedding tables and row-wise optimizer fill
    89.5-92.5 % of the card; per-batch unique-id buffers add 0.5-3 % (log-normal
    per 20 s window, rare long-tail batches up to 5 %), capped at 97 %. 2-20 h.

Leak scenarios (ranges of the drawn time from the leak start to the OOM)
-------------------------------------------------------------------------
step_stats_retained (8-24 h)
    A per-step dict of statistics tensors kept in a list from the first step
    or from epoch 2-4 (a callback switched on): bytes per step times a step
    rate that wanders +-20 % every 10 min, seen by NVML in whole 2 or 20 MiB
    allocator segments; released eval bumps.
rotary_table_per_shape (30 min-6 h)
    Inference server caching a precomputed table per (batch, sequence) shape
    with no eviction: new shapes arrive with the request load, ever slower
    (the shape space is large but not small), each a log-uniform size. The
    OOM is placed at the busiest moment within -20/+15 % of the drawn time.
hook_stack_per_epoch (2-12 h)
    Gradient hooks re-registered at each epoch end on top of the old ones;
    each new layer of hooks keeps more than the last: a staircase whose steps
    grow, 6-20 epochs to the OOM, with released validation bumps.
debug_flag_flip_leak (3-12 h)
    A config watcher turns on debug mode 2-10 h in: a bounded step up (larger
    probes, in the twin too) and 0-5 min later kept anomaly traces: a linear
    leak whose rate varies +-25 % every 10 min.
mps_rank_bucket_rebuild_leak (1-8 h, names the pid)
    4-8 DDP ranks share the GPU through MPS; one rank's unused-parameter set
    changes, its gradient buckets are rebuilt every 5-20 min and the old ones
    stay referenced by a comm hook: steps of varying size on that rank only;
    the OOM is placed on the rebuild nearest the drawn time.
fallback_path_chunks (2-14 h)
    A rare fallback code path (over-long inputs) caches its outputs: it runs
    only on some data shards, so long flat stretches, then a chunk (log-normal
    size) allocated over 10-60 s; 8-25 chunks to the OOM, placed on the chunk
    nearest the drawn time (at least the 8th).
pinned_segments_under_sawtooth (1-10 h)
    A strong ``empty_cache`` sawtooth (period 1-10 min, 10-30 % of the card)
    with a few tensors surviving every cycle: the floor rises by whole 20 MiB
    segments.
daily_wave_hidden_leak (10-30 h)
    An inference server whose KV usage follows a 24 h wave (10-25 % of the
    card) and bursts; per-request log buffers are never freed: a leak whose
    rate is (0.3-0.7 + the load). The OOM is placed at the busiest hour within
    half a day of the drawn time.
gpu_dedup_table_growth (1-12 h)
    A GPU hash set deduplicating n-grams: entries grow like t ** 0.45-0.6 (ever
    fewer unseen), the table doubles when half full and the allocator keeps
    the old one cached: sub-linear and unbounded, with doubling steps.
exception_retry_holds_batch (2-6 min)
    A retry loop in an ``except`` block keeps every failed batch's graph
    alive through the traceback: a runaway linear leak 10 min-6 h into a job.
"""

from __future__ import annotations

import math
import random
import sys
from bisect import bisect_right
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from scenarios import Label, write_traces

MIB = 1 << 20
GIB = 1 << 30
MINUTE = 60.0
HOUR = 3600.0
MAX_POLLS = 30_000
"""Polls a trace may take at most (its poll interval grows with its length)."""

HEALTHY = (
    "gradcache_batch_rampup",
    "capacity_factor_anneal",
    "gpu_decode_workers_respawn",
    "cudagraph_bucket_pools",
    "periodic_weight_averaging",
    "borrowed_gpu_guest_job",
    "continual_task_heads",
    "nightly_offline_scoring",
    "elastic_relaunch_after_hang",
    "gpu_shard_cache_lru",
    "tf_allow_growth_full",
    "recsys_embedding_full",
)
LEAKS = (
    "step_stats_retained",
    "rotary_table_per_shape",
    "hook_stack_per_epoch",
    "debug_flag_flip_leak",
    "mps_rank_bucket_rebuild_leak",
    "fallback_path_chunks",
    "pinned_segments_under_sawtooth",
    "daily_wave_hidden_leak",
    "gpu_dedup_table_growth",
    "exception_retry_holds_batch",
)
SCENARIOS = HEALTHY + LEAKS
MULTI_PROCESS = (
    "gpu_decode_workers_respawn",
    "borrowed_gpu_guest_job",
    "mps_rank_bucket_rebuild_leak",
)
NEAR_FULL = ("tf_allow_growth_full", "recsys_embedding_full")

CARDS = (
    # (nominal GiB, total MiB as NVML reports it)
    (16, 15360),  # T4
    (16, 16160),  # V100 16 GB
    (24, 23028),  # A10
    (24, 22491),  # L4
    (24, 24564),  # RTX 4090
    (32, 32510),  # V100 32 GB
    (40, 40536),  # A100 40 GB
    (48, 46068),  # L40S
    (80, 81251),  # A100 80 GB
    (80, 81559),  # H100 SXM
    (80, 81080),  # H100 PCIe
    (94, 95830),  # H100 NVL
    (141, 143771),  # H200
)
QUANTA_MIB = (1, 2, 8, 20)
NOISES = ("gauss", "laplace", "spikes", "drift", "flicker")
MILD_NOISES = ("gauss", "laplace", "drift")
HEADER = "t,gpu,pid,used_bytes,total_bytes"

Fn = Callable[[float], float]


def _ramp(x: float) -> float:
    return 0.0 if x <= 0.0 else 1.0 if x >= 1.0 else x


class _Noise:
    """Per-poll noise of one process, on its own stream so it never shifts another draw."""

    def __init__(self, rng: random.Random, kind: str, total: int, scale: float) -> None:
        self.rng = rng
        self.kind = kind
        self.sigma = total * rng.uniform(0.0004, 0.0025) * scale
        self.spike = total * rng.uniform(0.004, 0.02) * scale
        self.p_spike = rng.uniform(0.002, 0.015)
        self.drift = total * rng.uniform(0.002, 0.01) * scale
        self.tau = rng.uniform(5 * MINUTE, 3 * HOUR)
        self.x = 0.0
        self.left = 0
        self.height = 0.0

    def _spikes(self) -> float:
        if self.left > 0:
            self.left -= 1
            return self.height
        if self.rng.random() < self.p_spike:
            self.left = self.rng.randint(0, 3)
            self.height = self.spike * self.rng.uniform(0.25, 1.0)
            return self.height
        return 0.0

    def __call__(self, dt: float) -> float:
        rng = self.rng
        if self.kind == "gauss":
            return rng.gauss(0.0, self.sigma)
        if self.kind == "laplace":
            # Heavier tails than a gaussian: the allocator's odd large block.
            draw = rng.expovariate(1.0) * (1 if rng.random() < 0.5 else -1)
            return max(-6.0, min(6.0, draw)) * self.sigma / math.sqrt(2.0)
        if self.kind == "spikes":
            return rng.gauss(0.0, self.sigma / 3.0) + self._spikes()
        if self.kind == "drift":
            a = math.exp(-max(dt, 0.0) / self.tau)
            step = 0.5 * self.drift * math.sqrt(1.0 - a * a) * rng.gauss(0.0, 1.0)
            self.x = min(self.drift, max(-self.drift, a * self.x + step))
            return self.x + rng.gauss(0.0, self.sigma / 4.0)
        # flicker: allocator segments come and go, the level holds between switches.
        if rng.random() < 0.04:
            self.x = rng.randint(-3, 5) * self.sigma
        return self.x + rng.gauss(0.0, self.sigma / 5.0)


class _Grid:
    """A piecewise-constant signal on a fixed step, with its running integral."""

    def __init__(self, values: list[float], step: float) -> None:
        self.values = values
        self.step = step
        self.cum = [0.0]
        for v in values:
            self.cum.append(self.cum[-1] + v * step)

    def __call__(self, t: float) -> float:
        return self.values[min(max(int(t / self.step), 0), len(self.values) - 1)]

    def integral(self, t: float) -> float:
        i = min(max(int(t / self.step), 0), len(self.values) - 1)
        return self.cum[i] + self.values[i] * (t - i * self.step)


class _Steps:
    """A running total that rises by ``sizes[i]`` at ``times[i]`` (sorted)."""

    def __init__(self, times: list[float], sizes: list[float]) -> None:
        self.times = times
        self.cum = [0.0]
        for s in sizes:
            self.cum.append(self.cum[-1] + s)

    def __call__(self, t: float) -> float:
        return self.cum[bisect_right(self.times, t)]


class _Windows:
    """Non-overlapping time windows: which one holds ``t``, and how far into it."""

    def __init__(self, starts: list[float], lengths: list[float]) -> None:
        self.starts = starts
        self.ends = [s + n for s, n in zip(starts, lengths, strict=True)]

    def index(self, t: float) -> int:
        i = bisect_right(self.starts, t) - 1
        return i if i >= 0 and t < self.ends[i] else -1


def _every(
    rng: random.Random, first: float, period: float, length: tuple[float, float], until: float
) -> _Windows:
    """Windows about every ``period`` (+-10 %) from ``first``, each ``length`` long."""
    starts: list[float] = []
    lengths: list[float] = []
    s = first
    while s < until:
        n = rng.uniform(*length)
        starts.append(s)
        lengths.append(n)
        s += max(period * rng.uniform(0.9, 1.1), n + 1.0)
    return _Windows(starts, lengths)


def _load(rng: random.Random, until: float, period: float) -> _Grid:
    """Request load in [0.05, 1] on a 60 s grid: a wave of ``period``, bursts, a wander."""
    step = 60.0
    n = int(until / step) + 2
    mean = rng.uniform(0.35, 0.55)
    amp = rng.uniform(0.15, 0.35)
    phase = rng.uniform(0.0, 2.0 * math.pi)
    bursts = [0.0] * n
    t = rng.expovariate(1.0 / HOUR)
    while t < until:
        height, length = rng.uniform(0.05, 0.3), rng.uniform(2 * MINUTE, 20 * MINUTE)
        for i in range(int(t / step), min(n, int((t + length) / step) + 1)):
            bursts[i] = max(bursts[i], height)
        t += rng.expovariate(1.0 / rng.uniform(40 * MINUTE, 3 * HOUR))
    values: list[float] = []
    wander = 0.0
    for i in range(n):
        wander = 0.95 * wander + rng.gauss(0.0, 0.015)
        v = mean + amp * math.sin(2.0 * math.pi * i * step / period + phase) + wander + bursts[i]
        values.append(min(1.0, max(0.05, v)))
    return _Grid(values, step)


def _wander(rng: random.Random, until: float, step: float, spread: float) -> _Grid:
    """A rate that changes every ``step`` by up to +-``spread``."""
    n = int(until / step) + 2
    return _Grid([rng.uniform(1.0 - spread, 1.0 + spread) for _ in range(n)], step)


def _integral_shape(grid: _Grid, start: float, after: float, floor: float = 0.0) -> Fn:
    """0 before ``start``, then the integral of ``floor + grid``, 1.0 at ``start + after``."""
    c0 = grid.integral(start)
    span = grid.integral(start + after) - c0 + floor * after

    def shape(t: float) -> float:
        return 0.0 if t < start else (grid.integral(t) - c0 + floor * (t - start)) / span

    return shape


def _step_shape(steps: _Steps, at: float) -> Fn:
    """The steps' running total as a fraction of what it is at ``at``."""
    ref = steps(at)

    def shape(t: float) -> float:
        return steps(t) / ref

    return shape


@dataclass
class _Proc:
    pid: int
    start: float
    stop: float
    healthy: Fn
    floor: float = 0.0
    noise: _Noise | None = None
    leak: Fn | None = None
    """The leak's shape on top of ``healthy``: 1.0 at the drawn OOM time."""
    grain: float = 0.0
    """Where a leak shows up in whole allocator segments: their size in bytes."""


@dataclass
class _Plan:
    procs: list[_Proc]
    duration: float
    """Where the trace ends: the job's length, or where a leak's twin ends without ``until``."""
    leak_start: float | None = None
    oom_after: float | None = None
    leak_pid: int | None = None
    overshoot: float = 0.0
    """A step-shaped leak's margin over the headroom, as a fraction of the card."""
    window: float = 0.1
    """The headroom is taken over this last fraction of the time to the OOM."""


class _World:
    """The draws every scenario shares: card, baseline, quantum, noise, rows, poll clock."""

    def __init__(self, rng: random.Random, scenario: str) -> None:
        self.rng = rng
        self.card_gib, total_mib = rng.choice(CARDS)
        self.total = total_mib * MIB
        self.quantum = rng.choice(QUANTA_MIB) * MIB
        self.other = round(rng.uniform(120, 480) * MIB / self.quantum) * self.quantum
        near = scenario in NEAR_FULL
        self.noise_kind = rng.choice(MILD_NOISES if near else NOISES)
        self.noise_scale = 0.4 if near else 1.0
        roll = rng.random()
        self.every = 1 if roll < 0.45 else rng.randint(2, 8)
        self.rows = "every" if self.every == 1 else f"every_{self.every}"
        if roll >= 0.8 and scenario not in MULTI_PROCESS:
            self.rows = "never"
        self.p_miss = rng.choice((0.0, 0.0, rng.uniform(0.0005, 0.015)))
        self.p_stall = rng.uniform(0.0, 1.5e-4)
        self.jitter = rng.uniform(0.02, 0.04)
        self.poll_seed = rng.getrandbits(64)
        self.interval = 1.0
        self._pids: set[int] = set()
        self.params: dict[str, float | str] = {}

    def u(self, lo: float, hi: float) -> float:
        return self.rng.uniform(lo, hi)

    def pid(self) -> int:
        while True:
            pid = self.rng.randint(300, 4_194_303)
            if pid not in self._pids:
                self._pids.add(pid)
                return pid

    def ctx(self) -> float:
        return self.u(250, 550) * MIB

    def sub(self) -> random.Random:
        """An event stream of its own, seeded from the one generator."""
        return random.Random(self.rng.getrandbits(64))

    def noise(self, scale: float = 1.0) -> _Noise:
        return _Noise(self.sub(), self.noise_kind, self.total, self.noise_scale * scale)

    def set_interval(self, lo: float, hi: float, length: float) -> None:
        self.interval = max(self.u(lo, hi), length / MAX_POLLS)

    def fit(self, peak: float, fixed: float, parts: dict[str, float]) -> dict[str, float]:
        """Scale ``parts`` so they, ``fixed`` and the baseline add up to ``peak`` of the card."""
        budget = peak * self.total - self.other - fixed
        scale = budget / sum(parts.values())
        self.params["peak_frac"] = round(peak, 4)
        return {k: v * scale for k, v in parts.items()}


def _loader(ctx: float, weights: float, t0: float, load_s: float) -> Fn:
    """CUDA context at ``t0``, then the weights arriving over ``load_s``."""

    def used(t: float) -> float:
        return ctx + weights * _ramp((t - t0) / load_s)

    return used


def _trainer(
    w: _World, peak: float, extra: dict[str, float], fixed: float = 0.0
) -> tuple[Fn, float, float, dict[str, float]]:
    """A training process: (healthy used, context, when it is warm, its fitted parts)."""
    ctx, t0, load_s = w.ctx(), w.u(0, 30), w.u(15, 120)
    p = w.fit(peak, ctx + fixed, {"model": w.u(0.25, 0.45), "act": w.u(0.06, 0.18), **extra})
    warm = t0 + load_s + w.u(10, 90)
    base = _loader(ctx, p["model"], t0, load_s)
    act = p["act"]

    def used(t: float) -> float:
        # The allocator reaches its working set over the first steps after the load.
        return base(t) + act * _ramp((t - warm + 20.0) / 20.0)

    p["t0"] = t0
    return used, ctx, warm, p


def _with_bumps(used: Fn, windows: _Windows, bump: float) -> Fn:
    def bumped(t: float) -> float:
        return used(t) + (bump if windows.index(t) >= 0 else 0.0)

    return bumped


# --- healthy -----------------------------------------------------------------------------------


def _gradcache_batch_rampup(w: _World) -> _Plan:
    duration = w.u(2 * HOUR, 20 * HOUR)
    w.set_interval(1, 6, duration)
    stages = w.rng.randint(3, 6)
    top = 2**stages  # micro-batches per step at the end of the ramp
    train, ctx, warm, p = _trainer(w, w.u(0.55, 0.85), {"cache": w.u(0.08, 0.25)})
    per_micro = p["cache"] / (top + 1)  # +1: packing may add one micro-batch past the top
    ramp_end = warm + duration * w.u(0.1, 0.4)
    bounds = [*sorted(w.u(warm, ramp_end) for _ in range(stages - 1)), ramp_end]
    ev = w.sub()
    # The allocator holds the largest step so far: sample packing per 20 s window.
    step = 20.0
    hwm: list[float] = []
    high = 0
    for i in range(int(duration / step) + 2):
        t = i * step
        stage = bisect_right(bounds, t)
        n = max(1, 2 ** min(stage, stages) + ev.choice((-1, 0, 0, 1)))
        high = max(high, n if t >= warm else 0)
        hwm.append(float(high))
    micro = _Grid(hwm, step)

    def used(t: float) -> float:
        return float(train(t) + per_micro * micro(t))

    w.params.update(stages=float(stages), ramp_end_s=round(ramp_end, 1))
    return _Plan([_Proc(w.pid(), p["t0"], math.inf, used, ctx, w.noise())], duration)


def _capacity_factor_anneal(w: _World) -> _Plan:
    duration = w.u(2 * HOUR, 18 * HOUR)
    w.set_interval(1, 6, duration)
    train, ctx, warm, p = _trainer(w, w.u(0.55, 0.85), {"routed": w.u(0.12, 0.3)})
    c0, c1 = w.u(0.25, 0.5), w.u(1.0, 1.25)
    updates = w.rng.randint(4, 10)
    end = warm + duration * w.u(0.2, 0.5)
    times = [warm + (end - warm) * (k + 1) / updates for k in range(updates)]
    caps = [c0 + (c1 - c0) * (k + 1) / updates for k in range(updates)]
    ev = w.sub()
    step = 30.0
    fill = _Grid([ev.uniform(0.85, 1.0) for _ in range(int(duration / step) + 2)], step)
    routed = p["routed"] / c1

    def used(t: float) -> float:
        if t < warm:
            return train(t)
        k = bisect_right(times, t)
        cap = c0 if k == 0 else caps[k - 1]
        return train(t) + routed * cap * fill(t)

    w.params.update(capacity_start=round(c0, 3), capacity_end=round(c1, 3))
    return _Plan([_Proc(w.pid(), p["t0"], math.inf, used, ctx, w.noise())], duration)


def _gpu_decode_workers_respawn(w: _World) -> _Plan:
    duration = w.u(2 * HOUR, 16 * HOUR)
    w.set_interval(1, 8, duration)
    workers = w.rng.randint(2, 6)
    pool = min(w.u(0.2, 1.2) * GIB, 0.03 * w.total)
    wctx = 550 * MIB  # the largest a worker's context may be
    train, ctx, _warm, p = _trainer(w, w.u(0.55, 0.85), {}, workers * (wctx + pool))
    procs = [_Proc(w.pid(), p["t0"], math.inf, train, ctx, w.noise())]
    epoch = w.u(20 * MINUTE, 120 * MINUTE)
    ev = w.sub()
    s = p["t0"] + w.u(5, 30)
    spawns = 0
    while s < duration:
        stop = s + epoch * ev.uniform(0.95, 1.05)
        for _ in range(workers):
            c = ev.uniform(250, 550) * MIB
            # nvJPEG's pool keeps the largest image batch decoded so far.
            grow = ev.uniform(2, 10) * MINUTE
            jumps = sorted(ev.uniform(0, grow) for _ in range(5))
            levels = [ev.uniform(0.4, 0.6), *sorted(ev.uniform(0.6, 1.0) for _ in range(5))]
            levels[-1] = 1.0

            used = _worker(s, c, pool, jumps, levels)
            procs.append(_Proc(w.pid(), s, stop, used, c))
            spawns += 1
        s = stop + ev.uniform(2, 20)
    w.params.update(workers=float(workers), epoch_s=round(epoch, 1), spawned=float(spawns))
    return _Plan(procs, duration)


def _worker(start: float, ctx: float, pool: float, jumps: list[float], levels: list[float]) -> Fn:
    """A decode worker: its context, then a pool at its high-water mark since ``start``."""

    def used(t: float) -> float:
        age = t - start
        return ctx + pool * levels[bisect_right(jumps, age)] * _ramp(age / 3.0)

    return used


def _cudagraph_bucket_pools(w: _World) -> _Plan:
    duration = w.u(2 * HOUR, 20 * HOUR)
    w.set_interval(1, 6, duration)
    buckets = w.rng.randint(8, 24)
    raw = {"pools": w.u(0.05, 0.2), "capture": w.u(0.02, 0.06)}
    train, ctx, warm, p = _trainer(w, w.u(0.55, 0.85), raw)
    ev = w.sub()
    lengths = [2 ** (7 + k * 7 / buckets) for k in range(buckets)]  # 128 .. 16k tokens
    zipf = w.u(0.8, 1.6)
    freq = [1.0 / (k + 1) ** zipf for k in range(buckets)]
    ev.shuffle(freq)  # the commonest bucket is not always the shortest
    per_s = w.u(0.5, 4.0) / sum(freq)  # batches per second, over the frequencies
    first = sorted((warm + ev.expovariate(f * per_s), k) for k, f in enumerate(freq))
    times = [t for t, _ in first]
    unit = p["pools"] / sum(lengths)
    sizes = [unit * lengths[k] for _, k in first]
    pools = _Steps(times, sizes)
    captures = _Windows(*_non_overlapping(times, [ev.uniform(3, 20) for _ in times]))

    def used(t: float) -> float:
        v = train(t) + pools(t)
        return v + (p["capture"] if captures.index(t) >= 0 else 0.0)

    seen = sum(t < duration for t in times)
    w.params.update(buckets=float(buckets), seen=float(seen), zipf=round(zipf, 3))
    return _Plan([_Proc(w.pid(), p["t0"], math.inf, used, ctx, w.noise())], duration)


def _non_overlapping(starts: list[float], lengths: list[float]) -> tuple[list[float], list[float]]:
    """Windows at ``starts`` (sorted), each cut short where it would run into the next."""
    ends = [*starts[1:], math.inf]
    return starts, [
        max(0.5, min(n, b - a - 0.5)) for a, b, n in zip(starts, ends, lengths, strict=True)
    ]


def _periodic_weight_averaging(w: _World) -> _Plan:
    duration = w.u(6 * HOUR, 36 * HOUR)
    w.set_interval(2, 10, duration)
    k = w.rng.randint(2, 5)
    all_at_once = w.rng.random() < 0.6
    held = k + 1 if all_at_once else 2  # checkpoints on the GPU at once, with the result
    # An fp32 checkpoint is a fraction of the training state (weights, grads, Adam moments).
    train, ctx, warm, p = _trainer(w, w.u(0.55, 0.85), {"avg": held * w.u(0.03, 0.1)})
    ckpt = p["avg"] / held
    period = w.u(2 * HOUR, 6 * HOUR)
    ev = w.sub()
    runs = _every(ev, warm + period, period, (8 * MINUTE, 15 * MINUTE), duration)
    load_each = [ev.uniform(20, 90) for _ in runs.starts]

    def used(t: float) -> float:
        v = train(t)
        i = runs.index(t)
        if i < 0:
            return v
        into, each = t - runs.starts[i], load_each[i]
        if all_at_once:
            # Every checkpoint read in (one by one), stacked, and the mean beside them.
            loaded = min(float(k), into / each)
            return v + ckpt * (loaded + (1.0 if into >= k * each else 0.0))
        # One at a time into a running sum: the sum plus the checkpoint being read.
        return v + ckpt * (_ramp(into / each) + (1.0 if into < k * each else 0.0))

    w.params.update(checkpoints=float(k), all_at_once=str(all_at_once), every_s=round(period, 1))
    return _Plan([_Proc(w.pid(), p["t0"], math.inf, used, ctx, w.noise())], duration)


def _borrowed_gpu_guest_job(w: _World) -> _Plan:
    duration = w.u(4 * HOUR, 24 * HOUR)
    w.set_interval(1, 8, duration)
    guest = w.u(0.08, 0.25) * w.total
    gctx = w.u(250, 550) * MIB
    train, ctx, warm, p = _trainer(w, w.u(0.55, 0.85), {}, guest + gctx)
    procs = [_Proc(w.pid(), p["t0"], math.inf, train, ctx, w.noise())]
    visits = w.rng.randint(1, 4)
    ev = w.sub()
    t = warm + ev.uniform(10 * MINUTE, duration / (visits + 1))
    made = 0
    while made < visits and t < duration:
        climb = ev.uniform(5 * MINUTE, 40 * MINUTE)
        stay = climb + ev.uniform(20 * MINUTE, 3 * HOUR)
        size = guest * ev.uniform(0.6, 1.0)
        load_s = ev.uniform(10, 60)
        curve = ev.choice(("linear", "concave", "steps"))

        used = _guest(t, gctx, size, load_s, climb, curve)
        procs.append(_Proc(w.pid(), t, t + stay, used, gctx, w.noise(0.5)))
        made += 1
        t += stay + ev.uniform(10 * MINUTE, 4 * HOUR)
    w.params.update(visits=float(made), guest_mib=round(guest / MIB, 1))
    return _Plan(procs, duration)


def _guest(start: float, ctx: float, size: float, load_s: float, climb: float, curve: str) -> Fn:
    """A guest job: its context, weights (30 %) over ``load_s``, the rest over ``climb``."""

    def used(x: float) -> float:
        u = _ramp((x - start - load_s) / climb)
        if curve == "concave":
            u = 1.0 - (1.0 - u) ** 2
        elif curve == "steps":
            u = math.floor(u * 6.0) / 6.0
        return ctx + size * (0.3 * _ramp((x - start) / load_s) + 0.7 * u)

    return used


def _continual_task_heads(w: _World) -> _Plan:
    duration = w.u(6 * HOUR, 36 * HOUR)
    w.set_interval(2, 10, duration)
    tasks = w.rng.randint(3, 8)
    head = w.u(0.005, 0.025) * w.total  # a head with its gradients and Adam moments
    replay = w.u(0.002, 0.01) * w.total  # the task's slice of the replay buffer
    per_eval = w.u(0.003, 0.012) * w.total  # cached outputs of one task's evaluation
    grow = (tasks - 1) * (head + replay) + tasks * per_eval
    train, ctx, warm, p = _trainer(w, w.u(0.55, 0.85), {}, grow)
    gap = w.u(1 * HOUR, 5 * HOUR)
    ev = w.sub()
    times = [warm]
    for _ in range(tasks - 1):
        times.append(times[-1] + gap * ev.uniform(0.7, 1.3))
    every = w.u(20 * MINUTE, 60 * MINUTE)
    evals = _every(ev, warm + every, every, (1 * MINUTE, 6 * MINUTE), duration)

    def used(t: float) -> float:
        n = max(1, bisect_right(times, t))
        v = train(t) + (n - 1) * (head + replay)
        return v + (n * per_eval if evals.index(t) >= 0 else 0.0)

    w.params.update(tasks=float(tasks), task_every_s=round(gap, 1))
    return _Plan([_Proc(w.pid(), p["t0"], math.inf, used, ctx, w.noise())], duration)


def _nightly_offline_scoring(w: _World) -> _Plan:
    duration = w.u(24 * HOUR, 36 * HOUR)
    w.set_interval(3, 10, duration)
    ctx, t0, load_s = w.ctx(), w.u(0, 30), w.u(20, 90)
    raw = {
        "server": w.u(0.1, 0.25),
        "act": w.u(0.05, 0.15),
        "batch_model": w.u(0.15, 0.3),
        "batch_act": w.u(0.08, 0.2),
    }
    p = w.fit(w.u(0.55, 0.85), ctx, raw)
    load = _load(w.sub(), duration + HOUR, 24 * HOUR)
    first = w.u(1 * HOUR, 20 * HOUR)
    ev = w.sub()
    runs = [(first + d * 24 * HOUR, ev.uniform(1 * HOUR, 3 * HOUR)) for d in range(2)]
    runs = [(s, n) for s, n in runs if s < duration]
    loads = [ev.uniform(60, 180) for _ in runs]
    base = _loader(ctx, p["server"], t0, load_s)
    ready = t0 + load_s + w.u(5, 30)

    def used(t: float) -> float:
        v = base(t) + (p["act"] * load(t) if t >= ready else 0.0)
        for (s, n), ld in zip(runs, loads, strict=True):
            if s <= t < s + n:
                v += p["batch_model"] * _ramp((t - s) / ld)
                v += p["batch_act"] * _ramp((t - s - ld) / 120.0)
        return v

    w.params.update(first_run_s=round(first, 1), runs=float(len(runs)))
    return _Plan([_Proc(w.pid(), t0, math.inf, used, ctx, w.noise())], duration)


def _elastic_relaunch_after_hang(w: _World) -> _Plan:
    duration = w.u(3 * HOUR, 20 * HOUR)
    w.set_interval(1, 8, duration)
    ctx, t0, load_s = w.ctx(), w.u(0, 30), w.u(20, 120)
    p = w.fit(w.u(0.55, 0.85), ctx, {"model": w.u(0.25, 0.45), "act": w.u(0.06, 0.18)})
    restore = w.u(0.1, 0.3) * p["model"]  # the checkpoint's optimizer state, staged on the GPU
    p["model"] -= restore  # so the relaunch's staging fits the drawn peak
    hangs = w.rng.randint(1, 2)
    ev = w.sub()
    procs: list[_Proc] = []
    start, c = t0, ctx
    hung_at: list[float] = []
    for h in range(hangs + 1):
        warm = start + load_s + ev.uniform(10, 90)
        base = _loader(c, p["model"], start, load_s)
        relaunch = h > 0

        def used(t: float, base: Fn = base, warm: float = warm, relaunch: bool = relaunch) -> float:
            v = base(t) + p["act"] * _ramp((t - warm + 20.0) / 20.0)
            if relaunch:  # the restored optimizer state, copied in and freed
                v += restore * (1.0 if warm - 60.0 <= t < warm + 15.0 else 0.0)
            return v

        if h == hangs:
            procs.append(_Proc(w.pid(), start, math.inf, used, c, w.noise()))
            break
        hang = start + ev.uniform(1 * HOUR, 8 * HOUR) * (0.5 if h else 1.0)
        if hang > duration:
            procs.append(_Proc(w.pid(), start, math.inf, used, c, w.noise()))
            break
        timeout = ev.uniform(10 * MINUTE, 30 * MINUTE)
        teardown = ev.uniform(5, 60)
        kill = hang + timeout
        hung_at.append(hang)
        procs.append(_Proc(w.pid(), start, kill + teardown, used, c, w.noise()))
        # The elastic agent restarts the worker once the killed one is gone.
        start, c = kill + teardown + ev.uniform(1, 20), ev.uniform(250, 550) * MIB
        load_s = ev.uniform(20, 120)
    w.params.update(relaunches=float(len(hung_at)))
    return _Plan(procs, max(duration, start + HOUR))


def _gpu_shard_cache_lru(w: _World) -> _Plan:
    duration = w.u(3 * HOUR, 24 * HOUR)
    w.set_interval(1, 8, duration)
    shard_frac = w.u(0.005, 0.03)
    cap_frac = w.u(0.1, 0.35)
    slots = max(3, int(cap_frac / shard_frac))
    train, ctx, warm, p = _trainer(w, w.u(0.55, 0.85), {"cache": (slots + 1) * shard_frac})
    shard = p["cache"] / (slots + 1)
    epoch = min(w.u(30 * MINUTE, 4 * HOUR), 0.3 * duration)
    shards = int(slots * w.u(0.7, 2.5))  # the dataset may fit the cache, or not
    ev = w.sub()
    # First epoch: every shard is new; later epochs: shards the LRU dropped come back.
    loads: list[float] = []
    t = warm
    while t < duration:
        gap = epoch / shards * ev.uniform(0.5, 1.5)
        t += gap
        loads.append(t)
    swap = w.u(2, 20)

    def used(x: float) -> float:
        n = bisect_right(loads, x)
        if n <= min(slots, shards):
            return train(x) + shard * n
        if shards <= slots:
            return train(x) + shard * shards
        extra = 1 if x < loads[n - 1] + swap else 0
        return train(x) + shard * (slots + extra)

    w.params.update(slots=float(slots), shards=float(shards), epoch_s=round(epoch, 1))
    return _Plan([_Proc(w.pid(), p["t0"], math.inf, used, ctx, w.noise())], duration)


def _tf_allow_growth_full(w: _World) -> _Plan:
    duration = w.u(2 * HOUR, 16 * HOUR)
    w.set_interval(1, 6, duration)
    ctx, t0 = w.ctx(), w.u(0, 30)
    target = w.u(0.915, 0.965)
    w.params["peak_frac"] = round(target, 4)
    held = target * w.total - w.other - ctx
    grow = w.u(3 * MINUTE, 15 * MINUTE)
    ev = w.sub()
    region = w.u(256, 1024) * MIB
    times, sizes = [], []
    have = 0.0
    t = t0 + w.u(5, 30)
    # Each extension at least doubles what the BFC allocator holds, until the last fits.
    while have < held:
        size = min(max(region, have), held - have)
        times.append(t)
        sizes.append(size)
        have += size
        t += ev.uniform(0.3, 1.0) * grow / 6.0
    regions = _Steps(times, sizes)

    def used(x: float) -> float:
        return ctx + regions(x)

    w.params.update(regions=float(len(times)), target_frac=round(target, 4))
    return _Plan([_Proc(w.pid(), t0, math.inf, used, ctx, w.noise(0.5))], duration)


def _recsys_embedding_full(w: _World) -> _Plan:
    duration = w.u(2 * HOUR, 20 * HOUR)
    w.set_interval(1, 6, duration)
    ctx, t0, load_s = w.ctx(), w.u(0, 30), w.u(60, 240)
    floor = w.u(0.895, 0.925)
    w.params["peak_frac"] = round(min(floor + 0.05, 0.97), 4)
    tables = floor * w.total - w.other - ctx
    buffers = w.u(0.005, 0.03) * w.total
    ev = w.sub()
    step = 20.0
    sizes: list[float] = []
    for _ in range(int(duration / step) + 2):
        x = buffers * ev.lognormvariate(0.0, 0.35)
        if ev.random() < 0.004:  # a long-tail batch of very active users
            x = ev.uniform(0.03, 0.05) * w.total
        sizes.append(min(x, 0.97 * w.total - w.other - ctx - tables))
    batch = _Grid(sizes, step)
    base = _loader(ctx, tables, t0, load_s)
    warm = t0 + load_s + w.u(10, 60)

    def used(t: float) -> float:
        return base(t) + (batch(t) if t >= warm else 0.0)

    w.params.update(floor_frac=round(floor, 4))
    return _Plan([_Proc(w.pid(), t0, math.inf, used, ctx, w.noise())], duration)


# --- leaks -------------------------------------------------------------------------------------


def _leak_plan(
    w: _World,
    procs: list[_Proc],
    start: float,
    oom_after: float,
    pid: int | None = None,
    overshoot: float = 0.0,
) -> _Plan:
    w.params.update(leak_start_s=round(start, 3), oom_after_s=round(oom_after, 3))
    return _Plan(procs, start + 1.5 * oom_after, start, oom_after, pid, overshoot)


def _step_stats_retained(w: _World) -> _Plan:
    oom_after = w.u(8 * HOUR, 24 * HOUR)
    epoch = w.u(30 * MINUTE, 2 * HOUR)
    late = w.rng.random() < 0.5
    start_epochs = w.rng.randint(2, 4) if late else 0
    w.set_interval(3, 10, start_epochs * epoch + 1.3 * oom_after + 2 * MINUTE)
    train, ctx, warm, p = _trainer(w, w.u(0.4, 0.7), {"eval": w.u(0.02, 0.08)})
    start = warm + start_epochs * epoch
    horizon = start + 4 * oom_after
    evals = _every(w.sub(), warm + epoch, epoch, (2 * MINUTE, 8 * MINUTE), horizon)
    rate = _wander(w.sub(), horizon, 10 * MINUTE, 0.2)
    segment = w.rng.choice((2, 20)) * MIB
    proc = _Proc(w.pid(), p["t0"], math.inf, _with_bumps(train, evals, p["eval"]), ctx, w.noise())
    proc.leak = _integral_shape(rate, start, oom_after)
    proc.grain = segment
    w.params.update(segment_mib=float(segment // MIB), epoch_s=round(epoch, 1))
    return _leak_plan(w, [proc], start, oom_after)


def _rotary_table_per_shape(w: _World) -> _Plan:
    target = w.u(30 * MINUTE, 6 * HOUR)
    ctx, t0, load_s = w.ctx(), w.u(0, 30), w.u(20, 120)
    p = w.fit(w.u(0.4, 0.7), ctx, {"weights": w.u(0.25, 0.45), "kv": w.u(0.08, 0.2)})
    ready = t0 + load_s + w.u(5, 30)
    w.set_interval(1, 5, ready + 1.5 * target + 5 * MINUTE)
    horizon = ready + 5 * target + HOUR
    load = _load(w.sub(), horizon, w.u(3 * HOUR, 24 * HOUR))
    ev = w.sub()
    lam = w.u(0.01, 0.2)  # new shapes per second at full load, at first
    # Shapes seen before new ones come half as often: fewer than the OOM takes, or more.
    n0 = lam * 0.45 * target / w.u(0.5, 2.0)
    times: list[float] = []
    sizes: list[float] = []
    t = ready
    while t < horizon:
        t += ev.expovariate(lam)
        if ev.random() < load(t) / (1.0 + len(times) / n0):
            times.append(t)
            sizes.append(math.exp(ev.uniform(0.0, math.log(64.0))))
    start = times[0]
    # The cache runs out at a busy moment: the busiest near the drawn time.
    lo, hi = max(30 * MINUTE, 0.8 * target), min(6 * HOUR, 1.15 * target)
    oom_after = max(
        (lo + i * 60.0 for i in range(int((hi - lo) / 60.0) + 1)), key=lambda a: load(start + a)
    )
    steps = _Steps(times, sizes)
    base = _loader(ctx, p["weights"], t0, load_s)

    def used(x: float) -> float:
        return base(x) + (p["kv"] * load(x) if x >= ready else 0.0)

    proc = _Proc(w.pid(), t0, math.inf, used, ctx, w.noise())
    proc.leak = _step_shape(steps, start + oom_after)
    w.params.update(new_shapes_per_s=round(lam, 4), halving_count=round(n0, 1))
    plan = _leak_plan(w, [proc], start, oom_after)
    plan.window = 0.0  # the busiest moment is the one to fill the card
    return plan


def _hook_stack_per_epoch(w: _World) -> _Plan:
    target = w.u(2 * HOUR, 12 * HOUR)
    epochs = w.rng.randint(6, 20)
    epoch = target / (epochs - 1)  # the first re-registration starts the leak
    w.set_interval(2, 10, (epochs + 3) * epoch)
    train, ctx, warm, p = _trainer(w, w.u(0.4, 0.7), {"val": w.u(0.03, 0.1)})
    ev = w.sub()
    ends = [warm]
    while len(ends) < 4 * epochs + 2:
        ends.append(ends[-1] + epoch * ev.uniform(0.95, 1.05))
    val_len = min(epoch / 4, w.u(2 * MINUTE, 10 * MINUTE))
    vals = _Windows([e - val_len for e in ends[1:]], [val_len] * (len(ends) - 1))
    growth = w.u(0.1, 1.0)
    # The j-th re-registration keeps more than the one before: it wraps all of them.
    times = ends[1:]
    sizes = [1.0 + growth * j for j in range(len(times))]
    start = times[0]
    oom_after = times[epochs - 1] - start
    proc = _Proc(w.pid(), p["t0"], math.inf, _with_bumps(train, vals, p["val"]), ctx, w.noise())
    proc.leak = _step_shape(_Steps(times, sizes), start + oom_after)
    w.params.update(epoch_s=round(epoch, 1), epochs_to_oom=float(epochs), growth=round(growth, 3))
    return _leak_plan(w, [proc], start, oom_after, overshoot=w.u(0.005, 0.02))


def _debug_flag_flip_leak(w: _World) -> _Plan:
    oom_after = w.u(3 * HOUR, 12 * HOUR)
    flip = w.u(2 * HOUR, 10 * HOUR)
    w.set_interval(2, 10, flip + 1.3 * oom_after + 5 * MINUTE)
    train, ctx, warm, p = _trainer(w, w.u(0.4, 0.7), {"probes": w.u(0.02, 0.06)})
    flip = max(flip, warm + MINUTE)
    start = flip + w.u(0, 5 * MINUTE)
    rate = _wander(w.sub(), start + 5 * oom_after, 10 * MINUTE, 0.25)

    def used(t: float) -> float:
        return train(t) + (p["probes"] if t >= flip else 0.0)

    proc = _Proc(w.pid(), p["t0"], math.inf, used, ctx, w.noise())
    proc.leak = _integral_shape(rate, start, oom_after)
    w.params.update(flip_s=round(flip, 1))
    return _leak_plan(w, [proc], start, oom_after)


def _mps_rank_bucket_rebuild_leak(w: _World) -> _Plan:
    target = w.u(1 * HOUR, 8 * HOUR)
    ranks = w.rng.randint(4, 8)
    t0, load_s = w.u(0, 30), w.u(20, 120)
    ctxs = [w.ctx() for _ in range(ranks)]
    raw = {"model": w.u(0.25, 0.45), "act": w.u(0.06, 0.15), "buckets": w.u(0.02, 0.06)}
    p = {k: v / ranks for k, v in w.fit(w.u(0.4, 0.7), sum(ctxs), raw).items()}
    warm = t0 + load_s + w.u(10, 90)
    period = min(w.u(5 * MINUTE, 20 * MINUTE), target / 8)
    first = warm + w.u(10 * MINUTE, 60 * MINUTE)
    w.set_interval(1, 6, first + 1.3 * target + period)
    ev = w.sub()
    times = [first]
    while times[-1] < first + 5 * target:
        times.append(times[-1] + period * ev.uniform(0.7, 1.3))
    sizes = [ev.uniform(0.6, 1.4) for _ in times]  # how many buckets the rebuild made
    k = min(range(len(times)), key=lambda i: abs(times[i] - first - target))
    oom_after = times[k] - first
    leaky = w.rng.randrange(ranks)
    procs: list[_Proc] = []
    for r, ctx in enumerate(ctxs):
        base = _loader(ctx, p["model"], t0 + r * 0.7, load_s)

        def used(t: float, base: Fn = base) -> float:
            return base(t) + (p["act"] + p["buckets"] if t >= warm else 0.0)

        procs.append(_Proc(w.pid(), t0 + r * 0.7, math.inf, used, ctx, w.noise(0.5)))
    procs[leaky].leak = _step_shape(_Steps(times, sizes), first + oom_after)
    w.params.update(ranks=float(ranks), leaky_rank=float(leaky), rebuild_s=round(period, 1))
    return _leak_plan(w, procs, first, oom_after, procs[leaky].pid, overshoot=w.u(0.005, 0.015))


def _fallback_path_chunks(w: _World) -> _Plan:
    target = w.u(2 * HOUR, 14 * HOUR)
    chunks = w.rng.randint(8, 25)
    train, ctx, warm, p = _trainer(w, w.u(0.4, 0.7), {})
    ev = w.sub()
    shard = w.u(20 * MINUTE, 60 * MINUTE)
    mult = [0.0 if ev.random() < 0.5 else ev.lognormvariate(0.0, 0.7) for _ in range(2000)]
    mean = sum(mult) / len(mult)
    rate = chunks / (target * max(mean, 0.05))
    times: list[float] = []
    lengths: list[float] = []
    sizes: list[float] = []
    t = warm
    horizon = warm + 6 * target
    while t < horizon and len(mult) > int((t - warm) / shard):
        t += ev.expovariate(rate * 4.0)
        # Thinning: the path only runs on shards with over-long inputs.
        if ev.random() < mult[int((t - warm) / shard)] / 4.0:
            n = ev.uniform(10, 60)
            if times and t < times[-1] + lengths[-1]:
                continue
            times.append(t)
            lengths.append(n)
            sizes.append(ev.lognormvariate(0.0, 0.5))
    cum = [0.0]
    for s in sizes:
        cum.append(cum[-1] + s)
    start = times[0]
    k = min(range(len(times)), key=lambda i: abs(times[i] - start - target))
    k = max(k, min(7, len(times) - 1))
    oom_after = times[k] + lengths[k] - start
    w.set_interval(2, 10, start + 1.3 * oom_after + 5 * MINUTE)

    def held(x: float) -> float:
        i = bisect_right(times, x) - 1
        if i < 0:
            return 0.0
        return cum[i] + sizes[i] * _ramp((x - times[i]) / lengths[i])

    ref = held(start + oom_after)

    def shape(x: float) -> float:
        return held(x) / ref

    proc = _Proc(w.pid(), p["t0"], math.inf, train, ctx, w.noise(), shape)
    w.params.update(shard_s=round(shard, 1), chunks_to_oom=float(k + 1))
    return _leak_plan(w, [proc], start, oom_after, overshoot=w.u(0.005, 0.015))


def _pinned_segments_under_sawtooth(w: _World) -> _Plan:
    oom_after = w.u(1 * HOUR, 10 * HOUR)
    period = w.u(1 * MINUTE, 10 * MINUTE)
    ctx, t0, load_s = w.ctx(), w.u(0, 30), w.u(20, 120)
    p = w.fit(w.u(0.4, 0.7), ctx, {"model": w.u(0.2, 0.4), "tooth": w.u(0.1, 0.3)})
    warm = t0 + load_s + w.u(10, 60)
    start = warm + w.u(0, 2 * HOUR)
    w.set_interval(1, 6, start + 1.3 * oom_after)
    tooth = min(p["tooth"], 0.3 * w.total)
    floor = p["tooth"] - tooth
    ev = w.sub()
    ends = [warm]
    while ends[-1] < start + 5 * oom_after:
        ends.append(ends[-1] + period * ev.uniform(0.85, 1.15))
    shape_pow = w.u(0.4, 1.5)  # how the fragmentation regrows within a cycle
    pinned = [t for t in ends if t >= start]
    counts = [float(ev.randint(0, 4)) for _ in pinned]
    counts[0] = max(counts[0], 1.0)
    base = _loader(ctx, p["model"], t0, load_s)

    def used(t: float) -> float:
        if t < warm:
            return base(t)
        i = bisect_right(ends, t) - 1
        frac = (t - ends[i]) / (ends[i + 1] - ends[i]) if i + 1 < len(ends) else 0.0
        return float(base(t) + floor + tooth * frac**shape_pow)

    proc = _Proc(w.pid(), t0, math.inf, used, ctx, w.noise())
    proc.leak = _step_shape(_Steps(pinned, counts), start + oom_after)
    proc.grain = 20 * MIB  # whole large-pool segments
    w.params.update(period_s=round(period, 1), tooth_frac=round(tooth / w.total, 4))
    return _leak_plan(w, [proc], pinned[0], oom_after)


def _daily_wave_hidden_leak(w: _World) -> _Plan:
    target = w.u(10 * HOUR, 30 * HOUR)
    start = w.u(10 * MINUTE, 3 * HOUR)
    w.set_interval(2, 10, start + 1.3 * (target + 12 * HOUR))
    ctx, t0, load_s = w.ctx(), w.u(0, 30), w.u(30, 150)
    wave = w.u(0.1, 0.25)
    p = w.fit(w.u(0.4, 0.7), ctx, {"weights": w.u(0.2, 0.4), "kv": wave / 0.8})
    load = _load(w.sub(), start + 5 * (target + 12 * HOUR), 24 * HOUR)
    ready = t0 + load_s + w.u(5, 30)
    start = max(start, ready)
    # A leak under a daily wave runs out at a busy hour: the busiest within half a day
    # of the drawn time (and inside its range) is when the device is to reach the card.
    lo, hi = max(10 * HOUR, target - 12 * HOUR), min(30 * HOUR, target + 12 * HOUR)
    grid = [lo + i * 5 * MINUTE for i in range(int((hi - lo) / (5 * MINUTE)) + 1)]
    oom_after = max(grid, key=lambda a: load(start + a))
    base = _loader(ctx, p["weights"], t0, load_s)

    def used(t: float) -> float:
        return base(t) + (p["kv"] * load(t) if t >= ready else 0.0)

    proc = _Proc(w.pid(), t0, math.inf, used, ctx, w.noise())
    proc.leak = _integral_shape(load, start, oom_after, w.u(0.3, 0.7))
    w.params.update(drawn_oom_after_s=round(target, 1))
    plan = _leak_plan(w, [proc], start, oom_after)
    plan.window = 0.0  # the busiest hour is the one to fill the card
    return plan


def _gpu_dedup_table_growth(w: _World) -> _Plan:
    oom_after = w.u(1 * HOUR, 12 * HOUR)
    start = w.u(5 * MINUTE, 90 * MINUTE)
    w.set_interval(1, 8, start + 1.3 * oom_after)
    train, ctx, warm, p = _trainer(w, w.u(0.4, 0.7), {})
    start = max(start, warm)
    power = w.u(0.45, 0.6)
    table_share = w.u(0.2, 0.5)  # of the held memory at the OOM, the slot arrays' share
    first_cap = w.u(1e-4, 1e-3)  # the first table, in units of the entries at the OOM

    def entries(t: float) -> float:
        return ((t - start) / oom_after) ** power if t > start else 0.0

    def held(t: float) -> float:
        n = entries(t)
        if n <= 0.0:
            return 0.0
        cap = first_cap
        while n > 0.5 * cap:
            cap *= 2.0
        # The live table and the previous one, freed into the allocator's cache.
        return (1.0 - table_share) * n + table_share * 1.5 * cap

    ref = held(start + oom_after)

    def shape(t: float) -> float:
        return held(t) / ref

    proc = _Proc(w.pid(), p["t0"], math.inf, train, ctx, w.noise(), shape)
    w.params.update(power=round(power, 3), table_share=round(table_share, 3))
    return _leak_plan(w, [proc], start, oom_after)


def _exception_retry_holds_batch(w: _World) -> _Plan:
    oom_after = w.u(2 * MINUTE, 6 * MINUTE)
    start = w.u(10 * MINUTE, 6 * HOUR)
    w.set_interval(1, 2, start + 1.3 * oom_after)
    train, ctx, warm, p = _trainer(w, w.u(0.4, 0.7), {})
    start = max(start, warm + MINUTE)
    retry = w.u(0.1, 1.0)
    count = oom_after / retry

    def shape(t: float) -> float:
        return 0.0 if t < start else (math.floor((t - start) / retry) + 1) / count

    proc = _Proc(w.pid(), p["t0"], math.inf, train, ctx, w.noise(), shape)
    w.params.update(retry_s=round(retry, 3))
    return _leak_plan(w, [proc], start, oom_after)


MAKERS: dict[str, Callable[[_World], _Plan]] = {
    "gradcache_batch_rampup": _gradcache_batch_rampup,
    "capacity_factor_anneal": _capacity_factor_anneal,
    "gpu_decode_workers_respawn": _gpu_decode_workers_respawn,
    "cudagraph_bucket_pools": _cudagraph_bucket_pools,
    "periodic_weight_averaging": _periodic_weight_averaging,
    "borrowed_gpu_guest_job": _borrowed_gpu_guest_job,
    "continual_task_heads": _continual_task_heads,
    "nightly_offline_scoring": _nightly_offline_scoring,
    "elastic_relaunch_after_hang": _elastic_relaunch_after_hang,
    "gpu_shard_cache_lru": _gpu_shard_cache_lru,
    "tf_allow_growth_full": _tf_allow_growth_full,
    "recsys_embedding_full": _recsys_embedding_full,
    "step_stats_retained": _step_stats_retained,
    "rotary_table_per_shape": _rotary_table_per_shape,
    "hook_stack_per_epoch": _hook_stack_per_epoch,
    "debug_flag_flip_leak": _debug_flag_flip_leak,
    "mps_rank_bucket_rebuild_leak": _mps_rank_bucket_rebuild_leak,
    "fallback_path_chunks": _fallback_path_chunks,
    "pinned_segments_under_sawtooth": _pinned_segments_under_sawtooth,
    "daily_wave_hidden_leak": _daily_wave_hidden_leak,
    "gpu_dedup_table_growth": _gpu_dedup_table_growth,
    "exception_retry_holds_batch": _exception_retry_holds_batch,
}


def _amplitude(w: _World, plan: _Plan) -> float:
    """Leak bytes at the drawn OOM time: what the healthy part leaves free near it."""
    assert plan.leak_start is not None
    assert plan.oom_after is not None
    ref = 0.0
    for i in range(201):
        t = plan.leak_start + plan.oom_after * (1.0 - plan.window + plan.window * i / 200)
        ref = max(ref, sum(p.healthy(t) for p in plan.procs if p.start <= t < p.stop))
    return w.total - w.other - ref + plan.overshoot * w.total


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

    A leak trace ends at the poll where the device first reaches the card's total;
    its twin runs on to ``until`` (the leak trace's OOM, see ``twin``) or, without
    it, to 1.5 times the drawn time to the OOM after the leak start.
    """
    maker = MAKERS.get(scenario)
    if maker is None:
        raise ValueError(f"unknown scenario {scenario!r}")
    w = _World(random.Random(seed), scenario)
    plan = maker(w)
    is_leak = plan.leak_start is not None
    amp = _amplitude(w, plan) if is_leak else 0.0
    total, quantum, other = w.total, w.quantum, w.other
    w.params.update(
        noise=w.noise_kind,
        quantum_mib=float(quantum // MIB),
        rows=w.rows,
        interval_s=round(w.interval, 3),
        total_mib=float(total // MIB),
        other_mib=float(other // MIB),
    )
    label = Label(
        name=name or f"{scenario}-{seed}",
        scenario=scenario,
        seed=seed,
        leak=is_leak,
        pid=plan.leak_pid,
        leak_start_t=round(plan.leak_start, 3) if plan.leak_start is not None else None,
        near_oom_expected=scenario in NEAR_FULL,
        card_gib=w.card_gib,
        interval_s=round(w.interval, 3),
        device_only=w.rows == "never",
        params=w.params,
    )
    end = plan.duration
    if is_leak and with_leak:
        assert plan.leak_start is not None
        assert plan.oom_after is not None
        end = plan.leak_start + 4 * plan.oom_after  # it runs out long before
    if until is not None:
        end = min(end, until)
    clock = random.Random(w.poll_seed)
    procs = plan.procs
    lines = [HEADER]
    t = clock.uniform(0.0, min(w.interval, 5.0))
    last = 0.0
    emitted = 0
    leaked_at_oom = 0.0
    while True:
        now = round(t, 3)
        if now > end:
            break
        if clock.random() >= w.p_miss:
            dt = now - last
            last = now
            rows: list[tuple[int, int]] = []
            used = other
            leaked = 0.0
            leaky = -1
            for p in procs:
                # Noise is drawn for every process at every poll, alive or not, so
                # that no process's start or end shifts another's stream.
                wobble = p.noise(dt) if p.noise is not None else 0.0
                if not p.start <= now < p.stop:
                    continue
                v = max(p.healthy(now) + wobble, p.floor)
                if with_leak and p.leak is not None:
                    extra = p.leak(now) * amp
                    if p.grain and extra > 0.0:
                        extra = math.ceil(extra / p.grain) * p.grain
                    if extra > 0.0:
                        leaky = len(rows)
                        leaked += extra
                        v += extra
                q = round(v / quantum) * quantum
                rows.append((p.pid, q))
                used += q
            oom = used >= total
            if oom and (leaky < 0 or not (is_leak and with_leak)):
                leaky = max(range(len(rows)), key=lambda i: rows[i][1])
            if oom:
                # A leak's OOM poll shows the card full; a healthy trace never gets there.
                cap = total if is_leak and with_leak else total - quantum
                pid, q = rows[leaky]
                rows[leaky] = (pid, q - (used - cap))
                used = cap
            lines.append(f"{_fmt_t(now)},0,,{used},{total}")
            if w.rows != "never" and emitted % w.every == 0:
                lines.extend(f"{_fmt_t(now)},0,{pid},{q}," for pid, q in rows)
            emitted += 1
            if oom and is_leak and with_leak:
                label.oom_t = now
                leaked_at_oom = leaked
                break
        gap = w.interval * clock.uniform(1.0 - w.jitter, 1.0 + w.jitter)
        if clock.random() < w.p_stall:
            gap += clock.uniform(15.0, 150.0)
        t += gap
    label.duration_s = last
    if is_leak and label.oom_t is not None and label.leak_start_t is not None:
        label.rate_bytes_per_s = leaked_at_oom / max(label.oom_t - label.leak_start_t, 1e-3)
        w.params["leaked_bytes_at_oom"] = float(round(leaked_at_oom))
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
        yield build(scenario, seed * 1_000_081 + i, f"{i:04d}-{scenario}")


def main(argv: list[str] | None = None) -> int:
    """Write traces and labels.jsonl to a folder."""
    return write_traces(argv, (__doc__ or "").split("\n\n")[0], SCENARIOS, generate)


if __name__ == "__main__":
    sys.exit(main())
