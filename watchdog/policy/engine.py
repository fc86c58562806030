"""The policy's decisions: a pure function of findings, jobs, what was done before, and time.

Findings come in as detector events; the policy keeps the active ones and,
at each ``decide``, walks the ladder for each of them. The guards (dry run,
cooldown per job and action, a restart budget per job, one command in flight
per job) are applied here, so replaying a trace yields exactly the decisions
the live daemon would have taken.

Two clocks: ``t`` is the detectors' clock (monotonic live, trace time in
replay) and predicts the time to OOM; ``wall`` is seconds since the epoch
(trace time in replay) and keys the history, which survives daemon restarts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from watchdog.detectors.events import ALLOCATED, LEAK, NEAR_OOM, PROCESS, RESERVED
from watchdog.policy.rules import RESTARTS, LadderStep, effective_ladder

SEND = "send"
DRY_RUN = "dry_run"
SUPPRESSED = "suppressed"

CULPRIT_WAIT_S = 1200.0
"""Longest a GPU's leak waits for the process behind it to be singled out: the GPU's
series and its processes' are judged apart, and the GPU's leak may be raised first
(by 10 s to 21 min, measured on multi-process leak traces)."""
CULPRIT_WAIT_SHARE = 0.25
"""... and at most this share of its predicted time to OOM when raised: a fast leak
waits little."""


@dataclass(frozen=True, slots=True)
class JobRef:
    """A job the policy may act on."""

    job: str
    user: str = ""


@dataclass(frozen=True, slots=True)
class Finding:
    """An active finding, as the last event about it described it."""

    kind: str
    series: str
    gpu: int
    pid: int | None
    cause: str | None
    time_to_oom_s: float | None
    t: float

    def time_to_oom_at(self, t: float) -> float | None:
        """The predicted time to OOM at ``t``, counted down from the event's prediction."""
        if self.time_to_oom_s is None:
            return None
        return max(0.0, self.time_to_oom_s - (t - self.t))


@dataclass(frozen=True, slots=True)
class Decision:
    """One action the policy took or chose not to take."""

    t: float
    wall: float
    action: str
    job: str
    gpu: int
    pid: int | None
    finding: str
    series: str
    outcome: str
    """``send``, ``dry_run`` or ``suppressed``."""
    reason: str
    """Why: the ladder rung or schedule that chose it; for ``suppressed``, the guard."""
    time_to_oom_s: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The replay --json view (``kind`` ``action``)."""
        return {
            "t": round(self.t, 3),
            "kind": "action",
            "state": self.outcome,
            "action": self.action,
            "outcome": self.outcome,
            "reason": self.reason,
            "job": self.job,
            "gpu": self.gpu,
            "pid": self.pid,
            "finding": self.finding,
            "series": self.series,
            "time_to_oom_s": None if self.time_to_oom_s is None else round(self.time_to_oom_s, 1),
            "rate_bytes_per_s": None,
            "message": self.message(),
        }

    def message(self) -> str:
        """One line for a person."""
        verb = {SEND: "send", DRY_RUN: "would send (dry run)"}.get(self.outcome, "not sending")
        text = f"{verb} {self.action} to {self.job}: {self.reason}"
        if self.time_to_oom_s is not None:
            text += f" (OOM in ~{self.time_to_oom_s / 60:.0f} min)"
        return text


class Ledger:
    """What was done to each job: the memory the guards read, rebuilt from the journal at start.

    Dry-run decisions are kept apart from sent ones: a dry run paces itself by
    its own cooldowns and budget, and a daemon switched to live (by a restart or
    a reload) starts with the budget its real commands left.
    """

    def __init__(self) -> None:
        self._last: dict[tuple[bool, str, str], float] = {}
        self._restarts: dict[tuple[bool, str], list[float]] = {}
        self._in_flight: dict[str, tuple[str, float]] = {}
        """job -> (action, wall time after which it no longer counts as in flight)."""

    def record(self, decision: Decision) -> None:
        """Remember a sent (or dry-run) decision."""
        if decision.outcome == SUPPRESSED:
            return
        dry = decision.outcome == DRY_RUN
        self._last[(dry, decision.job, decision.action)] = decision.wall
        if decision.action in RESTARTS:
            self._restarts.setdefault((dry, decision.job), []).append(decision.wall)
        if decision.outcome == SEND:
            self._in_flight[decision.job] = (decision.action, math.inf)

    def finished(self, job: str) -> None:
        """The job's command in flight answered (or its client went away)."""
        self._in_flight.pop(job, None)

    def still_running(self, job: str, action: str) -> None:
        """A rank of the job was cut off by the daemon's stop: its ``action`` is not over,
        whatever the other ranks answered (read back from the journal)."""
        self._in_flight[job] = (action, math.inf)

    def unanswered(self, for_s: float) -> None:
        """Let the commands now in flight count as such for ``for_s`` more after being sent.

        For a ledger read back from the journal: a command the previous daemon sent
        and got no result for may still be running (a checkpoint takes minutes), and
        its result went to a connection that is gone. Holding the job for as long as
        that daemon would have waited keeps a restarted daemon from sending the job
        another command meanwhile, or the same one again.
        """
        for job, (action, _) in list(self._in_flight.items()):
            sent = self._last.get((False, job, action))
            if sent is None or for_s <= 0:
                del self._in_flight[job]
            else:
                self._in_flight[job] = (action, sent + for_s)

    def last(self, job: str, action: str, dry_run: bool = False) -> float | None:
        """Wall time ``action`` was last taken (or, ``dry_run``, would have been) on ``job``."""
        return self._last.get((dry_run, job, action))

    def restarts_since(self, job: str, since_wall: float, dry_run: bool = False) -> int:
        """Restarts of ``job`` (or dry-run ones) at or after ``since_wall``."""
        return sum(1 for when in self._restarts.get((dry_run, job), ()) if when >= since_wall)

    def expiries(self, cooldown_s: float, restart_window_s: float) -> list[float]:
        """Wall times at which a cooldown, a restart's count in the budget, or a wait ends."""
        ends = [last + cooldown_s for last in self._last.values()]
        ends += [when + restart_window_s for times in self._restarts.values() for when in times]
        ends += [until for _, until in self._in_flight.values() if until < math.inf]
        return ends

    def in_flight(self, job: str, wall: float = -math.inf) -> str | None:
        """The command in flight for ``job`` at wall time ``wall``, if any."""
        entry = self._in_flight.get(job)
        if entry is None or wall >= entry[1]:
            return None
        return entry[0]


