"""A fourth, independent generator of labelled GPU memory traces, written blind: a held-out set.

This set was written without reading the leak detector, its documentation, the
scorer's results or the scenario logic of the other three generators, and was
never run through the detector. It models jobs the other sets do not (MoE
routing, pipeline stages, notebooks, autoscaled inference, progressive
resizing, spot preemption; NCCL groups, forward hooks, retained graphs, string
caches) from how PyTorch's caching allocator, ``cudaMallocAsync``, NCCL and
NVML behave, behind the same interface (``build``, ``twin``, ``generate``,
``SCENARIOS``, ``HEALTHY``, ``LEAKS``, ``MULTI_PROCESS``, ``NEAR_FULL``) and
the same ``scenarios.Label``.

    python benchmarks/blind_scenarios.py --out traces/ --count 42 --seed 1

Every trace draws a card (16-141 GiB, NVML totals a little under nominal), a
driver/other baseline (0-450 MiB), a poll interval (1-10 s, coarser for long
traces, at most 40,000 polls) with 0-12 % jitter and occasional missed polls
(gaps of 2-6), a noise model per process (gaussian 0.1-20 MiB clipped at 4
sigma; the same plus one-poll spikes of 6-400 MiB; or AR(1) drift), a quantum
(4 KiB, 1, 2 or 20 MiB) and whether process rows come every poll, every 2-10
polls or never. Every process starts with a CUDA context (280-620 MiB), loads
its weights (5-120 s) and lets the allocator grow to its working set in
front-loaded jumps (1-15 min unless stated).

Healthy jobs: no leak may be reported on any of them. The single-process
ones other than ``tuned_to_fit`` peak at 35-72 % of the card (device used),
or, a fifth of them, at 75-92 %, so the ambiguity near the top is tested.

- ``moe_routing_swings``: MoE training, 2-10 h. Dense part 50-75 % of the
  peak; expert buffers follow token load per 15-60 s window (log-normal,
  sigma 0.2-0.5, clipped at 2.2x mean), the allocator keeps the running max,
  and ``empty_cache`` every 3-20 min trims it: irregular rising teeth.
- ``checkpoint_staging``: 3-24 h. Every 15-60 min the state is staged on GPU
  (5-25 % of the working set) for 10-120 s (three times longer 15 % of the
  time); freed with ``empty_cache`` (2/3: bumps) or kept cached (1/3: the
  first save lifts the plateau once).
- ``activation_ckpt_toggle``: 3-16 h. A memory-budget controller switches
  activation checkpointing off for phases (10-90 min mean, 5-180 min each):
  the level rises 15-40 % over 20-120 s, and ``empty_cache`` at the switch
  back drops it: an irregular square wave.
- ``pipeline_bubbles``: a pipeline stage on ``cudaMallocAsync`` (release
  threshold 0), 1-8 h. In-flight activations (10-35 % of the peak) rise and
  fall within every 0.6-6 s step with a bubble; polls alias that into wide
  bounded swings; evals (2-10 min every 30-120 min) hold 10-30 % of them.
- ``notebook_session``: an interactive kernel, 2-10 h: idle for 0.5-90 min
  between cells; cells load a model (8-45 % of the cap), run (the cache
  grows to a random share of what is left), or ``del``/``gc``/``empty_cache``
  (more likely the fuller it is); the kernel restarts (new pid) 4 % of turns.
- ``inference_autoscale``: 2-5 replica processes on one GPU, 12-36 h. A
  daily load curve with noise is checked every 10-20 min; one replica is
  started (weights 15-50 %, KV/activation cache growing over 5-40 min) or
  the newest stopped per check. All up: 45-80 % of the card.
- ``progressive_resizing``: vision training, 4-30 h. 3-5 image-size stages
  (first at 45-75 % of the final side), activation memory growing with the
  square of the side (30-60 % of the peak at the end) in allocator jumps
  over 1-8 min; the last switch is before 55 % of the run, flat after.
- ``eval_bigger_batch``: 3-20 h. Evaluation every 20-90 min for 1-12 min
  with a bigger batch (10-35 % above training): released (spikes), cached
  (the first eval lifts the plateau), or partly released (10-60 % kept).
- ``spot_preemption_resume``: 6-36 h, preempted 1-4 times (at least 1 h
  apart, 1-15 min down). Each resume has a new pid and a 20-180 s transient
  while the checkpoint sits on the GPU (10-35 % extra); half the time part
  of it stays cached for the rest of that run.
- ``tuned_to_fit`` (near full): batch size tuned to 93-96.5 % of the card,
  warm-up 1-10 min, then flat for 1-12 h with at most 0.4 % noise.
- ``packed_tenants`` (near full): 2-4 processes starting within 4 min and
  together 92.5-96 % of the card, flat for 1.5-10 h; 40 % of the time one
  tenant restarts once (10-90 s away, new pid).

Leaks: each must be found before ``Label.deadline()``. The healthy part stays
under 85 % of the card; the leak is scaled so that the device first reaches
the total at the drawn ``oom_after_s`` after the leak starts: on the highest
healthy peak (eval, save, regrown sawtooth) within one cycle of it, and at most a
quarter of ``oom_after_s`` later, or on an earlier, higher peak.

- ``metrics_list_leak``: predictions appended to a GPU list every 20-300 s
  log interval (sizes +-10 %), from the first log after warm-up; OOM after
  1-10 h. Half the traces also have released eval spikes.
- ``string_cache_leak``: an embedding cache keyed by unseen strings starts
  filling 1-6 h in (a new data shard) and grows with Heaps' law, (t - t0) **
  0.55-0.9; healthy part has rare, shrinking shape records. OOM 2-20 h.
- ``retain_graph_loop`` (fast): ``backward(retain_graph=True)`` keeps every
  step's graph (steps 0.2-2 s), each a little larger: (u + c u^2)/(1 + c),
  c 0.2-2; starts 5-60 s after a 0.5-3 min warm-up; OOM 1.5-15 min; 1-2 s polls.
- ``new_group_per_epoch``: ``dist.new_group()`` at every epoch's validation
  keeps a communicator's NCCL buffers: equal steps every 10-90 min epoch
  (+-7 %), under released eval spikes (3-10 %, 1-5 min); OOM 2-12 h, at
  least 6 epochs.
- ``resume_then_leak``: healthy for 1-6 h, preempted (1-10 min down),
  resumed with a new pid; 5-60 min after the resumed warm-up a leak starts
  whose rate changes every 10 min (x0.6-1.4). OOM 2-12 h after.
- ``train_mode_hook_leak``: a forward hook stores activations in train mode
  only, registered from the start or 0.5-3 h in: grows in training, flat
  during evals (3-15 min every 20-60 min, released spikes of 5-12 %). OOM
  1-12 h.
- ``inference_worker_leak``: 3-6 workers on one GPU; 0.5-4 h in one is
  redeployed (new pid) with a per-request cache that is never evicted: it
  leaks at a rate that follows its load (5-min windows, log-normal sigma
  0.3-0.8 on a daily curve). Half the time another worker restarts. OOM
  1-10 h. The label names the leaking pid.
- ``seq_len_leak``: under a sawtooth (``empty_cache`` every 5-30 min drops
  10-35 %, regrowth 1-6 min), a leak whose rate follows the sequence-length
  bucket (switching every 1-15 min, x0.1-1): monotone, bursty, a rising
  floor. Starts after warm-up or 0.5-2 h in; OOM 1-10 h.
- ``accelerating_cache``: a trainer (with released evals), an embedding
  service and half the time a small sidecar share the GPU; the service's
  cache grows exponentially, expm1(k u) / expm1(k) with k 1-3.5, from 0-30
  min after it warms up. OOM 1-8 h. The label names the service's pid.
- ``workspace_creep`` (slow): thread-pool churn leaves a cuBLAS workspace
  (4-64 MiB) behind per new thread, at Poisson times, from 0-2 h in, under
  released checkpoint bumps; OOM after 10-48 h.
"""

