"""The policy: ladder, guards (cooldown, restart budget, in flight, dry run), config and journal."""

from __future__ import annotations

import math
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.factories import finding as _event
from watchdog.config import ConfigError, PolicySettings, load_config
from watchdog.daemon.supervisor import Supervisor
from watchdog.policy.engine import DRY_RUN, SEND, SUPPRESSED, JobRef, Policy
from watchdog.policy.journal import Journal, ReadStats, decision_entry, ledger_from
from watchdog.policy.rules import (
    DEFAULT_LADDER,
    SCHEDULE_MAX_S,
    LadderStep,
    parse_ladder,
    parse_schedules,
)


def _jobs(gpu: int, pid: int | None, series: str) -> list[JobRef]:
    return [JobRef(job="train", user="alice")]


def _policy(**overrides: object) -> Policy:
    settings = {"cooldown_s": 600.0, "max_restarts": 2, "restart_window_s": 86400.0, **overrides}
    return Policy(DEFAULT_LADDER, **settings)  # type: ignore[arg-type]


def _sent(decisions: list) -> list[str]:  # type: ignore[type-arg]
    return [d.action for d in decisions if d.outcome == SEND]


def test_leak_gets_a_snapshot_then_a_restart_under_the_budget() -> None:
    """A leak far from OOM gets a snapshot; once under the checkpoint budget, a restart."""
    policy = _policy()
    policy.observe(_event(0, tto=7200))
    first = policy.decide(t=0, wall=1000, jobs=_jobs)
    assert _sent(first) == ["dump_snapshot"]
    policy.ledger.finished("train")
    # 7200 - 5500 = 1700 s to OOM: under the default budget of 1800 s.
    later = policy.decide(t=5500, wall=6500, jobs=_jobs)
    assert _sent(later) == ["checkpoint_and_restart"]
    assert later[-1].time_to_oom_s == pytest.approx(1700)


def test_cache_growth_gets_empty_cache_and_tensors_do_not() -> None:
    """empty_cache is chosen for allocator-cache growth, never for tensors kept alive."""
    cache = _policy()
    cache.observe(_event(0, cause="allocator_cache"))
    assert _sent(cache.decide(0, 0, _jobs))[0] == "empty_cache"
    tensors = _policy()
    tensors.observe(_event(0, cause="tensors_kept_alive"))
    assert "empty_cache" not in _sent(tensors.decide(0, 0, _jobs))


def test_near_oom_without_leak_gets_empty_cache_only() -> None:
    """near_oom alone leads to empty_cache and never to a restart."""
    policy = _policy()
    policy.observe(_event(0, kind="near_oom", tto=None))
    decisions = policy.decide(0, 0, _jobs)
    assert _sent(decisions) == ["empty_cache"]
    policy.ledger.finished("train")
    assert "checkpoint_and_restart" not in _sent(policy.decide(5000, 5000, _jobs))


def test_cooldown_holds_across_episodes_and_is_reported_once() -> None:
    """A finding raised again within the cooldown does not repeat the action; said once."""
    policy = _policy()
    policy.observe(_event(0))
    assert _sent(policy.decide(0, 0, _jobs)) == ["dump_snapshot"]
    policy.ledger.finished("train")
    assert policy.decide(5, 5, _jobs) == []  # one snapshot per finding
    policy.observe(_event(8, state="cleared"))
    policy.observe(_event(9))
    second = policy.decide(10, 10, _jobs)
    assert [(d.action, d.outcome, d.reason) for d in second] == [
        ("dump_snapshot", SUPPRESSED, "cooldown")
    ]
    assert policy.decide(20, 20, _jobs) == []
    assert _sent(policy.decide(700, 700, _jobs)) == ["dump_snapshot"]


def test_restart_budget_is_enforced_per_window() -> None:
    """After max_restarts in the window, further restarts are suppressed as restart_budget."""
    policy = _policy(cooldown_s=0.0)
    outcomes = []
    for minute in range(5):
        # Each restart brings the job back and its leak is found again: a new episode.
        policy.observe(_event(minute * 60, state="cleared"))
        policy.observe(_event(minute * 60, tto=100))
        for _ in range(2):  # the snapshot, then, once it answered, the restart
            decisions = policy.decide(minute * 60, minute * 60, _jobs)
            policy.ledger.finished("train")
            outcomes += [
                (d.outcome, d.reason) for d in decisions if d.action == "checkpoint_and_restart"
            ]
    assert [o for o, _ in outcomes].count(SEND) == 2
    assert (SUPPRESSED, "restart_budget") in outcomes


