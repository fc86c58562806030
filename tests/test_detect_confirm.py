"""A climb of a few minutes is raised once it has kept climbing, where there is time to wait."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import pytest

from tests.test_detect_engine import GIB, deadline, leaks, run, warm
from watchdog.config import DetectionSettings

START = 3 * 3600.0
"""Hours into the job, far past the warm-up."""


def climb(rise: float, seconds: float, stops: bool) -> Callable[[float], float]:
    """A healthy job that at ``START`` climbs ``rise`` bytes per ``seconds``: once, or on and on."""

    def memory(t: float) -> float:
        share = max(0.0, t - START) / seconds
        return warm(t) + (min(share, 1.0) if stops else share) * rise

    return memory


def test_a_climb_of_two_minutes_that_stops_is_not_a_leak() -> None:
    """Activation checkpointing switched off: +8 GiB over 110 s, then a flat working set.

    At the climb's rate the card would be full under three minutes after it ends,
    so its window reads as a fast leak from 90 s on; the climb runs on into the
    wait for a few buckets and then stops.
    """
    events, oom, _ = run(climb(8 * GIB, 110.0, stops=True), START + 3600)
    assert oom is None
    assert leaks(events) == []


@pytest.mark.parametrize("rise", [8 * GIB, 12 * GIB])
def test_the_same_climb_going_on_is_raised_in_time(rise: int) -> None:
    """The same start that keeps climbing is a fast leak, raised before the deadline.

    At 8 GiB per 110 s the raise waits under a minute; at 12 GiB there is no time
    to wait.
    """
    events, oom, _ = run(climb(rise, 110.0, stops=False), START + 3600)
    assert oom is not None
    raised = leaks(events)
    assert raised
    assert START < min(e.t for e in raised) <= deadline(START, oom)


def test_a_climb_of_a_quarter_hour_that_stops_is_not_a_leak() -> None:
    """A notebook cell filling a cache: +6 GiB over 15 min, then idle.

    The windows that read it as a leak are over 10 min long and see it as it
    stops: they too wait for the climb to go on.
    """
    events, oom, _ = run(climb(6 * GIB, 900.0, stops=True), START + 3600)
    assert oom is None
    assert leaks(events) == []


def test_the_same_quarter_hour_climb_going_on_is_raised_in_time() -> None:
    """A leak of that pace (the card full about half an hour in) is raised before the deadline."""
    events, oom, _ = run(climb(6 * GIB, 900.0, stops=False), START + 3 * 3600)
    assert oom is not None
    raised = leaks(events)
    assert raised
    assert START < min(e.t for e in raised) <= deadline(START, oom)


def test_a_fast_leak_from_inside_the_warm_up_is_raised_without_waiting() -> None:
    """A leak that began during the warm-up is older than any window shows: no wait.

    It accelerates (each step keeps more than the last), so its window's rate
    promises more time than it has.
    """
    start, span = 200.0, 12 * 60.0

    def memory(t: float) -> float:
        u = max(0.0, t - start) / span
        return warm(t, 14 * GIB) + 25.5 * GIB * (u + 2 * u * u) / 3

    events, oom, _ = run(memory, 3600, interval=2.0)
    assert oom is not None
    raised = leaks(events)
    assert raised
    assert min(e.t for e in raised) <= deadline(start, oom)


def steps(size: float, gap: float, count: int | None) -> Callable[[float], float]:
    """A healthy job that from START keeps ``size`` more bytes every ``gap`` s, ``count`` times."""

    def memory(t: float) -> float:
        taken = math.floor((t - START) / gap) + 1 if t >= START else 0
        return warm(t) + size * (taken if count is None else min(count, taken))

    return memory


def test_a_few_quick_steps_that_stop_are_not_a_leak() -> None:
    """An evaluation cache kept in four blocks half a minute apart, then held.

    Four steps are a few points, not a trend (projected no further than they
    took), yet at their pace the card would be full within two minutes of the
    last: the raise waits for a fifth step, which does not come.
    """
    events, oom, _ = run(steps(2.25 * GIB, 30.0, 4), START + 3600)
    assert oom is None
    assert leaks(events) == []


def test_the_same_steps_going_on_are_raised_in_time() -> None:
    """Blocks that keep coming at that pace are a fast leak, raised before the deadline."""
    events, oom, _ = run(steps(2.25 * GIB, 30.0, None), START + 3600)
    assert oom is not None
    raised = leaks(events)
    assert raised
    assert START < min(e.t for e in raised) <= deadline(START, oom)


def test_leak_confirm_s_zero_raises_at_once() -> None:
    """With ``leak_confirm_s = 0`` the climb that stops is raised, as before the wait."""
    settings = dataclasses.replace(DetectionSettings(), leak_confirm_s=0.0)
    events, oom, _ = run(climb(8 * GIB, 110.0, stops=True), START + 3600, settings=settings)
    assert oom is None
    assert leaks(events)


def test_a_wait_longer_than_the_history_holds_is_cut_short_not_skipped() -> None:
    """A ``leak_confirm_s`` beyond what the finest buckets hold waits as long as they do.

    A slow climb that stops, projected far (as a site that raises early might set
    it): the time to OOM leaves room for a wait of minutes.
    """
    for confirm in (60.0, 300.0, 3600.0):
        settings = dataclasses.replace(
            DetectionSettings(), leak_extrapolation_short=100.0, leak_confirm_s=confirm
        )
        events, oom, _ = run(climb(GIB, 110.0, stops=True), START + 3600, settings=settings)
        assert oom is None
        assert leaks(events) == [], confirm