from __future__ import annotations

import bisect
import math
import random
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from scenarios import Label, write_traces

MIB = float(1 << 20)
MINUTE = 60.0
HOUR = 3600.0
DAY = 86_400.0

# (nominal GiB, total in MiB as NVML reports it): T4, V100-16, A10, L4, RTX 4090,
# V100-32, RTX 5090, A100-40 (two firmwares), L40S, A6000, A100-80, H100, H100 NVL, H200.
CARDS: tuple[tuple[int, int], ...] = (
    (16, 15360),
    (16, 16160),
    (24, 23028),
    (24, 23034),
    (24, 24564),
    (32, 32510),
    (32, 32607),
    (40, 40960),
    (40, 40536),
    (48, 46068),
    (48, 49140),
    (80, 81920),
    (80, 81559),
    (94, 95830),
    (141, 143771),
)
# What NVML's used memory moves in: pages, whole MiB, the allocator's 2 MiB small
# segments, or its 20 MiB segments for 1-10 MiB blocks.
QUANTA = (4096.0, MIB, 2 * MIB, 20 * MIB)
MAX_POLLS = 40_000
LEAK_CEILING = 0.85
HEALTHY_CEILING = 0.95
NEAR_FULL_CEILING = 0.985

HEALTHY = (
    "moe_routing_swings",
    "checkpoint_staging",
    "activation_ckpt_toggle",
    "pipeline_bubbles",
    "notebook_session",
    "inference_autoscale",
    "progressive_resizing",
    "eval_bigger_batch",
    "spot_preemption_resume",
    "tuned_to_fit",
    "packed_tenants",
)
LEAKS = (
    "metrics_list_leak",
    "string_cache_leak",
    "retain_graph_loop",
    "new_group_per_epoch",
    "resume_then_leak",
    "train_mode_hook_leak",
    "inference_worker_leak",
    "seq_len_leak",
    "accelerating_cache",
    "workspace_creep",
)
SCENARIOS = HEALTHY + LEAKS
MULTI_PROCESS = (
    "inference_autoscale",
    "packed_tenants",
    "inference_worker_leak",
    "accelerating_cache",
)
NEAR_FULL = ("tuned_to_fit", "packed_tenants")

Memory = Callable[[float], float]
Points = list[tuple[float, float]]
Params = dict[str, float | str]


@dataclass
class Proc:
    """One process on the GPU: its leak-free memory (bytes, at trace time) while it lives."""

    pid: int
    start: float
    end: float
    memory: Memory
    noise: float = 1.0
    """Scale of the trace's noise model for this process."""


@dataclass
class Leak:
    """A leak: its process, when the first byte is held, and its shape (scaled later)."""

    pid: int
    start: float
    oom_after: float
    """Drawn time from ``start`` to the planned OOM."""
    shape: Memory
    """Non-decreasing, 0 before ``start``, about 1 at ``start + oom_after``, still growing after."""
    cycle_s: float = 0.0
    """Longest healthy period (eval, trim, save): the OOM lands on a peak within it."""


@dataclass
class Plan:
    """What a scenario builder drew: processes, length, the leak, and sampling limits."""

    procs: list[Proc]
    duration: float
    params: Params = field(default_factory=dict)
    leak: Leak | None = None
    interval: tuple[float, float] = (1.0, 10.0)
    ceiling: float = HEALTHY_CEILING
    """The leak-free device memory is scaled down, if need be, to stay under this share."""
    noise_cap: float = 600 * MIB
    """Largest noise excursion per process."""


