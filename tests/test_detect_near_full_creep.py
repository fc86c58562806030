"""A slow creep into the last percent of a card is a leak (``leak_min_rise_headroom_share``)."""

from __future__ import annotations

import dataclasses

import pytest

from tests.test_detect_engine import MIB, TOTAL, deadline, leaks, run, warm
from watchdog.config import DetectionSettings

HEADROOM = 160 * MIB
"""What the job leaves of its 40 GiB card: 0.4%, less than the 0.5%-of-the-card rise
(205 MiB) a leak must otherwise show before it is judged."""
CREEP = 16 * MIB / 3600
"""Bytes per second: 16 MiB an hour, the card full 10 h after the creep starts."""
CREEP_FROM = 3600.0


def near_full(t: float) -> float:
    """A job warmed up to within ``HEADROOM`` of the card."""
    return warm(t, working_set=TOTAL - HEADROOM - 500 * MIB)


def creeping(t: float) -> float:
    """The same job leaking ``CREEP`` from an hour in."""
    return near_full(t) + max(0.0, t - CREEP_FROM) * CREEP


def test_a_creep_of_megabytes_an_hour_into_a_full_card_is_a_leak_hours_ahead() -> None:
    """Every window would wait for a rise of 205 MiB, more than is left: raised
    once the floor has taken a quarter of the headroom, hours before the OOM, naming the pid."""
    events, oom, _ = run(creeping, 14 * 3600, interval=5.0, noise=8 * MIB)
    assert oom is not None
    raised = leaks(events)
    assert raised
    assert raised[0].t <= deadline(CREEP_FROM, oom)
    assert oom - raised[0].t >= 3 * 3600
    assert 4242 in {e.pid for e in raised}


def test_with_the_share_at_zero_only_near_oom_sees_the_creep() -> None:
    """The setting at 0 keeps the card's fraction, 205 MiB: the creep is never a leak."""
    settings = dataclasses.replace(DetectionSettings(), leak_min_rise_headroom_share=0.0)
    events, oom, _ = run(creeping, 14 * 3600, interval=5.0, noise=8 * MIB, settings=settings)
    assert oom is not None
    assert leaks(events) == []
    assert any(e.kind == "near_oom" and e.state == "raised" for e in events)


@pytest.mark.parametrize("noise", [2 * MIB, 8 * MIB, 24 * MIB])
def test_a_flat_job_in_the_last_percent_of_the_card_is_no_leak(noise: float) -> None:
    """The lower bar near the limit lets no noise through: 12 h flat, near_oom only."""
    events, oom, _ = run(near_full, 12 * 3600, interval=2.0, noise=noise)
    assert oom is None
    assert leaks(events) == []
    assert any(e.kind == "near_oom" and e.state == "raised" for e in events)
