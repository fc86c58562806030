"""Score the detector against two common alerts on the same labelled traces.

    python benchmarks/score.py --count 140 --seed 1

For each trace from ``benchmarks/scenarios.py`` it runs:

- **project**: ``gpu-watchdog replay`` (the same engine as the daemon); a leak
  counts when a ``leak`` finding is raised on the leaking GPU (on the leaking
  pid's series where several processes share the GPU) between the leak's start
  and its deadline, and still stands at the deadline.
- **project, leak or near_oom**: the same, counting a ``near_oom`` finding
  (headroom or a predicted OOM) as well: either lets the policy checkpoint.
  On healthy traces only a leak counts as a false alarm (near_oom on a job
  sized to 95% of its card is right).
- **static 95%**: the alert on ``used / total >= 0.95``.
- **predict_linear**: ``predict_linear(used[1h], 4h) > total``, evaluated
  every minute as a Prometheus rule would be. The baselines see only the
  GPU's memory, so they are given credit for the GPU without naming a pid.

The deadline is 5 minutes before the OOM, or a quarter of the time from the
leak's start to the OOM if that is less. One rule for every method: the alarm
that counts for a leak is the one standing at the deadline, and it counts
from the moment it was about the leak: not before the leak began, and not
while the same method alarmed on the trace's *twin*, the same trace without
the leak (``scenarios.twin``). An alarm standing since the warm-up of a job
whose leak began with it says nothing about the leak until the healthy
job's alarm would have stopped; one the twin raises as well all along
(``predict_linear`` on a long warm-up, say) does not catch the leak. One
raised after the leak began but cleared again before the deadline warned
nobody in time. Alarms raised before the leak began are also counted apart
("early alarms"). A false alarm is a healthy trace on which the method
alarmed at all. The lead is the OOM time minus that moment.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from scenarios import LEAKS, SCENARIOS, Label, generate, twin

from watchdog.config import DetectionSettings
from watchdog.detectors.events import Event
from watchdog.detectors.replay import replay_lines

Interval = tuple[float, float]
"""When an alarm was active: [start, end)."""
PREDICT_RANGE_S = 3600.0
PREDICT_AHEAD_S = 4 * 3600.0
RULE_EVERY_S = 60.0
STATIC_RATIO = 0.95
ANY_FINDING = "project, leak or near_oom"


@dataclass
class Outcome:
    """One method on one trace."""

    caught: bool = False
    lead_s: float | None = None
    alarmed: bool = False
    early: bool = False
    near_oom: bool = False


@dataclass
class Tally:
    """One method over all traces."""

    leaks: int = 0
    caught: int = 0
    healthy: int = 0
    false_alarms: int = 0
    early: int = 0
    leads: list[float] = field(default_factory=list)
    per_leak: list[float | None] = field(default_factory=list)
    """The lead on every leak trace in order, None where it was missed."""
    missed: list[str] = field(default_factory=list)
    false: list[str] = field(default_factory=list)

    def add(self, label: Label, outcome: Outcome) -> None:
        """Count one trace."""
        if label.leak:
            self.leaks += 1
            self.early += outcome.early
            self.per_leak.append(outcome.lead_s if outcome.caught else None)
            if outcome.caught:
                self.caught += 1
                assert outcome.lead_s is not None
                self.leads.append(outcome.lead_s)
            else:
                self.missed.append(label.name)
        else:
            self.healthy += 1
            if outcome.alarmed:
                self.false_alarms += 1
                self.false.append(label.name)


def device_series(lines: list[str]) -> Iterator[tuple[float, int, int]]:
    """(t, used, total) of GPU 0's device rows."""
    for line in lines[1:]:
        t, gpu, pid, used, total = line.split(",")
        if not pid and gpu == "0":
            yield float(t), int(used), int(total)


def judge(
    label: Label, intervals: list[Interval], twin: Sequence[Interval] | None = None
) -> Outcome:
    """Turn the intervals during which a method alarmed into an outcome.

    The same rule for every method: a leak is caught by the alarm that is
    standing at the deadline; its lead is the OOM time minus the moment from
    which that alarm was about the leak. That moment is the alarm's raise, but
    never before the leak began, and never while the method alarmed on the
    leak trace's twin (``twin``: its intervals on the same trace without the
    leak): an alarm standing since the warm-up says nothing about a leak until
    it stands where the healthy job's alarm would have stopped. An alarm gone
    again by the deadline (one sawtooth tooth projected too far) warned nobody
    in time; an alarm raised before the leak began counts as early. Without
    the twin's alarms, every alarm raised before the leak began is taken to
    stand on the twin all along (the twin is the same trace until then).
    """
    outcome = Outcome(alarmed=bool(intervals))
    if not label.leak:
        return outcome
    start = label.leak_start_t or 0.0
    deadline = label.deadline()
    outcome.early = any(a < start for a, _ in intervals)
    if twin is None:
        twin = [(a, b) for a, b in intervals if a < start]
    for a, b in intervals:
        standing = deadline is None or (a <= deadline < b)
        if not standing:
            continue
        about = _past(max(a, start), twin)
        if deadline is not None and about > deadline:
            break  # the healthy twin alarmed all along: nothing here is about the leak
        outcome.caught = True
        outcome.lead_s = (label.oom_t - about) if label.oom_t is not None else None
        break
    return outcome