class Card:
    """The GPU a trace runs on, the trace's random source, and its pid counter."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.gib, self.mib = rng.choice(CARDS)
        self.total = self.mib * MIB
        # Driver reservations, a display server, DCGM: memory no CUDA process owns.
        self.other = rng.uniform(0.0, 450.0) * MIB
        self._pid = rng.randint(1_200, 2_500_000)

    def pid(self) -> int:
        """A new pid, larger than the last (pids are handed out in order)."""
        self._pid += self.rng.randint(1, 4_000)
        return self._pid


# --- building blocks -------------------------------------------------------


def _log_uniform(rng: random.Random, low: float, high: float) -> float:
    return math.exp(rng.uniform(math.log(low), math.log(high)))


def _linear(points: Points) -> Memory:
    """Piecewise-linear through ``points`` (sorted by time); 0 before, flat after."""
    xs = [x for x, _ in points]
    ys = [y for _, y in points]

    def memory(t: float) -> float:
        i = bisect.bisect_right(xs, t)
        if i == 0:
            return 0.0
        if i == len(xs):
            return ys[-1]
        x0, x1 = xs[i - 1], xs[i]
        return ys[i - 1] + (ys[i] - ys[i - 1]) * (t - x0) / (x1 - x0)

    return memory


def _steps(points: Points) -> Memory:
    """Step function: the value of the last point at or before ``t``; 0 before the first."""
    xs = [x for x, _ in points]
    ys = [y for _, y in points]

    def memory(t: float) -> float:
        i = bisect.bisect_right(xs, t)
        return ys[i - 1] if i else 0.0

    return memory


def _add(*parts: Memory) -> Memory:
    def memory(t: float) -> float:
        return sum(part(t) for part in parts)

    return memory


def _zero(t: float) -> float:
    return 0.0


def _pulses(spans: list[tuple[float, float]], height: float) -> Memory:
    """``height`` during each (start, end) span: allocations freed with ``empty_cache``."""
    points: Points = []
    for start, end in spans:
        points += [(start, height), (end, 0.0)]
    return _steps(points) if points else _zero


def _spans(
    rng: random.Random, first: float, end: float, every: float, length: float
) -> list[tuple[float, float]]:
    """Recurring activities (evals, saves) from ``first``, every ``every`` (+-7 %)."""
    spans = []
    t = first
    while t < end:
        spans.append((t, t + min(length * rng.uniform(0.7, 1.3), 0.5 * every)))
        t += every * rng.uniform(0.93, 1.07)
    return spans


def _grow(rng: random.Random, points: Points, t: float, target: float, span: float) -> float:
    """Append the caching allocator growing from the last level to ``target`` from ``t``.

    It grows in jumps as new segments are reserved, most of them early (the first
    steps touch most tensor sizes). Returns when the growth is over.
    """
    jumps = rng.randint(3, 12)
    level = points[-1][1]
    offsets = [*sorted(span * rng.random() ** 2 for _ in range(jumps - 1)), span]
    sizes = [rng.expovariate(1.0) + 0.05 for _ in range(jumps)]
    scale = (target - level) / sum(sizes)
    last = points[-1][0]
    for offset, size in zip(offsets, sizes, strict=True):
        when = max(t + offset, last + 0.5)
        points.append((when, level))
        level += size * scale
        last = when + 0.5
        points.append((last, level))
    return last


def _warmup(
    card: Card,
    start: float,
    level: float,
    *,
    load: tuple[float, float] = (5.0, 120.0),
    grow: tuple[float, float] = (60.0, 900.0),
    weights: tuple[float, float] = (0.15, 0.5),
) -> tuple[Points, float]:
    """Context at ``start``, weights loaded, allocator grown to ``level``: (points, warm at)."""
    rng = card.rng
    context = min(rng.uniform(280.0, 620.0) * MIB, 0.5 * level)
    loaded = start + rng.uniform(*load)
    points: Points = [
        (start, context),
        (loaded, context + (level - context) * rng.uniform(*weights)),
    ]
    warm = _grow(rng, points, loaded, level, rng.uniform(*grow))
    return points, warm


def _job(card: Card, start: float, level: float, **kw: tuple[float, float]) -> tuple[Proc, float]:
    """A process that warms up to ``level`` and stays there; (process, warm at)."""
    points, warm = _warmup(card, start, level, **kw)
    return Proc(card.pid(), start, math.inf, _linear(points)), warm


def _peak(card: Card, low: float = 0.35, high: float = 0.72) -> float:
    """A healthy job's peak in bytes: the device, with ``other``, peaks at a drawn share.

    The share is drawn from [low, high], or for a fifth of traces from 75-92 %.
    """
    rng = card.rng
    share = rng.uniform(0.75, 0.92) if rng.random() < 0.2 else rng.uniform(low, high)
    return share * card.total - card.other


def _sawtooth(
    rng: random.Random, points: Points, start: float, end: float, drop: float, period: float
) -> float:
    """``empty_cache`` every ``period`` drops the last level by ``drop``; it grows back."""
    top = points[-1][1]
    regrow = min(rng.uniform(1.0, 6.0) * MINUTE, 0.6 * period)
    t = max(start, points[-1][0] + 1.0) + period * rng.uniform(0.3, 1.0)
    while t < end:
        points += [(t, top), (t + 0.5, top * (1.0 - drop))]
        _grow(rng, points, t + 0.5, top, regrow * rng.uniform(0.7, 1.0))
        t += period * rng.uniform(0.95, 1.05)
    return regrow


def _stairs(times: list[float], sizes: list[float], norm: float) -> Memory:
    """Cumulative ``sizes`` held from each of ``times``, divided by ``norm``."""
    points: Points = []
    held = 0.0
    for t, size in zip(times, sizes, strict=True):
        held += size
        points.append((t, held / norm))
    return _steps(points)


def _rate_shape(start: float, window: float, rates: list[float], norm_at: float) -> Memory:
    """Cumulative of a rate that changes every ``window`` from ``start``; 1 at ``norm_at``."""
    points: Points = [(start, 0.0)]
    held = 0.0
    for i, rate in enumerate(rates):
        held += rate * window
        points.append((start + (i + 1) * window, held))
    raw = _linear(points)
    norm = raw(norm_at)

    def shape(t: float) -> float:
        return raw(t) / norm if t > start else 0.0

    return shape


# --- healthy scenarios -----------------------------------------------------


def _moe_routing_swings(card: Card) -> Plan:
    rng = card.rng
    duration = rng.uniform(2.0, 10.0) * HOUR
    peak = _peak(card)
    dense = peak * rng.uniform(0.5, 0.75)
    mean = (peak - dense) / 2.2
    sigma, window = rng.uniform(0.2, 0.5), rng.uniform(15.0, 60.0)
    trim = rng.uniform(3.0, 20.0) * MINUTE
    start = rng.uniform(0.0, 30.0)
    points, warm = _warmup(card, start, dense)
    experts: Points = []
    t, held, next_trim = warm, 0.0, warm + trim
    while t < duration + window:
        demand = mean * min(2.2, max(0.3, rng.lognormvariate(-sigma * sigma / 2, sigma)))
        if t >= next_trim:
            # empty_cache returns the cached expert buffers; the pool regrows to this load.
            held, next_trim = demand, t + trim * rng.uniform(0.9, 1.1)
        else:
            held = max(held, demand)
        experts.append((t, held))
        t += window
    proc = Proc(card.pid(), start, math.inf, _add(_linear(points), _steps(experts)))
    params: Params = {"peak_frac": (peak + card.other) / card.total, "sigma": sigma, "trim_s": trim}
    return Plan([proc], duration, params | {"window_s": window})


def _checkpoint_staging(card: Card) -> Plan:
    rng = card.rng
    duration = rng.uniform(3.0, 24.0) * HOUR
    peak = _peak(card)
    stage = rng.uniform(0.05, 0.25)
    working = peak / (1.0 + stage)
    mode = rng.choice(("release", "release", "cached"))
    every = rng.uniform(15.0, 60.0) * MINUTE
    start = rng.uniform(0.0, 60.0)
    points, warm = _warmup(card, start, working)
    spans = []
    t = warm + every * rng.uniform(0.3, 1.0)
    while t < duration:
        hold = rng.uniform(10.0, 120.0) * (3.0 if rng.random() < 0.15 else 1.0)
        spans.append((t, t + hold))
        t += max(every * rng.uniform(0.9, 1.1), hold + 60.0)
    if mode == "release":
        extra = _pulses(spans, stage * working)
    else:
        # The staged copy's blocks stay in the allocator's cache and are reused next time.
        extra = _steps([(spans[0][0], stage * working)]) if spans else _zero
    proc = Proc(card.pid(), start, math.inf, _add(_linear(points), extra))
    params: Params = {
        "peak_frac": (peak + card.other) / card.total,
        "stage_frac": stage,
        "every_s": every,
    }
    return Plan([proc], duration, params | {"mode": mode})


def _activation_ckpt_toggle(card: Card) -> Plan:
    rng = card.rng
    duration = rng.uniform(3.0, 16.0) * HOUR
    peak = _peak(card)
    extra = rng.uniform(0.15, 0.4)
    low = peak * (1.0 - extra)
    mean_phase = rng.uniform(10.0, 90.0) * MINUTE
    start = rng.uniform(0.0, 60.0)
    points, warm = _warmup(card, start, low)
    t, high = warm, False
    while t < duration:
        t += min(180 * MINUTE, max(5 * MINUTE, rng.lognormvariate(math.log(mean_phase), 0.5)))
        if high:
            points += [(t, peak), (t + 0.5, low)]
            t += 0.5
        else:
            ramp = rng.uniform(20.0, 120.0)
            points += [(t, low), (t + ramp, peak)]
            t += ramp
        high = not high
    proc = Proc(card.pid(), start, math.inf, _linear(points))
    params: Params = {"peak_frac": (peak + card.other) / card.total, "extra_frac": extra}
    return Plan([proc], duration, params | {"mean_phase_s": mean_phase})


def _pipeline_bubbles(card: Card) -> Plan:
    rng = card.rng
    duration = rng.uniform(1.0, 8.0) * HOUR
    peak = _peak(card)
    act = peak * rng.uniform(0.1, 0.35)
    step = rng.uniform(0.6, 6.0)
    rise, hold, bubble = rng.uniform(0.2, 0.45), rng.uniform(0.1, 0.35), rng.uniform(0.05, 0.2)
    fall = max(0.05, 1.0 - rise - hold - bubble)
    wobble, wobble_period = rng.uniform(0.5, 5.0), rng.uniform(5.0, 30.0) * MINUTE
    eval_share = rng.uniform(0.1, 0.3)
    start = rng.uniform(0.0, 60.0)
    points, warm = _warmup(card, start, peak - act)
    evals = _spans(
        rng,
        warm + rng.uniform(30.0, 120.0) * MINUTE,
        duration,
        rng.uniform(30.0, 120.0) * MINUTE,
        rng.uniform(2.0, 10.0) * MINUTE,
    )
    in_eval = _pulses(evals, 1.0)

    def in_flight(t: float) -> float:
        if t < warm:
            return 0.0
        if in_eval(t):
            return act * eval_share
        # Step time drifts a little, so polls land on every phase of the 1F1B schedule.
        phase = (t / step + wobble * math.sin(2 * math.pi * t / wobble_period)) % 1.0
        if phase < rise:
            return act * phase / rise
        if phase < rise + hold:
            return act
        return act * max(0.0, 1.0 - (phase - rise - hold) / fall)

    proc = Proc(card.pid(), start, math.inf, _add(_linear(points), in_flight))
    params: Params = {
        "peak_frac": (peak + card.other) / card.total,
        "act_frac": act / peak,
        "step_s": step,
    }
    return Plan([proc], duration, params | {"bubble": bubble})


class _Kernel:
    """A notebook kernel's memory as cells run: model, cached activations, cleanups."""

    def __init__(self, card: Card, start: float, cap: float) -> None:
        self.rng, self.cap = card.rng, cap
        self.context = self.rng.uniform(280.0, 620.0) * MIB
        self.model = self.cache = 0.0
        self.points: Points = [(start, self.context)]

    def level(self) -> float:
        return self.context + self.model + self.cache

    def turn(self, t: float) -> float:
        """One cell after an idle spell at ``t``; returns when it is done."""
        rng, before = self.rng, self.level()
        choice = rng.random()
        if self.model == 0.0 and choice < 0.4:
            self.model = rng.uniform(0.08, 0.45) * self.cap
            ramp = rng.uniform(10.0, 90.0)
        elif choice < 0.3 + 0.5 * before / self.cap:
            # del model; gc.collect(); torch.cuda.empty_cache()
            self.cache = 0.0
            self.model = 0.0 if rng.random() < 0.7 else self.model
            ramp = 0.5
        else:
            room = self.cap - self.context - self.model
            self.cache = max(self.cache, rng.uniform(0.05, 1.0) * room)
            ramp = rng.uniform(30.0, 600.0)
        self.points += [(t, before), (t + ramp, self.level())]
        return t + ramp


