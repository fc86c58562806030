"""Warm-ups that settle over minutes: false alarms and catches with slower allocators.

    python benchmarks/slow_warmups.py [--count 10] [--seed 1-3] [--tau 15-600]
                                      [--pause 60-180] [--config FILE]

The development generator draws a job's warm-up time constant from 15 to 150
seconds: settled well inside the 10-minute grace. An allocator that grows to
its working set "over minutes" (issue 3) may take longer, and a job sized
near its card is then still climbing, a few hundred MiB a minute, when the
first windows judge it. This script builds the development generator's
scenarios with the time constant drawn from ``--tau`` instead (every other
draw as it was: the same jobs, leaks, noise and sampling) and scores them
exactly as ``score.py`` does, per scenario: false alarms on the healthy ones,
leaks caught in time on the others. docs/detection.md (step 14) quotes it.

``--pause`` puts a pause drawn from that range (seconds) between each job's
model load and its allocator's growth, as a compile or a data load does: the
growth then sets off from a floor the job has held, as a leak begun after the
warm-up does (step 10). ``--tau 15-150 --pause 60-180`` is the development
generator with only the pause added.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import scenarios
import score

from watchdog.config import DetectionSettings

SECONDS = score.span_type("15-600", "positive seconds")


def run_scenario(
    scenario: str,
    count: int,
    seeds: list[int],
    tau: tuple[float, float],
    settings: DetectionSettings,
    pause: tuple[float, float] | None = None,
) -> list[score.Record]:
    """``count`` traces of ``scenario`` per seed, each built with ``tau`` and ``pause``."""
    return score.study_records(
        lambda seed, i: scenarios.build(
            scenario, seed * 100_000 + i, f"{i:04d}-{scenario}", warmup_tau=tau, warmup_pause=pause
        ),
        count,
        seeds,
        settings,
        scenarios,
    )


def main(argv: list[str] | None = None) -> int:
    """Print, per scenario and method, the false alarms or the leaks caught in time."""
    parser = score.study_parser(__doc__.split("\n\n")[0], 10, "traces per scenario and seed")
    parser.add_argument(
        "--tau", type=SECONDS, default="15-600", help="warm-up time constants, seconds (15-600)"
    )
    parser.add_argument(
        "--pause",
        type=SECONDS,
        default=None,
        help="a pause between model load and allocator growth, seconds (none)",
    )
    args = parser.parse_args(argv)
    settings = score.study_settings(parser, args.config)
    pause = f", pauses {args.pause[0]:g}-{args.pause[1]:g} s" if args.pause else ""
    print(f"warm-up time constants {args.tau[0]:g}-{args.tau[1]:g} s{pause}")
    records = (
        run_scenario(scenario, args.count, args.seed, args.tau, settings, args.pause)
        for scenario in scenarios.SCENARIOS
    )
    score.print_study("scenario", zip(scenarios.SCENARIOS, records, strict=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
