"""The judge's held-out generator (benchmarks/judge_scenarios.py) keeps its promises.

These tests check the traces and labels only; they never run the detector or the scorer.
"""

from __future__ import annotations

import itertools
import json
import statistics
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import blind_scenarios
import field_scenarios
import fresh_scenarios
import judge_scenarios
import scenarios
import sealed_scenarios
import wild_scenarios
from generator_traces import parse, traces_of

from watchdog.trace import group_steps

MIB = 1 << 20
GIB = 1 << 30
MINUTE = 60.0
HOUR = 3600.0
SEEDS = (3, 1009)


def seeds_of(scenario: str) -> tuple[int, ...]:
    """Two seeds per scenario, different for each (a seed draws the same card in every one)."""
    return tuple(seed + 7907 * judge_scenarios.SCENARIOS.index(scenario) for seed in SEEDS)


ALL_CASES = [(s, seed) for s in judge_scenarios.SCENARIOS for seed in seeds_of(s)]
LEAK_CASES = [(s, seed) for s in judge_scenarios.LEAKS for seed in seeds_of(s)]
HEALTHY_CASES = [(s, seed) for s in judge_scenarios.HEALTHY for seed in seeds_of(s)]
OOM_AFTER = {
    # The documented range of each leak's drawn time from its start to the OOM.
    "judge_leak_from_start": (40 * MINUTE, 8 * HOUR),
    "judge_leak_hours_in": (30 * MINUTE, 8 * HOUR),
    "judge_epoch_staircase": (5 * 4 * MINUTE, 14 * HOUR),
    "judge_sawtooth_rising_floor": (45 * MINUTE, 10 * HOUR),
    "judge_one_pid_leaks": (30 * MINUTE, 8 * HOUR),
    "judge_slow_creep": (10 * HOUR, 30 * HOUR),
    "judge_fast_leak": (2.5 * MINUTE, 15 * MINUTE),
}

built, twin_of, rows_of, device = traces_of(judge_scenarios)


def test_the_interface_is_the_one_the_scorer_imports() -> None:
    mod = judge_scenarios
    assert mod.SCENARIOS == mod.HEALTHY + mod.LEAKS
    assert len(mod.HEALTHY) == 7
    assert len(mod.LEAKS) == 7
    assert not set(mod.HEALTHY) & set(mod.LEAKS)
    assert len(set(mod.SCENARIOS)) == len(mod.SCENARIOS)
    assert set(mod.NEAR_FULL) <= set(mod.HEALTHY)
    assert set(mod.MULTI_PROCESS) & set(mod.LEAKS)
    assert set(mod.MULTI_PROCESS) & set(mod.HEALTHY)
    assert set(OOM_AFTER) == set(mod.LEAKS)
    assert type(mod.build(mod.HEALTHY[0], 1, until=60.0)[1]) is scenarios.Label
    assert mod.main.__doc__
    assert mod.__doc__ is not None
    first = mod.__doc__.split("\n\n")[0]
    assert "\n" not in first.strip()
    for name in mod.SCENARIOS:
        assert name in mod.__doc__, "every scenario is described in the docstring"
    with pytest.raises(ValueError, match="unknown scenario"):
        mod.build("no_such_scenario", 1)


def test_scenario_names_are_new() -> None:
    """No name is shared with any other generator."""
    taken = set(scenarios.SCENARIOS) | set(field_scenarios.SCENARIOS)
    taken |= set(wild_scenarios.SCENARIOS) | set(blind_scenarios.SCENARIOS)
    taken |= set(sealed_scenarios.SCENARIOS) | set(fresh_scenarios.SCENARIOS)
    assert not taken & set(judge_scenarios.SCENARIOS)
    assert all(name.startswith("judge_") for name in judge_scenarios.SCENARIOS)