def test_dry_run_sends_nothing_but_records() -> None:
    """In dry run every decision is marked dry_run and still counts for cooldowns."""
    policy = _policy(dry_run=True)
    policy.observe(_event(0, tto=100))
    decisions = policy.decide(0, 0, _jobs)
    assert decisions
    assert {d.outcome for d in decisions} == {DRY_RUN}
    assert all(d.outcome != SEND for d in policy.decide(1, 1, _jobs))


def test_a_dry_run_spends_none_of_the_live_budget(tmp_path: Path) -> None:
    """Restarted live after a dry run, the daemon's guards see only commands really sent."""
    journal = Journal(tmp_path)
    dry = _policy(dry_run=True, max_restarts=1)
    dry.observe(_event(0.0, tto=600, pid=100))
    for decision in dry.decide(0.0, 0.0, _jobs):
        journal.append(decision_entry(decision))
    assert [(e["action"], e["outcome"]) for e in journal.read()] == [
        ("dump_snapshot", DRY_RUN),
        ("checkpoint_and_restart", DRY_RUN),
    ]
    live = _policy(max_restarts=1, ledger=ledger_from(journal.read()))
    live.observe(_event(20000.0, tto=600, pid=200))
    assert _sent(live.decide(20000.0, 20000.0, _jobs)) == ["dump_snapshot"]  # no cooldown
    live.ledger.finished("train")
    assert _sent(live.decide(20001.0, 20001.0, _jobs)) == ["checkpoint_and_restart"]


def test_a_reload_that_keeps_a_rung_does_not_fire_it_again() -> None:
    """SIGHUP with the same ladder: a finding already acted on is not acted on twice."""
    policy = _policy(cooldown_s=60.0)
    policy.observe(_event(0, tto=7200))
    assert _sent(policy.decide(0, 0, _jobs)) == ["dump_snapshot"]
    policy.ledger.finished("train")
    policy.reconfigure(PolicySettings(cooldown_s=60.0))
    assert policy.decide(2000, 2000, _jobs) == []  # past the cooldown, the same finding
    policy.reconfigure(
        PolicySettings(
            cooldown_s=60.0,
            ladder=(LadderStep("leak", "dump_snapshot", under_time_to_oom_s=7000.0),),
        )
    )
    assert _sent(policy.decide(2001, 2001, _jobs)) == ["dump_snapshot"]  # a new rung acts


def test_one_command_in_flight_per_job() -> None:
    """While a command is in flight for a job, the next one waits for its result."""
    policy = _policy()
    policy.observe(_event(0, tto=100))
    first = policy.decide(0, 0, _jobs)
    assert _sent(first) == ["dump_snapshot"]
    assert [d for d in first if d.outcome == SUPPRESSED] == []  # waiting is not refusing
    assert policy.decide(0.5, 0.5, _jobs) == []
    policy.ledger.finished("train")
    assert _sent(policy.decide(1, 1, _jobs)) == ["checkpoint_and_restart"]


def test_cleared_finding_stops_actions() -> None:
    """Once the detector clears a finding, the policy no longer acts on it."""
    policy = _policy()
    policy.observe(_event(0))
    policy.observe(_event(10, state="cleared"))
    assert policy.decide(20, 20, _jobs) == []


def test_rungs_match_job_user_and_gpu() -> None:
    """A rung with a job pattern applies only to matching jobs."""
    ladder = parse_ladder([{"finding": "leak", "action": "dump_stacks", "job": "bert-*"}])
    policy = Policy(ladder, 0, 3, 3600)
    policy.observe(_event(0))
    assert policy.decide(0, 0, _jobs) == []
    assert _sent(policy.decide(1, 1, lambda g, p, s: [JobRef("bert-large")])) == ["dump_stacks"]