def _notebook_session(card: Card) -> Plan:
    rng = card.rng
    duration = rng.uniform(2.0, 10.0) * HOUR
    cap = _peak(card)
    procs = []
    t = rng.uniform(0.0, 10.0) * MINUTE
    while t < duration:
        start, kernel, end = t, _Kernel(card, t, cap), math.inf
        while t < duration:
            t += min(90 * MINUTE, max(0.5 * MINUTE, rng.lognormvariate(math.log(8 * MINUTE), 1.0)))
            if rng.random() < 0.04:
                end = t
                break
            t = kernel.turn(t)
        procs.append(Proc(card.pid(), start, end, _linear(kernel.points)))
        t += rng.uniform(5.0, 60.0)
    return Plan(
        procs,
        duration,
        {"peak_frac": (cap + card.other) / card.total, "kernels": float(len(procs))},
    )


def _inference_autoscale(card: Card) -> Plan:
    rng = card.rng
    duration = rng.uniform(12.0, 36.0) * HOUR
    most = rng.randint(2, 5)
    per = rng.uniform(0.45, 0.8) * card.total / most
    phase = rng.uniform(0.0, 2 * math.pi)
    check = rng.uniform(10.0, 20.0) * MINUTE
    grow = {"grow": (300.0, 2400.0), "weights": (0.15, 0.5)}
    first, _ = _job(card, rng.uniform(0.0, 60.0), per * rng.uniform(0.85, 1.0), **grow)
    alive, procs = [first], [first]
    t = first.start
    while t < duration:
        t += check * rng.uniform(0.8, 1.2)
        load = 0.55 + 0.45 * math.sin(2 * math.pi * t / DAY + phase) + rng.gauss(0.0, 0.08)
        want = min(most, max(1, math.ceil(most * load)))
        if want > len(alive):
            replica, _ = _job(card, t, per * rng.uniform(0.85, 1.0), **grow)
            alive.append(replica)
            procs.append(replica)
        elif want < len(alive) and rng.random() < 0.7:
            alive.pop().end = t
    params: Params = {"replicas_max": float(most), "per_frac": per / card.total}
    return Plan(procs, duration, params | {"check_s": check, "replicas": float(len(procs))})


def _progressive_resizing(card: Card) -> Plan:
    rng = card.rng
    duration = rng.uniform(4.0, 30.0) * HOUR
    peak = _peak(card)
    act = peak * rng.uniform(0.3, 0.6)
    stages = rng.randint(3, 5)
    first = rng.uniform(0.45, 0.75)
    sides = [first + (1.0 - first) * k / (stages - 1) for k in range(stages)]
    start = rng.uniform(0.0, 60.0)
    points, warm = _warmup(card, start, peak - act + act * sides[0] ** 2)
    switches = sorted(rng.uniform(warm + 10 * MINUTE, 0.55 * duration) for _ in range(stages - 1))
    for when, side in zip(switches, sides[1:], strict=True):
        # Activations scale with the image area; the allocator grows to the new set.
        _grow(
            rng,
            points,
            max(when, points[-1][0] + 1.0),
            peak - act + act * side**2,
            rng.uniform(1.0, 8.0) * MINUTE,
        )
    proc = Proc(card.pid(), start, math.inf, _linear(points))
    params: Params = {"peak_frac": (peak + card.other) / card.total, "act_frac": act / peak}
    return Plan([proc], duration, params | {"stages": float(stages), "first_side": first})


def _eval_bigger_batch(card: Card) -> Plan:
    rng = card.rng
    duration = rng.uniform(3.0, 20.0) * HOUR
    peak = _peak(card)
    bigger = rng.uniform(0.1, 0.35)
    extra = peak * bigger / (1.0 + bigger)
    mode = rng.choice(("release", "cached", "partial"))
    keep = rng.uniform(0.1, 0.6)
    every = rng.uniform(20.0, 90.0) * MINUTE
    start = rng.uniform(0.0, 60.0)
    points, warm = _warmup(card, start, peak - extra)
    evals = _spans(
        rng, warm + every * rng.uniform(0.2, 1.0), duration, every, rng.uniform(1.0, 12.0) * MINUTE
    )
    held: Points = []
    for begin, end in evals:
        after = {"release": 0.0, "cached": extra, "partial": keep * extra}[mode]
        held += [(begin, extra), (end, after)]
    proc = Proc(card.pid(), start, math.inf, _add(_linear(points), _steps(held)))
    params: Params = {"peak_frac": (peak + card.other) / card.total, "extra_frac": extra / peak}
    return Plan([proc], duration, params | {"mode": mode, "every_s": every})