def _past(t: float, intervals: Sequence[Interval]) -> float:
    """The first moment from ``t`` on that lies in none of ``intervals`` (sorted)."""
    for a, b in intervals:
        if a <= t < b:
            t = b
    return t


def intervals_of(flags: Iterator[tuple[float, bool]], end: float) -> list[Interval]:
    """Active intervals from a stream of (t, active) decisions."""
    found: list[Interval] = []
    since: float | None = None
    for t, active in flags:
        if active and since is None:
            since = t
        elif not active and since is not None:
            found.append((since, t))
            since = None
    if since is not None:
        found.append((since, end + 1))
    return found


def static_threshold(samples: list[tuple[float, int, int]]) -> Iterator[tuple[float, bool]]:
    """``used / total >= 0.95``."""
    for t, used, total in samples:
        yield t, used >= STATIC_RATIO * total


def predict_linear(samples: list[tuple[float, int, int]]) -> Iterator[tuple[float, bool]]:
    """``predict_linear(used[1h], 4h) > total`` evaluated every minute (least squares)."""
    if not samples:
        return
    n = sx = sy = sxx = sxy = 0.0
    lo = 0
    origin = samples[0][0]
    next_eval = origin
    for t, used, total in samples:
        x, y = t - origin, used / 2**30
        n, sx, sy, sxx, sxy = n + 1, sx + x, sy + y, sxx + x * x, sxy + x * y
        while samples[lo][0] < t - PREDICT_RANGE_S:
            x0, y0 = samples[lo][0] - origin, samples[lo][1] / 2**30
            n, sx, sy, sxx, sxy = n - 1, sx - x0, sy - y0, sxx - x0 * x0, sxy - x0 * y0
            lo += 1
        if t < next_eval:
            continue
        next_eval = t + RULE_EVERY_S
        if n < 2:
            yield t, False
            continue
        mean_x, mean_y = sx / n, sy / n
        var = sxx / n - mean_x * mean_x
        slope = (sxy / n - mean_x * mean_y) / var if var > 1e-9 else 0.0
        predicted = mean_y + slope * (x - mean_x + PREDICT_AHEAD_S)
        yield t, predicted * 2**30 > total


def project_intervals(
    events: list[Event], label: Label, end: float, kinds: tuple[str, ...] = ("leak",)
) -> tuple[list[Interval], bool]:
    """Intervals of findings of ``kinds`` on the series that must report them.

    For a leak on a GPU shared by several processes, only the leaking pid's
    series counts; for a healthy trace, any series. Also says whether any
    near_oom was raised.
    """
    near = any(e.kind == "near_oom" and e.state == "raised" for e in events)
    by_series: dict[tuple[str, str, int | None], list[tuple[float, bool]]] = defaultdict(list)
    for event in events:
        if event.kind not in kinds:
            continue
        if label.leak and label.pid is not None and event.pid != label.pid:
            continue
        key = (event.kind, event.series, event.pid)
        by_series[key].append((event.t, event.state != "cleared"))
    found: list[Interval] = []
    for flags in by_series.values():
        found += intervals_of(iter(flags), end)
    return sorted(found), near


@dataclass
class TwinAlarms:
    """Every method's alarms on a leak trace's twin: the same trace without the leak."""

    project: list[Interval] = field(default_factory=list)
    either: list[Interval] = field(default_factory=list)
    static: list[Interval] = field(default_factory=list)
    predicted: list[Interval] = field(default_factory=list)


def twin_alarms(label: Label, settings: DetectionSettings) -> TwinAlarms:
    """Run every method on the twin of the leak trace ``label`` names."""
    lines = twin(label)
    result = replay_lines(lines, label.name, settings)
    end = result.duration_s
    device = list(device_series(lines))
    return TwinAlarms(
        project=project_intervals(result.events, label, end)[0],
        either=project_intervals(result.events, label, end, ("leak", "near_oom"))[0],
        static=intervals_of(static_threshold(device), end),
        predicted=intervals_of(predict_linear(device), end),
    )


def _median_min(leads: list[float | None] | list[float]) -> str:
    """Median lead in minutes, a miss (None) counted as no lead at all."""
    values = [lead or 0.0 for lead in leads]
    return f"{statistics.median(values) / 60:.0f} min" if values else "-"


def _minutes(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 60:.0f}"


