"""Labelled GPU memory traces of every case the detector must get right, with random parameters.

Each scenario builds one or more training processes on one GPU out of the
pieces real jobs are made of -- CUDA context, model load, a caching allocator
that warms up, a sawtooth from periodic ``empty_cache``, eval spikes, growth
that saturates, noise and quantisation -- and, for the leak cases, a leak.
A leaking trace ends when the GPU runs out of memory (the OOM). The label says
what must (and must not) be found.

    python benchmarks/scenarios.py --out traces/ --count 50 --seed 1

writes ``NAME.csv`` traces in the project's format and ``labels.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

GIB = float(1 << 30)
MIB = float(1 << 20)
CARDS_GIB = (16, 24, 32, 40, 48, 80, 94, 141)
WARMUP_TAU_S = (15.0, 150.0)
"""Range of the warm-up's time constant, for jobs whose warm-up settles exponentially."""

HEALTHY = (
    "warmup_flat",
    "sawtooth",
    "eval_spikes",
    "saturating",
    "multi_job",
    "restart",
    "flat_95",
)
LEAKS = (
    "steady_from_start",
    "steady_late",
    "staircase",
    "sawtooth_leak",
    "one_of_many",
    "slow_creep",
    "fast_leak",
)
SCENARIOS = HEALTHY + LEAKS


@dataclass
class Label:
    """What a trace contains, and so what a detector must say about it."""

    name: str
    scenario: str
    seed: int
    leak: bool
    gpu: int = 0
    pid: int | None = None
    """The leaking process, where a detector must name it (several processes on the GPU)."""
    leak_start_t: float | None = None
    oom_t: float | None = None
    near_oom_expected: bool = False
    card_gib: int = 0
    interval_s: float = 1.0
    duration_s: float = 0.0
    rate_bytes_per_s: float = 0.0
    device_only: bool = False
    params: dict[str, float | str] = field(default_factory=dict)

    def deadline(self) -> float | None:
        """Latest time a leak may be raised: 5 min before OOM, or a quarter of leak-to-OOM."""
        if self.oom_t is None or self.leak_start_t is None:
            return None
        return self.oom_t - min(300.0, (self.oom_t - self.leak_start_t) / 4.0)


Memory = Callable[[float], float]


@dataclass
class Job:
    """One training process: memory as a function of trace time while it lives."""

    pid: int
    start: float
    end: float
    memory: Memory


def _log_uniform(rng: random.Random, low: float, high: float) -> float:
    return math.exp(rng.uniform(math.log(low), math.log(high)))


def healthy_job(
    rng: random.Random,
    start: float,
    working_set: float,
    *,
    sawtooth: bool | None = None,
    evals: bool | None = None,
    saturating: bool = False,
    warmup_tau: tuple[float, float] = WARMUP_TAU_S,
    warmup_pause: Callable[[], float] | None = None,
    sawtooth_s: float | None = None,
) -> Memory:
    """Memory of a healthy job started at ``start`` whose steady working set is ``working_set``.

    ``warmup_tau``: the range the allocator's warm-up time constant is drawn
    from, for the jobs whose warm-up settles exponentially. ``warmup_pause``:
    draws a pause between the model load and the allocator's growth (a
    compile, a data load); without it the growth starts with the job.
    ``sawtooth_s``: the job saws with this cycle (an ``empty_cache`` every so
    many seconds) instead of a drawn one, whether or not it was drawn to saw.
    """
    context = rng.uniform(300, 900) * MIB
    load_at = rng.uniform(5, 60)
    model = working_set * rng.uniform(0.2, 0.5)
    rest = working_set - model - context
    shape = rng.choice(("exp", "exp", "steps", "linear"))
    tau = rng.uniform(*warmup_tau)
    ramp = rng.uniform(30, 240)
    step_times = sorted(rng.uniform(0, 300) for _ in range(rng.randint(2, 6)))
    if sawtooth is None:
        sawtooth = rng.random() < 0.4
    period = rng.uniform(60, 1200)
    if sawtooth_s is not None:
        sawtooth, period = True, sawtooth_s  # after the draws: the rest are as without it
    amplitude = working_set * rng.uniform(0.03, 0.15) if sawtooth else 0.0
    if evals is None:
        evals = rng.random() < 0.4
    eval_every = rng.uniform(600, 3600)
    eval_len = rng.uniform(30, 300)
    eval_size = working_set * rng.uniform(0.03, 0.2) if evals else 0.0
    growth = working_set * rng.uniform(0.05, 0.2) if saturating else 0.0
    first_step = rng.uniform(30, 300)
    ratio = rng.uniform(1.4, 2.2)
    # Drawn from its own generator: every draw above and after is as without it.
    grow_from = load_at + warmup_pause() if warmup_pause is not None else 0.0

    def memory(t: float) -> float:
        age = t - start
        value = context
        if age >= load_at:
            value += model
        grown = age - grow_from
        if grown < 0.0:
            warm = 0.0
        elif shape == "exp":
            warm = 1.0 - math.exp(-grown / tau)
        elif shape == "linear":
            warm = min(1.0, grown / ramp)
        else:
            warm = sum(1 for s in step_times if grown >= s) / len(step_times)
        value += rest * warm
        if amplitude:
            value += amplitude * ((age % period) / period) * warm
        if eval_size and age > eval_every and (age % eval_every) < eval_len:
            value += eval_size
        if growth and age > first_step:
            # New longest sequences: steps at geometrically spaced times, each smaller.
            k = int(math.log(age / first_step) / math.log(ratio)) + 1
            value += growth * (1.0 - 0.6**k)
        return value

    return memory


