"""A floor that rose too evenly to be settling soon is projected further (``trend._settle_s``).

Growth that settles towards a ceiling rises by less each stretch and has its
rate times its time constant left to grow. How evenly a window's floor rose
bounds that time constant from below; a predicted OOM within it comes whether
the growth settles or not, so such a window may be projected up to the long
windows' factor.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable

import pytest

from watchdog.config import DetectionSettings
from watchdog.detectors.events import Event
from watchdog.detectors.replay import replay_lines
from watchdog.detectors.trend import _settle_s

GIB = 1 << 30
CARD = 80 * GIB
BASE = 30 * GIB
FLAT_S = 3600.0
"""The job trains flat for an hour (its warm-up long over) before the leak starts."""
INTERVAL_S = 5.0


def _trace(extra: Callable[[float], float]) -> list[str]:
    """One GPU sampled every 5 s with 0-6 MiB of noise: ``BASE`` plus ``extra(t)``."""
    rng = random.Random(3)
    lines = ["t,gpu,pid,used_bytes,total_bytes"]
    t = 0.0
    while True:
        used = BASE + extra(t) + rng.randrange(7) * (1 << 20)
        if used >= CARD:
            lines.append(f"{t:.0f},0,,{CARD},{CARD}")
            return lines
        lines.append(f"{t:.0f},0,,{int(used)},{CARD}")
        t += INTERVAL_S
        if t > FLAT_S + 12 * 3600:
            return lines


def _leaks(lines: list[str], settings: DetectionSettings | None = None) -> list[Event]:
    events = replay_lines(lines, "synthetic", settings or DetectionSettings()).events
    return [e for e in events if e.kind == "leak"]


def _linear(oom_after_s: float) -> list[str]:
    rate = (CARD - BASE) / oom_after_s
    return _trace(lambda t: max(0.0, t - FLAT_S) * rate)


def test_even_rises_bound_the_time_constant_of_a_settle() -> None:
    tau = 1800.0
    times = [600.0 * i for i in range(6)]
    floors = [60.0 - 30.0 * math.exp(-t / tau) for t in times]
    assert _settle_s(floors, times) == pytest.approx(tau)
    assert _settle_s([1.0, 2.0, 3.0, 4.0], [0.0, 1.0, 2.0, 3.0]) == math.inf
    assert _settle_s([1.0, 2.0, 2.0, 4.0], [0.0, 1.0, 2.0, 3.0]) == 0.0  # a stretch stayed flat
    assert _settle_s([1.0, 2.0, 4.0], [0.0, 1.0, 2.0]) == 0.0  # two rises tell nothing


def test_an_even_steady_leak_is_raised_sooner() -> None:
    """A leak 200 min from start to OOM, after an hour flat.

    With ``leak_extrapolation`` at 4 (the default until 2026-12-05) and
    projected only as far as a window's length allows (2x at 30 min, rising to
    4x at 2 h) it was raised 52 min in, 148 min before the OOM; its floor rose
    evenly enough to be projected 4x from windows of 30 min on.
    """
    settings = dataclasses.replace(DetectionSettings(), leak_extrapolation=4.0)
    raised = [e for e in _leaks(_linear(200 * 60.0), settings) if e.state == "raised"]
    assert raised, "the leak was not raised"
    assert raised[0].t - FLAT_S <= 48 * 60.0
