"""The escalation ladder and the schedules, as configured in ``[[policy.ladder]]`` and
``[[policy.schedule]]`` tables (docs/policy.md)."""

from __future__ import annotations

import fnmatch
import math
import re
from dataclasses import dataclass, fields
from typing import Any

ACTIONS = (
    "empty_cache",
    "dump_snapshot",
    "dump_stacks",
    "checkpoint",
    "checkpoint_and_restart",
    "restart_group",
)
FINDINGS = ("leak", "near_oom", "stalled", "rank_lost", "*")
SCHEDULE_MAX_S = 366 * 86400.0
"""Longest schedule interval and jitter: a year (the scheduler overflows on absurd spans)."""
CAUSES = ("tensors_kept_alive", "allocator_cache", "outside_pytorch", "unknown", "*")
RESTART = "checkpoint_and_restart"
GROUP_RESTART = "restart_group"
RESTARTS = (RESTART, GROUP_RESTART)
"""Actions that restart a job: both spend its restart budget."""


@dataclass(frozen=True)
class JobMatch:
    """Which jobs a rule applies to: glob patterns on job and user, and a GPU (-1: any)."""

    job: str = "*"
    user: str = "*"
    gpu: int = -1

    def matches(self, job: str, user: str, gpu: int | None) -> bool:
        """True when the job, its user and its GPU fit this match."""
        return (
            fnmatch.fnmatchcase(job, self.job)
            and fnmatch.fnmatchcase(user, self.user)
            and (self.gpu < 0 or gpu == self.gpu)
        )


@dataclass(frozen=True)
class LadderStep:
    """One rung: a finding (and its cause) that leads to an action.

    ``under_time_to_oom_s`` > 0 makes the rung act only once the predicted
    time to OOM is under it (0: as soon as the finding is raised).
    """

    finding: str
    action: str
    cause: str = "*"
    under_time_to_oom_s: float = 0.0
    match: JobMatch = JobMatch()

    def applies(self, finding: str, cause: str | None, time_to_oom_s: float | None) -> bool:
        """True when this rung fits the finding, its cause and its predicted time to OOM."""
        if self.finding not in ("*", finding):
            return False
        if self.cause not in ("*", cause or "unknown"):
            return False
        if self.under_time_to_oom_s > 0:
            return time_to_oom_s is not None and time_to_oom_s < self.under_time_to_oom_s
        return True


@dataclass(frozen=True)
class Schedule:
    """An action run on a timer for matching jobs: every ``interval_s`` or on a ``cron`` line."""

    action: str
    interval_s: float = 0.0
    cron: str = ""
    jitter_s: float = 0.0
    match: JobMatch = JobMatch()


DEFAULT_CHECKPOINT_BUDGET_S = 1800.0

DEFAULT_LADDER = (
    # empty_cache returns cached blocks to the driver: it helps fragmentation and
    # cache growth, and does nothing for tensors that are still referenced.
    LadderStep(finding="leak", cause="allocator_cache", action="empty_cache"),
    # A leak is worth a snapshot so someone can find it, whatever its cause.
    LadderStep(finding="leak", action="dump_snapshot"),
    # When it will run out before a human can act, save the work and restart.
    LadderStep(finding="leak", action=RESTART, under_time_to_oom_s=DEFAULT_CHECKPOINT_BUDGET_S),
    # Near OOM without a leak: free the cache and let the alert tell a human.
    LadderStep(finding="near_oom", action="empty_cache"),
)


# policy.group_restart adds this rung: a job whose ranks stopped stepping is restarted by
# its launcher. A hung rank blocks its training thread in a collective, so no checkpoint can
# be taken there; each rank exits from its background thread with the restart exit code and
# torchrun (--max-restarts) starts the whole group again from its last checkpoint.
GROUP_RESTART_LADDER = (LadderStep(finding="stalled", action=GROUP_RESTART),)


def effective_ladder(settings: Any) -> tuple[LadderStep, ...]:
    """The configured ladder, plus the group-restart rung when ``policy.group_restart`` is on."""
    ladder = tuple(settings.ladder)
    if getattr(settings, "group_restart", False):
        ladder += GROUP_RESTART_LADDER
    return ladder


def _table(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"each {what} entry must be a table ([[policy.{what}]])")
    return value


