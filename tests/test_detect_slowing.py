"""Growth slowing to a ceiling under the card is no leak (``Series._settling``, step 14)."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from tests.test_detect_engine import GIB, MIB, TOTAL, deadline, leaks, run, warm

CONTEXT = 500 * MIB


def settling(share: float, tau: float) -> Callable[[float], float]:
    """A job whose allocator approaches ``share`` of the card with time constant ``tau``:
    after ``tau`` it has a third of the way left, after ``3 tau`` a twentieth."""
    grows = share * TOTAL - CONTEXT

    def memory(t: float) -> float:
        return CONTEXT + grows * (1 - math.exp(-t / tau))

    return memory


@pytest.mark.parametrize(
    ("share", "tau"),
    [(0.95, 240.0), (0.95, 450.0), (0.95, 600.0), (0.9, 300.0), (0.8, 600.0)],
)
def test_a_warm_up_over_minutes_to_near_the_card_is_not_a_leak(share: float, tau: float) -> None:
    """Still climbing a few hundred MiB a minute when the grace ends, a few minutes from
    the card at that pace: a window past the grace sees an even climb, but it rose
    ``exp(W / tau)`` times faster over the window before, and settles under the card."""
    events, oom, _ = run(settling(share, tau), 3 * 3600, interval=2.0)
    assert oom is None
    assert leaks(events) == []


def test_a_warm_up_over_minutes_to_near_the_card_is_not_a_leak_under_noise() -> None:
    """Noise about the floor (64 MiB) does not make a slowing climb read as an even one."""
    events, oom, _ = run(settling(0.93, 450.0), 3 * 3600, noise=64 * MIB)
    assert oom is None
    assert leaks(events) == []


@pytest.mark.parametrize(("start", "oom_after"), [(1200.0, 1200.0), (1800.0, 900.0)])
def test_a_leak_after_a_slow_warm_up_is_raised_before_the_deadline(
    start: float, oom_after: float
) -> None:
    """The same slow warm-up to 60% of the card, then an even leak 20 or 30 minutes in:
    the warm-up's slowing before it does not hold it back past its deadline."""
    warm_up = settling(0.6, 300.0)
    left = TOTAL - 0.6 * TOTAL

    def memory(t: float) -> float:
        return warm_up(t) + left * max(0.0, t - start) / oom_after

    events, oom, _ = run(memory, 3 * 3600, interval=2.0)
    assert oom is not None
    raised = leaks(events)
    assert raised
    assert start < min(e.t for e in raised) <= deadline(start, oom)


SLOW_CURVES: dict[str, Callable[[float, float], float]] = {
    "exp": lambda t, s: 1 - math.exp(-t / s),
    "log": lambda t, s: math.log1p(t / s),
}


@pytest.mark.parametrize(
    ("curve", "working_set", "scale"),
    [("log", 20, 1800.0), ("log", 20, 3600.0), ("exp", 16, 7200.0), ("exp", 20, 3600.0)],
)
def test_growth_that_bends_over_hours_is_not_a_leak_a_few_hours_in(
    curve: str, working_set: int, scale: float
) -> None:
    """A job settled at 16-20 GiB whose memory then grows by 8 GiB over ten hours, slowing
    all along (a cache whose hit rate climbs): a few hours in, the windows hold about all
    of its history, and its slowing is read inside them, a quarter of a window apart."""
    shape = SLOW_CURVES[curve]
    full = shape(10 * 3600, scale)

    def memory(t: float) -> float:
        return warm(t, working_set * GIB) + 8 * GIB * shape(t, scale) / full

    events, oom, _ = run(memory, 10 * 3600, interval=5.0)
    assert oom is None
    assert leaks(events) == []


def test_growth_that_settles_above_the_card_is_still_raised() -> None:
    """Slowing down, but towards 110% of the card: it runs out all the same."""
    events, oom, _ = run(settling(1.1, 900.0), 3 * 3600, interval=2.0)
    assert oom is not None
    raised = leaks(events)
    assert raised
    assert min(e.t for e in raised) < oom - 300
