"""A dip one poll long is no restart: the job did not end, its step freed memory for a second.

At each ``empty_cache`` the activations of the step are freed too, for a second
or so, before the next step takes them again. A poll lands in that second in
some cycles and not in others. A dip deeper than a quarter of the floor read
as the job restarting: each one a poll caught wiped the series' history, and
a leak under such a sawtooth (the judge set's ``judge_sawtooth_rising_floor``)
was raised late or never.
"""

from __future__ import annotations

from tests.judge_traces import judged
from tests.test_detect_engine import GIB, run, warm

INTERVAL_S = 6.0
DIP = 8 * GIB
"""Deeper than ``reset_drop_ratio`` (a quarter) of the 20 GiB floor: a restart's fall."""


def test_a_dip_one_poll_long_is_no_restart_and_a_fall_that_stays_is() -> None:
    """The GPU's series keeps its history through one-poll dips; a fall held for two
    polls (a job that restarted) starts it afresh, one poll after the fall."""

    def dips_every_ten_minutes(t: float) -> float:
        return warm(t) - (DIP if t > 900 and t % 600 < INTERVAL_S else 0.0)

    _, _, engine = run(dips_every_ten_minutes, 3 * 3600, interval=INTERVAL_S)
    assert engine._gpus[0].start_t == 0.0

    def fall_at_two_hours(t: float) -> float:
        return warm(t) - (DIP if t >= 7200 else 0.0)

    _, _, engine = run(fall_at_two_hours, 3 * 3600, interval=INTERVAL_S)
    assert engine._gpus[0].start_t == 7200.0 + INTERVAL_S


def test_a_leak_under_a_sawtooth_whose_dips_a_poll_catches_now_and_then_is_caught() -> None:
    """The judge set's trace 3:0024: a 40 GiB card, teeth of 4 GiB every 10 minutes, dips
    to half the floor in some cycles, a leak of 2 GiB/h. Never raised before."""
    label, _, outcome = judged(3, 24)
    assert label.leak
    assert outcome.caught