def leak_fn(kind: str, start: float, rate: float, rng: random.Random) -> Memory:
    """Extra memory held by a leak of ``rate`` bytes/s that begins at ``start``."""
    if kind == "staircase":
        epoch = rng.uniform(120, 3600)
        block = rate * epoch
        return lambda t: block * math.floor((t - start) / epoch) if t > start else 0.0
    return lambda t: rate * (t - start) if t > start else 0.0


def no_leak(t: float) -> float:
    """No memory held: the leak of a healthy trace, or of a leak trace's twin."""
    return 0.0


def _plus(memory: Memory, extra: Memory) -> Memory:
    return lambda t: memory(t) + extra(t)


def _noise_model(rng: random.Random) -> tuple[float, float]:
    sigma = rng.choice((0.0, 2.0, 8.0, 32.0, 64.0)) * MIB
    quantum = rng.choice((1.0, 2.0 * MIB, MIB, 64 * 1024.0))
    return sigma, quantum


def build(  # noqa: PLR0912, PLR0915 - one scenario table reads best in one place
    scenario: str,
    seed: int,
    name: str | None = None,
    *,
    with_leak: bool = True,
    until: float | None = None,
    leak_timing: tuple[float, float] | None = None,
    warmup_tau: tuple[float, float] = WARMUP_TAU_S,
    warmup_pause: tuple[float, float] | None = None,
) -> tuple[list[str], Label]:
    """Build one trace: CSV lines (header first) and its label.

    ``with_leak=False`` builds a leak trace's twin: the same jobs, noise and
    sample times, with the leak left out (every random draw is made all the
    same, so the two traces are equal until the leak begins). ``until`` stops
    the trace after that time. ``leak_timing`` (start, seconds to OOM) replaces
    a leak scenario's own (drawn all the same: the rest of the trace is as it
    would be) and is kept in the label's params for its twin; so is a
    ``warmup_tau`` other than the default (drawn with as many draws), and a
    ``warmup_pause`` range (each job's pause drawn from a generator of its own).
    """
    rng = random.Random(f"{scenario}:{seed}")
    pauses = random.Random(f"pause:{scenario}:{seed}")
    pause = (lambda: pauses.uniform(*warmup_pause)) if warmup_pause is not None else None
    card_gib = rng.choice(CARDS_GIB)
    total = card_gib * GIB
    interval = rng.choice((1.0, 1.0, 2.0, 5.0, 10.0))
    sigma, quantum = _noise_model(rng)
    label = Label(
        name=name or f"{scenario}-{seed}",
        scenario=scenario,
        seed=seed,
        leak=scenario in LEAKS,
        card_gib=card_gib,
        interval_s=interval,
    )
    base_pid = rng.randint(1000, 4_000_000)
    jobs: list[Job] = []
    duration = rng.uniform(2, 12) * 3600
    frac = rng.uniform(0.3, 0.8)
    healthy_kwargs: dict[str, bool] = {}
    leak_kind, leak_start, leak_pid = "", 0.0, base_pid
    oom_after: float | None = None

    if scenario == "warmup_flat":
        healthy_kwargs = {"sawtooth": False, "evals": False}
    elif scenario == "sawtooth":
        healthy_kwargs = {"sawtooth": True}
    elif scenario == "eval_spikes":
        healthy_kwargs = {"evals": True}
    elif scenario == "saturating":
        healthy_kwargs = {"saturating": True}
    elif scenario == "flat_95":
        frac = rng.uniform(0.93, 0.96)
        healthy_kwargs = {"sawtooth": False, "evals": False}
        sigma = min(sigma, 8 * MIB)
        label.near_oom_expected = True
    elif scenario == "steady_from_start":
        leak_kind, leak_start, oom_after = "steady", 0.0, _log_uniform(rng, 1200, 8 * 3600)
    elif scenario == "steady_late":
        leak_kind, leak_start = "steady", rng.uniform(1, 6) * 3600
        oom_after = _log_uniform(rng, 1200, 8 * 3600)
    elif scenario == "staircase":
        leak_kind, leak_start = "staircase", rng.uniform(0, 2) * 3600
        oom_after = _log_uniform(rng, 2 * 3600, 12 * 3600)
        healthy_kwargs = {"sawtooth": False}
    elif scenario == "sawtooth_leak":
        leak_kind, leak_start = "steady", rng.uniform(0.2, 3) * 3600
        oom_after = _log_uniform(rng, 1800, 8 * 3600)
        healthy_kwargs = {"sawtooth": True}
    elif scenario == "slow_creep":
        leak_kind, leak_start = "steady", rng.uniform(0, 1) * 3600
        oom_after = rng.uniform(10, 30) * 3600
    elif scenario == "fast_leak":
        leak_kind, leak_start = "steady", rng.uniform(0.25, 3) * 3600
        oom_after = rng.uniform(120, 900)
    if leak_timing is not None and leak_kind:
        leak_start, oom_after = leak_timing
        label.params["leak_start_s"], label.params["oom_after_s"] = leak_timing
    label.params["frac"] = round(frac, 3)
    if warmup_tau != WARMUP_TAU_S:
        label.params["warmup_tau_s"] = span_text(warmup_tau)
    if warmup_pause is not None:
        label.params["warmup_pause_s"] = span_text(warmup_pause)

    if scenario in ("multi_job", "one_of_many"):
        count = rng.randint(2, 4)
        share = rng.uniform(0.4, 0.75) / count
        for i in range(count):
            start = 0.0 if i == 0 else rng.uniform(0, duration * 0.6)
            end = (
                duration if scenario == "one_of_many" else rng.uniform(start + 1800, duration * 1.3)
            )
            memory = healthy_job(
                rng, start, share * total, warmup_tau=warmup_tau, warmup_pause=pause
            )
            jobs.append(Job(base_pid + 7 * i, start, end, memory))
        if scenario == "one_of_many":
            index = rng.randrange(count)
            leak_pid = jobs[index].pid
            # Every job is on the GPU when the leak starts: with the others not started
            # yet, "one of many" would be one of one (and the pid trivially right).
            last_start = max(job.start for job in jobs)
            leak_start = max(last_start + 600, rng.uniform(0, 3) * 3600)
            leak_kind, oom_after = "steady", _log_uniform(rng, 1800, 8 * 3600)
            label.pid = leak_pid
    elif scenario == "restart":
        start, pid = 0.0, base_pid
        memory = healthy_job(rng, 0.0, frac * total, warmup_tau=warmup_tau, warmup_pause=pause)
        restarts = sorted(rng.uniform(0.5, 0.9) * duration * k / 3 for k in range(1, 4))
        for when in restarts:
            jobs.append(Job(pid, start, when, memory))
            start = when + rng.uniform(20, 300)
            pid = pid if rng.random() < 0.3 else pid + 13
            memory = healthy_job(
                rng, start, frac * total, warmup_tau=warmup_tau, warmup_pause=pause
            )
        jobs.append(Job(pid, start, duration, memory))
    else:
        jobs.append(
            Job(
                base_pid,
                0.0,
                duration,
                healthy_job(
                    rng,
                    0.0,
                    frac * total,
                    warmup_tau=warmup_tau,
                    warmup_pause=pause,
                    **healthy_kwargs,
                ),
            )
        )

    baseline = rng.uniform(0, 500) * MIB
    leak: Memory = no_leak
    if leak_kind:
        assert oom_after is not None
        probe = next(j for j in jobs if j.pid == leak_pid)
        # Headroom at the leak's start, measured at the peaks, sets the rate that OOMs on time.
        around = [
            baseline + sum(j.memory(t) for j in jobs if j.start <= t < j.end)
            for t in (leak_start + k * 5 for k in range(-240, 240))
            if t >= 0
        ]
        peak, trough = max(around), min(around)
        if total - peak < 0.03 * total:
            # The healthy job alone would run out before the leak begins: draw another.
            return build(
                scenario,
                seed + 1_000_000,
                name,
                with_leak=with_leak,
                until=until,
                leak_timing=leak_timing,
                warmup_tau=warmup_tau,
                warmup_pause=warmup_pause,
            )
        rate = (total - peak) / oom_after
        drawn = leak_fn(leak_kind, leak_start, rate, rng)  # drawn for the twin too: same noise
        leak = drawn if with_leak else no_leak
        label.leak_start_t = leak_start
        label.rate_bytes_per_s = rate
        probe.memory = _plus(probe.memory, leak)
        # The peaks (eval spikes) may be rare: run on until the floor alone reaches the total.
        longer = leak_start + max(oom_after * 1.5, (total - trough) / rate * 1.1) + 600
        for job in jobs:
            if job is probe or job.end >= duration:
                job.end = max(job.end, longer)
        duration = longer

    label.device_only = scenario in ("restart", "warmup_flat") and rng.random() < 0.5
    lines = ["t,gpu,pid,used_bytes,total_bytes"]
    t = 0.0
    end = duration if until is None else min(duration, until)
    total_int = int(total)
    while t <= end:
        live = [(j.pid, j.memory(t)) for j in jobs if j.start <= t < j.end]
        noisy = []
        for pid, clean in live:
            value = clean + (rng.gauss(0.0, sigma) if sigma else 0.0)
            noisy.append((pid, max(0, int(value // quantum * quantum))))
        used = int(baseline) + sum(v for _, v in noisy)
        stamp = f"{t:.3f}".rstrip("0").rstrip(".")
        if used >= total_int:
            label.oom_t = float(stamp)
            used = total_int
        lines.append(f"{stamp},0,,{used},{total_int}")
        if not label.device_only:
            lines.extend(f"{stamp},0,{pid},{value}," for pid, value in noisy)
        if label.oom_t is not None:
            break
        t += interval * rng.uniform(0.98, 1.02) if interval > 1 else interval
    label.duration_s = t  # a leak that never ran out keeps oom_t None: the scorer's miss
    return lines, label


_Default = TypeVar("_Default")


def span_text(span: tuple[float, float]) -> str:
    """A (low, high) range as a label parameter: ``LOW-HIGH``."""
    return f"{span[0]:g}-{span[1]:g}"


def span_param(label: Label, key: str, default: _Default) -> tuple[float, float] | _Default:
    """The range ``span_text`` stored under ``key`` (a twin is built with its leak's), else
    ``default``."""
    parts = str(label.params.get(key, "")).split("-")
    return (float(parts[0]), float(parts[1])) if len(parts) == 2 else default


def twin(label: Label) -> list[str]:
    """The leak-free twin of a leak trace, up to the leak trace's OOM (see ``build``)."""
    start, oom_after = label.params.get("leak_start_s"), label.params.get("oom_after_s")
    timing = None if start is None or oom_after is None else (float(start), float(oom_after))
    lines, _ = build(
        label.scenario,
        label.seed,
        label.name,
        with_leak=False,
        until=label.oom_t,
        leak_timing=timing,
        warmup_tau=span_param(label, "warmup_tau_s", WARMUP_TAU_S),
        warmup_pause=span_param(label, "warmup_pause_s", None),
    )
    return lines


def generate(
    count: int, seed: int, scenarios: tuple[str, ...] = SCENARIOS
) -> Iterator[tuple[list[str], Label]]:
    """``count`` traces, cycling through ``scenarios``, each with its own derived seed."""
    for i in range(count):
        scenario = scenarios[i % len(scenarios)]
        yield build(scenario, seed * 100_000 + i, f"{i:04d}-{scenario}")


Generate = Callable[[int, int, tuple[str, ...]], Iterator[tuple[list[str], Label]]]


def write_traces(
    argv: list[str] | None, description: str, scenarios: tuple[str, ...], generate: Generate
) -> int:
    """Command line of a generator: write its traces and labels.jsonl to a folder."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--count", type=int, default=len(scenarios))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--scenario", action="append", choices=scenarios)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    chosen = tuple(args.scenario) if args.scenario else scenarios
    with (args.out / "labels.jsonl").open("w") as labels:
        for lines, label in generate(args.count, args.seed, chosen):
            (args.out / f"{label.name}.csv").write_text("\n".join(lines) + "\n")
            labels.write(json.dumps(asdict(label)) + "\n")
    print(f"wrote {args.count} traces to {args.out}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Write traces and labels.jsonl to a folder."""
    return write_traces(argv, __doc__.split("\n\n")[0], SCENARIOS, generate)


if __name__ == "__main__":
    sys.exit(main())