def _choice(table: dict[str, Any], key: str, choices: tuple[str, ...], default: str | None) -> str:
    value = table.get(key, default)
    if value is None:
        raise ValueError(f"needs {key} (one of {', '.join(choices)})")
    if value not in choices:
        raise ValueError(f"{key} must be one of {', '.join(choices)}; got {value!r}")
    return str(value)


def _number(
    table: dict[str, Any], key: str, minimum: float = 0.0, maximum: float = math.inf
) -> float:
    value = table.get(key, 0.0)
    bad_type = isinstance(value, bool) or not isinstance(value, (int, float))
    if bad_type or not math.isfinite(value) or value < minimum:
        raise ValueError(f"{key} must be a number >= {minimum:g}, got {value!r}")
    if value > maximum:
        raise ValueError(f"{key} must be at most {maximum:g}, got {value!r}")
    return float(value)


def _match(table: dict[str, Any]) -> JobMatch:
    job, user, gpu = table.get("job", "*"), table.get("user", "*"), table.get("gpu", -1)
    if not isinstance(job, str) or not isinstance(user, str):
        raise ValueError("job and user must be strings (glob patterns)")
    if isinstance(gpu, bool) or not isinstance(gpu, int):
        raise ValueError(f"gpu must be an integer (-1 for any), got {gpu!r}")
    return JobMatch(job=job, user=user, gpu=gpu)


def _known_keys(table: dict[str, Any], allowed: set[str], what: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} in a [[policy.{what}]] entry")


def parse_ladder(value: Any) -> tuple[LadderStep, ...]:
    """``[[policy.ladder]]`` tables as LadderSteps; raises ValueError naming the entry."""
    if not isinstance(value, list):
        raise ValueError("must be a list of tables ([[policy.ladder]])")
    steps = []
    for number, entry in enumerate(value, 1):
        try:
            table = _table(entry, "ladder")
            _known_keys(
                table,
                {"finding", "cause", "action", "under_time_to_oom_s", "job", "user", "gpu"},
                "ladder",
            )
            steps.append(
                LadderStep(
                    finding=_choice(table, "finding", FINDINGS, None),
                    action=_choice(table, "action", ACTIONS, None),
                    cause=_choice(table, "cause", CAUSES, "*"),
                    under_time_to_oom_s=_number(table, "under_time_to_oom_s"),
                    match=_match(table),
                )
            )
        except ValueError as exc:
            raise ValueError(f"entry {number}: {exc}") from None
    return tuple(steps)


def parse_schedules(value: Any) -> tuple[Schedule, ...]:
    """``[[policy.schedule]]`` tables as Schedules; raises ValueError naming the entry."""
    if not isinstance(value, list):
        raise ValueError("must be a list of tables ([[policy.schedule]])")
    schedules = []
    for number, entry in enumerate(value, 1):
        try:
            table = _table(entry, "schedule")
            _known_keys(
                table,
                {"action", "interval_s", "cron", "jitter_s", "job", "user", "gpu"},
                "schedule",
            )
            cron = table.get("cron", "")
            if not isinstance(cron, str):
                raise ValueError(f"cron must be a string, got {cron!r}")
            # The scheduler's date arithmetic overflows on absurd spans; a year is plenty.
            interval = _number(table, "interval_s", maximum=SCHEDULE_MAX_S)
            if bool(cron) == bool(interval):
                raise ValueError("give exactly one of interval_s (> 0) and cron")
            if interval and interval < 1:
                raise ValueError(f"interval_s must be >= 1, got {interval:g}")
            if cron:
                _check_cron(cron)
            schedules.append(
                Schedule(
                    action=_choice(table, "action", ACTIONS, None),
                    interval_s=interval,
                    cron=cron,
                    jitter_s=_number(table, "jitter_s", maximum=SCHEDULE_MAX_S),
                    match=_match(table),
                )
            )
        except ValueError as exc:
            raise ValueError(f"entry {number}: {exc}") from None
    return tuple(schedules)


_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
"""crontab's day-of-week numbers: 0 (and 7) is Sunday. APScheduler's 0 is Monday."""
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_FIELDS = (
    # name, first, last, names (numbered from ``first``)
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day", 1, 31, ()),
    ("month", 1, 12, _MONTHS),
    ("weekday", 0, 7, _WEEKDAYS),
)
_ITEM = re.compile(r"(\*|[0-9a-z]+(?:-[0-9a-z]+)?)(?:/([0-9]+))?")