@pytest.mark.parametrize(("scenario", "seed"), ALL_CASES)
def test_every_trace_is_well_formed(scenario: str, seed: int) -> None:
    lines, label = built(scenario, seed)
    assert lines[0] == "t,gpu,pid,used_bytes,total_bytes"
    for line in lines[1:]:
        _, gpu, pid, used, total = line.split(",")
        assert gpu == "0"
        assert used.isdigit(), "bytes are written as integers"
        assert (pid == "") == (total != ""), "a device row has a total, a process row a pid"
    steps = list(group_steps(rows_of(scenario, seed)))
    assert 100 <= len(steps) <= 30_000
    times = [step.t for step in steps]
    assert all(b > a for a, b in itertools.pairwise(times)), "t only moves forward"
    assert all(round(t, 3) == t for t in times)
    total = steps[0].devices[0].total_bytes
    assert total is not None
    assert 0.93 * label.card_gib * GIB <= total <= label.card_gib * GIB
    assert total == int(label.params["total_mib"]) * MIB
    quantum = int(label.params["quantum_mib"]) * MIB
    other = int(label.params["other_mib"]) * MIB
    assert 0 < other <= 640 * MIB
    listed = 0
    for step in steps:
        assert len(step.devices) == 1
        dev = step.devices[0]
        assert dev.total_bytes == total
        assert 0 < dev.used_bytes <= total
        pids = [p.pid for p in step.processes]
        assert len(pids) == len(set(pids))
        if step.processes:
            listed += 1
            # The device holds its processes plus the driver's constant baseline.
            assert dev.used_bytes - sum(p.used_bytes for p in step.processes) == other
            if step.t != label.oom_t:  # the leaking process is cut to fit at the OOM
                assert all(p.used_bytes % quantum == 0 for p in step.processes)
    assert (listed == 0) == label.device_only == (label.params["rows"] == "never")
    if scenario in judge_scenarios.MULTI_PROCESS:
        assert not label.device_only
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert 0.95 <= statistics.median(gaps) <= 10.5
    assert statistics.median(gaps) == pytest.approx(label.interval_s, rel=0.03)
    assert label.duration_s == times[-1]
    assert label.interval_s == label.params["interval_s"]
    assert label.gpu == 0
    assert label.scenario == scenario
    assert label.seed == seed
    json.dumps(label.params)
    assert all(isinstance(v, float | str) for v in label.params.values())


@pytest.mark.parametrize("scenario", judge_scenarios.SCENARIOS)
def test_same_seed_same_trace(scenario: str) -> None:
    first, second = seeds_of(scenario)
    lines, label = judge_scenarios.build(scenario, first)
    assert (tuple(lines), label) == built(scenario, first)
    assert built(scenario, first)[0] != built(scenario, second)[0]


def test_until_cuts_the_trace() -> None:
    scenario, seed = "judge_eval_spikes", seeds_of("judge_eval_spikes")[0]
    lines, _ = built(scenario, seed)
    short, _ = judge_scenarios.build(scenario, seed, until=1800.0)
    assert short == [lines[0], *(line for line in lines[1:] if float(line.split(",")[0]) <= 1800)]


@pytest.mark.parametrize(("scenario", "seed"), LEAK_CASES)
def test_a_leak_reaches_the_total_at_its_label(scenario: str, seed: int) -> None:
    _, label = built(scenario, seed)
    assert label.leak
    assert label.oom_t is not None
    assert label.leak_start_t is not None
    rows = device(scenario, seed)
    total = rows[0][2]
    assert next(t for t, used, _ in rows if used >= total) == label.oom_t
    assert rows[-1][0] == label.oom_t, "the trace ends at the OOM"
    assert rows[-1][1] == total
    deadline = label.deadline()
    assert deadline is not None
    assert 0.0 < label.leak_start_t < deadline < label.oom_t
    assert sum(label.leak_start_t <= t <= deadline for t, _, _ in rows) >= 20
    oom_after = float(label.params["oom_after_s"])
    lo, hi = OOM_AFTER[scenario]
    assert lo <= oom_after <= hi
    assert 0.75 <= (label.oom_t - label.leak_start_t) / oom_after <= 1.4
    leaked = float(label.params["leaked_bytes_at_oom"])
    assert leaked > 0.05 * total
    assert label.rate_bytes_per_s == pytest.approx(leaked / (label.oom_t - label.leak_start_t))
    assert not label.near_oom_expected


