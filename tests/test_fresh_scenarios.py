"""The sixth held-out generator (benchmarks/fresh_scenarios.py) keeps its promises.

These tests check the traces and labels only; they never run the detector or the scorer.
"""

from __future__ import annotations

import itertools
import json
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import blind_scenarios
import field_scenarios
import fresh_scenarios
import scenarios
import sealed_scenarios
import wild_scenarios
from generator_traces import parse, traces_of

from watchdog.trace import group_steps

MIB = 1 << 20
GIB = 1 << 30
MINUTE = 60.0
HOUR = 3600.0
SEEDS = (3, 29, 1009)


def seeds_of(scenario: str) -> tuple[int, ...]:
    """Three seeds per scenario, different for each (a seed draws the same card in every one)."""
    return tuple(seed + 7907 * fresh_scenarios.SCENARIOS.index(scenario) for seed in SEEDS)


LEAK_CASES = [(s, seed) for s in fresh_scenarios.LEAKS for seed in seeds_of(s)]
ALL_CASES = [(s, seed) for s in fresh_scenarios.SCENARIOS for seed in seeds_of(s)]
OOM_AFTER = {
    # The documented range of the drawn time from the leak start to the OOM.
    "step_stats_retained": (8 * HOUR, 24 * HOUR),
    "rotary_table_per_shape": (30 * MINUTE, 6 * HOUR),
    "hook_stack_per_epoch": (2 * HOUR, 12 * HOUR),
    "debug_flag_flip_leak": (3 * HOUR, 12 * HOUR),
    "mps_rank_bucket_rebuild_leak": (1 * HOUR, 8 * HOUR),
    "fallback_path_chunks": (2 * HOUR, 14 * HOUR),
    "pinned_segments_under_sawtooth": (1 * HOUR, 10 * HOUR),
    "daily_wave_hidden_leak": (10 * HOUR, 30 * HOUR),
    "gpu_dedup_table_growth": (1 * HOUR, 12 * HOUR),
    "exception_retry_holds_batch": (2 * MINUTE, 6 * MINUTE),
}
STEP_LEAKS = ("hook_stack_per_epoch", "mps_rank_bucket_rebuild_leak", "fallback_path_chunks")
"""Leaks whose OOM is meant to land on a step: their drawn time is snapped to one (+-15 %)."""
SATURATING = (
    "gradcache_batch_rampup",
    "capacity_factor_anneal",
    "gpu_decode_workers_respawn",
    "cudagraph_bucket_pools",
    "gpu_shard_cache_lru",
    "tf_allow_growth_full",
    "recsys_embedding_full",
)
"""Healthy jobs whose growth is over early (the others have rare, late bumps by design)."""


built, twin_of, rows_of, device = traces_of(fresh_scenarios)


def test_the_interface_is_the_one_the_scorer_imports() -> None:
    mod = fresh_scenarios
    assert mod.SCENARIOS == mod.HEALTHY + mod.LEAKS
    assert not set(mod.HEALTHY) & set(mod.LEAKS)
    assert len(set(mod.SCENARIOS)) == len(mod.SCENARIOS)
    assert len(mod.HEALTHY) >= 12
    assert len(mod.LEAKS) >= 10
    assert set(mod.MULTI_PROCESS) <= set(mod.SCENARIOS)
    assert set(mod.NEAR_FULL) <= set(mod.HEALTHY)
    assert len(mod.NEAR_FULL) == 2
    assert set(mod.MULTI_PROCESS) & set(mod.LEAKS)
    assert set(mod.MULTI_PROCESS) & set(mod.HEALTHY)
    assert set(OOM_AFTER) == set(mod.LEAKS)
    assert set(SATURATING) <= set(mod.HEALTHY)
    assert type(mod.build(mod.HEALTHY[0], 1)[1]) is scenarios.Label
    assert mod.Label is scenarios.Label
    assert mod.main.__doc__
    assert mod.build.__doc__
    assert mod.twin.__doc__
    assert mod.generate.__doc__
    assert mod.__doc__ is not None
    first = mod.__doc__.split("\n\n")[0]
    assert first == (
        "Sixth held-out set: labelled GPU memory traces of jobs no other generator names."
    )
    assert "without reading" in mod.__doc__
    for scenario in mod.SCENARIOS:
        assert f"\n{scenario}" in mod.__doc__, f"{scenario} is described"
    with pytest.raises(ValueError, match="unknown scenario"):
        mod.build("no_such_scenario", 1)