def cron_trigger(line: str) -> Any:
    """An APScheduler trigger (UTC) firing when the crontab ``line`` does.

    Each field is read as crontab reads it (numbers, names, ranges, steps, lists;
    weekday 0 and 7 are Sunday) and handed to APScheduler as explicit values, so
    nothing is left to APScheduler's own, different, reading of the same text.

    Raises:
        ValueError: not five valid fields; day of month and day of week both
            restricted (crontab fires on either, APScheduler only on both); or a line
            that never fires (31 February).
    """
    from datetime import datetime, timezone

    from apscheduler.triggers.cron import CronTrigger

    fields = line.split()
    try:
        if len(fields) != 5:
            raise ValueError(
                f"expected 5 fields (minute hour day month weekday), got {len(fields)}"
            )
        if not fields[2].startswith("*") and not fields[4].startswith("*"):
            raise ValueError(
                "give the day of the month or the day of the week, not both (crontab "
                "fires on either; two schedules say so)"
            )
        values = [_crontab_field(text, *spec) for text, spec in zip(fields, _FIELDS, strict=True)]
        minute, hour, day, month, weekdays = values
        trigger = CronTrigger(
            minute=minute,
            hour=hour,
            day=day,
            month=month,
            day_of_week=_weekday_names(weekdays),
            timezone="UTC",
        )
    except ValueError as exc:
        raise ValueError(f"cron {line!r} is not a valid crontab line: {exc}") from None
    if trigger.get_next_fire_time(None, datetime.now(timezone.utc)) is None:
        raise ValueError(f"cron {line!r} never fires")
    return trigger


def _weekday_names(values: str) -> str:
    """crontab weekday numbers as names, which crontab and APScheduler read alike."""
    if values == "*":
        return values
    return ",".join(dict.fromkeys(_WEEKDAYS[int(day) % 7] for day in values.split(",")))


def _crontab_field(text: str, name: str, first: int, last: int, names: tuple[str, ...]) -> str:
    """One crontab field as ``*`` or the sorted list of the values it allows."""
    if text == "*":
        return text

    def value(word: str) -> int:
        if word.isdigit() and first <= int(word) <= last:
            return int(word)
        if word in names:
            return names.index(word) + first
        allowed = f"{first}-{last}" + (f" or {names[0]}..{names[-1]}" if names else "")
        raise ValueError(f"{name} {word!r}: expected {allowed}")

    chosen: set[int] = set()
    for item in text.lower().split(","):
        match = _ITEM.fullmatch(item)
        if match is None:
            raise ValueError(f"{name} {item!r}: expected a value, a range a-b, or either /step")
        body, step_text = match.groups()
        step = int(step_text) if step_text is not None else 1
        if step < 1:
            raise ValueError(f"{name} {item!r}: the step must be at least 1")
        if body == "*":
            low, high = first, last
        elif "-" in body:
            low, high = (value(word) for word in body.split("-"))
        else:
            low = value(body)
            high = last if step_text is not None else low  # crontab's "5/10" runs to the end
        if low > high:
            raise ValueError(f"{name} {item!r}: the range runs backwards")
        chosen.update(range(low, high + 1, step))
    return ",".join(str(v) for v in sorted(chosen))


def _check_cron(line: str) -> None:
    cron_trigger(line)


def _render_tables(name: str, items: tuple[Any, ...]) -> list[str]:
    from watchdog.config_docs import toml_value

    lines: list[str] = []
    for item in items:
        lines.append(f"[[{name}]]")
        for spec in fields(item):
            value = getattr(item, spec.name)
            if isinstance(value, JobMatch):
                for match_spec in fields(value):
                    match_value = getattr(value, match_spec.name)
                    if match_value != match_spec.default:
                        lines.append(f"{match_spec.name} = {toml_value(match_value)}")
            elif value != spec.default or spec.name in ("finding", "action"):
                lines.append(f"{spec.name} = {toml_value(value)}")
    return lines


def render_ladder(section: str, ladder: tuple[LadderStep, ...]) -> list[str]:
    """The ladder as ``[[policy.ladder]]`` TOML tables."""
    return _render_tables(f"{section}.ladder", ladder)


def render_schedules(section: str, schedules: tuple[Schedule, ...]) -> list[str]:
    """The schedules as ``[[policy.schedule]]`` TOML tables."""
    return _render_tables(f"{section}.schedule", schedules)
