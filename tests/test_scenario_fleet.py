"""The ``fleet`` scenario: a full node (8 GPUs x 8 processes) that loops without a seam."""

from __future__ import annotations

import itertools
from collections import Counter

from watchdog.detectors import DetectionEngine
from watchdog.sources.scenarios import (
    FLEET_GPUS,
    FLEET_PERIOD_S,
    FLEET_PROCESSES_PER_GPU,
    SIMULATED_PIDS,
    fleet_pid,
    scenario_names,
    scenario_rows,
)
from watchdog.sources.simulated import SimulatedSource, load_steps
from watchdog.trace import group_steps


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_fleet_is_a_named_scenario() -> None:
    """``--simulate fleet`` is accepted like the other built-in scenarios."""
    assert "fleet" in scenario_names()


def test_every_sample_has_eight_gpus_with_eight_processes_each() -> None:
    """Each second shows all 8 cards and 64 distinct processes, 8 on each card."""
    steps = list(group_steps(scenario_rows("fleet")))
    assert len(steps) == FLEET_PERIOD_S
    for step in steps:
        assert sorted(row.gpu for row in step.devices) == list(range(FLEET_GPUS))
        per_gpu = Counter(row.gpu for row in step.processes)
        assert per_gpu == dict.fromkeys(range(FLEET_GPUS), FLEET_PROCESSES_PER_GPU)
        assert len({row.pid for row in step.processes}) == FLEET_GPUS * FLEET_PROCESSES_PER_GPU


def test_pids_are_readable_and_apart_from_the_other_scenarios() -> None:
    """Pids name their card and slot, and never clash with the one-card scenarios' pids."""
    assert fleet_pid(3, 5) == 4_000_135
    pids = {row.pid for row in scenario_rows("fleet") if row.pid is not None}
    assert not pids & set(SIMULATED_PIDS)
    assert all(pid < 4_194_304 for pid in pids)  # within Linux's pid range


def test_each_card_is_the_sum_of_its_processes_and_well_below_full() -> None:
    """A card's used memory is what its processes use, and a healthy node stays under 80 %."""
    for step in group_steps(scenario_rows("fleet")):
        for device in step.devices:
            processes = sum(row.used_bytes for row in step.processes if row.gpu == device.gpu)
            assert device.used_bytes == processes
            assert device.used_bytes < 0.8 * (device.total_bytes or 0)


def test_looping_jumps_no_more_than_a_second_inside_the_trace_does() -> None:
    """From the last step back to the first, each card moves as it does from one second to the
    next (at most a periodic empty_cache drop): no warm-up starts again at each loop."""
    steps = list(group_steps(scenario_rows("fleet")))
    for gpu in range(FLEET_GPUS):
        used = [step.devices[gpu].used_bytes for step in steps]
        inside = max(abs(b - a) for a, b in itertools.pairwise(used))
        assert abs(used[0] - used[-1]) <= 1.2 * inside


def test_a_looped_fleet_raises_nothing_in_two_hours() -> None:
    """Played in a loop through the detectors for two hours, the healthy fleet raises no finding."""
    clock = FakeClock()
    source = SimulatedSource(load_steps("fleet"), loop=True, clock=clock)
    engine = DetectionEngine()
    events = []
    for second in range(2 * 3600):
        clock.now = float(second)
        events += engine.observe(source.poll())
    assert events == []
