"""The independent held-out trace generator in benchmarks/field_scenarios.py."""

from __future__ import annotations

import io
import itertools
import math
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import field_scenarios
from field_scenarios import Setup

from watchdog.trace import read_rows

GIB = 1 << 30
MIB = 1 << 20
HOUR = 3600.0
SEEDS = (1, 2, 3, 4)


def device(lines: list[str]) -> list[tuple[float, int, int]]:
    """(t, used, total) of each device row."""
    rows = (line.split(",") for line in lines[1:])
    return [(float(r[0]), int(r[3]), int(r[4])) for r in rows if not r[2]]


def processes(lines: list[str]) -> dict[float, dict[int, int]]:
    """{t: {pid: used}} of the samples that list processes."""
    listed: dict[float, dict[int, int]] = {}
    for line in lines[1:]:
        t, _, pid, used, _ = line.split(",")
        if pid:
            listed.setdefault(float(t), {})[int(pid)] = int(used)
    return listed


def curve(scenario: str, seed: int, step: float = 1.0) -> tuple[Setup, list[tuple[float, float]]]:
    """The scenario's memory before noise, every ``step`` seconds of its trace."""
    drawn = field_scenarios.setup(scenario, seed)
    times = (k * step for k in range(int(drawn.world.duration / step) + 1))
    return drawn, [(t, drawn.held(t)) for t in times]


def after(samples: list[tuple[float, float]], t0: float) -> list[tuple[float, float]]:
    """The samples from ``t0`` on."""
    return [(t, used) for t, used in samples if t >= t0]


def values(samples: list[tuple[float, float]]) -> list[float]:
    return [used for _, used in samples]


def rises(samples: list[tuple[float, float]], step: float) -> list[float]:
    """Times where the floor (the lowest value from there on) goes up by more than ``step``."""
    floor = [used for _, used in samples]
    for i in range(len(floor) - 2, -1, -1):
        floor[i] = min(floor[i], floor[i + 1])
    return [samples[i][0] for i in range(1, len(floor)) if floor[i] - floor[i - 1] > step]


def clusters(times: list[float], within: float) -> list[float]:
    """The first time of each run of ``times`` closer than ``within`` to the one before."""
    firsts: list[float] = []
    last = -math.inf
    for t in times:
        if t - last > within:
            firsts.append(t)
        last = t
    return firsts


@pytest.mark.parametrize("scenario", field_scenarios.SCENARIOS)
def test_every_scenario_builds_a_valid_labelled_trace(scenario: str) -> None:
    """Each scenario writes a trace the reference parser accepts, labelled consistently."""
    lines, label = field_scenarios.build(scenario, 7)
    assert lines[0] == "t,gpu,pid,used_bytes,total_bytes"
    assert list(read_rows(io.StringIO("\n".join(lines) + "\n"), scenario))
    samples = device(lines)
    total = samples[0][2]
    assert label.scenario == scenario
    assert label.card_gib in field_scenarios.CARDS_GIB
    assert label.card_gib * GIB == total
    assert 1 <= label.interval_s <= 15
    assert max(b[0] - a[0] for a, b in itertools.pairwise(samples)) <= 300
    assert label.duration_s == samples[-1][0]
    assert label.device_only == (not processes(lines))
    assert label.near_oom_expected == (scenario == "near_full_flat")
    if label.leak:
        assert scenario in field_scenarios.LEAKS
        assert label.leak_start_t is not None
        assert label.oom_t is not None
        assert 0 < label.leak_start_t < label.oom_t
        assert label.rate_bytes_per_s > 0
        assert samples[-1] == (label.oom_t, total, total)
        assert all(used < total for _, used, _ in samples[:-1])
        assert (label.pid is not None) == (scenario in field_scenarios.MULTI_PROCESS)
    else:
        assert scenario in field_scenarios.HEALTHY
        assert label.oom_t is None
        assert label.leak_start_t is None
        assert max(used for _, used, _ in samples) < total


def test_the_same_seed_gives_the_same_trace() -> None:
    """Generation is deterministic, and another seed gives another trace."""
    assert field_scenarios.build("mixed", 3) == field_scenarios.build("mixed", 3)
    assert field_scenarios.build("mixed", 3)[0] != field_scenarios.build("mixed", 4)[0]


def test_generate_cycles_through_the_scenarios_reproducibly() -> None:
    """generate names traces by index and scenario, and the same seed gives the same set."""
    chosen = ("near_full_flat", "fast_leak")
    first = list(field_scenarios.generate(4, 1, chosen))
    names = [label.name for _, label in first]
    assert names == [
        "0000-near_full_flat",
        "0001-fast_leak",
        "0002-near_full_flat",
        "0003-fast_leak",
    ]
    assert first == list(field_scenarios.generate(4, 1, chosen))
    assert first[0][0] != first[2][0]


