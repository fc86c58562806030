"""A leak under a sawtooth of a few buckets a cycle is reported as a sawtooth's.

An ``empty_cache`` every minute climbs the floor by about the typical change
in every 10 s bucket, so its drops stay under ``DROP_NOISES`` of that change
and are not recorded: the series knows no sawtooth, and the leak under it is
found by the levels whose buckets hold whole cycles, as it was before. Only
its pattern was wrong: ``steady``. The falls that take back each short
tooth's climb now label it ``sawtooth`` (``Series._short_tooth``), and change
nothing else.
"""

from __future__ import annotations

import random

import pytest

from watchdog.detectors.events import STEADY
from watchdog.detectors.replay import replay_lines
from watchdog.detectors.series import Series
from watchdog.detectors.trend import SEGMENTS, Trend

GIB = 1 << 30
MIB = 1 << 20
TOTAL = 80 * GIB
LEAK_FROM_S = 3600.0
LEAK_PER_S = 4 * GIB / 3600


def _trace(cycle_s: float, tooth: float, noise: float, seed: int = 0) -> list[str]:
    """Ten hours of one GPU polled every 2 s: 24 GiB, a tooth of ``tooth`` bytes climbed
    over each ``cycle_s`` (none if 0), a leak from the first hour on, Gaussian ``noise``."""
    rng = random.Random(seed)
    lines = ["t,gpu,pid,used_bytes,total_bytes"]
    for t in range(0, 10 * 3600, 2):
        used = 24 * GIB + max(0.0, t - LEAK_FROM_S) * LEAK_PER_S + rng.gauss(0, noise)
        if cycle_s:
            used += tooth * (t % cycle_s) / cycle_s
        lines.append(f"{t},0,,{min(int(used), TOTAL)},{TOTAL}")
    return lines


def _first_raise(lines: list[str]) -> tuple[float, str | None]:
    raised = [e for e in replay_lines(lines, "t.csv").events if e.kind == "leak"]
    assert raised
    assert raised[0].state == "raised"
    return raised[0].t, raised[0].pattern


@pytest.mark.parametrize("cycle_s", [30.0, 60.0])
def test_a_leak_under_a_sawtooth_of_a_minute_or_less_is_a_sawtooths(cycle_s: float) -> None:
    _, pattern = _first_raise(_trace(cycle_s, 2 * GIB, 16 * MIB))
    assert pattern == "sawtooth"


def test_the_same_leak_without_the_sawtooth_is_steady() -> None:
    _, pattern = _first_raise(_trace(0.0, 0.0, 16 * MIB))
    assert pattern == "steady"


def _short_teeth_pattern(lines: list[str]) -> str:
    """What the GPU's short teeth alone make of a steady window over the whole trace."""
    series = replay_lines(lines, "t.csv").engine._gpus[0]
    end = float(lines[-1].split(",")[0])
    window = Trend(end, end, 1.0, 1.0, 0.0, 0.0, SEGMENTS - 1, False, STEADY, True)
    return series._pattern(window)


def test_noise_falls_are_no_short_teeth() -> None:
    """Noise of 300 MiB a poll falls by more than the material rise now and then, and
    takes back what it climbed; but its falls come at random, not once a cycle.
    (Such noise may still pass for a sawtooth whose drops are recorded: that is the
    known sawtooth's record, which these falls do not touch.)"""
    for seed in range(4):
        assert _short_teeth_pattern(_trace(0.0, 0.0, 300 * MIB, seed)) == "steady"
    assert _short_teeth_pattern(_trace(60.0, 2 * GIB, 16 * MIB)) == "sawtooth"


def test_short_teeth_change_the_label_and_nothing_else(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same trace with the short teeth ignored: every event at the same time, with
    the same figures; only the pattern (and the message that names it) differs."""
    lines = _trace(60.0, 2 * GIB, 16 * MIB)

    def decisions() -> list[tuple[object, ...]]:
        return [
            (e.t, e.kind, e.state, e.series, e.rate_bytes_per_s, e.time_to_oom_s, e.confidence)
            for e in replay_lines(lines, "t.csv").events
        ]

    labelled = decisions()
    monkeypatch.setattr(Series, "_short_tooth", lambda self, t, lo, size: None)
    assert decisions() == labelled
    assert _first_raise(lines)[1] == "steady"
