"""The third held-out trace generator in benchmarks/wild_scenarios.py keeps its promises."""

from __future__ import annotations

import io
import itertools
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import wild_scenarios
from wild_scenarios import World

from watchdog.trace import TraceRow, read_rows

MIB = 1 << 20
MINUTE = 60.0
HOUR = 3600.0
SEEDS = (1, 2, 3)
SINGLE = tuple(s for s in wild_scenarios.SCENARIOS if s not in wild_scenarios.MULTI_PROCESS)


def parse(lines: list[str], name: str) -> list[TraceRow]:
    """The rows, through the project's own trace reader (it rejects a malformed trace)."""
    return list(read_rows(io.StringIO("\n".join(lines) + "\n"), name))


def device(rows: list[TraceRow]) -> list[tuple[float, int, int]]:
    """(t, used, total) of each device row."""
    return [(r.t, r.used_bytes, r.total_bytes or 0) for r in rows if r.pid is None]


def listed(rows: list[TraceRow]) -> dict[float, dict[int, int]]:
    """{t: {pid: used}} of the polls that list processes."""
    out: dict[float, dict[int, int]] = {}
    for r in rows:
        if r.pid is not None:
            out.setdefault(r.t, {})[r.pid] = r.used_bytes
    return out


def grid(world: World, t0: float, t1: float, step: float) -> list[tuple[float, float]]:
    """Noise-free device memory every ``step`` seconds on [t0, t1]."""
    count = int((t1 - t0) / step)
    return [(t0 + k * step, world.held(t0 + k * step)) for k in range(count + 1)]


@pytest.mark.parametrize("scenario", wild_scenarios.SCENARIOS)
def test_every_scenario_builds_a_valid_labelled_trace(scenario: str) -> None:
    """The trace parses, its rows are well formed, and its label agrees with it."""
    for seed in SEEDS:
        lines, label = wild_scenarios.build(scenario, seed)
        assert lines[0] == "t,gpu,pid,used_bytes,total_bytes"
        rows = parse(lines, scenario)
        samples = device(rows)
        assert 100 <= len(samples) <= wild_scenarios.MAX_SAMPLES
        assert {r.gpu for r in rows} == {label.gpu}
        total = samples[0][2]
        assert {s[2] for s in samples} == {total}
        assert label.card_gib in wild_scenarios.CARDS_MIB
        assert total == wild_scenarios.CARDS_MIB[label.card_gib] * MIB
        assert label.scenario == scenario
        assert label.seed == seed
        assert 1 <= label.interval_s <= 20
        times = [s[0] for s in samples]
        assert times[0] == 0.0
        assert all(b > a for a, b in itertools.pairwise(times))
        # Daemon restarts are 2-15 minutes, at most three of them back to back.
        assert max(b - a for a, b in itertools.pairwise(times)) <= 46 * MINUTE
        assert label.duration_s == times[-1] == rows[-1].t
        processes = listed(rows)
        assert label.device_only == (not processes)
        used_at = {t: used for t, used, _ in samples}
        for t, sample in processes.items():
            assert sum(sample.values()) <= used_at[t]
        assert label.near_oom_expected == (scenario in wild_scenarios.NEAR_FULL)
        if scenario in wild_scenarios.MULTI_PROCESS:
            assert not label.device_only
        if label.leak:
            assert scenario in wild_scenarios.LEAKS
            assert label.leak_start_t is not None
            assert label.oom_t is not None
            deadline = label.deadline()
            assert deadline is not None
            assert 0 < label.leak_start_t < deadline < label.oom_t
            assert label.rate_bytes_per_s > 0
            assert samples[-1] == (label.oom_t, total, total)
            assert all(used < total for _, used, _ in samples[:-1])
            assert (label.pid is not None) == (scenario in wild_scenarios.MULTI_PROCESS)
            assert float(label.params["planned_oom_after_s"]) > 0
        else:
            assert scenario in wild_scenarios.HEALTHY
            assert label.oom_t is None
            assert label.leak_start_t is None
            assert label.pid is None
            assert max(used for _, used, _ in samples) < total


@pytest.mark.parametrize("scenario", wild_scenarios.LEAKS)
def test_a_leak_traces_twin_is_the_trace_without_the_leak(scenario: str) -> None:
    """Line for line the same until the leak starts, then lower, never full, to the OOM."""
    for seed in (1, 2):
        lines, label = wild_scenarios.build(scenario, seed)
        twin = wild_scenarios.twin(label)
        assert label.leak_start_t is not None
        assert label.oom_t is not None
        before = 1 + sum(1 for line in lines[1:] if float(line.split(",")[0]) < label.leak_start_t)
        assert before > 10
        assert twin[:before] == lines[:before]
        twin_samples = device(parse(twin, "twin"))
        leak_samples = device(parse(lines, "leak"))
        assert [s[0] for s in twin_samples] == [s[0] for s in leak_samples]
        assert twin_samples[-1][0] == label.oom_t
        assert all(used < total for _, used, total in twin_samples)
        # By the end the leak trace holds far more than the twin: the leak is in it.
        gained = leak_samples[-2][1] - twin_samples[-2][1]
        assert gained > 0.5 * float(label.params["headroom_bytes"])