@pytest.mark.parametrize(("scenario", "seed"), LEAK_CASES)
def test_the_twin_is_the_leak_trace_without_the_leak(scenario: str, seed: int) -> None:
    lines, label = built(scenario, seed)
    assert label.leak_start_t is not None
    start = label.leak_start_t
    twin_lines = twin_of(scenario, seed)
    assert twin_lines[0] == lines[0]
    before = [line for line in lines[1:] if float(line.split(",")[0]) < start]
    assert len(before) > 10
    assert before == [line for line in twin_lines[1:] if float(line.split(",")[0]) < start]
    leaky, clean = device(scenario, seed), device(scenario, seed, twin=True)
    assert [t for t, _, _ in leaky] == [t for t, _, _ in clean], "same polls, same end"
    total = clean[0][2]
    assert all(used < total for _, used, _ in clean)
    assert max(used for _, used, _ in clean) <= 0.9 * total, "the leak alone causes the OOM"
    assert all(a[1] >= b[1] for a, b in zip(leaky, clean, strict=True))
    # The leak holds most of its memory by the deadline (beyond the noise).
    deadline = label.deadline()
    assert deadline is not None
    at = max(i for i, (t, _, _) in enumerate(leaky) if t <= deadline)
    assert leaky[at][1] - clean[at][1] >= 0.4 * float(label.params["leaked_bytes_at_oom"])


def test_a_twin_without_until_runs_past_the_oom_and_stays_under_the_card() -> None:
    scenario, seed = "judge_fast_leak", seeds_of("judge_fast_leak")[0]
    _, label = built(scenario, seed)
    lines, twin_label = judge_scenarios.build(scenario, seed, with_leak=False)
    assert label.oom_t is not None
    assert twin_label.oom_t is None
    assert twin_label.duration_s > label.oom_t
    rows = [r for r in parse(lines) if r.pid is None]
    assert all(r.used_bytes <= 0.9 * (r.total_bytes or 0) for r in rows)


@pytest.mark.parametrize(("scenario", "seed"), HEALTHY_CASES)
def test_healthy_traces_stay_under_the_card(scenario: str, seed: int) -> None:
    _, label = built(scenario, seed)
    assert not label.leak
    assert label.oom_t is None
    assert label.leak_start_t is None
    assert label.rate_bytes_per_s == 0.0
    assert label.pid is None
    assert label.near_oom_expected == (scenario in judge_scenarios.NEAR_FULL)
    rows = device(scenario, seed)
    if scenario in judge_scenarios.NEAR_FULL:
        return
    assert max(used / total for _, used, total in rows) <= 0.9
    assert HOUR <= label.duration_s <= 24 * HOUR


@pytest.mark.parametrize("seed", seeds_of("judge_sized_to_95pct"))
def test_the_95_percent_job_sits_at_93_to_97_percent(seed: int) -> None:
    _, label = built("judge_sized_to_95pct", seed)
    assert label.near_oom_expected
    settled = float(label.params["settled_t"])
    rows = device("judge_sized_to_95pct", seed)
    after = [used / total for t, used, total in rows if t >= settled]
    assert len(after) >= 0.5 * len(rows)
    assert min(after) >= 0.93
    assert max(after) <= 0.97
    assert max(used / total for _, used, total in rows) <= 0.97


@pytest.mark.parametrize("seed", seeds_of("judge_fast_leak"))
def test_the_fast_leak_ooms_within_minutes(seed: int) -> None:
    _, label = built("judge_fast_leak", seed)
    assert label.oom_t is not None
    assert label.leak_start_t is not None
    assert label.oom_t - label.leak_start_t <= 20 * MINUTE
    assert label.rate_bytes_per_s >= 100 * MIB / MINUTE


@pytest.mark.parametrize("seed", seeds_of("judge_slow_creep"))
def test_the_slow_creep_ooms_after_ten_hours(seed: int) -> None:
    _, label = built("judge_slow_creep", seed)
    assert label.oom_t is not None
    assert label.leak_start_t is not None
    assert label.oom_t - label.leak_start_t >= 10 * HOUR
    assert label.rate_bytes_per_s <= 4 * GIB / HOUR