def test_ledger_survives_a_restart_through_the_journal(tmp_path: Path) -> None:
    """Budgets and cooldowns read back from the journal hold after a daemon restart."""
    journal = Journal(tmp_path)
    policy = _policy(cooldown_s=0.0)
    for minute in range(2):
        policy.observe(_event(minute * 60, state="cleared"))
        policy.observe(_event(minute * 60, tto=100))
        for _ in range(2):
            for decision in policy.decide(minute * 60, minute * 60, _jobs):
                journal.append(decision_entry(decision))
            policy.ledger.finished("train")
    with journal.path.open("ab") as stream:
        # A hand-edited line (int(1e999) overflows), and a torn last one, as after SIGKILL.
        stream.write(
            b'{"type": "decision", "t": 1, "wall": 1, "action": "empty_cache", '
            b'"job": "x", "gpu": 1e999, "outcome": "send"}\n'
        )
        stream.write(b'{"type": "decision", "wall": 9')
    stats = ReadStats()
    restarted = _policy(cooldown_s=0.0)
    restarted.ledger = ledger_from(journal.read(stats))
    assert stats.skipped_lines == 1
    restarted.observe(_event(200, tto=100))
    decisions = restarted.decide(200, 200, _jobs)
    restarted.ledger.finished("train")
    decisions += restarted.decide(201, 201, _jobs)
    assert ("checkpoint_and_restart", SUPPRESSED, "restart_budget") in [
        (d.action, d.outcome, d.reason) for d in decisions
    ]


def test_a_decision_dated_in_the_future_or_never_holds_no_guard_for_ever(tmp_path: Path) -> None:
    """A wall written while the clock was years ahead counts as now; NaN or Infinity (which
    json.loads takes) counts not at all, rather than keeping a command in flight for ever."""
    now = 1_000_000.0
    journal = Journal(tmp_path)
    entry = {"type": "decision", "t": 1, "gpu": 0, "pid": 42, "outcome": "send"}
    journal.append(
        {**entry, "wall": now + 3 * 365 * 86400, "job": "ahead", "action": "empty_cache"}
    )
    journal.append({"type": "result", "job": "ahead", "action": "empty_cache", "wall": now})
    with journal.path.open("a") as stream:
        stream.write('{"type":"decision","t":1,"wall":NaN,"job":"nan","gpu":0,"outcome":"send",')
        stream.write('"action":"dump_snapshot"}\n')
    ledger = ledger_from(journal.read(), unanswered_for_s=600.0, now=now)
    assert ledger.in_flight("nan", now + 86400) is None
    policy = _policy(cooldown_s=600.0, ledger=ledger)
    policy.observe(_event(0, cause="allocator_cache"))
    ahead = [JobRef(job="ahead")]
    held = policy.decide(0, now + 60, lambda gpu, pid, series: ahead)
    assert ("empty_cache", "cooldown") in [(d.action, d.reason) for d in held]
    policy.ledger.finished("ahead")
    again = policy.decide(700, now + 700, lambda gpu, pid, series: ahead)
    assert ("empty_cache", SEND) in [(d.action, d.outcome) for d in again]


def test_journal_rotates_by_size(tmp_path: Path) -> None:
    """Past max_bytes the journal is rotated, keeping at most `keep` old files, all readable."""
    journal = Journal(tmp_path, max_bytes=4096, keep=2)
    for index in range(300):
        assert journal.append({"type": "note", "index": index, "pad": "x" * 40})
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["journal.jsonl", "journal.jsonl.1", "journal.jsonl.2"]
    indices = [entry["index"] for entry in journal.read()]
    assert indices == sorted(indices)
    assert indices[-1] == 299


@pytest.mark.skipif(os.geteuid() == 0 and not Path("/dev/full").exists(), reason="needs /dev/full")
def test_journal_write_failure_is_reported_not_raised(tmp_path: Path) -> None:
    """A journal that cannot be written (disk full) returns False and counts the error."""
    journal = Journal(tmp_path)
    journal.path.symlink_to("/dev/full")
    assert journal.append({"type": "note"}) is False
    assert journal.write_errors == 1


