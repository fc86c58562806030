"""Sealed fifth held-out set: labelled GPU memory traces of jobs no other generator names.

This set is SEALED: the detector's score on it is reported, never tuned
against. Nothing in the detector, its policy or its docs was read to write it,
and nothing here should be changed to make a score better. It shares only the
trace format, the ``Label`` type and the command line with ``scenarios.py``.

    python benchmarks/sealed_scenarios.py --out traces/ --count 44 --seed 1

writes ``NAME.csv`` traces and ``labels.jsonl``.

Sampling model
--------------
Every draw comes from one ``random.Random(seed)``, made up front: the
scenario's parameters first, then seeds for the event streams, the poll clock
and each process's noise. The leak is added on top of the healthy memory and
never changes a draw, so ``build(..., with_leak=False)`` (the twin) is the
same trace, byte for byte, up to the leak start.

* Card: T4 16, V100 16/32, A10 24, RTX 4090 24, A100 40/80, L40S 48,
  A6000 48, H100 80, H100 NVL 94 or H200 141 GiB, with the total NVML reports
  (a little under nominal: 93.75 to 99.6 %). Sizes are drawn as fractions of
  the card, so any card fits any scenario (a few need 24 GiB or more).
* Device ``used`` = the sum of the processes on the GPU + a driver/other
  baseline of 150-450 MiB. Each process has a CUDA context of 250-550 MiB
  and loads its weights over tens of seconds when it starts; a process that
  exits leaves the process rows.
* Quantum 1, 2, 4 or 20 MiB (each process's ``used`` is a multiple).
* Noise on the main process: ``gauss`` (0.05-0.3 % of the card per poll),
  ``spikes`` (0.5-2.5 % of the card for 1-3 polls, 0.2-2 % of polls),
  ``drift`` (an Ornstein-Uhlenbeck wander of 0.3-1.2 %, bounded, 10 min-2 h
  memory) or ``flicker`` (allocator segments switching on and off); the
  ``slow_leak_heavy_noise`` scenario has its own ``heavy`` mix of all three.
* Polls every 1-10 s (drawn per scenario, coarser when a trace is long, so a
  trace has at most ~30,000 polls), 3 % jitter, 0-1 % of polls missed and
  rare 20-120 s stalls of the poller. Times are rounded to ms.
* Process rows every poll (50 %), every 2-6 polls (30 %) or never (20 %,
  device only; never for the multi-process scenarios, whose leaks name a pid).
* Healthy jobs are sized to a drawn peak of 55-85 % of the card (the sum of
  every part at its largest), stay under ~92 % with noise and never reach the
  card; the near-full ones live at 90-97 %. A leak scenario's healthy part is
  sized to 45-72 %, and the leak is calibrated so the device reaches the card
  total (the OOM) a drawn ``oom_after_s`` after the leak starts; the trace ends
  at that poll, whose device ``used`` is exactly the total. Every leak is
  unbounded: left alone it would keep rising.

Healthy scenarios
-----------------
prefetch_to_device_loader
    Data-parallel rank whose loader prefetches 2-8 batches (0.4-2 % of the
    card each) onto the device on a side stream (``cudaMallocAsync``, so freed
    blocks go back): the queue level wanders, drains at each 15-90 min epoch
    boundary and refills. 1-14 h.
lora_adapter_swaps
    Multi-LoRA server: base model + request-dependent activations; adapters
    (0.5-3 % each) load on first use into an LRU of 4-12 slots; past the cap
    each new adapter loads before the oldest is evicted (one extra adapter for
    2-10 s). 2-24 h.
diffusion_periodic_sampling
    Diffusion training that, every 15-90 min, moves the EMA weights onto the
    GPU with the VAE decoder and samples images for 1-6 min, then moves them
    back and empties the cache. 3-24 h.
speculative_decoding_server
    Target + draft model server; KV blocks follow a daily wave of load with
    bursts; the draft length (2-8) retunes every 2-10 min and sizes the
    verification buffers. 1-18 h.
video_clip_lengths
    Video model fed clips of 8-128 frames (short ones likelier); the cache
    holds the high-water mark of the longest clip seen, which climbs in rarer
    steps towards the longest possible clip, and half the jobs empty the cache
    at each 20-120 min epoch (the climb starts again). 1-16 h.
oom_retry_smaller_batch
    A launcher that retries a job 1-3 times: each failing attempt climbs to
    93-97.5 % over 0.5-10 min and dies (its pid leaves), the next attempt
    (new pid, new context and load) runs with 60-80 % of the batch, until one
    fits and runs flat. 1-12 h.
distill_teacher_swap
    Student trainer (steady) plus a teacher process spawned every 20-90 min
    (new pid) that loads, labels a shard for 3-15 min and exits. 2-16 h.
shuffle_buffer_epochs
    GPU shuffle buffer filled in chunks over the first 5-25 min of each
    30-150 min epoch, held, and released at the epoch's end. 3-24 h.
triton_autotune_bursts
    Kernels autotuned on each of 5-40 new shapes, most early: each tuning run
    holds 2-10 % of the card in benchmark buffers for 5-60 s, and keeps a few
    MiB. 1-12 h.
colocated_daemon
    A training job sharing the GPU with a small CUDA daemon (0.2-1.5 GiB,
    restarted with a new pid every 1-6 h) and an eval cron job (new pid every
    45-120 min, for 3-15 min). 4-24 h.
zero_offload_streaming (near full)
    ZeRO-offload job streaming parameter partitions in and out: the device
    swings between 90.5-92.5 % and 94.5-96.5 % with the step. 1-12 h.
model_repository_full (near full)
    Inference server holding 3-6 models at 91-95 % of the card; every
    30-180 min one model version is unloaded for 5-30 s and reloaded. 2-24 h.

Leak scenarios (ranges of the drawn time from the leak start to the OOM)
-------------------------------------------------------------------------
growing_log_tensors (20 min-4 h)
    Every 5-60 s a tensor is kept for logging, each one larger than the last
    (the leak grows quadratically); periodic validation bumps.
stale_optimizer_per_stage (1-8 h)
    Progressive unfreezing (2-5 stages) rebuilds the optimizer each epoch and
    the old one stays referenced: a step per epoch (10-24 epochs to the OOM)
    sized by the parameters trainable at the time. The leak starts at the
    first rebuild; the twin's unfreezing growth stops after the last stage.
rank0_only_hook_leak (30 min-6 h, names the pid)
    2-4 ranks share the GPU (MPS) with synchronous evals; a debug hook keeps
    activations on one rank only: a linear leak whose rate varies +-30 % every
    5 min.
profiler_left_running (5 min-1 h)
    A profiler switched on by a config flag 2-60 min in and never stopped: a
    jump of 5-20 % of the leak at once, then a buffer chunk every 1/20-1/60 of
    the time to the OOM.
uncapped_replay_buffer (15 min-3 h)
    RL replay buffer on the GPU filled an episode (3-60 s of experience) at a
    time; its cap (25-50 % of the peak budget) is never applied. The twin
    stops at the cap; the leak starts at the first episode past it.
leak_paused_in_eval (1-10 h)
    Training keeps a little per step, evals (every 15-60 min, at most a quarter
    of the leak time, for 2-10 min, with their own bump) keep nothing: a
    linear leak with flat stretches.
sidecar_process_leak (2-12 h, names the pid)
    A healthy trainer shares the GPU with a sidecar service (0.2-1.5 GiB) that
    leaks at a rate of (0.2-0.5 + its request load).
slow_leak_heavy_noise (6-16 h)
    A slow linear leak (rate varying 0.5-1.5x every 10 min) under heavy noise.
leak_after_hot_reload (1-8 h)
    An inference server reloaded 20 min-3 h in (new weights loaded before the
    old are freed); the new config drops cache eviction, so from the end of
    the swap memory leaks at a rate of (0.3-0.6 + the request load).
adapter_eviction_leak (3-40 min)
    The LoRA server above with an eviction that never frees: the first 3-10
    adapters fit, then each new one (20-40 to the OOM) stays.
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
    "prefetch_to_device_loader",
    "lora_adapter_swaps",
    "diffusion_periodic_sampling",
    "speculative_decoding_server",
    "video_clip_lengths",
    "oom_retry_smaller_batch",
    "distill_teacher_swap",
    "shuffle_buffer_epochs",
    "triton_autotune_bursts",
    "colocated_daemon",
    "zero_offload_streaming",
    "model_repository_full",
)
LEAKS = (
    "growing_log_tensors",
    "stale_optimizer_per_stage",
    "rank0_only_hook_leak",
    "profiler_left_running",
    "uncapped_replay_buffer",
    "leak_paused_in_eval",
    "sidecar_process_leak",
    "slow_leak_heavy_noise",
    "leak_after_hot_reload",
    "adapter_eviction_leak",
)
SCENARIOS = HEALTHY + LEAKS
MULTI_PROCESS = (
    "distill_teacher_swap",
    "colocated_daemon",
    "rank0_only_hook_leak",
    "sidecar_process_leak",
)
NEAR_FULL = ("zero_offload_streaming", "model_repository_full")

CARDS = (
    # (nominal GiB, total MiB as NVML reports it)
    (16, 15360),  # T4
    (16, 16160),  # V100 16 GB
    (24, 23028),  # A10
    (24, 24564),  # RTX 4090
    (32, 32510),  # V100 32 GB
    (40, 40536),  # A100 40 GB
    (48, 46068),  # L40S
    (48, 49140),  # RTX A6000
    (80, 81559),  # H100 SXM
    (80, 81251),  # A100 80 GB
    (94, 95830),  # H100 NVL
    (141, 143771),  # H200
)
MIN_CARD_GIB = {"speculative_decoding_server": 24, "model_repository_full": 24}
QUANTA_MIB = (1, 2, 4, 20)
NOISES = ("gauss", "spikes", "drift", "flicker")
HEADER = "t,gpu,pid,used_bytes,total_bytes"

Fn = Callable[[float], float]


def _ramp(x: float) -> float:
    return 0.0 if x <= 0.0 else 1.0 if x >= 1.0 else x


class _Noise:
    """Per-poll noise of one process; its own random stream, so it never shifts another draw."""

    def __init__(self, rng: random.Random, kind: str, total: int, scale: float) -> None:
        self.rng = rng
        self.kind = kind
        self.sigma = total * rng.uniform(0.0005, 0.003) * scale
        self.spike = total * rng.uniform(0.005, 0.025) * scale
        self.p_spike = rng.uniform(0.002, 0.02)
        self.drift = total * rng.uniform(0.003, 0.012) * scale
        self.tau = rng.uniform(10 * MINUTE, 2 * HOUR)
        if kind == "heavy":
            self.sigma = total * rng.uniform(0.003, 0.007)
            self.spike = total * rng.uniform(0.01, 0.03)
            self.p_spike = rng.uniform(0.005, 0.02)
            self.drift = total * rng.uniform(0.005, 0.015)
        self.x = 0.0
        self.left = 0
        self.height = 0.0

    def _spikes(self) -> float:
        if self.left > 0:
            self.left -= 1
            return self.height
        if self.rng.random() < self.p_spike:
            self.left = self.rng.randint(0, 2)
            self.height = self.spike * self.rng.uniform(0.3, 1.0)
            return self.height
        return 0.0

    def _drift(self, dt: float) -> float:
        a = math.exp(-dt / self.tau)
        step = 0.5 * self.drift * math.sqrt(1.0 - a * a) * self.rng.gauss(0.0, 1.0)
        self.x = min(self.drift, max(-self.drift, a * self.x + step))
        return self.x

    def __call__(self, dt: float) -> float:
        gauss = self.rng.gauss
        if self.kind == "gauss":
            return gauss(0.0, self.sigma)
        if self.kind == "spikes":
            return gauss(0.0, self.sigma / 3.0) + self._spikes()
        if self.kind == "drift":
            return self._drift(dt) + gauss(0.0, self.sigma / 4.0)
        if self.kind == "flicker":
            if self.rng.random() < 0.03:
                self.x = self.rng.randint(-4, 4) * self.sigma
            return self.x + gauss(0.0, self.sigma / 5.0)
        return gauss(0.0, self.sigma) + self._spikes() + self._drift(dt)  # heavy


class _Windows:
    """Non-overlapping time windows: which one is active, and how much time they covered."""

    def __init__(self, starts: list[float], lengths: list[float]) -> None:
        self.starts = starts
        self.ends = [s + n for s, n in zip(starts, lengths, strict=True)]
        self.cum: list[float] = []
        covered = 0.0
        for n in lengths:
            self.cum.append(covered)
            covered += n

    def index(self, t: float) -> int:
        """The window holding ``t``, or -1."""
        i = bisect_right(self.starts, t) - 1
        return i if i >= 0 and t < self.ends[i] else -1

    def elapsed(self, t: float) -> float:
        """Seconds into the active window, or -1 outside every window."""
        i = self.index(t)
        return t - self.starts[i] if i >= 0 else -1.0

    def covered(self, t: float) -> float:
        """Seconds of windows before ``t``."""
        i = bisect_right(self.starts, t) - 1
        if i < 0:
            return 0.0
        return self.cum[i] + min(t, self.ends[i]) - self.starts[i]


def _periodic(
    rng: random.Random, first: float, period: float, length: tuple[float, float], until: float
) -> _Windows:
    """Windows roughly every ``period`` (+-15 %) from ``first``, each ``length`` long."""
    starts: list[float] = []
    lengths: list[float] = []
    s = first
    while s < until:
        n = rng.uniform(*length)
        starts.append(s)
        lengths.append(n)
        s += max(period * rng.uniform(0.85, 1.15), n + 1.0)
    return _Windows(starts, lengths)


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


def _load(rng: random.Random, until: float) -> _Grid:
    """Request load in [0.05, 1] on a 30 s grid: a daily-ish wave, bursts and a wander."""
    step = 30.0
    n = int(until / step) + 2
    mean = rng.uniform(0.35, 0.6)
    amp = rng.uniform(0.1, 0.3)
    period = rng.uniform(2 * HOUR, 12 * HOUR)
    phase = rng.uniform(0.0, 2.0 * math.pi)
    extra = [0.0] * n
    t = rng.expovariate(1.0 / rng.uniform(20 * MINUTE, 2 * HOUR))
    gap = rng.uniform(20 * MINUTE, 2 * HOUR)
    while t < until:
        height = rng.uniform(0.1, 0.35)
        for i in range(int(t / step), min(n, int((t + rng.uniform(60, 900)) / step) + 1)):
            extra[i] += height
        t += rng.expovariate(1.0 / gap)
    values: list[float] = []
    wander = 0.0
    for i in range(n):
        wander = 0.9 * wander + rng.gauss(0.0, 0.03)
        v = mean + amp * math.sin(2.0 * math.pi * i * step / period + phase) + wander + extra[i]
        values.append(min(1.0, max(0.05, v)))
    return _Grid(values, step)


def _rates(rng: random.Random, until: float, step: float, spread: float) -> _Grid:
    """A leak rate that changes every ``step`` by up to +-``spread``."""
    n = int(until / step) + 2
    return _Grid([rng.uniform(1.0 - spread, 1.0 + spread) for _ in range(n)], step)


def _cum_shape(grid: _Grid, start: float, after: float, floor: float = 0.0) -> Fn:
    """0 before ``start``, then the integral of ``floor + grid`` from ``start``, 1 at ``after``."""
    c0 = grid.integral(start)
    span = grid.integral(start + after) - c0 + floor * after

    def shape(t: float) -> float:
        return 0.0 if t < start else (grid.integral(t) - c0 + floor * (t - start)) / span

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
    """The leak on top of ``healthy``: bytes, or a shape (1.0 at the drawn OOM) when scaled."""
    scaled: bool = True


@dataclass
class _Plan:
    procs: list[_Proc]
    duration: float
    """Where the trace ends: the job's length, or where a leak's twin ends without ``until``."""
    leak_start: float | None = None
    oom_after: float | None = None
    leak_pid: int | None = None
    horizon: float = 0.0
    """Where a leak trace gives up if it never ran out (it always does before)."""


class _World:
    """The draws every scenario shares: card, baseline, quantum, noise, rows, poll clock."""

    def __init__(self, rng: random.Random, scenario: str) -> None:
        self.rng = rng
        cards = [c for c in CARDS if c[0] >= MIN_CARD_GIB.get(scenario, 0)]
        self.card_gib, total_mib = rng.choice(cards)
        self.total = total_mib * MIB
        self.quantum = rng.choice(QUANTA_MIB) * MIB
        self.other = round(rng.uniform(150, 450) * MIB / self.quantum) * self.quantum
        near = scenario in NEAR_FULL
        self.noise_kind = rng.choice(NOISES[:1] + NOISES[2:] if near else NOISES)
        self.noise_scale = 0.5 if near else 1.0
        if scenario == "slow_leak_heavy_noise":
            self.noise_kind = "heavy"
        roll = rng.random()
        self.every = 1 if roll < 0.5 else rng.randint(2, 6)
        self.rows = "every" if self.every == 1 else f"every_{self.every}"
        if roll >= 0.8 and scenario not in MULTI_PROCESS:
            self.rows = "never"
        self.p_miss = rng.choice((0.0, rng.uniform(0.001, 0.01)))
        self.p_stall = rng.uniform(0.0, 2e-4)
        self.poll_seed = rng.getrandbits(64)
        self.interval = 1.0
        self._pids: set[int] = set()
        self.params: dict[str, float | str] = {}

    def u(self, lo: float, hi: float) -> float:
        return self.rng.uniform(lo, hi)

    def pid(self) -> int:
        while True:
            pid = self.rng.randint(1000, 4_194_303)
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
    """CUDA context at ``t0``, then the weights loading over ``load_s``."""

    def used(t: float) -> float:
        return ctx + weights * _ramp((t - t0) / load_s)

    return used


# --- healthy -----------------------------------------------------------------------------------


def _prefetch_to_device_loader(w: _World) -> _Plan:
    duration = w.u(1 * HOUR, 14 * HOUR)
    w.set_interval(1, 6, duration)
    ctx, t0, load_s = w.ctx(), w.u(0, 30), w.u(20, 120)
    depth = w.rng.randint(2, 8)
    raw = {"model": w.u(0.25, 0.5), "act": w.u(0.08, 0.2), "queue": depth * w.u(0.004, 0.02)}
    parts = w.fit(w.u(0.55, 0.85), ctx, raw)
    model, act, batch = parts["model"], parts["act"], parts["queue"] / depth
    warm = t0 + load_s + w.u(10, 60)
    epoch, gap, tick = w.u(15 * MINUTE, 90 * MINUTE), w.u(20, 180), w.u(2, 10)
    ev = w.sub()
    levels: list[float] = []
    q = 0
    for i in range(int(duration / tick) + 2):
        t = i * tick
        if t < warm or (t - warm) % epoch > epoch - gap:
            q = 0
        else:
            q = min(depth, max(0, q + ev.choice((-1, 0, 1, 1))))
        levels.append(float(q))
    queue = _Grid(levels, tick)
    base = _loader(ctx, model, t0, load_s)

    def used(t: float) -> float:
        return base(t) + (act + batch * queue(t) if t >= warm else 0.0)

    w.params.update(depth=float(depth), epoch_s=round(epoch, 1), batch_mib=round(batch / MIB, 1))
    proc = _Proc(w.pid(), t0, math.inf, used, ctx, w.noise())
    return _Plan([proc], duration)


def _adapter_server(w: _World, leak: bool) -> _Plan:  # noqa: PLR0915 - one server, two variants
    """A multi-LoRA server; ``leak``: evicted adapters are never freed."""
    if leak:
        oom_after = w.u(3 * MINUTE, 40 * MINUTE)
        w.set_interval(1, 3, 20 * MINUTE + 1.3 * oom_after)
        peak = w.u(0.45, 0.65)
        slots = w.rng.randint(3, 10)
        to_oom = w.rng.randint(20, 40)
    else:
        oom_after = 0.0
        duration = w.u(2 * HOUR, 24 * HOUR)
        w.set_interval(1, 5, duration)
        peak = w.u(0.55, 0.85)
        slots = w.rng.randint(4, 12)
        to_oom = 0
    ctx, t0, load_s = w.ctx(), w.u(0, 30), w.u(20, 90)
    swap = w.u(2, 10)
    ready = t0 + load_s + w.u(5, 60)
    ev = w.sub()
    arrivals: list[float] = []
    t = ready
    if leak:
        # The first adapters arrive with the first requests; then new ones keep coming.
        for _ in range(slots):
            t += ev.uniform(5, 60)
            arrivals.append(t)
        start = arrivals[-1] + ev.uniform(5, 120)
        mean = oom_after / to_oom
        arrivals.append(start)
        duration = start + 1.5 * oom_after
        horizon = start + 4 * oom_after
        while t < horizon:
            t = arrivals[-1] + mean * ev.gammavariate(6.0, 1.0 / 6.0)
            arrivals.append(t)
    else:
        start = horizon = 0.0
        gap = w.u(30, 600)
        while t < duration:
            t += ev.expovariate(1.0 / gap) + swap
            arrivals.append(t)
    load = _load(w.sub(), (horizon if leak else duration) + HOUR)
    if leak:
        act_frac, model_frac = w.u(0.02, 0.06), w.u(0.3, 0.5)
        parts = w.fit(peak, ctx, {"model": model_frac, "act": act_frac})
        model, act = parts["model"], parts["act"]
        at_oom = bisect_right(arrivals, start + oom_after)
        ref = max(act * load(start + oom_after * (0.9 + 0.002 * i)) for i in range(101))
        size = (w.total - w.other - ctx - model - ref) / at_oom
    else:
        size_frac = w.u(0.005, 0.03)
        slots = max(2, min(slots, int(0.2 / size_frac)))
        raw = {"model": w.u(0.3, 0.55), "act": w.u(0.05, 0.15), "ad": (slots + 1) * size_frac}
        parts = w.fit(peak, ctx, raw)
        model, act, size = parts["model"], parts["act"], parts["ad"] / (slots + 1)
    base = _loader(ctx, model, t0, load_s)

    def held(t: float) -> tuple[int, int]:
        """(adapters loaded so far, adapters a working eviction keeps)."""
        n = bisect_right(arrivals, t)
        if n <= slots:
            return n, n
        return n, slots + (1 if t < arrivals[n - 1] + swap else 0)

    def used(t: float) -> float:
        return base(t) + size * held(t)[1] + (act * load(t) if t >= ready else 0.0)

    def leaked(t: float) -> float:
        n, kept = held(t)
        return size * (n - kept)

    w.params.update(slots=float(slots), adapter_mib=round(size / MIB, 1))
    proc = _Proc(w.pid(), t0, math.inf, used, ctx, w.noise())
    if not leak:
        return _Plan([proc], duration)
    proc.leak, proc.scaled = leaked, False
    w.params["adapters_to_oom"] = float(at_oom - slots)
    return _Plan([proc], duration, start, oom_after, None, horizon)


def _lora_adapter_swaps(w: _World) -> _Plan:
    return _adapter_server(w, leak=False)


def _diffusion_periodic_sampling(w: _World) -> _Plan:
    duration = w.u(3 * HOUR, 24 * HOUR)
    w.set_interval(2, 10, duration)
    ctx, t0, load_s = w.ctx(), w.u(0, 30), w.u(30, 120)
    raw = {
        "unet": w.u(0.25, 0.45),
        "act": w.u(0.08, 0.16),
        "ema": w.u(0.03, 0.08),
        "vae": w.u(0.01, 0.03),
        "sampler": w.u(0.03, 0.08),
    }
    p = w.fit(w.u(0.55, 0.85), ctx, raw)
    warm = t0 + load_s + w.u(10, 60)
    period = w.u(15 * MINUTE, 90 * MINUTE)
    sampling = _periodic(w.sub(), warm + period, period, (1 * MINUTE, 6 * MINUTE), duration)
    move_s = w.u(5, 20)
    base = _loader(ctx, p["unet"], t0, load_s)

    def used(t: float) -> float:
        v = base(t) + (p["act"] if t >= warm else 0.0)
        e = sampling.elapsed(t)
        if e >= 0.0:
            v += p["ema"] * _ramp(e / move_s) + (p["vae"] + p["sampler"] if e > move_s else 0.0)
        return v

    w.params.update(sample_every_s=round(period, 1))
    return _Plan([_Proc(w.pid(), t0, math.inf, used, ctx, w.noise())], duration)


def _speculative_decoding_server(w: _World) -> _Plan:
    duration = w.u(1 * HOUR, 18 * HOUR)
    w.set_interval(1, 4, duration)
    ctx, t0, load_s = w.ctx(), w.u(0, 30), w.u(30, 150)
    raw = {
        "target": w.u(0.3, 0.5),
        "draft": w.u(0.02, 0.08),
        "kv": w.u(0.1, 0.25),
        "verify": w.u(0.008, 0.03),
    }
    p = w.fit(w.u(0.55, 0.85), ctx, raw)
    load = _load(w.sub(), duration + HOUR)
    ev = w.sub()
    seg = w.u(2 * MINUTE, 10 * MINUTE)
    draft_len = _Grid([float(ev.randint(2, 8)) for _ in range(int(duration / seg) + 2)], seg)
    block = p["kv"] / 64.0
    ready = t0 + load_s + w.u(5, 30)
    weights = _loader(ctx, p["target"] + p["draft"], t0, load_s)

    def used(t: float) -> float:
        if t < ready:
            return weights(t)
        kv = math.ceil(p["kv"] * load(t) / block) * block
        return weights(t) + kv + p["verify"] * draft_len(t) / 8.0

    w.params.update(retune_s=round(seg, 1))
    return _Plan([_Proc(w.pid(), t0, math.inf, used, ctx, w.noise())], duration)


def _video_clip_lengths(w: _World) -> _Plan:
    duration = w.u(1 * HOUR, 16 * HOUR)
    w.set_interval(1, 6, duration)
    ctx, t0, load_s = w.ctx(), w.u(0, 30), w.u(20, 90)
    frames = (8, 16, 24, 32, 48, 64, 96, 128)[: w.rng.randint(4, 8)]
    r = w.u(0.3, 0.8)
    weights = [r**i for i in range(len(frames))]
    cdf = [sum(weights[: i + 1]) / sum(weights) for i in range(len(frames))]
    cdf[-1] = 1.0
    p = w.fit(w.u(0.55, 0.85), ctx, {"model": w.u(0.2, 0.4), "act": w.u(0.2, 0.4)})
    fixed_act = 0.25 * p["act"]
    per_frame = 0.75 * p["act"] / frames[-1]
    step_s = w.u(0.5, 3.0)
    window = 30.0
    steps = max(1, int(window / step_s))
    reset = w.rng.random() < 0.5
    epoch = w.u(20 * MINUTE, 120 * MINUTE)
    warm = t0 + load_s + w.u(10, 60)
    ev = w.sub()
    hwm: list[float] = []
    high = 0.0
    next_reset = epoch
    for i in range(int(duration / window) + 2):
        t = i * window  # from ``warm``
        u = ev.random()
        longest = next(f for f, c in zip(frames, cdf, strict=True) if c**steps >= u)
        if reset and t >= next_reset:
            high = 0.0
            next_reset += epoch
        high = max(high, float(longest))
        hwm.append(high)
    clip = _Grid(hwm, window)
    base = _loader(ctx, p["model"], t0, load_s)

    def used(t: float) -> float:
        return base(t) + (fixed_act + per_frame * clip(t - warm) if t >= warm else 0.0)

    w.params.update(max_frames=float(frames[-1]), reset=str(reset), epoch_s=round(epoch, 1))
    return _Plan([_Proc(w.pid(), t0, math.inf, used, ctx, w.noise())], duration)


def _oom_retry_smaller_batch(w: _World) -> _Plan:
    duration = w.u(1 * HOUR, 12 * HOUR)
    w.set_interval(1, 5, duration)
    total = w.total
    model = w.u(0.25, 0.45) * total
    shrink = w.u(0.6, 0.8)
    fails = w.rng.randint(1, 3)
    procs: list[_Proc] = []
    t = w.u(0, 30)
    act: float | None = None
    attempt = 0
    while True:
        ctx, load_s = w.ctx(), w.u(20, 90)
        pid = w.pid()
        if act is None:
            act = w.u(0.93, 0.975) * total - w.other - ctx - model
        fits = w.other + ctx + model + act <= 0.85 * total
        if attempt >= fails and fits:
            base = _loader(ctx, model + act, t, load_s)
            procs.append(_Proc(pid, t, math.inf, base, ctx, w.noise()))
            break
        climb, hold = w.u(30, 600), w.u(5, 30)
        # It died of the OOM, so it reached the top of the card first.
        top = w.u(0.93, 0.975)
        w.params["peak_frac"] = round(max(top, float(w.params.get("peak_frac", 0.0))), 4)
        peak = top * total - w.other - ctx - model
        first = w.u(0.5, 0.8)
        loaded = t + load_s

        def failing(
            x: float,
            at: tuple[float, float, float, float, float, float] = (
                ctx,
                t,
                loaded,
                climb,
                peak,
                first,
            ),
        ) -> float:
            ctx, start_at, loaded, climb, peak, first = at
            v = ctx + model * _ramp((x - start_at) / (loaded - start_at))
            if x >= loaded:
                v += peak * (first + (1.0 - first) * _ramp((x - loaded) / climb))
            return v

        stop = loaded + climb + hold
        procs.append(_Proc(pid, t, stop, failing, ctx, w.noise(0.5)))
        t = stop + w.u(5, 60)
        act *= shrink
        attempt += 1
    w.params.update(attempts=float(attempt + 1), shrink=round(shrink, 3))
    return _Plan(procs, max(duration, t + HOUR))


def _distill_teacher_swap(w: _World) -> _Plan:
    duration = w.u(2 * HOUR, 16 * HOUR)
    w.set_interval(1, 6, duration)
    ctx, t0, load_s = w.ctx(), w.u(0, 30), w.u(20, 90)
    tctx = w.u(250, 550) * MIB
    raw = {"student": w.u(0.15, 0.35), "act": w.u(0.05, 0.15), "teacher": w.u(0.2, 0.45)}
    p = w.fit(w.u(0.55, 0.85), ctx + tctx, raw)
    warm = t0 + load_s + w.u(10, 60)
    student = _loader(ctx, p["student"], t0, load_s)

    def used(t: float) -> float:
        return student(t) + (p["act"] if t >= warm else 0.0)

    procs = [_Proc(w.pid(), t0, math.inf, used, ctx, w.noise())]
    period = w.u(20 * MINUTE, 90 * MINUTE)
    shards = _periodic(w.sub(), warm + w.u(60, period), period, (3 * MINUTE, 15 * MINUTE), duration)
    for s, e in zip(shards.starts, shards.ends, strict=True):
        teacher = _loader(tctx, p["teacher"], s, w.u(30, 120))
        procs.append(_Proc(w.pid(), s, e, teacher, tctx))
    w.params.update(shard_every_s=round(period, 1), teachers=float(len(shards.starts)))
    return _Plan(procs, duration)


def _shuffle_buffer_epochs(w: _World) -> _Plan:
    duration = w.u(3 * HOUR, 24 * HOUR)
    w.set_interval(1, 8, duration)
    ctx, t0, load_s = w.ctx(), w.u(0, 30), w.u(20, 90)
    raw = {"model": w.u(0.2, 0.45), "act": w.u(0.05, 0.15), "buffer": w.u(0.1, 0.3)}
    p = w.fit(w.u(0.55, 0.85), ctx, raw)
    fill = w.u(5 * MINUTE, 25 * MINUTE)
    epoch = max(w.u(30 * MINUTE, 150 * MINUTE), 2.5 * fill)
    chunks = w.rng.randint(8, 40)
    warm = t0 + load_s + w.u(10, 60)
    release = w.u(10, 60)
    base = _loader(ctx, p["model"], t0, load_s)

    def used(t: float) -> float:
        if t < warm:
            return base(t)
        into = (t - warm) % epoch
        filled = 0.0 if into > epoch - release else math.floor(chunks * _ramp(into / fill))
        return base(t) + p["act"] + p["buffer"] * filled / chunks

    w.params.update(fill_s=round(fill, 1), epoch_s=round(epoch, 1))
    return _Plan([_Proc(w.pid(), t0, math.inf, used, ctx, w.noise())], duration)


def _triton_autotune_bursts(w: _World) -> _Plan:
    duration = w.u(1 * HOUR, 12 * HOUR)
    w.set_interval(1, 5, duration)
    ctx, t0, load_s = w.ctx(), w.u(0, 30), w.u(20, 90)
    shapes = w.rng.randint(5, 40)
    raw = {"model": w.u(0.25, 0.5), "act": w.u(0.05, 0.2), "bench": w.u(0.02, 0.1)}
    p = w.fit(w.u(0.55, 0.85), ctx + shapes * 8 * MIB, raw)
    warm = t0 + load_s + w.u(5, 30)
    ev = w.sub()
    times = sorted(warm + duration * ev.random() ** 3 for _ in range(shapes))
    starts: list[float] = []
    lengths: list[float] = []
    for when in times:
        starts.append(max(when, starts[-1] + lengths[-1] + 1.0) if starts else when)
        lengths.append(ev.uniform(5, 60))
    bursts = _Windows(starts, lengths)
    sizes = [p["bench"] * ev.uniform(0.3, 1.0) for _ in starts]
    kept = [ev.uniform(0, 8) * MIB for _ in starts]
    kept_cum = [sum(kept[: i + 1]) for i in range(len(kept))]
    base = _loader(ctx, p["model"], t0, load_s)

    def used(t: float) -> float:
        if t < warm:
            return base(t)
        v = base(t) + p["act"]
        n = bisect_right(starts, t)
        if n:
            v += kept_cum[n - 1]
            i = bursts.index(t)
            if i >= 0:
                v += sizes[i]
        return v

    w.params.update(shapes=float(shapes))
    return _Plan([_Proc(w.pid(), t0, math.inf, used, ctx, w.noise())], duration)


def _colocated_daemon(w: _World) -> _Plan:
    duration = w.u(4 * HOUR, 24 * HOUR)
    w.set_interval(1, 8, duration)
    ctx, t0, load_s = w.ctx(), w.u(0, 30), w.u(20, 120)
    dctx, ectx = w.u(250, 550) * MIB, w.u(250, 550) * MIB
    daemon = min(w.u(0.2, 1.5) * GIB, 0.06 * w.total)
    raw = {"model": w.u(0.25, 0.5), "act": w.u(0.05, 0.2), "eval": w.u(0.05, 0.15)}
    p = w.fit(w.u(0.55, 0.85), ctx + dctx + ectx + 1.2 * daemon, raw)
    warm = t0 + load_s + w.u(10, 60)
    main = _loader(ctx, p["model"], t0, load_s)

    def used(t: float) -> float:
        return main(t) + (p["act"] if t >= warm else 0.0)

    procs = [_Proc(w.pid(), t0, math.inf, used, ctx, w.noise())]
    ev = w.sub()
    wobble = _Grid([ev.uniform(0.0, 0.2) * daemon for _ in range(int(duration / 60) + 2)], 60.0)
    s = w.u(0, 600)
    restart = w.u(1 * HOUR, 6 * HOUR)
    daemons = 0
    while s < duration:
        stop = s + restart * ev.uniform(0.7, 1.3)
        start_load = _loader(dctx, daemon, s, ev.uniform(5, 20))

        def daemon_used(t: float, start_load: Fn = start_load) -> float:
            return start_load(t) + wobble(t)

        procs.append(_Proc(w.pid(), s, stop, daemon_used, dctx))
        daemons += 1
        s = stop + ev.uniform(5, 30)
    period = w.u(45 * MINUTE, 120 * MINUTE)
    crons = _periodic(w.sub(), warm + w.u(60, period), period, (3 * MINUTE, 15 * MINUTE), duration)
    for a, b in zip(crons.starts, crons.ends, strict=True):
        procs.append(_Proc(w.pid(), a, b, _loader(ectx, p["eval"], a, w.u(10, 60)), ectx))
    w.params.update(daemon_mib=round(daemon / MIB, 1), daemons=float(daemons))
    return _Plan(procs, duration)


def _zero_offload_streaming(w: _World) -> _Plan:
    duration = w.u(1 * HOUR, 12 * HOUR)
    w.set_interval(1, 5, duration)
    ctx, t0, load_s = w.ctx(), w.u(0, 30), w.u(60, 180)
    lo, hi = w.u(0.905, 0.925), w.u(0.945, 0.965)
    step_s = w.u(5, 60)
    drift = w.u(0.0, 0.3)
    w.params.update(lo_frac=round(lo, 4), hi_frac=round(hi, 4), step_s=round(step_s, 2))
    w.params["peak_frac"] = round(hi, 4)
    floor = lo * w.total - w.other
    swing = (hi - lo) * w.total

    def used(t: float) -> float:
        if t < t0 + load_s:
            return ctx + (floor - ctx) * _ramp((t - t0) / load_s)
        phase = (t / step_s + drift * math.sin(t / 977.0)) % 1.0
        return floor + swing * (1.0 - abs(2.0 * phase - 1.0))

    return _Plan([_Proc(w.pid(), t0, math.inf, used, ctx, w.noise())], duration)


def _model_repository_full(w: _World) -> _Plan:
    duration = w.u(2 * HOUR, 24 * HOUR)
    w.set_interval(2, 10, duration)
    ctx, t0 = w.ctx(), w.u(0, 30)
    target = w.u(0.91, 0.935)
    count = w.rng.randint(3, 6)
    p = w.fit(target, ctx, {f"m{i}": w.u(1.0, 4.0) for i in range(count)})
    sizes = [p[f"m{i}"] for i in range(count)]
    ws_frac = w.u(0.005, 0.015)
    ws = ws_frac * w.total
    w.params["peak_frac"] = round(target + ws_frac, 4)
    ev = w.sub()
    loads = [ev.uniform(10, 60) for _ in sizes]
    ready = [t0 + sum(loads[: i + 1]) for i in range(count)]
    period = w.u(30 * MINUTE, 180 * MINUTE)
    reloads = _periodic(w.sub(), ready[-1] + period, period, (5.0, 30.0), duration)
    which = [ev.randrange(count) for _ in reloads.starts]
    relo = [ev.uniform(10, 60) for _ in reloads.starts]
    load = _load(w.sub(), duration + HOUR)

    def used(t: float) -> float:
        v = ctx
        for i, size in enumerate(sizes):
            start = ready[i] - loads[i]
            v += size * _ramp((t - start) / loads[i])
        if t < ready[-1]:
            return v
        v += ws * load(t)
        j = bisect_right(reloads.starts, t) - 1
        if j >= 0:
            into = t - reloads.starts[j]
            gap = reloads.ends[j] - reloads.starts[j]
            if into < gap + relo[j]:
                v -= sizes[which[j]] * (1.0 - _ramp((into - gap) / relo[j]))
        return v

    w.params.update(models=float(count), reload_every_s=round(period, 1))
    return _Plan([_Proc(w.pid(), t0, math.inf, used, ctx, w.noise())], duration)


# --- leaks -------------------------------------------------------------------------------------


def _leak_plan(
    w: _World, procs: list[_Proc], start: float, oom_after: float, pid: int | None = None
) -> _Plan:
    w.params.update(leak_start_s=round(start, 3), oom_after_s=round(oom_after, 3))
    return _Plan(procs, start + 1.5 * oom_after, start, oom_after, pid, start + 4 * oom_after)


def _trainer(
    w: _World, peak: float, extra: dict[str, float]
) -> tuple[Fn, float, float, dict[str, float]]:
    """A training process: (healthy used, context, when it is warm, its fitted parts)."""
    ctx, t0, load_s = w.ctx(), w.u(0, 30), w.u(20, 120)
    p = w.fit(peak, ctx, {"model": w.u(0.25, 0.45), "act": w.u(0.05, 0.15), **extra})
    warm = t0 + load_s + w.u(10, 60)
    base = _loader(ctx, p["model"], t0, load_s)

    def used(t: float) -> float:
        return base(t) + (p["act"] if t >= warm else 0.0)

    p["t0"] = t0
    return used, ctx, warm, p


def _with_evals(used: Fn, evals: _Windows, bump: float) -> Fn:
    def with_evals(t: float) -> float:
        return used(t) + (bump if evals.index(t) >= 0 else 0.0)

    return with_evals


def _growing_log_tensors(w: _World) -> _Plan:
    oom_after = w.u(20 * MINUTE, 4 * HOUR)
    start = w.u(60, 1200)
    w.set_interval(1, 5, start + 1.3 * oom_after)
    train, ctx, warm, p = _trainer(w, w.u(0.45, 0.72), {"eval": w.u(0.02, 0.06)})
    start = max(start, warm)
    every = min(w.u(5, 60), oom_after / 25)
    count = oom_after / every
    ref = count * w.u(0.1, 2.0)
    period = w.u(10 * MINUTE, 30 * MINUTE)
    evals = _periodic(
        w.sub(), warm + period, period, (1 * MINUTE, 3 * MINUTE), start + 5 * oom_after
    )
    healthy = _with_evals(train, evals, p["eval"])

    def kept(n: float) -> float:
        return n + n * (n - 1) / (2 * ref)

    at_oom = kept(count)

    def shape(t: float) -> float:
        return 0.0 if t < start else kept(math.floor((t - start) / every) + 1) / at_oom

    w.params.update(log_every_s=round(every, 2), growth_ref=round(ref, 1))
    proc = _Proc(w.pid(), p["t0"], math.inf, healthy, ctx, w.noise(), shape)
    return _leak_plan(w, [proc], start, oom_after)


def _stale_optimizer_per_stage(w: _World) -> _Plan:
    oom_after = w.u(1 * HOUR, 8 * HOUR)
    steps = w.rng.randint(10, 24)
    epoch = oom_after / (steps - 1)
    w.set_interval(2, 10, (steps + 1.3) * epoch)
    stages = w.rng.randint(2, 5)
    raw_stage = [w.u(0.5, 1.5) for _ in range(stages)]
    train, ctx, warm, p = _trainer(w, w.u(0.45, 0.72), {"trainable": w.u(0.05, 0.2)})
    scale = p["trainable"] / sum(raw_stage)
    stage_bytes = [s * scale for s in raw_stage]
    epoch0 = warm
    moments = w.u(0.5, 0.67)  # of a stage's state, the optimizer's share (the rest are grads)

    def trainable(t: float) -> float:
        k = min(stages, max(0, math.floor((t - epoch0) / epoch) + 1)) if t >= epoch0 else 0
        return sum(stage_bytes[:k])

    def used(t: float) -> float:
        return train(t) + trainable(t)

    rebuilt = [moments * trainable(epoch0 + j * epoch - 1e-6) for j in range(1, 4 * steps + 2)]
    cum = [0.0]
    for r in rebuilt:
        cum.append(cum[-1] + r)
    start = epoch0 + epoch

    def shape(t: float) -> float:
        if t < start:
            return 0.0
        j = min(len(rebuilt), math.floor((t - epoch0) / epoch))
        return cum[j] / cum[steps]

    w.params.update(epoch_s=round(epoch, 1), stages=float(stages), epochs_to_oom=float(steps))
    proc = _Proc(w.pid(), p["t0"], math.inf, used, ctx, w.noise(), shape)
    return _leak_plan(w, [proc], start, oom_after)


def _rank0_only_hook_leak(w: _World) -> _Plan:
    oom_after = w.u(30 * MINUTE, 6 * HOUR)
    ranks = w.rng.randint(2, 4)
    t0, load_s = w.u(0, 30), w.u(20, 120)
    ctxs = [w.ctx() for _ in range(ranks)]
    raw = {"model": w.u(0.25, 0.45), "act": w.u(0.05, 0.15), "eval": w.u(0.02, 0.05)}
    p = {k: v / ranks for k, v in w.fit(w.u(0.45, 0.72), sum(ctxs), raw).items()}
    warm = t0 + load_s + w.u(10, 60)
    start = warm + w.u(0, 30 * MINUTE)
    w.set_interval(1, 6, start + 1.3 * oom_after)
    period = w.u(10 * MINUTE, 45 * MINUTE)
    horizon = start + 4 * oom_after
    evals = _periodic(w.sub(), warm + period, period, (1 * MINUTE, 5 * MINUTE), horizon)
    leaky = w.rng.randrange(ranks)
    rate = _rates(w.sub(), horizon + HOUR, 5 * MINUTE, 0.3)
    procs: list[_Proc] = []
    for r, ctx in enumerate(ctxs):
        base = _loader(ctx, p["model"], t0 + r * 0.5, load_s)

        def train(t: float, base: Fn = base) -> float:
            return base(t) + (p["act"] if t >= warm else 0.0)

        shape = _cum_shape(rate, start, oom_after) if r == leaky else None
        procs.append(
            _Proc(w.pid(), t0 + r * 0.5, math.inf, _with_evals(train, evals, p["eval"]), ctx)
        )
        procs[-1].noise = w.noise(0.6)
        procs[-1].leak = shape
    w.params.update(ranks=float(ranks), leaky_rank=float(leaky))
    return _leak_plan(w, procs, start, oom_after, procs[leaky].pid)


def _profiler_left_running(w: _World) -> _Plan:
    oom_after = w.u(5 * MINUTE, 1 * HOUR)
    start = w.u(2 * MINUTE, 60 * MINUTE)
    w.set_interval(1, 3, start + 1.3 * oom_after)
    train, ctx, warm, p = _trainer(w, w.u(0.45, 0.72), {})
    start = max(start, warm)
    jump = w.u(0.05, 0.2)
    chunk = oom_after / w.rng.randint(20, 60)

    def shape(t: float) -> float:
        if t < start:
            return 0.0
        return jump + (1.0 - jump) * math.floor((t - start) / chunk) * chunk / oom_after

    w.params.update(jump_frac=round(jump, 3), chunk_s=round(chunk, 2))
    proc = _Proc(w.pid(), p["t0"], math.inf, train, ctx, w.noise(), shape)
    return _leak_plan(w, [proc], start, oom_after)


def _uncapped_replay_buffer(w: _World) -> _Plan:
    oom_after = w.u(15 * MINUTE, 3 * HOUR)
    ctx, t0, load_s = w.ctx(), w.u(0, 30), w.u(10, 60)
    raw = {"nets": w.u(0.05, 0.2), "act": w.u(0.03, 0.1), "cap": w.u(0.25, 0.5)}
    p = w.fit(w.u(0.45, 0.72), ctx, raw)
    collect = t0 + load_s + w.u(10, 120)
    headroom = w.total - w.other - ctx - p["nets"] - p["act"] - p["cap"]
    rate = headroom / oom_after  # bytes per second of experience
    ev = w.sub()
    ends: list[float] = []
    t = collect
    start: float | None = None
    while start is None or t < start + 4 * oom_after:
        t += ev.uniform(3, 60)
        ends.append(t)
        if start is None and rate * (t - collect) > p["cap"]:
            start = t
    assert start is not None
    w.set_interval(1, 5, start + 1.3 * oom_after)
    base = _loader(ctx, p["nets"], t0, load_s)

    def filled(t: float) -> float:
        n = bisect_right(ends, t)
        return rate * (ends[n - 1] - collect) if n else 0.0

    def used(t: float) -> float:
        return base(t) + (p["act"] + min(p["cap"], filled(t)) if t >= collect else 0.0)

    def leaked(t: float) -> float:
        return max(0.0, filled(t) - p["cap"])

    w.params.update(cap_mib=round(p["cap"] / MIB, 1), fill_mib_per_s=round(rate / MIB, 4))
    proc = _Proc(w.pid(), t0, math.inf, used, ctx, w.noise(), leaked, scaled=False)
    return _leak_plan(w, [proc], start, oom_after)


def _leak_paused_in_eval(w: _World) -> _Plan:
    oom_after = w.u(1 * HOUR, 10 * HOUR)
    start = w.u(5 * MINUTE, 60 * MINUTE)
    w.set_interval(2, 10, start + 1.3 * oom_after)
    train, ctx, warm, p = _trainer(w, w.u(0.45, 0.72), {"eval": w.u(0.02, 0.06)})
    start = max(start, warm)
    period = min(w.u(15 * MINUTE, 60 * MINUTE), oom_after / 4)
    length = (2 * MINUTE, min(10 * MINUTE, period / 3))
    evals = _periodic(w.sub(), warm + period, period, length, start + 5 * oom_after)
    healthy = _with_evals(train, evals, p["eval"])

    def trained(t: float) -> float:
        return t - evals.covered(t)

    at_oom = trained(start + oom_after) - trained(start)

    def shape(t: float) -> float:
        return 0.0 if t < start else (trained(t) - trained(start)) / at_oom

    w.params.update(eval_every_s=round(period, 1))
    proc = _Proc(w.pid(), p["t0"], math.inf, healthy, ctx, w.noise(), shape)
    return _leak_plan(w, [proc], start, oom_after)


def _sidecar_process_leak(w: _World) -> _Plan:
    oom_after = w.u(2 * HOUR, 12 * HOUR)
    sctx = w.u(250, 550) * MIB
    side = min(w.u(0.2, 1.5) * GIB, 0.06 * w.total)
    train, ctx, warm, p = _trainer(w, w.u(0.45, 0.72), {"ckpt": w.u(0.01, 0.04)})
    s0 = w.u(0, 10 * MINUTE)
    start = s0 + w.u(5 * MINUTE, 1 * HOUR)
    w.set_interval(2, 10, start + 1.3 * oom_after)
    horizon = start + 4 * oom_after
    period = w.u(30 * MINUTE, 120 * MINUTE)
    ckpts = _periodic(w.sub(), warm + period, period, (20.0, 90.0), horizon)
    load = _load(w.sub(), horizon + HOUR)
    swing = w.u(0.1, 0.3) * side
    sbase = _loader(sctx, side, s0, w.u(5, 30))

    def side_used(t: float) -> float:
        return sbase(t) + swing * load(t)

    main = _Proc(w.pid(), p["t0"], math.inf, _with_evals(train, ckpts, p["ckpt"]), ctx, w.noise())
    sidecar = _Proc(w.pid(), s0, math.inf, side_used, sctx, w.noise(0.3))
    sidecar.leak = _cum_shape(load, start, oom_after, w.u(0.2, 0.5))
    w.params.update(sidecar_mib=round(side / MIB, 1))
    return _leak_plan(w, [main, sidecar], start, oom_after, sidecar.pid)


def _slow_leak_heavy_noise(w: _World) -> _Plan:
    oom_after = w.u(6 * HOUR, 16 * HOUR)
    start = w.u(0, 2 * HOUR)
    w.set_interval(5, 10, start + 1.3 * oom_after)
    train, ctx, warm, p = _trainer(w, w.u(0.45, 0.65), {})
    start = max(start, warm)
    rate = _rates(w.sub(), start + 5 * oom_after, 10 * MINUTE, 0.5)
    proc = _Proc(w.pid(), p["t0"], math.inf, train, ctx, w.noise())
    proc.leak = _cum_shape(rate, start, oom_after)
    return _leak_plan(w, [proc], start, oom_after)


def _leak_after_hot_reload(w: _World) -> _Plan:
    oom_after = w.u(1 * HOUR, 8 * HOUR)
    ctx, t0, load_s = w.ctx(), w.u(0, 30), w.u(20, 90)
    p = w.fit(w.u(0.45, 0.72), ctx, {"weights2": 2 * w.u(0.15, 0.3), "kv": w.u(0.06, 0.16)})
    weights = p["weights2"] / 2
    reload = w.u(20 * MINUTE, 3 * HOUR)
    swap_in = w.u(20, 60)
    swap_end = reload + swap_in + w.u(5, 60)
    start = swap_end
    w.set_interval(1, 6, start + 1.3 * oom_after)
    load = _load(w.sub(), start + 5 * oom_after)
    ready = t0 + load_s + w.u(5, 30)
    base = _loader(ctx, weights, t0, load_s)

    def used(t: float) -> float:
        v = base(t)
        if t >= ready:
            v += p["kv"] * load(t)
        if reload <= t < swap_end:
            v += weights * _ramp((t - reload) / swap_in)
        return v

    proc = _Proc(w.pid(), t0, math.inf, used, ctx, w.noise())
    proc.leak = _cum_shape(load, start, oom_after, w.u(0.3, 0.6))
    w.params.update(reload_s=round(reload, 1))
    return _leak_plan(w, [proc], start, oom_after)


def _adapter_eviction_leak(w: _World) -> _Plan:
    plan = _adapter_server(w, leak=True)
    assert plan.leak_start is not None
    assert plan.oom_after is not None
    w.params.update(leak_start_s=round(plan.leak_start, 3), oom_after_s=round(plan.oom_after, 3))
    return plan


MAKERS: dict[str, Callable[[_World], _Plan]] = {
    "prefetch_to_device_loader": _prefetch_to_device_loader,
    "lora_adapter_swaps": _lora_adapter_swaps,
    "diffusion_periodic_sampling": _diffusion_periodic_sampling,
    "speculative_decoding_server": _speculative_decoding_server,
    "video_clip_lengths": _video_clip_lengths,
    "oom_retry_smaller_batch": _oom_retry_smaller_batch,
    "distill_teacher_swap": _distill_teacher_swap,
    "shuffle_buffer_epochs": _shuffle_buffer_epochs,
    "triton_autotune_bursts": _triton_autotune_bursts,
    "colocated_daemon": _colocated_daemon,
    "zero_offload_streaming": _zero_offload_streaming,
    "model_repository_full": _model_repository_full,
    "growing_log_tensors": _growing_log_tensors,
    "stale_optimizer_per_stage": _stale_optimizer_per_stage,
    "rank0_only_hook_leak": _rank0_only_hook_leak,
    "profiler_left_running": _profiler_left_running,
    "uncapped_replay_buffer": _uncapped_replay_buffer,
    "leak_paused_in_eval": _leak_paused_in_eval,
    "sidecar_process_leak": _sidecar_process_leak,
    "slow_leak_heavy_noise": _slow_leak_heavy_noise,
    "leak_after_hot_reload": _leak_after_hot_reload,
    "adapter_eviction_leak": _adapter_eviction_leak,
}


def _amplitude(w: _World, plan: _Plan) -> float:
    """Bytes a scaled leak holds at the drawn OOM time: what the healthy part leaves free there."""
    assert plan.leak_start is not None
    assert plan.oom_after is not None
    ref = 0.0
    for i in range(201):
        t = plan.leak_start + plan.oom_after * (0.9 + 0.001 * i)
        ref = max(ref, sum(p.healthy(t) for p in plan.procs if p.start <= t < p.stop))
    return w.total - w.other - ref


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
    """One trace (CSV lines) and its label; ``with_leak=False``: the leak-free twin."""
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
    end = plan.horizon if (is_leak and with_leak) else plan.duration
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
                wobble = p.noise(dt) if p.noise is not None else 0.0
                if not p.start <= now < p.stop:
                    continue
                v = max(p.healthy(now) + wobble, p.floor)
                if with_leak and p.leak is not None:
                    extra = p.leak(now) * (amp if p.scaled else 1.0)
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
        gap = w.interval * clock.uniform(0.97, 1.03)
        if clock.random() < w.p_stall:
            gap += clock.uniform(20.0, 120.0)
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
        yield build(scenario, seed * 1_000_039 + i, f"{i:04d}-{scenario}")


def main(argv: list[str] | None = None) -> int:
    """Write traces and labels.jsonl to a folder."""
    return write_traces(argv, (__doc__ or "").split("\n\n")[0], SCENARIOS, generate)


if __name__ == "__main__":
    sys.exit(main())