def _spot_preemption_resume(card: Card) -> Plan:
    rng = card.rng
    duration = rng.uniform(6.0, 36.0) * HOUR
    peak = _peak(card)
    load_extra = rng.uniform(0.1, 0.35)
    working = peak / (1.0 + load_extra)
    cuts: list[float] = []
    for cut in sorted(rng.uniform(0.1, 0.9) * duration for _ in range(rng.randint(1, 4))):
        if not cuts or cut - cuts[-1] > HOUR:
            cuts.append(cut)
    procs, start = [], rng.uniform(0.0, 60.0)
    for run, end in enumerate([*cuts, math.inf]):
        level = working * rng.uniform(0.96, 1.0)
        points, _ = _warmup(card, start, level)
        memory = _linear(points)
        if run:
            # torch.load(map_location="cuda"): the checkpoint sits on the GPU until copied in.
            loaded = start + rng.uniform(5.0, 30.0)
            gone = loaded + rng.uniform(20.0, 180.0)
            kept = load_extra * working * rng.uniform(0.0, 0.5) if rng.random() < 0.5 else 0.0
            transient = _steps([(loaded, load_extra * working), (gone, kept)])
            memory = _add(memory, transient)
        procs.append(Proc(card.pid(), start, end, memory))
        start = end + rng.uniform(1.0, 15.0) * MINUTE
    params: Params = {"peak_frac": (peak + card.other) / card.total, "load_extra": load_extra}
    return Plan(procs, duration, params | {"preemptions": float(len(cuts))})


def _tuned_to_fit(card: Card) -> Plan:
    rng = card.rng
    duration = rng.uniform(1.0, 12.0) * HOUR
    share = rng.uniform(0.93, 0.965)
    proc, _ = _job(
        card, rng.uniform(0.0, 30.0), share * card.total - card.other, grow=(60.0, 600.0)
    )
    return Plan(
        [proc],
        duration,
        {"share": share},
        ceiling=NEAR_FULL_CEILING,
        noise_cap=0.004 * card.total,
    )


def _packed_tenants(card: Card) -> Plan:
    rng = card.rng
    duration = rng.uniform(1.5, 10.0) * HOUR
    share = rng.uniform(0.925, 0.96)
    count = rng.randint(2, 4)
    weights = [rng.uniform(0.5, 1.5) for _ in range(count)]
    sizes = [(share * card.total - card.other) * w / sum(weights) for w in weights]
    procs = []
    for i, size in enumerate(sizes):
        start = rng.uniform(0.0, 30.0) if i == 0 else rng.uniform(1.0, 4.0) * MINUTE
        proc, _ = _job(card, start, size, grow=(60.0, 240.0))
        procs.append(proc)
    restarts = 0.0
    if rng.random() < 0.4:
        victim = rng.choice(procs)
        victim.end = rng.uniform(0.2, 0.9) * duration
        again, _ = _job(
            card,
            victim.end + rng.uniform(10.0, 90.0),
            sizes[procs.index(victim)],
            grow=(60.0, 240.0),
        )
        procs.append(again)
        restarts = 1.0
    params: Params = {"share": share, "tenants": float(count), "restarts": restarts}
    return Plan(procs, duration, params, ceiling=NEAR_FULL_CEILING, noise_cap=0.004 * card.total)


# --- leaks -------------------------------------------------------------------


def _leak_plan(procs: list[Proc], leak: Leak, params: Params) -> Plan:
    params = params | {"oom_after_s": leak.oom_after, "leak_start_s": leak.start}
    return Plan(procs, leak.start + leak.oom_after, params, leak=leak, ceiling=LEAK_CEILING)


def _metrics_list_leak(card: Card) -> Plan:
    rng = card.rng
    proc, warm = _job(card, rng.uniform(0.0, 60.0), rng.uniform(0.4, 0.75) * card.total)
    cycle = 0.0
    if rng.random() < 0.5:
        cycle = rng.uniform(20.0, 60.0) * MINUTE
        evals = _spans(rng, warm + cycle, 30 * HOUR, cycle, rng.uniform(1.0, 8.0) * MINUTE)
        proc.memory = _add(proc.memory, _pulses(evals, rng.uniform(0.03, 0.1) * card.total))
    oom_after = _log_uniform(rng, 1.0, 10.0) * HOUR
    every = min(rng.uniform(20.0, 300.0), oom_after / 30.0)
    start = warm + rng.uniform(0.0, every)
    times = [start]
    while times[-1] < start + 2.5 * oom_after:
        times.append(times[-1] + every * rng.uniform(0.98, 1.02))
    sizes = [rng.uniform(0.9, 1.1) for _ in times]
    leak = Leak(proc.pid, start, oom_after, _stairs(times, sizes, oom_after / every), cycle)
    return _leak_plan([proc], leak, {"log_every_s": every, "eval_every_s": cycle})


def _string_cache_leak(card: Card) -> Plan:
    rng = card.rng
    level = rng.uniform(0.4, 0.72) * card.total
    proc, warm = _job(card, rng.uniform(0.0, 60.0), level)
    # Records of sequence lengths: each new longest batch grows the pool, rarer and smaller.
    records: Points = []
    gap, size, t, held = rng.uniform(0.6, 1.2), level * rng.uniform(0.01, 0.04), 1.0, 0.0
    while warm + t * MINUTE < 40 * HOUR:
        held += size
        records.append((warm + t * MINUTE, held))
        t, size = t * math.exp(gap), size * rng.uniform(0.5, 0.9)
    proc.memory = _add(proc.memory, _steps(records))
    start = warm + rng.uniform(1.0, 6.0) * HOUR
    oom_after = rng.uniform(2.0, 20.0) * HOUR
    beta = rng.uniform(0.55, 0.9)

    def shape(t: float) -> float:
        return ((t - start) / oom_after) ** beta if t > start else 0.0

    return _leak_plan([proc], Leak(proc.pid, start, oom_after, shape), {"heaps_beta": beta})


def _retain_graph_loop(card: Card) -> Plan:
    rng = card.rng
    proc, warm = _job(
        card,
        rng.uniform(0.0, 20.0),
        rng.uniform(0.3, 0.7) * card.total,
        load=(5.0, 40.0),
        grow=(20.0, 120.0),
    )
    start = warm + rng.uniform(5.0, 60.0)
    oom_after = rng.uniform(1.5, 15.0) * MINUTE
    step = rng.uniform(0.2, 2.0)
    growth = rng.uniform(0.2, 2.0)

    def shape(t: float) -> float:
        if t < start:
            return 0.0
        # Each step keeps its graph; later graphs reference earlier ones and grow.
        u = (math.floor((t - start) / step) + 1) * step / oom_after
        return (u + growth * u * u) / (1.0 + growth)

    plan = _leak_plan([proc], Leak(proc.pid, start, oom_after, shape), {"step_s": step})
    plan.params["growth"] = growth
    plan.interval = (1.0, 2.0)
    return plan


