"""Replay shows the policy's decisions: exact commands and times, and none for healthy traces."""

from __future__ import annotations

import io
import json
import random
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from tests.factories import finding
from watchdog.cli import main
from watchdog.config import PolicySettings
from watchdog.policy.engine import JobRef, Policy
from watchdog.policy.replay import decisions_over
from watchdog.sources.scenarios import scenario_rows
from watchdog.trace import TraceWriter


def _write_scenario(name: str, path: Path) -> Path:
    with path.open("w") as stream:
        writer = TraceWriter(stream)
        for row in scenario_rows(name):
            if row.pid is None:
                writer.device(row.t, row.gpu, row.used_bytes, row.total_bytes or 0)
            else:
                writer.process(row.t, row.gpu, row.pid, row.used_bytes)
    return path


def _replay_json(*args: str) -> list[dict]:  # type: ignore[type-arg]
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["replay", "--json", *args]) == 0
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_exact_commands_at_exact_times_for_a_known_event_stream() -> None:
    """Leak raised at 100 s with 1 h to OOM: snapshot at 100 s, restart when 30 min remain."""
    events = [finding(100.0, "raised", tto=3600.0, pid=7)]
    decisions = decisions_over(events, end_t=4000.0, interval_s=1.0, settings=PolicySettings())
    assert [(d.t, d.action, d.outcome, d.job) for d in decisions] == [
        (100.0, "dump_snapshot", "send", "pid:7"),
        # The countdown from 3600 s at t=100 passes under the 1800 s budget after t=1900.
        (1901.0, "checkpoint_and_restart", "send", "pid:7"),
    ]


def test_cleared_leak_stops_the_ladder_before_the_restart() -> None:
    """A leak cleared before its time to OOM falls under the budget never leads to a restart."""
    events = [
        finding(100.0, "raised", tto=3600.0, pid=7),
        finding(1000.0, "cleared", tto=None, pid=7),
    ]
    decisions = decisions_over(events, end_t=5000.0, interval_s=1.0, settings=PolicySettings())
    assert [d.action for d in decisions] == ["dump_snapshot"]


def test_leak_trace_gets_a_restart_before_oom(tmp_path: Path) -> None:
    """With the default policy a leaking trace gets checkpoint_and_restart before it runs out."""
    trace = _write_scenario("leak", tmp_path / "leak.csv")
    items = _replay_json(str(trace))
    oom_t = max(r.t for r in scenario_rows("leak"))
    restarts = [
        i for i in items if i["kind"] == "action" and i["action"] == "checkpoint_and_restart"
    ]
    assert restarts, "no restart decided"
    first = restarts[0]
    assert first["outcome"] == "send"
    assert first["t"] < oom_t - 300  # with at least five minutes to spare
    assert first["time_to_oom_s"] < PolicySettings().ladder[2].under_time_to_oom_s
    assert {"t", "kind", "action", "gpu", "pid"} <= set(first)


def test_healthy_trace_gets_no_action(tmp_path: Path) -> None:
    """A healthy trace yields no finding and no decision at all."""
    trace = _write_scenario("healthy", tmp_path / "healthy.csv")
    assert [i for i in _replay_json(str(trace)) if i["kind"] == "action"] == []


def test_dry_run_config_marks_every_decision(tmp_path: Path) -> None:
    """Replayed with policy.dry_run, the same decisions appear as dry_run, none as send."""
    trace = _write_scenario("leak", tmp_path / "leak.csv")
    config = tmp_path / "dry.toml"
    config.write_text("[policy]\ndry_run = true\n")
    actions = [
        i for i in _replay_json(str(trace), "--config", str(config)) if i["kind"] == "action"
    ]
    assert actions
    assert {a["outcome"] for a in actions} == {"dry_run"}


@pytest.mark.parametrize("name", ["two-jobs-one-leak"])
def test_only_the_leaking_process_is_acted_on(tmp_path: Path, name: str) -> None:
    """Of two jobs on one GPU only the leaking one receives commands."""
    trace = _write_scenario(name, tmp_path / f"{name}.csv")
    jobs = {i["job"] for i in _replay_json(str(trace)) if i["kind"] == "action"}
    assert jobs == {"pid:4000002"}


def _asking_every_interval(  # type: ignore[type-arg]
    events: list, end_t: float, interval_s: float, watched_gpus: tuple[int, ...] = ()
) -> list:
    """The policy asked at every interval from the first event on: what replay must equal."""
    policy = Policy.from_settings(
        PolicySettings(cooldown_s=300.0, max_restarts=1, restart_window_s=5000.0)
    )

    def jobs(gpu: int, pid: int | None, series: str) -> list[JobRef]:
        pids = [pid] if pid is not None else sorted(policy.culprits(gpu))
        return [JobRef(f"pid:{p}") for p in pids] or [JobRef(f"gpu:{gpu}")]

    decided, index, t = [], 0, events[0].t
    while t <= end_t:
        while index < len(events) and events[index].t <= t:
            policy.observe(events[index])
            index += 1
        for decision in policy.decide(t, t, jobs, lambda gpu: gpu in watched_gpus):
            decided.append(decision)
            if decision.outcome == "send":
                policy.ledger.finished(decision.job)
        t += interval_s
    return decided


@pytest.mark.parametrize("watched_gpus", [(), (0,)])
@pytest.mark.parametrize("seed", range(20))
def test_skipping_quiet_stretches_decides_exactly_as_asking_every_interval(
    seed: int, watched_gpus: tuple[int, ...]
) -> None:
    """Replay jumps over stretches where nothing can change; it decides what every ask would,
    a GPU's leak waiting for its culprit (its processes watched) included."""
    rng = random.Random(seed)
    events, t = [], 0.0
    for _ in range(rng.randint(1, 8)):
        t += rng.choice([1.0, 30.0, 400.0, 2500.0])
        pid = rng.choice([7, 8, None])
        state = "cleared" if rng.random() < 0.25 else "raised"
        kind = rng.choice(["leak", "leak", "near_oom"])
        events.append(
            finding(
                t,
                state,
                kind=kind,
                tto=rng.choice([None, 600.0, 4000.0]),
                cause=rng.choice([None, "allocator_cache"]),
                pid=pid,
            )
        )
    settings = PolicySettings(cooldown_s=300.0, max_restarts=1, restart_window_s=5000.0)
    end_t = t + 9000.0
    skipped = decisions_over(
        events, end_t, interval_s=1.0, settings=settings, watched_gpus=watched_gpus
    )
    asked = _asking_every_interval(events, end_t, interval_s=1.0, watched_gpus=watched_gpus)
    assert [(d.t, d.action, d.outcome, d.job, d.reason) for d in skipped] == [
        (d.t, d.action, d.outcome, d.job, d.reason) for d in asked
    ]


def test_a_trace_with_a_huge_gap_replays_at_once() -> None:
    """A finding standing over a gap of years is not asked about second by second."""
    events = [finding(0.0, tto=600.0, pid=7), finding(1e16, "cleared", tto=None, pid=7)]
    decisions = decisions_over(events, end_t=1e16, interval_s=1.0, settings=PolicySettings())
    assert [d.action for d in decisions] == ["dump_snapshot", "checkpoint_and_restart"]