@pytest.mark.parametrize("scenario", field_scenarios.LEAKS)
def test_a_leak_traces_twin_is_the_trace_without_the_leak(scenario: str) -> None:
    """The twin matches the leak trace line for line before the leak and never fills the card."""
    lines, label = field_scenarios.build(scenario, 11)
    twin = field_scenarios.twin(label)
    assert label.leak_start_t is not None
    assert label.oom_t is not None
    before = 1 + sum(1 for line in lines[1:] if float(line.split(",")[0]) < label.leak_start_t)
    assert twin[:before] == lines[:before]
    assert twin != lines
    samples = device(twin)
    assert all(used < total for _, used, total in samples)
    assert label.oom_t - 20 < samples[-1][0] <= label.oom_t


@pytest.mark.parametrize("scenario", field_scenarios.LEAKS)
def test_leaks_start_and_run_out_as_their_scenario_says(scenario: str) -> None:
    """Leak start and planned time to OOM fall in the scenario's ranges; the OOM comes near it."""
    starts = {
        "kept_losses": (0, 6 * HOUR),
        "epoch_cache": (600, 6.5 * HOUR),
        "fragmentation_creep": (0.3 * HOUR, 3 * HOUR),
        "slow_creep": (0, 2 * HOUR),
        "fast_leak": (20 * 60, 4 * HOUR),
        "leak_in_one_of_many": (0.5 * HOUR, 4 * HOUR),
        "accelerating_leak": (0.3 * HOUR, 4 * HOUR),
    }
    ooms = {
        "kept_losses": (1800, 10 * HOUR),
        "epoch_cache": (2 * HOUR, 14 * HOUR),
        "fragmentation_creep": (HOUR, 12 * HOUR),
        "slow_creep": (10 * HOUR, 40 * HOUR),
        "fast_leak": (180, 1200),
        "leak_in_one_of_many": (2400, 8 * HOUR),
        "accelerating_leak": (HOUR, 8 * HOUR),
    }
    for seed in SEEDS:
        lines, label = field_scenarios.build(scenario, seed)
        assert label.leak_start_t is not None
        assert label.oom_t is not None
        planned = float(label.params["planned_oom_after_s"])
        low, high = starts[scenario]
        assert low <= label.leak_start_t <= high + 100
        low, high = ooms[scenario]
        assert low <= planned <= high
        assert 0.5 * planned <= label.oom_t - label.leak_start_t <= 2 * planned
        if scenario == "leak_in_one_of_many":
            listed = processes(lines)
            assert 2 <= len({pid for sample in listed.values() for pid in sample}) <= 5
            assert all(
                label.pid in sample for t, sample in listed.items() if t >= label.leak_start_t
            )


def test_an_epoch_cache_leak_is_a_staircase() -> None:
    """The leaked memory rises in steps an epoch apart from leak_start_t, flat in between."""
    lines, label = field_scenarios.build("epoch_cache", 2)
    assert label.leak_start_t is not None
    epoch = float(label.params["epoch_s"])
    twin = {t: used for t, used, _ in device(field_scenarios.twin(label))}
    leaked = [(t, used - twin[t]) for t, used, _ in device(lines)[:-1] if t >= label.leak_start_t]
    # The twin has the same noise draws: what is left is the leak, give or take rounding.
    steps = clusters(rises([(0.0, 0), *leaked], 32 * MIB), 60)
    assert steps[0] == leaked[0][0]  # nothing is held before leak_start_t, a block is right at it
    assert len(steps) >= 4
    gaps = [b - a for a, b in itertools.pairwise(steps)]
    assert all(0.9 * epoch < gap < 1.1 * epoch for gap in gaps)


@pytest.mark.parametrize("scenario", field_scenarios.HEALTHY)
def test_a_trace_is_its_scenarios_memory_plus_bounded_noise(scenario: str) -> None:
    """Each reading strays from the noise-free memory by at most 10 sigma and a quantum a job."""
    lines, label = field_scenarios.build(scenario, 5)
    drawn = field_scenarios.setup(scenario, 5)
    per_job = 10 * float(label.params["noise_mib"]) * MIB + float(label.params["quantum_bytes"])
    for t, used, _ in device(lines):
        alive = sum(1 for job in drawn.world.jobs if job.alive(t))
        assert abs(used - drawn.held(t)) <= alive * per_job + 1


def test_the_slow_allocator_warmup_takes_minutes_then_stays_flat() -> None:
    """The job reaches its working set in jumps over 3-9 minutes, then holds it for hours."""
    for seed in SEEDS:
        drawn, samples = curve("allocator_warmup_slow", seed)
        level = samples[-1][1]
        reached = next(t for t, used in samples if used >= level)
        assert 3 * 60 <= reached <= 9 * 60 + 80  # the weights are on the GPU within 80 s
        assert set(values(after(samples, reached))) == {level}
        assert samples[0][1] <= drawn.baseline + 600 * MIB  # the CUDA context alone at first
        assert len(set(values(samples[: int(reached)]))) >= 5
        assert samples[-1][0] >= 2 * HOUR