def _new_group_per_epoch(card: Card) -> Plan:
    rng = card.rng
    proc, warm = _job(card, rng.uniform(0.0, 60.0), rng.uniform(0.4, 0.75) * card.total)
    oom_after = rng.uniform(2.0, 12.0) * HOUR
    epoch = min(rng.uniform(10.0, 90.0) * MINUTE, oom_after / 6.0)
    evals = _spans(rng, warm + epoch, warm + 3 * oom_after, epoch, rng.uniform(1.0, 5.0) * MINUTE)
    proc.memory = _add(proc.memory, _pulses(evals, rng.uniform(0.03, 0.1) * proc.memory(warm)))
    times = [begin for begin, _ in evals]
    shape = _stairs(times, [1.0] * len(times), oom_after / epoch)
    leak = Leak(proc.pid, times[0], oom_after, shape, epoch)
    return _leak_plan([proc], leak, {"epoch_s": epoch})


def _resume_then_leak(card: Card) -> Plan:
    rng = card.rng
    level = rng.uniform(0.4, 0.72) * card.total
    first, _ = _job(card, rng.uniform(0.0, 60.0), level)
    first.end = rng.uniform(1.0, 6.0) * HOUR
    resumed, warm = _job(card, first.end + rng.uniform(1.0, 10.0) * MINUTE, level)
    loaded = resumed.start + rng.uniform(5.0, 30.0)
    transient = [(loaded, level * rng.uniform(0.05, 0.15)), (loaded + rng.uniform(20, 180), 0.0)]
    resumed.memory = _add(resumed.memory, _steps(transient))
    start = warm + rng.uniform(5.0, 60.0) * MINUTE
    oom_after = rng.uniform(2.0, 12.0) * HOUR
    rates = [rng.uniform(0.6, 1.4) for _ in range(int(3 * oom_after / (10 * MINUTE)) + 2)]
    shape = _rate_shape(start, 10 * MINUTE, rates, start + oom_after)
    leak = Leak(resumed.pid, start, oom_after, shape)
    return _leak_plan([first, resumed], leak, {"first_run_s": first.end - first.start})


def _train_clock(evals: list[tuple[float, float]]) -> Memory:
    """Seconds spent outside ``evals`` (sorted, disjoint) up to ``t``."""
    starts = [begin for begin, _ in evals]
    before = [0.0]
    for begin, end in evals:
        before.append(before[-1] + end - begin)

    def clock(t: float) -> float:
        i = bisect.bisect_right(starts, t)
        if i == 0:
            return t
        begin, end = evals[i - 1]
        return t - before[i - 1] - min(t, end) + begin

    return clock


def _train_mode_hook_leak(card: Card) -> Plan:
    rng = card.rng
    proc, warm = _job(card, rng.uniform(0.0, 60.0), rng.uniform(0.4, 0.7) * card.total)
    every = rng.uniform(20.0, 60.0) * MINUTE
    oom_after = rng.uniform(1.0, 12.0) * HOUR
    evals = _spans(rng, warm + every, 60 * HOUR, every, rng.uniform(3.0, 15.0) * MINUTE)
    proc.memory = _add(proc.memory, _pulses(evals, rng.uniform(0.05, 0.12) * card.total))
    clock = _train_clock(evals)
    start = warm if rng.random() < 0.5 else warm + rng.uniform(0.5, 3.0) * HOUR
    for begin, end in evals:
        if begin <= start < end:
            start = end  # the hook only stores in train mode: the first byte waits for training
    planned = clock(start + oom_after) - clock(start)

    def shape(t: float) -> float:
        return (clock(t) - clock(start)) / planned if t >= start else 0.0

    return _leak_plan([proc], Leak(proc.pid, start, oom_after, shape, every), {"eval_s": every})


def _inference_worker_leak(card: Card) -> Plan:
    rng = card.rng
    count = rng.randint(3, 6)
    per = rng.uniform(0.4, 0.75) * card.total / count
    procs = [
        _job(card, rng.uniform(0.0, 120.0), per * rng.uniform(0.8, 1.05))[0] for _ in range(count)
    ]
    deploy = rng.uniform(0.5, 4.0) * HOUR
    old = rng.choice(procs)
    old.end = deploy
    canary, warm = _job(card, deploy + rng.uniform(2.0, 20.0), per * rng.uniform(0.8, 1.05))
    procs.append(canary)
    if rng.random() < 0.5:
        other = rng.choice([p for p in procs if p.end == math.inf and p is not canary])
        other.end = rng.uniform(0.3, 8.0) * HOUR
        procs.append(_job(card, other.end + rng.uniform(5.0, 60.0), per * 0.95)[0])
    start = warm + rng.uniform(0.0, 10.0) * MINUTE
    oom_after = rng.uniform(1.0, 10.0) * HOUR
    sigma, phase = rng.uniform(0.3, 0.8), rng.uniform(0.0, 2 * math.pi)
    windows = int(3 * oom_after / (5 * MINUTE)) + 2
    rates = [
        rng.lognormvariate(0.0, sigma) * (0.6 + 0.4 * math.sin(2 * math.pi * k * 300 / DAY + phase))
        for k in range(windows)
    ]
    shape = _rate_shape(start, 5 * MINUTE, rates, start + oom_after)
    leak = Leak(canary.pid, start, oom_after, shape)
    return _leak_plan(procs, leak, {"workers": float(count), "load_sigma": sigma})


def _seq_len_leak(card: Card) -> Plan:
    rng = card.rng
    start0 = rng.uniform(0.0, 60.0)
    points, warm = _warmup(card, start0, rng.uniform(0.5, 0.8) * card.total)
    period = rng.uniform(5.0, 30.0) * MINUTE
    drop = rng.uniform(0.1, 0.35)
    oom_after = rng.uniform(1.0, 10.0) * HOUR
    start = warm if rng.random() < 0.5 else warm + rng.uniform(0.5, 2.0) * HOUR
    _sawtooth(rng, points, warm, start + 2.5 * oom_after, drop, period)
    proc = Proc(card.pid(), start0, math.inf, _linear(points))
    # Length buckets come in runs; each step leaks in proportion to its length.
    bucket = rng.uniform(1.0, 15.0) * MINUTE
    rates = [_log_uniform(rng, 0.1, 1.0) for _ in range(int(3 * oom_after / bucket) + 2)]
    shape = _rate_shape(start, bucket, rates, start + oom_after)
    leak = Leak(proc.pid, start, oom_after, shape, period)
    return _leak_plan([proc], leak, {"period_s": period, "drop": drop, "bucket_s": bucket})


