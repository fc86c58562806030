"""The fourth, blind held-out generator (benchmarks/blind_scenarios.py) keeps its promises."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import blind_scenarios
import field_scenarios
import scenarios
import wild_scenarios
from generator_traces import parse, traces_of

from watchdog.trace import group_steps

MIB = 1 << 20
GIB = 1 << 30
HOUR = 3600.0
SEEDS = (3, 17, 2024)
LEAK_CASES = [(s, seed) for s in blind_scenarios.LEAKS for seed in SEEDS]
ALL_CASES = [(s, seed) for s in blind_scenarios.SCENARIOS for seed in SEEDS]


built, twin_of, rows_of, device = traces_of(blind_scenarios)


def build_label_type() -> type:
    """The class of the labels ``build`` returns."""
    return type(blind_scenarios.build("tuned_to_fit", 1)[1])


def test_the_interface_is_the_one_the_scorer_imports() -> None:
    mod = blind_scenarios
    assert mod.SCENARIOS == mod.HEALTHY + mod.LEAKS
    assert not set(mod.HEALTHY) & set(mod.LEAKS)
    assert len(set(mod.SCENARIOS)) == len(mod.SCENARIOS)
    assert set(mod.MULTI_PROCESS) <= set(mod.SCENARIOS)
    assert set(mod.NEAR_FULL) <= set(mod.HEALTHY)
    assert set(mod.MULTI_PROCESS) & set(mod.LEAKS)
    assert set(mod.MULTI_PROCESS) & set(mod.HEALTHY)
    assert build_label_type() is scenarios.Label
    with pytest.raises(ValueError, match="unknown scenario"):
        mod.build("no_such_scenario", 1)


def test_scenario_names_are_new() -> None:
    """Held-out means new shapes: no name is shared with the other three generators."""
    taken = set(scenarios.SCENARIOS) | set(field_scenarios.SCENARIOS)
    taken |= set(wild_scenarios.SCENARIOS)
    assert not taken & set(blind_scenarios.SCENARIOS)


@pytest.mark.parametrize(("scenario", "seed"), ALL_CASES)
def test_every_trace_is_well_formed(scenario: str, seed: int) -> None:
    lines, label = built(scenario, seed)
    assert lines[0] == "t,gpu,pid,used_bytes,total_bytes"
    rows = rows_of(scenario, seed)
    steps = list(group_steps(rows))
    assert 2 <= len(steps) <= 60_000
    times = [step.t for step in steps]
    assert all(b > a for a, b in itertools.pairwise(times)), "one sample per t"
    assert all(round(t, 3) == t for t in times)
    total = steps[0].devices[0].total_bytes
    assert total is not None
    assert 0.9 * label.card_gib * GIB <= total <= label.card_gib * GIB
    listed = 0
    for step in steps:
        assert len(step.devices) == 1
        assert step.devices[0].gpu == 0
        assert step.devices[0].total_bytes == total
        assert all(p.gpu == 0 for p in step.processes)
        pids = [p.pid for p in step.processes]
        assert len(pids) == len(set(pids))
        if step.processes:
            listed += 1
            # The device holds every process plus a small driver/other baseline.
            other = step.devices[0].used_bytes - sum(p.used_bytes for p in step.processes)
            assert 0 <= other <= 600 * MIB
    assert (listed == 0) == label.device_only
    gaps = sorted(b - a for a, b in itertools.pairwise(times))
    assert 1.0 * 0.7 <= gaps[len(gaps) // 2] <= 10.0 * 1.2
    assert label.duration_s == times[-1]
    assert label.gpu == 0
    assert label.scenario == scenario
    assert label.seed == seed
    json.dumps(label.params)


@pytest.mark.parametrize("scenario", blind_scenarios.SCENARIOS)
def test_same_seed_same_trace(scenario: str) -> None:
    lines, label = blind_scenarios.build(scenario, SEEDS[0])
    assert (tuple(lines), label) == built(scenario, SEEDS[0])
    assert built(scenario, SEEDS[0])[0] != built(scenario, SEEDS[1])[0]


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
    # The OOM lands near the drawn time: on a healthy peak a little before or after it.
    after = (label.oom_t - label.leak_start_t) / float(label.params["oom_after_s"])
    assert 0.7 <= after <= 1.3
    assert label.rate_bytes_per_s > 0
    assert not label.near_oom_expected


@pytest.mark.parametrize(("scenario", "seed"), LEAK_CASES)
def test_the_twin_is_the_leak_trace_without_the_leak(scenario: str, seed: int) -> None:
    _, label = built(scenario, seed)
    assert label.leak_start_t is not None
    before = [r for r in rows_of(scenario, seed) if r.t < label.leak_start_t]
    twin_before = [r for r in rows_of(scenario, seed, twin=True) if r.t < label.leak_start_t]
    assert before == twin_before
    assert len(before) > 0
    leaky, clean = device(scenario, seed), device(scenario, seed, twin=True)
    assert [t for t, _, _ in leaky] == [t for t, _, _ in clean], "same polls, same end"
    total = clean[0][2]
    # The healthy part stays well under the card: the leak causes the OOM.
    assert max(used for _, used, _ in clean) <= 0.87 * total
    assert all(a[1] >= b[1] for a, b in zip(leaky[:-1], clean[:-1], strict=True))


@pytest.mark.parametrize(("scenario", "seed"), LEAK_CASES)
def test_a_leak_is_visible_by_its_deadline(scenario: str, seed: int) -> None:
    """Not a leak that only shows in its last quarter: most of it is held at the deadline."""
    _, label = built(scenario, seed)
    deadline = label.deadline()
    assert deadline is not None
    leaky, clean = device(scenario, seed), device(scenario, seed, twin=True)
    at = max(i for i, (t, _, _) in enumerate(leaky) if t <= deadline)
    held = leaky[at][1] - clean[at][1]
    at_oom = float(label.params["leaked_bytes_at_oom"])
    assert held >= 0.4 * at_oom
    assert held >= 0.03 * leaky[0][2]


@pytest.mark.parametrize(("scenario", "seed"), ALL_CASES)
def test_only_multi_process_leaks_name_a_pid_and_it_is_listed(scenario: str, seed: int) -> None:
    _, label = built(scenario, seed)
    if scenario not in blind_scenarios.MULTI_PROCESS or not label.leak:
        assert label.pid is None
        return
    assert label.leak_start_t is not None
    rows = [r for r in rows_of(scenario, seed) if r.pid is not None]
    assert len({r.pid for r in rows if r.t >= label.leak_start_t}) >= 2, "several processes"
    mine = [r.used_bytes for r in rows if r.pid == label.pid and r.t >= label.leak_start_t]
    assert len(mine) >= 2
    others = [r.used_bytes for r in rows if r.pid != label.pid and r.t >= label.leak_start_t]
    assert mine[-1] - mine[0] >= 0.1 * rows[0].used_bytes or mine[-1] > 2 * mine[0]
    assert others


@pytest.mark.parametrize(("scenario", "seed"), ALL_CASES)
def test_healthy_traces_never_reach_the_card(scenario: str, seed: int) -> None:
    _, label = built(scenario, seed)
    if label.leak:
        return
    rows = device(scenario, seed)
    assert all(used < total for _, used, total in rows)
    assert label.oom_t is None
    assert label.leak_start_t is None
    assert label.rate_bytes_per_s == 0.0
    assert label.near_oom_expected == (scenario in blind_scenarios.NEAR_FULL)


@pytest.mark.parametrize(("scenario", "seed"), ALL_CASES)
def test_near_full_traces_sit_near_the_card(scenario: str, seed: int) -> None:
    rows = device(scenario, seed)
    high = sum(used >= 0.9 * total for _, used, total in rows) / len(rows)
    if scenario in blind_scenarios.NEAR_FULL:
        assert high >= 0.8
        assert max(used / total for _, used, total in rows) < 0.99
    elif scenario in blind_scenarios.HEALTHY:
        # Other healthy jobs may peak near the top (up to 92 %) but do not live there.
        top = sum(used >= 0.93 * total for _, used, total in rows) / len(rows)
        assert top < 0.5, "only the near-full scenarios are meant to live at the top"


def test_generate_cycles_the_scenarios_with_derived_seeds() -> None:
    out = list(blind_scenarios.generate(4, 7, ("retain_graph_loop", "tuned_to_fit")))
    assert [label.name for _, label in out] == [
        "0000-retain_graph_loop",
        "0001-tuned_to_fit",
        "0002-retain_graph_loop",
        "0003-tuned_to_fit",
    ]
    assert [label.seed for _, label in out] == [7 * 1_000_037 + i for i in range(4)]
    lines, label = out[2]
    assert blind_scenarios.build(label.scenario, label.seed, label.name) == (lines, label)


def test_the_set_varies_what_it_should() -> None:
    """Across a set: several cards, noise models, quanta, row policies, long and short runs."""
    labels = [label for _, label in blind_scenarios.generate(42, 3)]
    assert len({label.card_gib for label in labels}) >= 5
    assert {label.params["noise"] for label in labels} == {"gauss", "spiky", "drift"}
    assert len({label.params["quantum_mib"] for label in labels}) == 4
    assert {label.device_only for label in labels} == {True, False}
    healthy = [label for label in labels if not label.leak]
    assert max(label.duration_s for label in healthy) >= 12 * HOUR
    near = [float(label.params.get("peak_frac", 0.0)) for label in healthy]
    assert any(0.75 <= peak <= 0.92 for peak in near), "some healthy jobs are sized near the top"
    rates = [label.rate_bytes_per_s for label in labels if label.leak]
    assert min(rates) < 500 * MIB / HOUR, "MB per hour"
    assert max(rates) > GIB / 60.0, "GB per minute"
    to_oom = {label.name: (label.oom_t or 0.0) - (label.leak_start_t or 0.0) for label in labels}
    slow = [to_oom[label.name] for label in labels if label.scenario == "workspace_creep"]
    assert slow
    assert min(slow) >= 10 * HOUR
    fast = [to_oom[label.name] for label in labels if label.scenario == "retain_graph_loop"]
    assert fast
    assert max(fast) <= 20 * 60


def test_command_line_writes_traces_and_labels(tmp_path: Path) -> None:
    assert blind_scenarios.main(["--out", str(tmp_path), "--count", "3", "--seed", "2"]) == 0
    labels = [json.loads(line) for line in (tmp_path / "labels.jsonl").read_text().splitlines()]
    assert [label["name"] for label in labels] == [
        f"{i:04d}-{blind_scenarios.SCENARIOS[i]}" for i in range(3)
    ]
    for label in labels:
        text = (tmp_path / f"{label['name']}.csv").read_text()
        assert parse(text.splitlines(), label["name"])
