"""The pattern a leak is reported with: a sawtooth where the memory saws.

Three shapes were labelled wrong, and the label is all that changed for them
(``Series._pattern``; what is raised and when is the same):

- A sawtooth of a few buckets a cycle: an ``empty_cache`` every minute climbs
  the floor by about the typical change in every 10 s bucket, so its drops
  stay under ``DROP_NOISES`` of that change and are not recorded. The leak
  under it is found by the levels whose buckets hold whole cycles, but was
  labelled ``steady``. The falls that take back each short tooth's climb now
  label it ``sawtooth``.
- Evaluations: each spike's fall is recorded as a drop, as a tooth's is, so a
  steady leak or a staircase on a job that evaluates every half hour was
  labelled ``sawtooth``. A tooth holds the memory up through its cycle, a
  spike for minutes of it: drops after which the floor sat, on average, under
  a quarter of the fall above the line from trough to trough are spikes', and
  the label is what the floor's own steps make.
- Allocations that come and go (a buffer held for minutes, then freed for
  seconds) record drops too, at random gaps, and a leak under them was
  labelled ``sawtooth``. A sawtooth drops once a cycle
  (``Series._drops_regular``).
"""

from __future__ import annotations

import itertools
import random

import pytest

from watchdog.detectors.events import STEADY
from watchdog.detectors.replay import replay_lines
from watchdog.detectors.series import Series, _Teeth
from watchdog.detectors.trend import SEGMENTS, Trend

GIB = 1 << 30
MIB = 1 << 20
TOTAL = 80 * GIB
LEAK_FROM_S = 3600.0
LEAK_PER_S = 4 * GIB / 3600


def _trace(
    cycle_s: float, tooth: float, noise: float, seed: int = 0, evals: bool = False
) -> list[str]:
    """Ten hours of one GPU polled every 2 s: 24 GiB, a tooth of ``tooth`` bytes climbed
    over each ``cycle_s`` (none if 0), a leak from the first hour on, Gaussian ``noise``;
    with ``evals``, 4 GiB more for 3 minutes every half hour."""
    rng = random.Random(seed)
    lines = ["t,gpu,pid,used_bytes,total_bytes"]
    for t in range(0, 10 * 3600, 2):
        used = 24 * GIB + max(0.0, t - LEAK_FROM_S) * LEAK_PER_S + rng.gauss(0, noise)
        if cycle_s:
            used += tooth * (t % cycle_s) / cycle_s
        if evals and t > 600 and t % 1800 < 180:
            used += 4 * GIB
        lines.append(f"{t},0,,{min(int(used), TOTAL)},{TOTAL}")
    return lines


def _decisions(lines: list[str]) -> list[tuple[object, ...]]:
    """Every event's time and figures, without its pattern or message."""
    return [
        (e.t, e.kind, e.state, e.series, e.rate_bytes_per_s, e.time_to_oom_s, e.confidence)
        for e in replay_lines(lines, "t.csv").events
    ]


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
    return series._pattern(window, series.levels[0])


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
    labelled = _decisions(lines)
    monkeypatch.setattr(Series, "_short_tooth", lambda self, t, lo, size: None)
    assert _decisions(lines) == labelled
    assert _first_raise(lines)[1] == "steady"


def test_a_leak_on_a_job_that_evaluates_every_half_hour_is_steady() -> None:
    """Each evaluation's fall is a recorded drop; the floor sat above the line from trough
    to trough for three minutes of thirty. Before, ``sawtooth``."""
    assert _first_raise(_trace(0.0, 0.0, 16 * MIB, evals=True))[1] == "steady"


def test_a_leak_under_a_ten_minute_sawtooth_is_a_sawtooths() -> None:
    assert _first_raise(_trace(600.0, 3 * GIB, 16 * MIB))[1] == "sawtooth"
    assert _first_raise(_trace(600.0, 3 * GIB, 16 * MIB, evals=True))[1] == "sawtooth"


def test_spikes_change_the_label_and_nothing_else(monkeypatch: pytest.MonkeyPatch) -> None:
    lines = _trace(0.0, 0.0, 16 * MIB, evals=True)
    labelled = _decisions(lines)
    monkeypatch.setattr(_Teeth, "spikes", lambda self: False)
    assert _decisions(lines) == labelled
    assert _first_raise(lines)[1] == "sawtooth"


def _held_buffers(holds_s: list[float]) -> list[str]:
    """Ten hours as ``_trace`` draws them with no sawtooth, and 1.5 GiB more held for each
    of ``holds_s`` in turn (over and over), freed for 20 s in between."""
    lines = _trace(0.0, 0.0, 16 * MIB)
    out = [lines[0]]
    schedule = itertools.cycle(holds_s)
    free_until, held_until = 0.0, 0.0
    for line in lines[1:]:
        t_text, gpu, pid, used, total = line.split(",")
        t = float(t_text)
        if t >= held_until and t >= free_until:
            if held_until > free_until:
                free_until = t + 20.0
            else:
                held_until = t + next(schedule)
        extra = 1.5 * GIB if t < held_until else 0.0
        out.append(f"{t_text},{gpu},{pid},{min(int(used) + int(extra), TOTAL)},{total}")
    return out


IRREGULAR_HOLDS_S = [90.0, 300.0, 150.0, 420.0, 120.0, 360.0, 200.0]


def test_a_leak_under_buffers_held_at_random_lengths_is_steady() -> None:
    """Their frees are recorded drops, but at no regular cycle. Before, ``sawtooth``."""
    assert _first_raise(_held_buffers(IRREGULAR_HOLDS_S))[1] == "steady"


def test_irregular_drops_change_the_label_and_nothing_else(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lines = _held_buffers(IRREGULAR_HOLDS_S)
    labelled = _decisions(lines)
    monkeypatch.setattr(Series, "_drops_regular", lambda self: True)
    assert _decisions(lines) == labelled
    assert _first_raise(lines)[1] == "sawtooth"


@pytest.mark.parametrize(
    ("gaps_s", "regular"),
    [
        ([600.0] * 5, True),
        ([590.0, 610.0, 570.0, 640.0, 600.0], True),  # a cycle of steps, not of seconds
        ([780.0, 420.0, 600.0, 780.0, 420.0], True),  # drops held up by an evaluation over them
        ([1080.0, 1080.0, 510.0, 560.0, 1080.0], True),  # an extra drop inside a cycle
        ([600.0, 600.0, 600.0, 1000.0], True),  # the newest gap long: one of four
        ([600.0, 600.0, 600.0, 1700.0, 600.0], True),  # one gap off, of five
        ([220.0, 110.0, 320.0, 170.0, 440.0], False),  # buffers held for random lengths
        ([140.0, 320.0, 390.0, 330.0, 100.0], False),
        ([600.0, 1700.0], False),  # one gap off, of two
        ([600.0], False),  # two drops: no cycle shown yet
        ([], False),  # one drop: a "cycle" from the series' start
        ([60.0] * 5, False),  # six finest buckets: a sawtooth that short drops in the noise
    ],
)
def test_drops_come_once_a_cycle(gaps_s: list[float], regular: bool) -> None:
    series = replay_lines(_trace(0.0, 0.0, 16 * MIB)[:100], "t.csv").engine._gpus[0]
    times = list(itertools.accumulate([1000.0, *gaps_s]))
    series.drops = [(t, 0.0) for t in times]
    assert series._drops_regular() is regular