def test_a_healthy_trace_is_its_own_twin() -> None:
    """Without a leak to leave out, with_leak=False changes nothing."""
    for scenario in ("hparam_sweep", "rlhf_colocated"):
        assert wild_scenarios.build(scenario, 4, with_leak=False) == wild_scenarios.build(
            scenario, 4
        )


@pytest.mark.parametrize("scenario", wild_scenarios.LEAKS)
def test_leaks_fill_the_card_near_the_planned_time_and_show_before_the_deadline(
    scenario: str,
) -> None:
    """The OOM comes within 0.5-2x of the plan, and by the deadline the leak has risen often."""
    for seed in (1, 2, 3, 4):
        _, label = wild_scenarios.build(scenario, seed)
        world = wild_scenarios.setup(scenario, seed)
        assert label.leak_start_t is not None
        assert label.oom_t is not None
        deadline = label.deadline()
        assert deadline is not None
        planned = float(label.params["planned_oom_after_s"])
        assert 0.5 * planned <= label.oom_t - label.leak_start_t <= 2 * planned
        headroom = world.extra["headroom_bytes"]
        assert world.leaked(label.leak_start_t - 1) == 0
        assert world.leaked(deadline) >= 0.5 * headroom
        # Not one step that could pass for healthy growth: many separate rises.
        rises, last = 0, 0.0
        t = label.leak_start_t
        while t <= deadline:
            if world.leaked(t) - last >= 0.01 * headroom:
                rises += 1
                last = world.leaked(t)
            t += MINUTE
        assert rises >= 5
        expected_rate = world.leaked(label.oom_t) / (label.oom_t - label.leak_start_t)
        assert label.rate_bytes_per_s == pytest.approx(expected_rate)


@pytest.mark.parametrize("scenario", wild_scenarios.SCENARIOS)
def test_readings_are_the_noise_free_memory_plus_bounded_noise(scenario: str) -> None:
    """Every reading (but the OOM's) is within the noise bound of each live process of setup()."""
    lines, label = wild_scenarios.build(scenario, 5)
    world = wild_scenarios.setup(scenario, 5)
    samples = device(parse(lines, scenario))
    if label.leak:
        samples = samples[:-1]
    bound = world.noise.bound
    for t, used, _ in samples:
        alive = sum(1 for p in world.processes if p.alive(t))
        assert abs(used - world.held(t, with_leak=label.leak)) <= alive * bound + 1


def test_the_leaking_process_is_named_listed_and_growing() -> None:
    """On a shared GPU the label names the pid that holds the leak, listed at every poll."""
    for seed in SEEDS:
        lines, label = wild_scenarios.build("rlhf_colocated_leak", seed)
        assert label.pid is not None
        assert label.leak_start_t is not None
        processes = listed(parse(lines, "leak"))
        assert len({pid for sample in processes.values() for pid in sample}) == 2
        after = [sample for t, sample in processes.items() if t >= label.leak_start_t]
        assert after
        assert all(label.pid in sample for sample in after)
        twin = listed(parse(wild_scenarios.twin(label), "twin"))
        last = max(t for t in processes if t < max(processes))
        other = next(pid for pid in processes[last] if pid != label.pid)
        assert processes[last][label.pid] - twin[last][label.pid] > 0
        assert processes[last][other] == twin[last][other]


def test_single_process_traces_are_sometimes_device_only() -> None:
    """Some traces have no process rows at all, others list them; shared GPUs always list."""
    listing = [wild_scenarios.setup(s, seed).listing for s in SINGLE for seed in SEEDS]
    assert 0 in listing
    assert any(every == 1 for every in listing)
    assert any(every > 1 for every in listing)
    shared = [
        wild_scenarios.setup(s, seed).listing
        for s in wild_scenarios.MULTI_PROCESS
        for seed in SEEDS
    ]
    assert all(every >= 1 for every in shared)


def test_the_same_seed_gives_the_same_trace() -> None:
    """Generation is deterministic, and another seed gives another trace."""
    first = wild_scenarios.build("prefix_cache_growth", 3)
    assert first == wild_scenarios.build("prefix_cache_growth", 3)
    assert first[0] != wild_scenarios.build("prefix_cache_growth", 4)[0]


def test_generate_cycles_through_the_scenarios_reproducibly() -> None:
    """generate names traces by index and scenario and seeds them from (seed, index)."""
    chosen = ("jax_preallocated", "graph_capture_leak")
    traces = list(wild_scenarios.generate(4, 2, chosen))
    assert [label.name for _, label in traces] == [
        "0000-jax_preallocated",
        "0001-graph_capture_leak",
        "0002-jax_preallocated",
        "0003-graph_capture_leak",
    ]
    assert [label.seed for _, label in traces] == [2 * 1_000_033 + i for i in range(4)]
    assert traces[1] == wild_scenarios.build(
        "graph_capture_leak", 2 * 1_000_033 + 1, traces[1][1].name
    )
    assert traces[0][0] != traces[2][0]
    every = [label.scenario for _, label in wild_scenarios.generate(21, 1)]
    assert every == [*wild_scenarios.SCENARIOS, wild_scenarios.SCENARIOS[0]]