FindingKey = tuple[str, str, int, "int | None"]
"""(kind, series, gpu, pid): one finding's identity."""

JobResolver = Callable[[int, "int | None", str], list[JobRef]]
"""Maps a finding's (gpu, pid, series kind) to the jobs to act on (empty: none known)."""

ProcessWatch = Callable[[int], bool]
"""Whether the processes on a GPU are watched: the process list gives their memory there."""


def no_process_watched(gpu: int) -> bool:
    """The ``ProcessWatch`` of a caller that watches no process: every GPU finding acts at once."""
    return False


class Policy:
    """Decides actions from active findings along the configured ladder, within the guards.

    Args:
        ladder: The escalation ladder, in order.
        cooldown_s: Least wall time between two runs of one action on one job.
        max_restarts: Most restarts of one job within ``restart_window_s``.
        restart_window_s: The window of the restart budget.
        dry_run: Decide and record, but mark everything ``dry_run`` instead of ``send``.
        ledger: History of what was done (from the journal).
    """

    def __init__(
        self,
        ladder: Iterable[LadderStep],
        cooldown_s: float,
        max_restarts: int,
        restart_window_s: float,
        dry_run: bool = False,
        ledger: Ledger | None = None,
    ) -> None:
        self._ladder = tuple(ladder)
        self._cooldown_s = cooldown_s
        self._max_restarts = max_restarts
        self._restart_window_s = restart_window_s
        self._dry_run = dry_run
        self.ledger = ledger or Ledger()
        self._active: dict[FindingKey, Finding] = {}
        # Each rung acts at most once per job while a finding that made it act is active
        # (one leak is often seen on the GPU and on its process); cooldowns span episodes.
        # Keyed by the rung itself, not its place: a reload that keeps a rung keeps its memory.
        # And by dry run or not: a dry run's decisions are not the live rung having acted.
        self._fired: dict[tuple[bool, str, LadderStep], set[FindingKey]] = {}
        # A guard's refusal is reported once per job, action and guard, until the findings
        # it refused end: a later leak refused again is recorded again.
        self._suppressed_seen: dict[tuple[str, str, str], set[FindingKey]] = {}
        self._culprit_waits: dict[FindingKey, float] = {}
        """A GPU's leak -> when its wait for a culprit ends (counted from its raise)."""

    @classmethod
    def from_settings(cls, settings: Any, ledger: Ledger | None = None) -> Policy:
        """A policy from a ``PolicySettings``."""
        return cls(
            effective_ladder(settings),
            settings.cooldown_s,
            settings.max_restarts,
            settings.restart_window_s,
            settings.dry_run,
            ledger,
        )

    def reconfigure(self, settings: Any) -> None:
        """Take new ladder and guard settings; findings and history are kept."""
        self._ladder = effective_ladder(settings)
        self._cooldown_s = settings.cooldown_s
        self._max_restarts = settings.max_restarts
        self._restart_window_s = settings.restart_window_s
        self._dry_run = settings.dry_run
        # A rung the new ladder still has stays fired for the findings it acted on; a
        # changed or new rung acts afresh.
        self._fired = {key: keys for key, keys in self._fired.items() if key[2] in self._ladder}

    @property
    def dry_run(self) -> bool:
        """Whether decisions are recorded only (``policy.dry_run``)."""
        return self._dry_run

    @property
    def active(self) -> list[Finding]:
        """The findings currently raised."""
        return list(self._active.values())

    def next_change(self, t: float) -> float:
        """The earliest time from ``t`` on at which ``decide`` could decide anything new.

        With no new event until then, every ask in between gives what the ask at
        ``t`` gave: a rung waits for a finding's countdown to pass under its
        ``under_time_to_oom_s``, a guard for its cooldown, budget window or wait to
        end (decisions are taken at wall time = ``t`` here, as in replay), a GPU's
        leak with no culprit yet for the end of its wait for one (counted whether
        or not the caller watches that GPU's processes: a needless wake costs an ask).
        """
        due = [
            finding.t + finding.time_to_oom_s - step.under_time_to_oom_s
            for finding in self._active.values()
            if finding.time_to_oom_s is not None
            for step in self._ladder
            if step.under_time_to_oom_s > 0
        ]
        due += self.ledger.expiries(self._cooldown_s, self._restart_window_s)
        due += [until for key, until in self._culprit_waits.items() if not self.culprits(key[2])]
        return min((when for when in due if when >= t), default=math.inf)

    def culprits(self, gpu: int, excluding: str = "") -> set[int]:
        """Pids with a GPU-memory finding of their own raised on ``gpu``.

        A GPU-level finding concerns them, not every job on the GPU: the GPU's
        memory climbs because theirs does. A process's host RSS is not its GPU
        memory, so a host leak never makes it the culprit of its GPU's. Empty when
        no process is singled out. ``excluding``: a series kind whose findings do
        not count.
        """
        return {
            f.pid
            for f in self._active.values()
            if f.gpu == gpu
            and f.pid is not None
            and f.kind in (LEAK, NEAR_OOM)
            and f.series in _GPU_MEMORY_SERIES
            and f.series != excluding
        }

    def observe(self, event: Any) -> None:
        """Take a detector event (raised, updated or cleared) into the active findings."""
        key = (event.kind, event.series, event.gpu, event.pid)
        if event.state == "cleared":
            self._end_episode(key)
            return
        if key not in self._active and event.pid is None and event.kind == LEAK:
            self._culprit_waits[key] = event.t + culprit_wait(event.time_to_oom_s)
        self._active[key] = Finding(
            event.kind,
            event.series,
            event.gpu,
            event.pid,
            event.cause,
            event.time_to_oom_s,
            event.t,
        )

    def forget_pid(self, pid: int) -> None:
        """Drop the findings of a process that went away."""
        for key in [key for key in self._active if key[3] == pid]:
            self._end_episode(key)

    def _end_episode(self, key: FindingKey) -> None:
        self._active.pop(key, None)
        self._culprit_waits.pop(key, None)
        _forget_finding(self._fired, key)
        _forget_finding(self._suppressed_seen, key)

    def decide(
        self,
        t: float,
        wall: float,
        jobs: JobResolver,
        watches_processes: ProcessWatch = no_process_watched,
    ) -> list[Decision]:
        """Walk the ladder for every active finding; return (and record) the decisions.

        Suppressions are reported once per job, action and guard until the guard lifts,
        so a long-lived finding does not repeat the same "suppressed" line every poll.

        ``watches_processes``: whether the processes on a GPU are watched. There, a
        GPU's leak with no culprit yet waits for one, ``culprit_wait`` from its raise;
        elsewhere (and by default) it is acted on at once. Nothing is recorded while
        it waits: no guard refused it.
        """
        decisions: list[Decision] = []
        # One leak seen on the GPU and on its process is one decision per job and action.
        decided: set[tuple[str, str]] = set()
        for key, finding in sorted(self._active.items(), key=_finding_order):
            if self._awaits_culprit(key, t, watches_processes):
                continue
            time_to_oom = finding.time_to_oom_at(t)
            for ref in jobs(finding.gpu, finding.pid, finding.series):
                for step in self._ladder:
                    if not step.match.matches(ref.job, ref.user, finding.gpu):
                        continue
                    if not step.applies(finding.kind, finding.cause, time_to_oom):
                        continue
                    fired = (self._dry_run, ref.job, step)
                    if fired in self._fired:
                        # The rung already acted on this job for a finding still raised
                        # (a leak seen on the GPU and on its process): this one shares
                        # that episode, so the rung must not act again when the other
                        # clears while this one stays.
                        self._fired[fired].add(key)
                        continue
                    if (ref.job, step.action) in decided:
                        continue
                    decision = self._guarded(step, finding, ref, t, wall, time_to_oom, key=key)
                    if decision is None:
                        continue
                    decided.add((ref.job, step.action))
                    decisions.append(decision)
                    if decision.outcome != SUPPRESSED:
                        self._fired.setdefault(fired, set()).add(key)
        return decisions

    def _awaits_culprit(self, key: FindingKey, t: float, watches_processes: ProcessWatch) -> bool:
        """Whether the finding ``key`` (a GPU's leak) is held at ``t`` for its culprit.

        A leak on a GPU whose processes are watched is raised on the GPU's series and
        on the leaking process's, not always together: the GPU's may come first. Until
        the process's arrives, the GPU's would reach every job on the GPU, the healthy
        ones too. So it waits, from its raise, ``culprit_wait`` of its time to OOM
        then; once a culprit is singled out it concerns the culprit only, and once the
        wait is over with none (growth outside every process) every job on the GPU.
        """
        until = self._culprit_waits.get(key)
        if until is None or t >= until:
            return False
        gpu = key[2]
        return not self.culprits(gpu) and watches_processes(gpu)

    def scheduled(
        self, action: str, ref: JobRef, gpu: int, t: float, wall: float, reason: str
    ) -> Decision | None:
        """The decision for a scheduled ``action`` on ``ref`` (guards apply as to the ladder).

        A run is not asked again as a rung is: one stopped by a guard, a command in
        flight included, is a ``suppressed`` decision every time, never dropped unseen.
        """
        finding = Finding("schedule", "", gpu, None, None, None, t)
        step = LadderStep(finding="*", action=action)
        return self._guarded(step, finding, ref, t, wall, None, reason=reason, once=True)

    def _guarded(
        self,
        step: LadderStep,
        finding: Finding,
        ref: JobRef,
        t: float,
        wall: float,
        time_to_oom: float | None,
        reason: str = "",
        once: bool = False,
        key: FindingKey | None = None,
    ) -> Decision | None:
        reason = reason or _describe(step)
        guard = self._guard(step.action, ref.job, wall)
        if guard == "in_flight" and not once:
            return None  # not refused, only later: asked again once the job answers
        if guard:
            if not once and key is not None:
                refused = self._suppressed_seen.get((ref.job, step.action, guard))
                self._suppressed_seen.setdefault((ref.job, step.action, guard), set()).add(key)
                if refused:
                    return None
            outcome, reason = SUPPRESSED, guard
        else:
            for seen in [s for s in self._suppressed_seen if s[:2] == (ref.job, step.action)]:
                del self._suppressed_seen[seen]
            outcome = DRY_RUN if self._dry_run else SEND
        decision = Decision(
            t=t,
            wall=wall,
            action=step.action,
            job=ref.job,
            gpu=finding.gpu,
            pid=finding.pid,
            finding=finding.kind,
            series=finding.series,
            outcome=outcome,
            reason=reason,
            time_to_oom_s=time_to_oom,
        )
        self.ledger.record(decision)
        return decision

    def _guard(self, action: str, job: str, wall: float) -> str:
        """Which guard stops ``action`` on ``job`` now, or "" if none."""
        last = self.ledger.last(job, action, self._dry_run)
        if last is not None and wall - last < self._cooldown_s:
            return "cooldown"
        if action in RESTARTS:
            since = wall - self._restart_window_s
            if self.ledger.restarts_since(job, since, self._dry_run) >= self._max_restarts:
                return "restart_budget"
        if self.ledger.in_flight(job, wall):
            return "in_flight"
        return ""


