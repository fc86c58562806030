"""One trace of the judge set (``benchmarks/judge_scenarios.py``), replayed and scored.

The trace is the one ``benchmarks/score.py --generator judge_scenarios`` builds
for that seed and index (it prints them as ``SEED:INDEX-SCENARIO``), so a test
can pin what the scorer counted.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import judge_scenarios
import score
from scenarios import Label

from watchdog.detectors.replay import replay_lines


class JudgedTrace(NamedTuple):
    """A judge-set trace's label, the project's alarm intervals on it, and their outcome."""

    label: Label
    intervals: list[score.Interval]
    outcome: score.Outcome


def judged(seed: int, index: int) -> JudgedTrace:
    """Build, replay and score the judge set's trace ``seed:index``."""
    scenario = judge_scenarios.SCENARIOS[index % len(judge_scenarios.SCENARIOS)]
    lines, label = judge_scenarios.build(
        scenario, seed * 1_000_039 + index, f"{index:04d}-{scenario}"
    )
    result = replay_lines(lines, label.name)
    intervals, _ = score.project_intervals(result.events, label, result.duration_s)
    return JudgedTrace(label, intervals, score.judge(label, intervals))