def test_main_writes_traces_and_labels(tmp_path: Path) -> None:
    """The command line writes one CSV per trace and a label per line."""
    assert wild_scenarios.main(["--out", str(tmp_path), "--count", "3", "--seed", "1"]) == 0
    labels = [json.loads(line) for line in (tmp_path / "labels.jsonl").read_text().splitlines()]
    assert [label["name"] for label in labels] == [
        f"{i:04d}-{s}" for i, s in enumerate(wild_scenarios.SCENARIOS[:3])
    ]
    for label in labels:
        parse((tmp_path / f"{label['name']}.csv").read_text().splitlines(), label["name"])


def test_fsdp_swing_is_seen_by_the_poll() -> None:
    """The per-step swing is far faster than the poll, yet the readings spread across it."""
    for seed in SEEDS:
        lines, label = wild_scenarios.build("fsdp_step_oscillation", seed)
        world = wild_scenarios.setup("fsdp_step_oscillation", seed)
        swing = float(label.params["swing_bytes"])
        wave = world.processes[0].wave
        assert wave is not None
        assert 0.4 <= wave.period <= 6
        trained = float(label.params["trained_s"])
        readings = [used for t, used, _ in device(parse(lines, "f")) if t > trained + 60]
        assert max(readings) - min(readings) >= 0.5 * swing
        assert max(readings) - min(readings) <= swing + 2 * world.noise.bound


def test_bounded_growth_stops() -> None:
    """Recompiles, the first evaluation's cache and fragmentation all settle, then stay."""
    for seed in SEEDS:
        world = wild_scenarios.setup("compile_recompiles", seed)
        last = float(world.info["last_recompile_s"])
        assert last <= 0.45 * world.duration + 10 * MINUTE
        assert {v for _, v in grid(world, last, world.duration, 60)} == {world.held(last)}

        world = wild_scenarios.setup("eval_cache_retained", seed)
        settled = float(world.info["first_eval_s"]) + 3 * float(world.info["eval_every_s"])
        assert {v for _, v in grid(world, settled, world.duration, 60)} == {world.held(settled)}

        world = wild_scenarios.setup("fragmentation_settle", seed)
        trained = float(world.info["trained_s"])
        tau = float(world.info["tau_s"])
        drift = float(world.info["drift_bytes"])
        tail = world.duration - 0.2 * (world.duration - trained)
        assert world.held(world.duration) - world.held(tail) <= 0.03 * drift
        assert world.held(trained + tau) - world.held(trained) >= 0.5 * drift


def test_sized_near_the_card_on_purpose() -> None:
    """The inference server sits at 85-97 % of the card; the batch-size finder touches 90 %."""
    for seed in SEEDS:
        world = wild_scenarios.setup("inference_kv_prealloc", seed)
        ready = float(world.info["ready_s"])
        levels = [v / world.total for _, v in grid(world, ready, world.duration, 60)]
        assert 0.84 <= min(levels) <= max(levels) <= 0.97

        world = wild_scenarios.setup("batch_size_finder", seed)
        searched = float(world.info["searched_s"])
        peak = max(v for _, v in grid(world, 0, searched, 0.5))
        assert peak >= 0.88 * world.total
        assert world.held(world.duration) <= 0.95 * world.total


def test_jax_preallocation_is_perfectly_flat() -> None:
    """Nothing changes the BFC pool after its first half hour: readings repeat exactly."""
    for seed in SEEDS:
        lines, _ = wild_scenarios.build("jax_preallocated", seed)
        readings = {used for t, used, _ in device(parse(lines, "jax")) if t > 40 * MINUTE}
        assert len(readings) == 1


def test_sweeps_and_colocated_jobs_have_their_processes() -> None:
    """A sweep runs trials one at a time; colocated jobs take turns on one GPU."""
    for seed in range(6):
        world = wild_scenarios.setup("hparam_sweep", seed)
        trials = int(float(world.info["trials"]))
        if world.info["mode"] == "process_per_trial":
            assert len({p.pid for p in world.processes}) == trials
            for a, b in itertools.pairwise(world.processes):
                assert a.end < b.start
                assert world.held((a.end + b.start) / 2) == world.baseline
        else:
            assert len(world.processes) == 1

    for seed in SEEDS:
        world = wild_scenarios.setup("rlhf_colocated", seed)
        trainer, engine = world.processes
        first = float(world.info["first_cycle_s"])
        active = float(world.info["trainer_active_bytes"])
        awake = float(world.info["engine_awake_bytes"])
        both = 0
        for t, _ in grid(world, first, world.duration, 30):
            trainer_on = trainer.curve.at(t) >= 0.99 * active
            engine_on = engine.curve.at(t) >= 0.99 * awake
            both += trainer_on and engine_on
        assert both == 0
        assert sum(1 for t in world.processes[1].curve.ts if t > first) > 8
