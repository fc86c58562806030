"""The labelled scenario generator and the scorer in benchmarks/."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import scenarios
import score

from watchdog.config import DetectionSettings
from watchdog.detectors.replay import replay_lines
from watchdog.trace import read_rows


@pytest.mark.parametrize("name", scenarios.SCENARIOS)
def test_every_scenario_builds_a_valid_labelled_trace(name: str) -> None:
    """Each scenario writes a trace the reference parser accepts, labelled consistently."""
    import io

    lines, label = scenarios.build(name, 3)
    rows = list(read_rows(io.StringIO("\n".join(lines) + "\n"), name))
    assert rows
    assert label.scenario == name
    assert 16 <= label.card_gib <= 141
    if label.leak:
        assert label.oom_t is not None
        assert label.leak_start_t is not None
        assert label.oom_t > label.leak_start_t
        assert rows[-1].t == label.oom_t
    else:
        assert label.oom_t is None


def test_a_leak_in_one_of_many_has_company_when_it_starts() -> None:
    """Every one_of_many trace has the leaking process and another on the GPU at the leak's
    start: a leak that ran out before the others started was one process of one."""
    for seed in range(300_000, 300_100):
        lines, label = scenarios.build("one_of_many", seed)
        assert label.leak_start_t is not None
        live_at_start = {
            fields[2]
            for fields in (line.split(",") for line in lines[1:])
            if fields[2] and label.leak_start_t <= float(fields[0]) < label.leak_start_t + 60
        }
        assert label.pid is not None
        assert str(label.pid) in live_at_start
        assert len(live_at_start) >= 2, (seed, live_at_start)


def test_scenarios_are_reproducible() -> None:
    """The same scenario and seed give the same trace."""
    assert scenarios.build("sawtooth_leak", 5) == scenarios.build("sawtooth_leak", 5)


def test_predict_linear_baseline_fires_on_a_ramp() -> None:
    """The predict_linear baseline alarms when an hour's slope reaches the total within 4 h."""
    samples = [(float(t), int(t * 1000), 10_000_000) for t in range(0, 7200, 10)]
    flags = list(score.predict_linear(samples))
    assert not flags[0][1]
    assert any(active for _, active in flags)


def test_baselines_read_the_labelled_gpu() -> None:
    """The baselines watch the GPU the label names, not GPU 0 (traces of GPU 3 exist)."""
    lines = ["t,gpu,pid,used_bytes,total_bytes", "0,0,,100,1000", "0,3,,950,1000", "1,3,,960,1000"]
    assert list(score.device_series(lines, 3)) == [(0.0, 950, 1000), (1.0, 960, 1000)]
    assert list(score.device_series(lines, 0)) == [(0.0, 100, 1000)]


@pytest.mark.slow
def test_project_catches_every_leak_without_false_alarms_on_a_sample() -> None:
    """On one trace of each scenario the detector catches every leak in time and cries no wolf."""
    for lines, label in scenarios.generate(len(scenarios.SCENARIOS), 11):
        result = replay_lines(lines, label.name)
        intervals, _ = score.project_intervals(result.events, label, result.duration_s)
        outcome = score.judge(label, intervals)
        if label.leak:
            assert outcome.caught, label.name
        else:
            assert not outcome.alarmed, label.name


def test_a_leak_trace_runs_until_it_runs_out_of_memory() -> None:
    """A leak whose rate was set from rare eval-spike peaks still ends in an OOM (labelled)."""
    _, label = scenarios.build("fast_leak", 900111)
    assert label.leak
    assert label.oom_t is not None


def test_overlapping_alarms_are_one_page_and_separate_ones_each_count() -> None:
    """A GPU and its process raising the same climb page once; a later climb pages again."""
    gpu_and_process = [(100.0, 400.0), (120.0, 380.0)]
    assert score.alarm_count(gpu_and_process) == 1
    assert score.alarm_count([*gpu_and_process, (900.0, 950.0), (300.0, 500.0)]) == 2
    assert score.alarm_count([]) == 0