def test_ladder_config_round_trip_and_errors(tmp_path: Path) -> None:
    """Ladder and schedules load from TOML tables; mistakes name the entry and key."""
    path = tmp_path / "c.toml"
    path.write_text(
        "[policy]\ndry_run = true\n"
        '[[policy.ladder]]\nfinding = "leak"\naction = "checkpoint"\nunder_time_to_oom_s = 60\n'
        '[[policy.schedule]]\naction = "empty_cache"\ninterval_s = 1800\njitter_s = 60\n'
    )
    policy = load_config(path, env={}).policy
    assert policy.dry_run is True
    assert policy.ladder == (LadderStep("leak", "checkpoint", under_time_to_oom_s=60.0),)
    assert policy.schedule[0].interval_s == 1800.0
    path.write_text('[[policy.ladder]]\nfinding = "leak"\naction = "reboot"\n')
    with pytest.raises(ConfigError, match=r"policy.ladder entry 1: action must be one of"):
        load_config(path, env={})
    with pytest.raises(ValueError, match="under_time_to_oom_s must be a number"):
        parse_ladder([{"finding": "leak", "action": "checkpoint", "under_time_to_oom_s": math.nan}])
    with pytest.raises(ValueError, match="exactly one of interval_s"):
        parse_schedules([{"action": "empty_cache"}])
    with pytest.raises(ValueError, match="not a valid crontab"):
        parse_schedules([{"action": "empty_cache", "cron": "every day"}])
    with pytest.raises(ConfigError, match="set it in the file"):
        load_config(None, env={"GPU_WATCHDOG_POLICY_LADDER": "[]"})


@pytest.mark.parametrize(
    "entry",
    [
        {"interval_s": SCHEDULE_MAX_S, "jitter_s": SCHEDULE_MAX_S},
        {"cron": "0 2 * * *", "jitter_s": SCHEDULE_MAX_S},
    ],
)
def test_the_longest_schedule_accepted_can_be_scheduled(entry: dict[str, object]) -> None:
    """What passes check-config is what the scheduler can take; a span past a year is refused."""
    from apscheduler.schedulers.background import BackgroundScheduler

    schedules = parse_schedules([{"action": "empty_cache", **entry}])
    scheduler = BackgroundScheduler(timezone="UTC")
    owner = SimpleNamespace(on_schedule=print, _installed_schedules=None)
    Supervisor.install_schedules(owner, scheduler, schedules)  # type: ignore[arg-type]
    scheduler.start(paused=True)
    try:
        assert scheduler.get_job("schedule-0").next_run_time is not None
    finally:
        scheduler.shutdown(wait=False)
    for key in [key for key in entry if key.endswith("_s")]:
        with pytest.raises(ValueError, match=f"{key} must be at most"):
            parse_schedules([{"action": "empty_cache", **entry, key: 1e15}])


def test_default_policy_settings_use_the_default_ladder() -> None:
    """With no configuration the documented default ladder is in force."""
    assert PolicySettings().ladder == DEFAULT_LADDER


def test_one_leak_seen_on_gpu_and_process_is_one_decision() -> None:
    """A leak raised on a GPU and on its process, same job, gives one command and no refusal."""
    policy = _policy()
    policy.observe(_event(0, pid=42))
    gpu_level = _event(0, pid=None)
    policy.observe(gpu_level)
    decisions = policy.decide(0, 0, _jobs)
    assert [(d.action, d.outcome) for d in decisions] == [("dump_snapshot", SEND)]


def test_a_leak_still_raised_on_its_process_is_not_acted_on_again_when_its_gpu_clears() -> None:
    """The rung acted on the GPU's finding and the process's together: the process's leak,
    still raised after the GPU's clears (another job freed memory), gets no second command
    and no refusal."""
    policy = _policy()
    policy.observe(_event(0, pid=None))
    policy.observe(_event(0, pid=42))
    assert _sent(policy.decide(0, 1000, _jobs)) == ["dump_snapshot"]
    policy.ledger.finished("train")
    policy.observe(_event(120, state="cleared", pid=None))
    later = [d for t in (180, 1000, 2000) for d in policy.decide(t, 1000 + t, _jobs)]
    assert later == []