def score(  # noqa: PLR0915 - the report is one long sequence of prints
    count: int, seed: int, settings: DetectionSettings, verbose: bool
) -> int:
    """Run everything, print the tables; return the exit status (1 if the target is missed)."""
    names = ("project", ANY_FINDING, "static >= 95%", "predict_linear 1h/4h")
    tallies = {name: Tally() for name in names}
    per_scenario: dict[str, Tally] = defaultdict(Tally)
    near_healthy: list[str] = []
    flat95_near = flat95_total = 0
    samples_total = 0
    started = time.perf_counter()
    for lines, label in generate(count, seed):
        result = replay_lines(lines, label.name, settings)
        samples_total += result.device_samples + result.process_samples
        end = result.duration_s
        healthy = twin_alarms(label, settings) if label.leak else TwinAlarms()
        intervals, near = project_intervals(result.events, label, end)
        outcome = judge(label, intervals, healthy.project)
        tallies["project"].add(label, outcome)
        # Any finding that lets the policy checkpoint: leak or near_oom on the leaking series.
        # On healthy traces only a leak is a false alarm (near_oom on a full card is right).
        either, _ = project_intervals(result.events, label, end, ("leak", "near_oom"))
        tallies[ANY_FINDING].add(
            label, judge(label, either, healthy.either) if label.leak else outcome
        )
        per_scenario[label.scenario].add(label, outcome)
        if label.scenario == "flat_95":
            flat95_total += 1
            flat95_near += near
        elif not label.leak and near:
            near_healthy.append(label.name)
        device = list(device_series(lines))
        static = judge(label, intervals_of(static_threshold(device), end), healthy.static)
        predicted = judge(label, intervals_of(predict_linear(device), end), healthy.predicted)
        tallies["static >= 95%"].add(label, static)
        tallies["predict_linear 1h/4h"].add(label, predicted)
        if verbose:
            span = (label.oom_t or 0) - (label.leak_start_t or 0)
            print(
                f"{label.name:28s} leak={label.leak!s:5s} caught={outcome.caught!s:5s} "
                f"alarm={outcome.alarmed!s:5s} leak-to-oom={span / 60:.0f}min lead(min) "
                f"project={_minutes(outcome.lead_s)} static={_minutes(static.lead_s)} "
                f"predict_linear={_minutes(predicted.lead_s)}",
                file=sys.stderr,
            )
    elapsed = time.perf_counter() - started
    print(f"{count} traces (seed {seed}), {samples_total:,} samples, {elapsed:.1f} s\n")
    print(
        "| method | leaks caught in time | false alarms (healthy traces) "
        "| early alarms (leak traces) | median lead before OOM | same, a miss as 0 |"
    )
    print("|---|---|---|---|---|---|")
    for name, tally in tallies.items():
        lead = statistics.median(tally.leads) / 60 if tally.leads else float("nan")
        print(
            f"| {name} | {tally.caught}/{tally.leaks} | {tally.false_alarms}/{tally.healthy} "
            f"| {tally.early}/{tally.leaks} | {lead:.0f} min | {_median_min(tally.per_leak)} |"
        )
    print("\nLead on the leaks both caught (paired with the project):\n")
    project_leads = tallies["project"].per_leak
    for name in names[2:]:
        pairs = [
            (ours, theirs)
            for ours, theirs in zip(project_leads, tallies[name].per_leak, strict=True)
            if ours is not None and theirs is not None
        ]
        longer = sum(1 for ours, theirs in pairs if ours > theirs)
        print(
            f"- {name}: {len(pairs)} of {len(project_leads)} leaks; median lead project "
            f"{_median_min([o for o, _ in pairs])}, {name} {_median_min([t for _, t in pairs])}; "
            f"project longer on {longer}"
        )
    print("\nProject by scenario:\n")
    print("| scenario | traces | caught / false alarms | median lead |")
    print("|---|---|---|---|")
    for scenario in SCENARIOS:
        tally = per_scenario[scenario]
        if scenario in LEAKS:
            result_text = f"caught {tally.caught}/{tally.leaks}"
            lead_text = f"{statistics.median(tally.leads) / 60:.0f} min" if tally.leads else "-"
        else:
            result_text = f"false alarms {tally.false_alarms}/{tally.healthy}"
            lead_text = "-"
        print(f"| {scenario} | {tally.leaks + tally.healthy} | {result_text} | {lead_text} |")
    print(
        f"\nnear_oom raised on the flat 95% job: {flat95_near}/{flat95_total}; "
        f"on other healthy traces: {len(near_healthy)}"
    )
    project = tallies["project"]
    if project.missed:
        print("missed:", ", ".join(project.missed))
    if project.false:
        print("false alarms:", ", ".join(project.false))
    if near_healthy:
        print("near_oom on healthy:", ", ".join(near_healthy))
    return 0 if not project.missed and not project.false else 1


def main(argv: list[str] | None = None) -> int:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=140)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    return score(args.count, args.seed, DetectionSettings(), args.verbose)


if __name__ == "__main__":
    sys.exit(main())