def _accelerating_cache(card: Card) -> Plan:
    rng = card.rng
    trainer, warm = _job(card, rng.uniform(0.0, 20.0) * MINUTE, rng.uniform(0.3, 0.55) * card.total)
    every = rng.uniform(30.0, 90.0) * MINUTE
    evals = _spans(rng, warm + every, 60 * HOUR, every, rng.uniform(2.0, 10.0) * MINUTE)
    trainer.memory = _add(trainer.memory, _pulses(evals, rng.uniform(0.05, 0.1) * card.total))
    service, service_warm = _job(
        card, rng.uniform(0.0, 20.0) * MINUTE, rng.uniform(0.04, 0.12) * card.total
    )
    procs = sorted([trainer, service], key=lambda p: p.start)
    if rng.random() < 0.5:
        sidecar_size = min(rng.uniform(0.6, 2.0) * 1024 * MIB, 0.05 * card.total)
        procs.append(_job(card, rng.uniform(0.0, 30.0) * MINUTE, sidecar_size)[0])
    start = service_warm + rng.uniform(0.0, 30.0) * MINUTE
    oom_after = rng.uniform(1.0, 8.0) * HOUR
    k = rng.uniform(1.0, 3.5)

    def shape(t: float) -> float:
        return math.expm1(k * (t - start) / oom_after) / math.expm1(k) if t > start else 0.0

    leak = Leak(service.pid, start, oom_after, shape, every)
    return _leak_plan(procs, leak, {"k": k, "eval_every_s": every})


def _workspace_creep(card: Card) -> Plan:
    rng = card.rng
    level = rng.uniform(0.45, 0.8) * card.total
    proc, warm = _job(card, rng.uniform(0.0, 60.0), level)
    every = rng.uniform(30.0, 120.0) * MINUTE
    saves = _spans(rng, warm + every, 80 * HOUR, every, rng.uniform(0.5, 3.0) * MINUTE)
    proc.memory = _add(proc.memory, _pulses(saves, rng.uniform(0.02, 0.05) * level))
    oom_after = rng.uniform(10.0, 48.0) * HOUR
    block = rng.uniform(4.0, 64.0) * MIB
    count = min(4000.0, max(40.0, (0.85 * card.total - level) / block))
    gap = oom_after / count
    start = warm + rng.uniform(0.0, 2.0) * HOUR
    times = [start]
    while times[-1] < start + 1.6 * oom_after:
        times.append(times[-1] + rng.expovariate(1.0 / gap))
    shape = _stairs(times, [1.0] * len(times), count)
    leak = Leak(proc.pid, start, oom_after, shape, every)
    return _leak_plan([proc], leak, {"block_mib": block / MIB, "threads": count})


BUILDERS: dict[str, Callable[[Card], Plan]] = {
    "moe_routing_swings": _moe_routing_swings,
    "checkpoint_staging": _checkpoint_staging,
    "activation_ckpt_toggle": _activation_ckpt_toggle,
    "pipeline_bubbles": _pipeline_bubbles,
    "notebook_session": _notebook_session,
    "inference_autoscale": _inference_autoscale,
    "progressive_resizing": _progressive_resizing,
    "eval_bigger_batch": _eval_bigger_batch,
    "spot_preemption_resume": _spot_preemption_resume,
    "tuned_to_fit": _tuned_to_fit,
    "packed_tenants": _packed_tenants,
    "metrics_list_leak": _metrics_list_leak,
    "string_cache_leak": _string_cache_leak,
    "retain_graph_loop": _retain_graph_loop,
    "new_group_per_epoch": _new_group_per_epoch,
    "resume_then_leak": _resume_then_leak,
    "train_mode_hook_leak": _train_mode_hook_leak,
    "inference_worker_leak": _inference_worker_leak,
    "seq_len_leak": _seq_len_leak,
    "accelerating_cache": _accelerating_cache,
    "workspace_creep": _workspace_creep,
}


# --- sampling, noise and rendering -------------------------------------------


@dataclass(frozen=True)
class Noise:
    """Per-process measurement noise: gaussian, gaussian with one-poll spikes, or AR(1) drift."""

    kind: str
    sigma: float
    spike_p: float = 0.0
    spike_max: float = 0.0
    phi: float = 0.0

    @classmethod
    def draw(cls, rng: random.Random, cap: float) -> Noise:
        """A noise model whose excursions stay within ``cap`` bytes."""
        kind = rng.choice(("gauss", "spiky", "drift"))
        sigma = min(_log_uniform(rng, 0.1, 20.0) * MIB, cap / 5.0)
        if kind == "spiky":
            spike = min(rng.uniform(30.0, 400.0) * MIB, cap - 4.0 * sigma)
            return cls(kind, sigma, rng.uniform(0.002, 0.02), spike)
        if kind == "drift":
            return cls(kind, sigma, phi=rng.uniform(0.95, 0.995))
        return cls(kind, sigma)

    def series(self, rng: random.Random, n: int, scale: float) -> list[float]:
        """``n`` noise values; the draws do not depend on anything but ``rng`` and ``n``."""
        out = []
        limit, x = 4.0 * self.sigma, 0.0
        for _ in range(n):
            if self.kind == "drift":
                x = self.phi * x + math.sqrt(1.0 - self.phi**2) * rng.gauss(0.0, self.sigma)
                value = x
            else:
                value = rng.gauss(0.0, self.sigma)
            value = max(-limit, min(limit, value))
            if self.spike_p and rng.random() < self.spike_p:
                value += rng.uniform(0.2, 1.0) * self.spike_max
            out.append(value * scale)
        return out


def _poll_times(
    rng: random.Random, low: float, high: float, end: float
) -> tuple[float, list[float]]:
    """(interval, poll times up to ``end``): jittered, with the odd run of missed polls."""
    interval = min(10.0, max(rng.uniform(low, high), end / MAX_POLLS))
    jitter = rng.uniform(0.0, 0.12) * interval
    miss = rng.choice((0.0, 0.0005, 0.002, 0.005))
    times: list[float] = []
    slot = 0
    while slot * interval <= end:
        if slot and miss and rng.random() < miss:
            slot += rng.randint(2, 6)
            continue
        times.append(round(slot * interval + (rng.uniform(-jitter, jitter) if slot else 0.0), 3))
        slot += 1
    return interval, times


@dataclass
class _Rendered:
    """Per-poll memory of every process (None when not alive) and the device baseline."""

    times: list[float]
    procs: list[Proc]
    values: list[list[float | None]]
    other: list[float]

    def healthy_device(self, i: int) -> float:
        return self.other[i] + sum(v[i] or 0.0 for v in self.values)


def _render(plan: Plan, card: Card, times: list[float], noise: Noise, seed: int) -> _Rendered:
    """Evaluate every process at every poll, add noise, and fit under the plan's ceiling."""
    rng = random.Random(f"blind-noise-{seed}")
    values: list[list[float | None]] = []
    for proc in plan.procs:
        jitter = noise.series(rng, len(times), proc.noise)
        values.append(
            [
                max(0.0, proc.memory(t) + j) if proc.start <= t < proc.end else None
                for t, j in zip(times, jitter, strict=True)
            ]
        )
    other = [max(0.0, min(600 * MIB, card.other + rng.gauss(0.0, 0.3 * MIB))) for _ in times]
    rendered = _Rendered(times, plan.procs, values, other)
    # A safety net, not the design: builders size jobs under the ceiling, but a noisy
    # draw may poke over; scale the processes (not the baseline) down if so.
    peak = max(rendered.healthy_device(i) for i in range(len(times)))
    limit = plan.ceiling * card.total
    if peak > limit:
        scale = (limit - max(other)) / (peak - min(other))
        for series in values:
            series[:] = [None if v is None else v * scale for v in series]
        plan.params["fit_scale"] = scale
    return rendered