def test_scenario_names_are_new() -> None:
    """Held-out means new jobs: no name is shared with the other five generators."""
    taken = set(scenarios.SCENARIOS) | set(field_scenarios.SCENARIOS)
    taken |= set(wild_scenarios.SCENARIOS) | set(blind_scenarios.SCENARIOS)
    taken |= set(sealed_scenarios.SCENARIOS)
    assert not taken & set(fresh_scenarios.SCENARIOS)


@pytest.mark.parametrize(("scenario", "seed"), ALL_CASES)
def test_every_trace_is_well_formed(scenario: str, seed: int) -> None:
    lines, label = built(scenario, seed)
    assert lines[0] == "t,gpu,pid,used_bytes,total_bytes"
    rows = rows_of(scenario, seed)
    steps = list(group_steps(rows))
    assert 50 <= len(steps) <= 30_500
    times = [step.t for step in steps]
    assert all(b > a for a, b in itertools.pairwise(times)), "one sample per t"
    assert all(round(t, 3) == t for t in times)
    total = steps[0].devices[0].total_bytes
    assert total is not None
    assert 0.9 * label.card_gib * GIB <= total <= label.card_gib * GIB
    quantum = int(label.params["quantum_mib"]) * MIB
    listed = 0
    for step in steps:
        assert len(step.devices) == 1
        assert step.devices[0].gpu == 0
        assert step.devices[0].total_bytes == total
        assert all(p.gpu == 0 for p in step.processes)
        assert all(p.total_bytes is None for p in step.processes)
        pids = [p.pid for p in step.processes]
        assert len(pids) == len(set(pids))
        if step.processes:
            listed += 1
            # The device holds every process plus a small driver/other baseline.
            other = step.devices[0].used_bytes - sum(p.used_bytes for p in step.processes)
            assert other == int(label.params["other_mib"]) * MIB
            assert 0 <= other <= 500 * MIB
            if step.t != label.oom_t:  # the OOM poll is cut to the card's total
                assert all(p.used_bytes % quantum == 0 for p in step.processes)
    assert (listed == 0) == label.device_only == (label.params["rows"] == "never")
    gaps = sorted(b - a for a, b in itertools.pairwise(times))
    assert 1.0 * 0.9 <= gaps[len(gaps) // 2] <= 10.0 * 1.1
    assert label.duration_s == times[-1]
    assert label.interval_s == label.params["interval_s"]
    assert label.gpu == 0
    assert label.scenario == scenario
    assert label.seed == seed
    json.dumps(label.params)
    assert all(isinstance(v, float | str) for v in label.params.values())


@pytest.mark.parametrize("scenario", fresh_scenarios.SCENARIOS)
def test_same_seed_same_trace(scenario: str) -> None:
    first, second = seeds_of(scenario)[:2]
    lines, label = fresh_scenarios.build(scenario, first)
    assert (tuple(lines), label) == built(scenario, first)
    assert built(scenario, first)[0] != built(scenario, second)[0]


@pytest.mark.parametrize(("scenario", "seed"), LEAK_CASES)
def test_a_leak_reaches_the_total_at_its_label(scenario: str, seed: int) -> None:
    _, label = built(scenario, seed)
    assert label.leak
    assert label.oom_t is not None
    assert label.leak_start_t is not None
    rows = device(scenario, seed)
    total = rows[0][2]
    first = next(t for t, used, _ in rows if used >= total)
    assert first == label.oom_t
    assert rows[-1][0] == label.oom_t, "the trace ends at the OOM"
    assert rows[-1][1] == total
    assert all(used < total for t, used, _ in rows if t < label.oom_t)
    deadline = label.deadline()
    assert deadline is not None
    assert 0.0 <= label.leak_start_t < deadline < label.oom_t
    polls = sum(label.leak_start_t <= t <= deadline for t, _, _ in rows)
    assert polls >= 20, "enough samples of the leak before its deadline"
    # The OOM lands near the drawn time: on a healthy peak a little before or after it.
    oom_after = float(label.params["oom_after_s"])
    lo, hi = OOM_AFTER[scenario]
    slack = 1.15 if scenario in STEP_LEAKS else 1.0
    assert lo / slack <= oom_after <= hi * slack
    ratio = (label.oom_t - label.leak_start_t) / oom_after
    assert (0.5 if scenario == "fallback_path_chunks" else 0.7) <= ratio <= 1.3
    assert label.rate_bytes_per_s > 0
    leaked = float(label.params["leaked_bytes_at_oom"])
    assert label.rate_bytes_per_s == pytest.approx(leaked / (label.oom_t - label.leak_start_t))
    assert not label.near_oom_expected


@pytest.mark.parametrize(("scenario", "seed"), LEAK_CASES)
def test_the_twin_is_the_leak_trace_without_the_leak(scenario: str, seed: int) -> None:
    lines, label = built(scenario, seed)
    assert label.leak_start_t is not None
    start = label.leak_start_t
    before = [line for line in lines[1:] if float(line.split(",")[0]) < start]
    twin_lines = twin_of(scenario, seed)
    assert twin_lines[0] == lines[0]
    assert before == [line for line in twin_lines[1:] if float(line.split(",")[0]) < start]
    assert len(before) > 0
    # The leak trace differs from its twin from the leak start on, not before.
    after = [line for line in lines[1:] if float(line.split(",")[0]) >= start]
    assert after != [line for line in twin_lines[1:] if float(line.split(",")[0]) >= start]
    leaky, clean = device(scenario, seed), device(scenario, seed, twin=True)
    assert [t for t, _, _ in leaky] == [t for t, _, _ in clean], "same polls, same end"
    total = clean[0][2]
    # The healthy part stays well under the card: the leak causes the OOM.
    assert max(used for _, used, _ in clean) <= 0.9 * total
    assert all(a[1] >= b[1] for a, b in zip(leaky[:-1], clean[:-1], strict=True))


@pytest.mark.parametrize(("scenario", "seed"), LEAK_CASES)
def test_a_leak_only_grows_and_is_visible_by_its_deadline(scenario: str, seed: int) -> None:
    """Memory a leak holds is never given back, and most of it is held at the deadline."""
    _, label = built(scenario, seed)
    deadline = label.deadline()
    assert deadline is not None
    leaky, clean = device(scenario, seed), device(scenario, seed, twin=True)
    held = [a[1] - b[1] for a, b in zip(leaky[:-1], clean[:-1], strict=True)]
    slack = 2 * int(label.params["quantum_mib"]) * MIB  # the leaking process's rounding
    high = 0
    for h in held:
        assert h >= high - slack, "a leak never shrinks (beyond rounding)"
        high = max(high, h)
    at = max(i for i, (t, _, _) in enumerate(leaky) if t <= deadline)
    at_oom = float(label.params["leaked_bytes_at_oom"])
    assert held[at] >= 0.4 * at_oom
    assert held[at] >= 0.03 * leaky[0][2]


@pytest.mark.parametrize("scenario", fresh_scenarios.LEAKS)
def test_a_leak_is_unbounded(scenario: str) -> None:
    """Left alone past its drawn OOM, every leak keeps rising (none of them levels off)."""
    seed = seeds_of(scenario)[0]
    world = fresh_scenarios._World(random.Random(seed), scenario)
    plan = fresh_scenarios.MAKERS[scenario](world)
    assert plan.leak_start is not None
    assert plan.oom_after is not None
    shape = next(p.leak for p in plan.procs if p.leak is not None)
    at = plan.leak_start + plan.oom_after
    values = [shape(at + k * plan.oom_after) for k in range(4)]
    assert values[0] == pytest.approx(1.0, rel=0.02), "the shape is 1.0 at the drawn OOM"
    assert all(b > a for a, b in itertools.pairwise(values))
    assert shape(plan.leak_start - 1e-3) == 0.0


@pytest.mark.parametrize(("scenario", "seed"), ALL_CASES)
def test_only_multi_process_leaks_name_a_pid_and_it_is_listed(scenario: str, seed: int) -> None:
    _, label = built(scenario, seed)
    if scenario in fresh_scenarios.MULTI_PROCESS:
        assert not label.device_only, "multi-process scenarios always list their processes"
    if scenario not in fresh_scenarios.MULTI_PROCESS or not label.leak:
        assert label.pid is None
        return
    assert label.leak_start_t is not None
    rows = [r for r in rows_of(scenario, seed) if r.pid is not None]
    assert len({r.pid for r in rows if r.t >= label.leak_start_t}) >= 2, "several processes"
    mine = [r.used_bytes for r in rows if r.pid == label.pid and r.t >= label.leak_start_t]
    assert len(mine) >= 2
    others = [r.used_bytes for r in rows if r.pid != label.pid and r.t >= label.leak_start_t]
    assert others
    assert mine[-1] - mine[0] >= 0.1 * label.card_gib * GIB or mine[-1] > 2 * mine[0]


@pytest.mark.parametrize(("scenario", "seed"), ALL_CASES)
def test_healthy_traces_never_reach_the_card(scenario: str, seed: int) -> None:
    _, label = built(scenario, seed)
    if label.leak:
        return
    rows = device(scenario, seed)
    assert all(used < total for _, used, total in rows)
    assert label.oom_t is None
    assert label.leak_start_t is None
    assert label.pid is None
    assert label.rate_bytes_per_s == 0.0
    assert label.near_oom_expected == (scenario in fresh_scenarios.NEAR_FULL)
    if scenario not in SATURATING:
        return
    # Healthy growth stops: the second half climbs no higher than a step above the first.
    half = len(rows) // 2
    total = rows[0][2]
    assert max(u for _, u, _ in rows[half:]) <= max(u for _, u, _ in rows[:half]) + 0.1 * total


@pytest.mark.parametrize(("scenario", "seed"), ALL_CASES)
def test_near_full_traces_sit_near_the_card(scenario: str, seed: int) -> None:
    rows = device(scenario, seed)
    high = sum(used >= 0.9 * total for _, used, total in rows) / len(rows)
    if scenario in fresh_scenarios.NEAR_FULL:
        assert high >= 0.8
        assert max(used / total for _, used, total in rows) < 0.99
    elif scenario in fresh_scenarios.HEALTHY:
        assert max(used / total for _, used, total in rows) < 0.93
        assert high < 0.02


@pytest.mark.parametrize("seed", seeds_of("elastic_relaunch_after_hang"))
def test_a_relaunch_has_a_new_pid(seed: int) -> None:
    """elastic_relaunch_after_hang: each relaunch is a new process, after the old one left."""
    _, label = built("elastic_relaunch_after_hang", seed)
    if label.params["rows"] != "every":
        return
    rows = [r for r in rows_of("elastic_relaunch_after_hang", seed) if r.pid is not None]
    order = list(dict.fromkeys(r.pid for r in rows))
    assert len(order) == int(label.params["relaunches"]) + 1
    last = {pid: max(r.t for r in rows if r.pid == pid) for pid in order}
    first = {pid: min(r.t for r in rows if r.pid == pid) for pid in order}
    assert all(last[a] < first[b] for a, b in itertools.pairwise(order)), "never both at once"


def test_generate_cycles_the_scenarios_with_derived_seeds() -> None:
    pair = ("exception_retry_holds_batch", "tf_allow_growth_full")
    out = list(fresh_scenarios.generate(4, 7, pair))
    assert [label.name for _, label in out] == [
        "0000-exception_retry_holds_batch",
        "0001-tf_allow_growth_full",
        "0002-exception_retry_holds_batch",
        "0003-tf_allow_growth_full",
    ]
    assert [label.seed for _, label in out] == [7 * 1_000_081 + i for i in range(4)]
    lines, label = out[2]
    assert fresh_scenarios.build(label.scenario, label.seed, label.name) == (lines, label)


def test_the_set_varies_what_it_should() -> None:
    """Across the tested seeds: cards, noise models, quanta, row policies, long and short runs."""
    labels = [built(scenario, seed)[1] for scenario, seed in ALL_CASES]
    assert len({label.card_gib for label in labels}) >= 5
    assert {label.params["noise"] for label in labels} == set(fresh_scenarios.NOISES)
    assert {label.params["quantum_mib"] for label in labels} == {1.0, 2.0, 8.0, 20.0}
    assert {label.device_only for label in labels} == {True, False}
    assert len({label.params["rows"] for label in labels}) >= 4
    intervals = [label.interval_s for label in labels]
    assert min(intervals) < 2.0
    assert max(intervals) > 6.0
    healthy = [label for label in labels if not label.leak]
    assert max(label.duration_s for label in healthy) >= 20 * HOUR
    assert min(label.duration_s for label in healthy) <= 4 * HOUR
    peaks = [float(label.params["peak_frac"]) for label in healthy]
    assert any(0.75 <= peak <= 0.86 for peak in peaks), "some healthy jobs are sized near the top"
    to_oom = [(label.oom_t or 0.0) - (label.leak_start_t or 0.0) for label in labels if label.leak]
    assert min(to_oom) <= 10 * MINUTE
    assert max(to_oom) >= 12 * HOUR
    rates = [label.rate_bytes_per_s for label in labels if label.leak]
    assert min(rates) < 2 * GIB / HOUR
    assert max(rates) > GIB / MINUTE


def test_command_line_writes_traces_and_labels(tmp_path: Path) -> None:
    assert fresh_scenarios.main(["--out", str(tmp_path), "--count", "3", "--seed", "2"]) == 0
    labels = [json.loads(line) for line in (tmp_path / "labels.jsonl").read_text().splitlines()]
    assert [label["name"] for label in labels] == [
        f"{i:04d}-{fresh_scenarios.SCENARIOS[i]}" for i in range(3)
    ]
    for label in labels:
        text = (tmp_path / f"{label['name']}.csv").read_text()
        assert parse(text.splitlines(), label["name"])
        assert label["seed"] == 2 * 1_000_081 + labels.index(label)