def test_only_the_alarm_standing_at_the_deadline_counts() -> None:
    """An alarm raised after the leak began counts only if it still stands at the deadline."""
    label = scenarios.Label("x", "steady_late", 1, leak=True, leak_start_t=1000.0, oom_t=5000.0)
    assert label.deadline() == 4700.0
    cleared = score.judge(label, [(2000.0, 2500.0)])
    assert not cleared.caught
    standing = score.judge(label, [(2000.0, 2500.0), (3000.0, 5001.0)])
    assert standing.caught
    assert standing.lead_s == 2000.0
    early = score.judge(label, [(500.0, 5001.0)])
    assert early.early
    assert not early.caught


def test_a_leak_that_never_ran_out_is_a_miss_for_every_method() -> None:
    """No OOM in the trace: no deadline to be in time for, so no catch and no crash."""
    label = scenarios.Label("x", "steady_late", 1, leak=True, leak_start_t=1000.0, oom_t=None)
    outcome = score.judge(label, [(2000.0, 9000.0)])
    assert not outcome.caught
    tally = score.Tally()
    tally.add(label, outcome)
    assert (tally.caught, tally.missed) == (0, ["x"])


@pytest.mark.parametrize(("sized_to_the_card", "false_alarm"), [(True, False), (False, True)])
def test_near_oom_on_a_healthy_job_is_a_false_alarm_unless_it_is_sized_to_its_card(
    sized_to_the_card: bool, false_alarm: bool
) -> None:
    """In the "leak or near_oom" row a healthy job's near_oom counts as an alarm too, but where
    the job is meant to fill its card; the leak-only row and the static baseline are as ever."""
    total = 16 << 30
    lines = ["t,gpu,pid,used_bytes,total_bytes"]
    for step in range(0, 2 * 3600, 5):
        used = int(total * 0.935) if step >= 600 else (1 << 30) + step * total // 700
        lines += [f"{step},0,,{used},{total}", f"{step},0,42,{used - (300 << 20)},"]
    label = scenarios.Label("flat", "flat_95", 1, leak=False, near_oom_expected=sized_to_the_card)
    record = score.evaluate(lines, label, DetectionSettings(), scenarios)
    assert record.near_oom
    assert not record.outcomes["project"].alarmed
    assert record.outcomes[score.ANY_FINDING].alarmed is false_alarm


@pytest.mark.parametrize(("scenario", "seed"), [("sawtooth", 500057), ("restart", 700061)])
def test_the_rising_side_of_a_tooth_is_no_leak_on_generated_traces(
    scenario: str, seed: int
) -> None:
    """Two generated traces whose teeth passed for leaks while windows of two cycles sufficed."""
    lines, label = scenarios.build(scenario, seed)
    assert not label.leak
    result = replay_lines(lines, label.name)
    assert [e for e in result.events if e.kind == "leak"] == []


def test_a_leak_traces_twin_is_the_same_trace_until_the_leak_begins() -> None:
    """The twin has the leak trace's jobs, noise and sample times, and no leak."""
    lines, label = scenarios.build("steady_late", 21)
    twin = scenarios.twin(label)
    assert label.leak_start_t is not None
    before = [line for line in lines[1:] if float(line.split(",")[0]) < label.leak_start_t]
    assert twin[: len(before) + 1] == lines[: len(before) + 1]
    assert float(twin[-1].split(",")[0]) <= (label.oom_t or 0)
    peak = max(int(line.split(",")[3]) for line in twin[1:] if not line.split(",")[2])
    assert peak < label.card_gib * 2**30  # without the leak the card never fills