def _calibrate(plan: Plan, rendered: _Rendered, total: float, quantum: float) -> list[float]:
    """Leaked bytes per poll, scaled so the device first reaches ``total`` at the planned OOM.

    At each poll ``i`` the leak reaches the total once its scale is at least
    ``(total - healthy_i) / shape_i``. Taking that scale at the highest healthy poll
    from the planned OOM through one healthy cycle (at most a quarter of the leak)
    puts the first crossing there, or on an earlier, higher healthy peak. A margin
    covers rounding to the quantum.
    """
    assert plan.leak is not None
    leak, times = plan.leak, rendered.times
    shape = [leak.shape(t) for t in times]
    planned = leak.start + leak.oom_after
    first = bisect.bisect_left(times, planned)
    # Look no further than a quarter of the leak past the plan, so the OOM stays near it.
    window = min(leak.cycle_s, 0.25 * leak.oom_after)
    last = max(first, bisect.bisect_right(times, planned + window) - 1)
    if first >= len(times):
        raise RuntimeError("the trace ends before the planned OOM")
    at = max(range(first, last + 1), key=rendered.healthy_device)
    need = (total - rendered.healthy_device(at)) / shape[at]
    scale = need + ((len(plan.procs) + 2) * quantum + MIB) / shape[at]
    return [scale * s for s in shape]


def _quantise(value: float, quantum: float) -> int:
    return int(round(value / quantum) * quantum)


def _polls(
    rendered: _Rendered, leaked: list[float], leak_pid: int | None, quantum: float
) -> list[tuple[int, list[tuple[int, int]]]]:
    """(device used, [(pid, used)]) per poll as NVML would report them."""
    polls = []
    for i in range(len(rendered.times)):
        procs = []
        for proc, series in zip(rendered.procs, rendered.values, strict=True):
            value = series[i]
            if value is None:
                continue
            if proc.pid == leak_pid:
                value += leaked[i]
            procs.append((proc.pid, _quantise(value, quantum)))
        other = _quantise(rendered.other[i], min(quantum, MIB))
        polls.append((other + sum(v for _, v in procs), procs))
    return polls


def _format_t(t: float) -> str:
    return f"{t:.3f}".rstrip("0").rstrip(".")


def _draw_rows(rng: random.Random, multi: bool) -> int:
    """List processes every n-th poll (n >= 1), or never (0): process lists are polled less."""
    if multi:
        return rng.choice((1, 1, 2, 3, 5))
    draw = rng.random()
    if draw < 0.4:
        return 1
    return rng.randint(2, 10) if draw < 0.75 else 0


def build(
    scenario: str,
    seed: int,
    name: str | None = None,
    *,
    with_leak: bool = True,
    until: float | None = None,
) -> tuple[list[str], Label]:
    """One trace (CSV lines, header first) and its label.

    ``with_leak=False`` gives a leak trace's twin: the same processes, noise and
    poll times, without the leaked bytes, ending where the leak trace ends.
    ``until`` drops the polls after that time.
    """
    if scenario not in BUILDERS:
        raise ValueError(f"unknown scenario {scenario!r}; choose from {', '.join(SCENARIOS)}")
    rng = random.Random(seed)
    card = Card(rng)
    plan = BUILDERS[scenario](card)
    rows_every = _draw_rows(rng, scenario in MULTI_PROCESS)
    noise = Noise.draw(rng, plan.noise_cap)
    quantum = rng.choices(QUANTA, weights=(3, 3, 2, 1))[0]
    leak = plan.leak
    end = plan.duration
    if leak is not None:
        end = leak.start + leak.oom_after + leak.cycle_s + 200.0
    interval, times = _poll_times(rng, *plan.interval, end)
    rendered = _render(plan, card, times, noise, seed)
    total = card.mib * (1 << 20)
    leaked = [0.0] * len(times)
    if leak is not None:
        leaked = _calibrate(plan, rendered, float(total), quantum)
    polls = _polls(rendered, leaked, leak.pid if leak else None, quantum)
    stop = len(polls) - 1
    if leak is not None:
        stop = next(i for i, (used, _) in enumerate(polls) if used >= total)
        if with_leak:
            polls[stop] = _clamp(polls[stop], leak.pid, total)
        else:
            polls = _polls(rendered, [0.0] * len(times), None, quantum)
    lines = ["t,gpu,pid,used_bytes,total_bytes"]
    for i in range(stop + 1):
        t = times[i]
        if until is not None and t > until:
            break
        used, procs = polls[i]
        lines.append(f"{_format_t(t)},0,,{used},{total}")
        if rows_every and i % rows_every == 0:
            lines += [f"{_format_t(t)},0,{pid},{value}," for pid, value in procs]
    label = _label(scenario, seed, name, card, plan, interval, times[stop])
    label.device_only = rows_every == 0
    drawn: Params = {"noise": noise.kind, "noise_sigma_mib": noise.sigma / MIB}
    label.params.update(drawn | {"quantum_mib": quantum / MIB, "rows_every": float(rows_every)})
    if leak is not None:
        label.rate_bytes_per_s = leaked[stop] / (times[stop] - leak.start)
        label.params["leaked_bytes_at_oom"] = leaked[stop]
    return lines, label


def _clamp(
    poll: tuple[int, list[tuple[int, int]]], pid: int, total: int
) -> tuple[int, list[tuple[int, int]]]:
    """The OOM poll: the device holds exactly the total; the failed allocation is not counted."""
    used, procs = poll
    excess = used - total
    return total, [(p, max(0, v - excess) if p == pid else v) for p, v in procs]


def _label(
    scenario: str,
    seed: int,
    name: str | None,
    card: Card,
    plan: Plan,
    interval: float,
    last_t: float,
) -> Label:
    leak = plan.leak
    card_params: Params = {"card_total_mib": float(card.mib), "other_mib": card.other / MIB}
    label = Label(
        name=name or f"{scenario}-{seed}",
        scenario=scenario,
        seed=seed,
        leak=leak is not None,
        near_oom_expected=scenario in NEAR_FULL,
        card_gib=card.gib,
        interval_s=round(interval, 3),
        duration_s=last_t,
        params=card_params | plan.params,
    )
    if leak is not None:
        label.leak_start_t = round(leak.start, 3)
        label.oom_t = last_t
        label.pid = leak.pid if scenario in MULTI_PROCESS else None
    return label


def twin(label: Label) -> list[str]:
    """The leak-free twin of a leak trace, up to the leak trace's OOM (see ``build``)."""
    return build(label.scenario, label.seed, label.name, with_leak=False, until=label.oom_t)[0]


def generate(
    count: int, seed: int, scenarios: tuple[str, ...] = SCENARIOS
) -> Iterator[tuple[list[str], Label]]:
    """``count`` traces, cycling through ``scenarios``, each with its own derived seed."""
    for i in range(count):
        scenario = scenarios[i % len(scenarios)]
        yield build(scenario, seed * 1_000_037 + i, f"{i:04d}-{scenario}")


def main(argv: list[str] | None = None) -> int:
    """Write traces and labels.jsonl to a folder."""
    return write_traces(argv, __doc__.split("\n\n")[0], SCENARIOS, generate)


if __name__ == "__main__":
    sys.exit(main())