def test_dynamic_shapes_only_grow_and_ever_more_rarely() -> None:
    """After the warm-up the memory never comes down, and its jumps come mostly early."""
    early, late = 0, 0
    for seed in SEEDS:
        _, samples = curve("dynamic_shapes", seed)
        trained = after(samples, 10 * 60)
        assert all(b >= a for a, b in itertools.pairwise(values(trained)))
        jumps = rises(trained, 0)
        middle = (trained[0][0] + trained[-1][0]) / 2
        early += sum(1 for t in jumps if t < middle)
        late += sum(1 for t in jumps if t >= middle)
        assert 4 * HOUR <= samples[-1][0] <= 12 * HOUR
    assert early >= len(SEEDS)
    assert early > late


def test_dynamic_shapes_records_thin_out_geometrically() -> None:
    """New longest batches come about as often in each sixfold stretch of time: ever rarer."""
    edges = (600.0, HOUR, 6 * HOUR, 36 * HOUR)
    counts = [0, 0, 0]
    for seed in range(60):
        memory = field_scenarios.dynamic_shapes(random.Random(seed), GIB, 0.0, edges[-1])
        grid = [(float(t), memory(t)) for t in range(int(edges[0]), int(edges[-1]), 10)]
        for t in rises(grid, 0):
            counts[sum(1 for edge in edges[1:-1] if t >= edge)] += 1
        assert memory(edges[-1]) <= GIB * (1 + 1e-9)
    assert min(counts) >= 0.6 * max(counts)
    rates = [
        n / (high - low) for n, (low, high) in zip(counts, itertools.pairwise(edges), strict=True)
    ]
    assert rates[0] > 3 * rates[1] > 9 * rates[2]


def test_periodic_empty_cache_comes_back_to_the_same_floor() -> None:
    """Every 2-40 minutes the memory climbs and drops back to a floor that does not move."""
    for seed in SEEDS:
        drawn, samples = curve("periodic_empty_cache", seed)
        period = float(drawn.world.info["sawtooth_period_s"])
        amplitude = float(drawn.world.info["sawtooth_bytes"])
        assert 120 <= period <= 2400
        trained = after(samples, 10 * 60)
        floor = min(values(trained))
        start = trained[0][0]
        while start + 1.25 * period < trained[-1][0]:
            window = values(after(trained, start)[: int(1.25 * period)])
            assert min(window) <= floor + 0.02 * amplitude
            assert max(window) >= floor + 0.5 * amplitude
            assert max(window) <= floor + amplitude * (1 + 1e-9)
            start += period


def test_evaluations_come_back_to_the_training_floor() -> None:
    """Evaluations lift memory every 20-90 minutes for 1-10 minutes, then it drops back."""
    for seed in SEEDS:
        drawn, samples = curve("eval_and_checkpoint", seed)
        info = drawn.world.info
        every, size = float(info["eval_every_s"]), float(info["eval_bytes"])
        length = float(info["eval_length_s"])
        assert 20 * 60 <= every <= 90 * 60
        assert 60 <= length <= 600
        trained = after(samples, 10 * 60)
        floor = min(values(trained))
        up = [t for t, used in trained if used > floor + size / 2]
        # An evaluation and the checkpoint spike after it; not one already under way at 10 min.
        evals = [t for t in clusters(up, 120) if t > trained[0][0]]
        span = trained[-1][0] - trained[0][0]
        assert span / every - 2 <= len(evals) <= span / every + 1
        assert len(up) <= len(evals) * (length + 40)  # and a checkpoint spike of up to 40 s
        for first, second in itertools.pairwise(evals):
            assert 0.85 * every <= second - first <= 1.15 * every
            # Seen up to 0.4 * length into its ramp, the next evaluation starts 0.9 * every or
            # more after this one: the floor until then.
            quiet = [
                u
                for t, u in trained
                if first + length + 120 <= t < first + 0.9 * every - 0.4 * length
            ]
            assert set(quiet) == {floor}