def test_switched_from_dry_run_to_live_a_raised_leak_is_acted_on() -> None:
    """SIGHUP with dry_run = false: the leak the dry run decided on is now really acted on."""
    policy = _policy(dry_run=True)
    policy.observe(_event(0, tto=100))
    assert {d.outcome for d in policy.decide(0, 0, _jobs)} == {DRY_RUN}
    assert policy.decide(10, 10, _jobs) == []  # the dry run does not repeat itself
    policy.reconfigure(PolicySettings(cooldown_s=600.0, max_restarts=2, dry_run=False))
    assert _sent(policy.decide(20, 20, _jobs)) == ["dump_snapshot"]


def test_each_leak_the_restart_budget_refuses_is_recorded() -> None:
    """Refused once per leak, not once per job forever: a later leak's refusal is on record."""
    policy = _policy(cooldown_s=0.0, max_restarts=1)
    refused = []
    for episode in range(4):
        t = episode * 600.0
        policy.observe(_event(t, tto=100))
        for step in range(3):  # snapshot, restart (or its refusal), then nothing new
            for decision in policy.decide(t + step, t + step, _jobs):
                if decision.outcome == SUPPRESSED:
                    refused.append((episode, decision.reason))
            policy.ledger.finished("train")
        policy.observe(_event(t + 300, state="cleared"))
    assert refused == [(1, "restart_budget"), (2, "restart_budget"), (3, "restart_budget")]


@pytest.mark.parametrize(
    ("line", "weekdays"),
    [
        ("0 3 * * 0", ["Sun"]),
        ("0 3 * * 7", ["Sun"]),
        ("0 3 * * 1-5", ["Mon", "Tue", "Wed", "Thu", "Fri"]),
        ("0 3 * * 5-7", ["Sun", "Fri", "Sat"]),
        ("0 3 * * */2", ["Sun", "Tue", "Thu", "Sat"]),
        ("0 3 * * mon,wed", ["Mon", "Wed"]),
    ],
)
def test_cron_weekdays_are_crontab_s(line: str, weekdays: list[str]) -> None:
    """0 and 7 are Sunday, as in crontab (APScheduler's own 0 is Monday)."""
    from datetime import datetime, timedelta, timezone

    from watchdog.policy.rules import cron_trigger

    trigger = cron_trigger(line)
    when, seen = datetime(2026, 12, 6, tzinfo=timezone.utc), set()
    for _ in range(14):
        when = trigger.get_next_fire_time(None, when)
        seen.add(when.strftime("%a"))
        when += timedelta(minutes=1)
    order = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]
    assert sorted(seen, key=order.index) == weekdays


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("0 0 31 2 *", "never fires"),
        ("0 0 1 * mon", "not both"),
        ("0 3 * * 8", "expected 0-7"),
        ("0 3 * * 5-1", "runs backwards"),
        ("0 3 * *", "expected 5 fields"),
        # APScheduler's own reading would take these for jan-mar and accept the rest.
        ("0 3 1 jan-mar-x *", "expected a value, a range"),
        ("0 3 lastfoo * *", "day 'lastfoo'"),
        ("60 * * * *", "minute '60': expected 0-59"),
    ],
)
def test_a_cron_line_that_would_not_do_what_it_says_is_refused(line: str, message: str) -> None:
    """Refused at check-config, naming the line: 31 February, crontab's day OR weekday."""
    with pytest.raises(ValueError, match=message):
        parse_schedules([{"action": "empty_cache", "cron": line}])


def test_cron_fields_are_read_as_crontab_reads_them() -> None:
    """A step on a month range is kept (APScheduler's reading dropped it: quarterly ran
    monthly); a day-of-month step with a weekday is crontab's AND, as APScheduler's."""
    from datetime import datetime, timedelta, timezone

    from watchdog.policy.rules import cron_trigger

    def fires(line: str, count: int) -> list[str]:
        trigger, when, out = cron_trigger(line), datetime(2026, 12, 6, tzinfo=timezone.utc), []
        for _ in range(count):
            when = trigger.get_next_fire_time(None, when)
            out.append(when.strftime("%m-%d %a"))
            when += timedelta(minutes=1)
        return out

    assert fires("0 3 1 jan-dec/3 *", 4) == ["01-01 Fri", "04-01 Thu", "07-01 Thu", "10-01 Fri"]
    assert fires("0 3 */2 * 1", 3) == ["12-07 Mon", "12-21 Mon", "01-11 Mon"]