def test_a_leak_timing_replaces_the_scenarios_own_and_its_twin_keeps_it() -> None:
    """``leak_timing`` moves the leak (grace_leaks.py); the twin is the trace without it."""
    drawn, _ = scenarios.build("fast_leak", 5)
    lines, label = scenarios.build("fast_leak", 5, leak_timing=(300.0, 400.0))
    assert label.leak_start_t == 300.0
    assert label.oom_t is not None
    assert 300.0 + 400.0 * 0.5 <= label.oom_t <= 300.0 + 400.0 * 1.1
    before = [line for line in lines[1:] if float(line.split(",")[0]) < 300.0]
    assert lines[: len(before) + 1] == drawn[: len(before) + 1]  # the same job until then
    twin = scenarios.twin(label)
    assert twin[: len(before) + 1] == lines[: len(before) + 1]
    assert float(twin[-1].split(",")[0]) <= label.oom_t  # the twin of this timing's trace
    peak = max(int(line.split(",")[3]) for line in twin[1:] if not line.split(",")[2])
    assert peak < label.card_gib * 2**30


def test_grace_leaks_scores_leaks_that_run_out_inside_the_warm_up(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every method is scored on both cases, each leak running out within the grace + 15 min."""
    import grace_leaks

    assert grace_leaks.main(["--count", "3", "--seed", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.count("|") == 5]
    assert len(rows) == 2 + len(grace_leaks.CASES) * len(score.METHODS)
    assert all("/3 |" in row for row in rows[2:])
    outcomes = grace_leaks.run_case("early", 3, [1], DetectionSettings())
    assert {len(results) for results in outcomes.values()} == {3}


def built_beside_the_default(
    param: str, **changed: tuple[float, float]
) -> tuple[list[str], list[str]]:
    """``steady_late`` seed 8 built with ``changed`` and without: the same leak and sample
    times, the change named in the label (``param``), and a twin equal to the trace until
    the leak; returns (changed trace, default trace)."""
    drawn, drawn_label = scenarios.build("steady_late", 8)
    lines, label = scenarios.build("steady_late", 8, **changed)
    assert label.leak_start_t == drawn_label.leak_start_t
    assert param in label.params
    assert param not in drawn_label.params
    assert len(lines) == len(drawn)
    times = [line.split(",")[0] for line in lines[:50]]
    assert times == [line.split(",")[0] for line in drawn[:50]]
    twin = scenarios.twin(label)
    assert label.leak_start_t is not None
    before = [line for line in lines[1:] if float(line.split(",")[0]) < label.leak_start_t]
    assert twin[: len(before) + 1] == lines[: len(before) + 1]
    return lines, drawn


def test_a_slower_warm_up_changes_only_the_warm_up_and_its_twin_keeps_it() -> None:
    """``warmup_tau`` (slow_warmups.py) draws the time constant from its own range with
    as many draws: the same job, leak and samples, settling later; the twin too."""
    lines, drawn = built_beside_the_default("warmup_tau_s", warmup_tau=(590.0, 600.0))
    assert lines[1:200] != drawn[1:200]  # still climbing where the default had settled


def test_a_pause_before_the_warm_up_holds_the_load_and_changes_nothing_else() -> None:
    """``warmup_pause`` (slow_warmups.py --pause) draws each job's pause from a generator of
    its own: the job holds its load for the pause, every other draw is as without it,
    and the twin has the same pause."""
    lines, drawn = built_beside_the_default("warmup_pause_s", warmup_pause=(170.0, 180.0))
    late = [line for line in lines[1:] if float(line.split(",")[0]) >= 3600]
    assert late == [line for line in drawn[1:] if float(line.split(",")[0]) >= 3600]

    def device(trace: list[str], since: float, until: float) -> list[int]:
        return [
            int(row[3])
            for row in (line.split(",") for line in trace[1:])
            if row[2] == "" and since <= float(row[0]) < until
        ]

    held = device(lines, 70.0, 170.0)  # the load is done by 60 s; the growth waits
    grown = device(drawn, 70.0, 170.0)
    assert max(held) - min(held) < max(grown) - min(grown)


def test_smooth_growth_traces_are_healthy_jobs_that_slow_down_under_the_card() -> None:
    """Each curve's trace is a valid healthy trace: memory that ends higher than it was
    after the warm-up, at most 90% of the card; the same seed builds the same trace."""
    import smooth_growth

    for curve in smooth_growth.CURVES:
        lines, label = smooth_growth.build(curve, 3, "t")
        assert not label.leak
        assert lines == smooth_growth.build(curve, 3, "t")[0]
        rows = [row.split(",") for row in lines[1:] if row.split(",")[2] == ""]
        total = int(rows[0][4])
        used = [int(row[3]) for row in rows]
        assert max(used) <= 0.9 * total + 256 * scenarios.MIB  # the noise may poke above
        tenth = len(used) // 10
        first, last = sorted(used[tenth : 2 * tenth]), sorted(used[-tenth:])
        assert last[len(last) // 2] > first[len(first) // 2]
        assert replay_lines(lines, "t").device_samples == len(rows)


def test_smooth_growth_scores_every_curve(capsys: pytest.CaptureFixture[str]) -> None:
    """One row per curve and method, then the totals."""
    import smooth_growth

    assert smooth_growth.main(["--count", "1", "--seed", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.count("|") == 5]
    assert len(rows) == 2 + (len(smooth_growth.CURVES) + 1) * len(score.METHODS)
    assert rows[-len(score.METHODS)].startswith("| all | project | ")


def test_slow_warmups_scores_every_scenario_with_slower_warm_ups(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """One row per scenario and method, then the totals; a bad range is refused."""
    import slow_warmups

    assert slow_warmups.main(["--count", "1", "--seed", "1", "--tau", "300-600"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.count("|") == 5]
    assert len(rows) == 2 + (len(scenarios.SCENARIOS) + 1) * len(score.METHODS)
    assert rows[-len(score.METHODS)].startswith("| all | project | ")
    with pytest.raises(SystemExit):
        slow_warmups.main(["--tau", "600-300"])
    assert "not a range of positive seconds" in capsys.readouterr().err
    assert slow_warmups.main(["--count", "1", "--seed", "1", "--pause", "60-180"]) == 0
    assert "pauses 60-180 s" in capsys.readouterr().out


def test_an_alarm_counts_only_from_when_the_healthy_twin_would_not_have_raised_it() -> None:
    """A warm-up alarm that stands on into a leak from the start counts from the twin's clear."""
    label = scenarios.Label("x", "steady_from_start", 1, leak=True, leak_start_t=0.0, oom_t=5000.0)
    warmup_alarm = [(60.0, 5001.0)]
    healthy_twin_alarm = [(60.0, 3600.0)]
    outcome = score.judge(label, warmup_alarm, healthy_twin_alarm)
    assert outcome.caught
    assert outcome.lead_s == 5000.0 - 3600.0
    all_along = score.judge(label, warmup_alarm, [(60.0, 5001.0)])
    assert not all_along.caught
    assert score.judge(label, warmup_alarm).lead_s == 5000.0 - 60.0


def test_the_scorer_says_which_pattern_each_scenario_s_leaks_were_raised_with(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The pattern of the first leak raised, counted by scenario: what issue 3 asks
    reported, measured as the catches are."""
    lines, label = scenarios.build("sawtooth_leak", 100_010, "0010-sawtooth_leak")
    record = score.evaluate(lines, label, DetectionSettings(), scenarios)
    assert record.pattern == "sawtooth"
    score.report([record], scenarios, [1])
    rows = {row.split(" | ")[0]: row for row in capsys.readouterr().out.splitlines()}
    assert rows["| sawtooth_leak"] == "| sawtooth_leak | 1 | caught 1/1 | 82 min | sawtooth 1 |"
    assert rows["| staircase"].endswith("| - |")  # no trace of it scored


def test_the_scorer_scores_the_detection_settings_of_a_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--config FILE`` hands its [detection] table to the detector; the header says so."""
    config = tmp_path / "tuned.toml"
    config.write_text("[detection]\nleak_extrapolation_short = 1.25\n")
    seen = []
    run_seed = score.run_seed

    def spy(count: int, seed: int, settings: score.DetectionSettings, *rest: object) -> object:
        seen.append(settings)
        return run_seed(count, seed, settings, *rest)  # type: ignore[arg-type]

    monkeypatch.setattr(score, "run_seed", spy)
    monkeypatch.setenv("GPU_WATCHDOG_DETECTION_LEAK_EXTRAPOLATION_SHORT", "3")  # not read
    score.main(["--count", "1", "--config", str(config)])
    assert [s.leak_extrapolation_short for s in seen] == [1.25]
    assert f"settings from {config}" in capsys.readouterr().out


def test_the_scorer_refuses_a_bad_config_file_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A setting out of range is named, and the scorer exits 2 before scoring anything."""
    config = tmp_path / "bad.toml"
    config.write_text("[detection]\nleak_extrapolation_short = 0\n")
    with pytest.raises(SystemExit) as exited:
        score.main(["--count", "1", "--config", str(config)])
    assert exited.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "leak_extrapolation_short" in error
    assert str(config) in error


def test_near_full_creep_sizes_jobs_to_the_last_percent_and_runs_creeps_out_on_time(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """near_full_creep.py: each job's peaks sit its drawn headroom under the card; a creep
    runs out 10-30 h after it starts, and its twin is the trace until then; every case
    and method is scored."""
    import near_full_creep

    for case in near_full_creep.CASES:
        lines, label = near_full_creep.build(case, 3, "x")
        total = label.card_gib * 2**30
        headroom = float(label.params["headroom_mib"]) * 2**20
        device = [
            (float(row[0]), int(row[3]))
            for row in (line.split(",") for line in lines[1:])
            if row[2] == ""
        ]
        if label.leak:
            assert label.leak_start_t is not None
            assert label.oom_t is not None
            assert 9 * 3600 <= label.oom_t - label.leak_start_t <= 31 * 3600
            twin = near_full_creep.twin(label)
            before = [line for line in lines[1:] if float(line.split(",")[0]) < label.leak_start_t]
            assert twin[: len(before) + 1] == lines[: len(before) + 1]
            device = [(t, used) for t, used in device if t < label.leak_start_t]
        else:
            assert label.oom_t is None
            assert label.near_oom_expected
        settled = [used for t, used in device if t >= 1800]
        assert total - 1.5 * headroom <= max(settled) < total
    assert near_full_creep.main(["--count", "1", "--seed", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.count("|") == 5]
    assert len(rows) == 2 + (len(near_full_creep.CASES) + 1) * len(score.METHODS)
    for bad in ("3-x", "8-5", "0-2", "50-100"):
        with pytest.raises(SystemExit):
            near_full_creep.main(["--headroom", bad])
        assert "argument --headroom: not a range" in capsys.readouterr().err


def test_near_full_creep_headroom_is_drawn_from_its_range_and_the_twin_keeps_it() -> None:
    """``--headroom 5-8``: peaks 5-8% of the card under its top, named in the label, the
    twin built with the same range (the same job until the leak)."""
    import near_full_creep

    lines, label = near_full_creep.build("creep", 4, "x", headroom_pct=(5.0, 8.0))
    assert label.params["headroom_pct"] == "5-8"
    share = float(label.params["headroom_mib"]) / (label.card_gib * 1024)
    assert 0.0499 <= share <= 0.0801
    assert label.leak_start_t is not None
    twin = near_full_creep.twin(label)
    before = [line for line in lines[1:] if float(line.split(",")[0]) < label.leak_start_t]
    assert twin[: len(before) + 1] == lines[: len(before) + 1]
    default, _ = near_full_creep.build("creep", 4, "x")
    assert default[1:100] != lines[1:100]
