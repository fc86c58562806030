"""Slow creeps into the last percent of a card, and jobs that sit there: caught and false alarms.

    python benchmarks/near_full_creep.py [--count 20] [--seed 1-3] [--headroom 0.2-3]
                                         [--config FILE]

A leak of megabytes an hour runs a job out of memory within a day only if
the job sits that close to its card: a creep of 20 MB/h that OOMs 10 hours
in started 200 MB from the top. None of the six sets holds one (their
leaks are sized from jobs at 30-80% of the card). Each trace here is the
development generator's job (its warm-up, sawtooth, noise and quantisation;
cards of 16-141 GiB, sampled every 1-10 s), sized so that its peaks sit
0.2-3% of the card under the top (``--headroom``, in percent of the card),
with no evaluation spikes (one would run it out of memory):

- ``creep``: from 0.5-3 h in, its floor rises steadily, to the card 10-30 h later;
- ``creep_sawtooth``: the same under a sawtooth;
- ``flat``, ``flat_sawtooth``: the same jobs without the leak, 6-16 h (near_oom is
  right on them; a leak is a false alarm).

Noise is at most a tenth of the headroom. The script scores each case as
``score.py`` does (a leak trace against its leak-free twin).
docs/detection.md ("A creep into the last percent of a card") quotes it.
"""

from __future__ import annotations

import math
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import scenarios
import score

from watchdog.config import DetectionSettings

CASES = ("creep", "creep_sawtooth", "flat", "flat_sawtooth")
HEADROOM_PCT = (0.2, 3.0)
"""What the job's peaks leave of the card, in percent (drawn log-uniformly)."""
OOM_AFTER_H = (10.0, 30.0)


def build(
    case: str,
    seed: int,
    name: str,
    with_leak: bool = True,
    until: float | None = None,
    headroom_pct: tuple[float, float] = HEADROOM_PCT,
) -> tuple[list[str], scenarios.Label]:
    """One trace of ``case`` and its label; ``with_leak=False`` (up to ``until``): the twin."""
    rng = random.Random(f"{case}:{seed}")
    card_gib = rng.choice(scenarios.CARDS_GIB)
    total = card_gib * int(scenarios.GIB)
    interval = rng.choice((1.0, 1.0, 2.0, 5.0, 10.0))
    share = math.exp(rng.uniform(math.log(headroom_pct[0]), math.log(headroom_pct[1]))) / 100
    headroom = total * share
    sigma = rng.choice(
        [s for s in (0.0, 2.0, 8.0, 32.0, 64.0) if s * scenarios.MIB <= headroom / 10]
    )
    quantum = rng.choice((1.0, 2.0 * scenarios.MIB, scenarios.MIB, 64 * 1024.0))
    sawtooth = case.endswith("sawtooth")
    leak = case.startswith("creep")
    # Size the job so its peaks sit ``headroom`` under the card: a warmed-up job's memory
    # is proportional to its working set, so one drawn at 1 GiB says by how much.
    state = rng.getstate()
    unit = scenarios.healthy_job(rng, 0.0, scenarios.GIB, sawtooth=sawtooth, evals=False)
    peak_per_gib = max(unit(3600.0 + k) for k in range(0, 3600, 5)) / scenarios.GIB
    rng.setstate(state)
    working_set = (total - headroom) / peak_per_gib
    job = scenarios.healthy_job(rng, 0.0, working_set, sawtooth=sawtooth, evals=False)
    leak_start = rng.uniform(0.5, 3.0) * 3600
    oom_after = rng.uniform(*OOM_AFTER_H) * 3600
    duration = leak_start + 1.5 * oom_after if leak else rng.uniform(6, 16) * 3600
    rate = headroom / oom_after if leak else 0.0
    drawing = rate if with_leak else 0.0

    label = scenarios.Label(
        name=name,
        scenario=case,
        seed=seed,
        leak=leak,
        card_gib=card_gib,
        interval_s=interval,
        near_oom_expected=not leak,
    )
    label.params.update(headroom_mib=round(headroom / scenarios.MIB), mib_per_h=0.0)
    if headroom_pct != HEADROOM_PCT:
        label.params["headroom_pct"] = scenarios.span_text(headroom_pct)
    if leak:
        label.leak_start_t = leak_start
        label.rate_bytes_per_s = rate
        label.params["mib_per_h"] = round(rate * 3600 / scenarios.MIB, 1)
    pid = rng.randint(1000, 4_000_000)
    end = duration if until is None else min(duration, until)
    lines = ["t,gpu,pid,used_bytes,total_bytes"]
    t = 0.0
    while t <= end:
        value = job(t) + drawing * max(0.0, t - leak_start) + rng.gauss(0.0, sigma)
        used = int(max(value, 0.0) // quantum * quantum)
        stamp = f"{t:.3f}".rstrip("0").rstrip(".")
        if used >= total:
            label.oom_t = float(stamp)
            used = total
        lines.append(f"{stamp},0,,{used},{total}")
        lines.append(f"{stamp},0,{pid},{used},")
        if label.oom_t is not None:
            break
        t += interval
    label.duration_s = t
    return lines, label


def twin(label: scenarios.Label) -> list[str]:
    """The leak-free twin of a leak trace, up to the leak trace's OOM."""
    lines, _ = build(
        label.scenario,
        label.seed,
        label.name,
        with_leak=False,
        until=label.oom_t,
        headroom_pct=scenarios.span_param(label, "headroom_pct", HEADROOM_PCT),
    )
    return lines


def run_case(
    case: str,
    count: int,
    seeds: list[int],
    settings: DetectionSettings,
    headroom_pct: tuple[float, float] = HEADROOM_PCT,
) -> list[score.Record]:
    """``count`` traces of ``case`` per seed, each evaluated as ``score.py`` does."""
    return score.study_records(
        lambda seed, i: build(
            case, seed * 100_000 + i, f"{i:04d}-{case}", headroom_pct=headroom_pct
        ),
        count,
        seeds,
        settings,
        sys.modules[__name__],
    )


def main(argv: list[str] | None = None) -> int:
    """Print, per case and method, the leaks caught in time and the false alarms."""
    parser = score.study_parser(__doc__.split("\n\n")[0], 20, "traces per case and seed")
    parser.add_argument(
        "--headroom",
        type=score.span_type("0.2-3", "percent", below=100.0),
        default="0.2-3",
        help="what the job's peaks leave of the card, percent (0.2-3)",
    )
    args = parser.parse_args(argv)
    settings = score.study_settings(parser, args.config)
    print(f"peaks {args.headroom[0]:g}-{args.headroom[1]:g}% of the card under its top")
    score.print_study(
        "case",
        ((case, run_case(case, args.count, args.seed, settings, args.headroom)) for case in CASES),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
