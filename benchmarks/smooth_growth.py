"""Healthy growth that slows smoothly over hours: how many such jobs are raised as leaks.

    python benchmarks/smooth_growth.py [--count 20] [--seed 1-3] [--config FILE]

The development generator's saturating growth comes in steps ever further
apart. A job's memory may also bend smoothly: a cache whose hit rate climbs,
fragmentation settling, new longest sequences written as a curve. Each trace
here is a healthy job (the development generator's warm-up, noise and
quantisation; cards of 16-141 GiB, sampled every 1-10 s, 3-12 hours) whose
memory then grows by 5-30% of its working set along one smooth curve with a
time scale of 10 minutes to 3 hours, to at most 90% of its card:

- ``exp``: ``1 - e^(-t/s)`` (settles);
- ``hyperbolic``: ``t / (t + s)`` (settles, more slowly);
- ``log``: ``ln(1 + t/s)`` and ``sqrt``: ``sqrt(t/s)`` (never settle, but slow
  down for as long as the job runs).

Every curve is scaled to reach its growth at the trace's end. The script
scores each curve as ``score.py`` scores healthy traces: false alarms for the
project and both baselines. docs/detection.md ("What the errors left are")
quotes it.
"""

from __future__ import annotations

import math
import random
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import scenarios
import score

from watchdog.config import DetectionSettings

CURVES: dict[str, Callable[[float, float], float]] = {
    "exp": lambda t, s: 1.0 - math.exp(-t / s),
    "hyperbolic": lambda t, s: t / (t + s),
    "log": lambda t, s: math.log1p(t / s),
    "sqrt": lambda t, s: math.sqrt(t / s),
}
MOST_OF_CARD = 0.9


def build(curve: str, seed: int, name: str) -> tuple[list[str], scenarios.Label]:
    """One healthy trace whose memory grows along ``curve``, and its label."""
    rng = random.Random(f"{curve}:{seed}")
    card_gib = rng.choice(scenarios.CARDS_GIB)
    total = card_gib * int(scenarios.GIB)
    interval = rng.choice((1.0, 1.0, 2.0, 5.0, 10.0))
    sigma = rng.choice((0.0, 2.0, 8.0, 32.0, 64.0)) * scenarios.MIB
    quantum = rng.choice((1.0, 2.0 * scenarios.MIB, scenarios.MIB, 64 * 1024.0))
    duration = rng.uniform(3, 12) * 3600
    working_set = total * rng.uniform(0.3, 0.7)
    growth = min(working_set * rng.uniform(0.05, 0.3), MOST_OF_CARD * total - working_set)
    scale = math.exp(rng.uniform(math.log(600), math.log(3 * 3600)))
    shape = CURVES[curve]
    job = scenarios.healthy_job(rng, 0.0, working_set, sawtooth=False, evals=False)
    full = shape(duration, scale)

    label = scenarios.Label(
        name=name, scenario=curve, seed=seed, leak=False, card_gib=card_gib, interval_s=interval
    )
    label.params.update(growth_gib=round(growth / scenarios.GIB, 2), scale_s=round(scale))
    lines = ["t,gpu,pid,used_bytes,total_bytes"]
    pid = rng.randint(1000, 4_000_000)
    t = 0.0
    while t < duration:
        value = job(t) + growth * shape(t, scale) / full + rng.gauss(0.0, sigma)
        used = int(min(max(value, 0.0), total) // quantum * quantum)
        stamp = f"{t:.3f}".rstrip("0").rstrip(".")
        lines.append(f"{stamp},0,,{used},{total}")
        lines.append(f"{stamp},0,{pid},{used},")
        t += interval
    label.duration_s = t
    return lines, label


def run_curve(
    curve: str, count: int, seeds: list[int], settings: DetectionSettings
) -> list[score.Record]:
    """``count`` traces of ``curve`` per seed, each evaluated as ``score.py`` does."""
    return score.study_records(
        lambda seed, i: build(curve, seed * 100_000 + i, f"{i:04d}-{curve}"),
        count,
        seeds,
        settings,
        scenarios,
    )


def main(argv: list[str] | None = None) -> int:
    """Print, per curve and method, the healthy traces alarmed."""
    parser = score.study_parser(__doc__.split("\n\n")[0], 20, "traces per curve and seed")
    args = parser.parse_args(argv)
    settings = score.study_settings(parser, args.config)
    score.print_study(
        "curve",
        ((curve, run_curve(curve, args.count, args.seed, settings)) for curve in CURVES),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