@pytest.mark.parametrize(("scenario", "seed"), ALL_CASES)
def test_only_the_multi_process_leak_names_a_pid(scenario: str, seed: int) -> None:
    _, label = built(scenario, seed)
    if scenario not in judge_scenarios.MULTI_PROCESS or not label.leak:
        assert label.pid is None
        return
    assert label.leak_start_t is not None
    assert label.oom_t is not None
    rows = [r for r in rows_of(scenario, seed) if r.pid is not None and r.t >= label.leak_start_t]
    assert len({r.pid for r in rows}) >= 2, "several processes share the GPU"
    mine = [r.used_bytes for r in rows if r.pid == label.pid]
    assert len(mine) >= 20
    assert mine[-1] - mine[0] >= 0.05 * label.card_gib * GIB
    # Every other process stays within its own noise (or comes and goes).
    for pid in {r.pid for r in rows} - {label.pid}:
        theirs = [r.used_bytes for r in rows if r.pid == pid and r.t <= label.oom_t]
        assert max(theirs) - theirs[-1] <= 0.1 * label.card_gib * GIB or theirs[-1] < mine[-1]


def test_leak_rates_span_megabytes_an_hour_to_gigabytes_a_minute() -> None:
    rates = [built(s, seed)[1].rate_bytes_per_s for s, seed in LEAK_CASES]
    assert min(rates) < 1 * GIB / HOUR
    fast = [judge_scenarios.build("judge_fast_leak", seed)[1] for seed in range(40, 46)]
    assert max(label.rate_bytes_per_s for label in fast) > 1 * GIB / MINUTE


def test_the_set_varies_what_it_should() -> None:
    """Across a cheap sample of labels: cards, noise models, quanta, row policies."""
    labels = [
        judge_scenarios.build(s, seed, until=1.0)[1]
        for s in judge_scenarios.HEALTHY
        for seed in range(12)
    ]
    assert len({label.card_gib for label in labels}) >= 6
    assert {label.params["noise"] for label in labels} == set(judge_scenarios.NOISE_KINDS)
    assert {label.params["quantum_mib"] for label in labels} == {1.0, 2.0, 4.0, 20.0}
    assert {label.device_only for label in labels} == {True, False}
    assert {label.params["rows"] for label in labels} == {"every", "sparse", "never"}
    assert min(label.interval_s for label in labels) < 2.0
    assert max(label.interval_s for label in labels) > 7.0


def test_generate_cycles_the_scenarios_with_derived_seeds() -> None:
    pair = ("judge_fast_leak", "judge_warmup_ramp")
    out = list(judge_scenarios.generate(4, 7, pair))
    assert [label.name for _, label in out] == [
        "0000-judge_fast_leak",
        "0001-judge_warmup_ramp",
        "0002-judge_fast_leak",
        "0003-judge_warmup_ramp",
    ]
    assert [label.seed for _, label in out] == [7 * 1_000_039 + i for i in range(4)]
    lines, label = out[2]
    assert judge_scenarios.build(label.scenario, label.seed, label.name) == (lines, label)
    assert (
        judge_scenarios.twin(label)
        == judge_scenarios.build(
            label.scenario, label.seed, label.name, with_leak=False, until=label.oom_t
        )[0]
    )


def test_command_line_writes_traces_and_labels(tmp_path: Path) -> None:
    pair = ["--scenario", "judge_fast_leak", "--scenario", "judge_warmup_ramp"]
    assert judge_scenarios.main(["--out", str(tmp_path), "--count", "3", "--seed", "2", *pair]) == 0
    labels = [json.loads(line) for line in (tmp_path / "labels.jsonl").read_text().splitlines()]
    assert [label["name"] for label in labels] == [
        "0000-judge_fast_leak",
        "0001-judge_warmup_ramp",
        "0002-judge_fast_leak",
    ]
    for i, label in enumerate(labels):
        text = (tmp_path / f"{label['name']}.csv").read_text()
        assert parse(text.splitlines(), label["name"])
        assert label["seed"] == 2 * 1_000_039 + i
        assert label["leak"] == (label["scenario"] == "judge_fast_leak")