_GPU_MEMORY_SERIES = (PROCESS, ALLOCATED, RESERVED)
"""A process's series that measure its GPU memory (its host RSS does not)."""


def culprit_wait(time_to_oom_s: float | None) -> float:
    """How long a GPU's leak raised with ``time_to_oom_s`` waits for its culprit."""
    if time_to_oom_s is None:
        return CULPRIT_WAIT_S
    return min(CULPRIT_WAIT_S, CULPRIT_WAIT_SHARE * max(0.0, time_to_oom_s))


def _forget_finding(memory: dict[Any, set[FindingKey]], key: FindingKey) -> None:
    """Take an ended finding out of what each entry remembers; drop entries left with none."""
    for name, keys in list(memory.items()):
        keys.discard(key)
        if not keys:
            del memory[name]


def _finding_order(item: tuple[FindingKey, Finding]) -> tuple[float, str, str, int, int]:
    (kind, series, gpu, pid), finding = item
    return (finding.t, kind, series, gpu, -1 if pid is None else pid)


def _describe(step: LadderStep) -> str:
    text = f"ladder: {step.finding}"
    if step.cause != "*":
        text += f" ({step.cause})"
    if step.under_time_to_oom_s > 0:
        text += f", time to OOM under {step.under_time_to_oom_s:g}s"
    return f"{text} -> {step.action}"