def test_gradient_accumulation_is_sampled_coarser_than_its_cycle() -> None:
    """A 5-60 s oscillation of 1-8 % on a flat floor, polled at least half a period apart."""
    for seed in SEEDS:
        lines, label = field_scenarios.build("gradient_accumulation_cycles", seed)
        drawn, samples = curve("gradient_accumulation_cycles", seed)
        period = float(drawn.world.info["cycle_period_s"])
        amplitude = float(drawn.world.info["cycle_bytes"])
        working_set = float(drawn.world.info["working_set_bytes"])
        assert 5 <= period <= 60
        assert 0.01 * working_set <= amplitude <= 0.08 * working_set
        assert label.interval_s >= period / 2 or label.interval_s == 15
        trained = values(after(samples, 10 * 60))
        assert max(trained) - min(trained) == pytest.approx(amplitude)
        hours = [trained[h : h + 3600] for h in range(0, len(trained) - 3600, 3600)]
        assert max(map(min, hours)) == min(map(min, hours))
        polled = [drawn.held(t) for t, _, _ in device(lines) if t >= 10 * 60]
        assert len(set(polled)) >= 2  # the poll sees the cycle, at odd phases


def test_curriculum_steps_are_few_and_followed_by_two_flat_hours() -> None:
    """Two to four planned steps up of 5-20 %, hours apart, then flat for two hours or more."""
    for seed in SEEDS:
        drawn, samples = curve("curriculum_growth", seed, step=5.0)
        trained = after(samples, 10 * 60)
        steps = clusters(rises(trained, 0), 10 * 60)
        assert 2 <= len(steps) == float(drawn.world.info["curriculum_steps"]) <= 4
        assert all(b - a >= HOUR for a, b in itertools.pairwise(steps))
        levels = [drawn.held(t - 5) for t in steps] + [trained[-1][1]]
        for before, now in itertools.pairwise(levels):
            assert 1.04 < (now - drawn.baseline) / (before - drawn.baseline) < 1.21
        assert trained[-1][0] - steps[-1] >= 2 * HOUR
        assert set(values(after(trained, steps[-1] + 120))) == {trained[-1][1]}


def test_shared_gpu_jobs_come_and_go() -> None:
    """Two to five processes share the GPU; some start late and some stop before the end."""
    late, gone = 0, 0
    for seed in SEEDS:
        lines, label = field_scenarios.build("shared_gpu_churn", seed)
        listed = processes(lines)
        assert not label.device_only
        seen: dict[int, list[float]] = {}
        for t, sample in listed.items():
            for pid in sample:
                seen.setdefault(pid, []).append(t)
        assert 2 <= len(seen) == float(label.params["jobs"]) <= 5
        first, last = min(listed), max(listed)
        late += sum(1 for times in seen.values() if times[0] > first)
        gone += sum(1 for times in seen.values() if times[-1] < last)
        baseline = float(label.params["baseline_bytes"])
        for t, used, _ in device(lines):
            if t in listed:
                assert used == int(baseline) + sum(listed[t].values())
    assert late >= 2
    assert gone >= 1


def test_restarts_drop_to_the_baseline_for_seconds_and_warm_up_again() -> None:
    """The job stops one to three times, the GPU empties for 10-120 s, and it comes back."""
    for seed in SEEDS:
        drawn, samples = curve("restart_from_checkpoint", seed)
        empty = [t for t, used in samples if used == drawn.baseline]
        gaps = clusters(empty, 1)
        assert 1 <= len(gaps) == float(drawn.world.info["restarts"]) <= 3
        # Training's floor (evaluations, where the job runs them, only add to it).
        working = min(used for t, used in samples if 10 * 60 <= t < gaps[0])
        for start in gaps:
            gap = [t for t in empty if start <= t <= start + 121]
            assert 10 <= gap[-1] - gap[0] + 1 <= 121
            assert drawn.held(start - 1) >= working * (1 - 1e-9)
            assert drawn.held(gap[-1] + 10 * 60) >= working * (1 - 1e-9)


def test_near_full_flat_sits_at_90_to_97_percent_of_the_card() -> None:
    """The job fills 90-97 % of the card and stays flat, its readings never touching the total."""
    for seed in SEEDS:
        lines, label = field_scenarios.build("near_full_flat", seed)
        drawn, samples = curve("near_full_flat", seed)
        assert label.near_oom_expected
        trained = set(values(after(samples, 10 * 60)))
        assert len(trained) == 1
        assert 0.9 * drawn.total <= trained.pop() <= 0.97 * drawn.total
        assert max(used for _, used, _ in device(lines)) < drawn.total


def test_mixed_has_every_healthy_behaviour_and_runs_for_hours() -> None:
    """The mixed job shows a sawtooth, evaluations and dynamic shapes over 6-24 h."""
    drawn, samples = curve("mixed", 2, step=5.0)
    assert {"sawtooth_period_s", "eval_every_s"} <= set(drawn.world.info)
    assert 6 * HOUR <= samples[-1][0] <= 24 * HOUR
    trained = values(after(samples, 10 * 60))
    assert max(trained) - min(trained) > float(drawn.world.info["sawtooth_bytes"]) / 2
    assert max(trained) < 0.85 * drawn.total
