"""Score the detector against two common alerts on the same labelled traces.

    python benchmarks/score.py --count 140 --seed 1-10 --jobs 2
    python benchmarks/score.py --generator field_scenarios --count 136 --seed 1-8 --jobs 2
    python benchmarks/score.py --generator blind_scenarios --count 126 --seed 1-4 --jobs 2
    python benchmarks/score.py --generator sealed_scenarios --count 132 --seed 1-4 --jobs 2
    python benchmarks/score.py --generator fresh_scenarios --count 132 --seed 1-4 --jobs 2
    python benchmarks/score.py --config tuned.toml   # your [detection] settings

The detector runs with its defaults, or with the ``[detection]`` table of
``--config`` (environment variables are not read: a score is reproducible).

For each trace from ``benchmarks/scenarios.py`` (the development set) or a
held-out set (``field_scenarios.py``, ``wild_scenarios.py``,
``blind_scenarios.py`` and ``sealed_scenarios.py``, written without reading
the detector; the last is sealed: scored, never tuned against) it runs:

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
import importlib
import multiprocessing
import statistics
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from scenarios import Label

from watchdog.config import ConfigError, DetectionSettings, load_config
from watchdog.detectors.events import Event
from watchdog.detectors.replay import replay_lines

Interval = tuple[float, float]
"""When an alarm was active: [start, end)."""
PREDICT_RANGE_S = 3600.0
PREDICT_AHEAD_S = 4 * 3600.0
RULE_EVERY_S = 60.0
STATIC_RATIO = 0.95
ANY_FINDING = "project, leak or near_oom"
GENERATORS = (
    "scenarios",
    "field_scenarios",
    "wild_scenarios",
    "blind_scenarios",
    "sealed_scenarios",
    "fresh_scenarios",
    "judge_scenarios",
)


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

    def add(self, label: Label, outcome: Outcome, name: str = "") -> None:
        """Count one trace (``name`` it in the lists of misses and false alarms)."""
        name = name or label.name
        if label.leak:
            self.leaks += 1
            self.early += outcome.early
            self.per_leak.append(outcome.lead_s if outcome.caught else None)
            if outcome.caught:
                self.caught += 1
                assert outcome.lead_s is not None
                self.leads.append(outcome.lead_s)
            else:
                self.missed.append(name)
        else:
            self.healthy += 1
            if outcome.alarmed:
                self.false_alarms += 1
                self.false.append(name)


def device_series(lines: list[str], gpu: int) -> Iterator[tuple[float, int, int]]:
    """(t, used, total) of GPU ``gpu``'s device rows."""
    index = str(gpu)
    for line in lines[1:]:
        t, row_gpu, pid, used, total = line.split(",")
        if not pid and row_gpu == index:
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
    if deadline is None:
        return outcome  # a leak that never ran out in the trace: no deadline, no catch
    if twin is None:
        twin = [(a, b) for a, b in intervals if a < start]
    for a, b in intervals:
        if not a <= deadline < b:
            continue
        about = _past(max(a, start), twin)
        if about > deadline:
            break  # the healthy twin alarmed all along: nothing here is about the leak
        outcome.caught = True
        outcome.lead_s = label.oom_t - about if label.oom_t is not None else None
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


def alarm_count(intervals: Sequence[Interval]) -> int:
    """How many separate alarms ``intervals`` make: overlapping ones are one page.

    A GPU and its process raising the same climb page once, not twice.
    """
    count, until = 0, -float("inf")
    for start, end in sorted(intervals):
        if start > until:
            count += 1
        until = max(until, end)
    return count


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


def twin_alarms(label: Label, settings: DetectionSettings, generator: ModuleType) -> TwinAlarms:
    """Run every method on the twin of the leak trace ``label`` names."""
    lines = generator.twin(label)
    result = replay_lines(lines, label.name, settings)
    end = result.duration_s
    device = list(device_series(lines, label.gpu))
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


METHODS = ("project", ANY_FINDING, "static >= 95%", "predict_linear 1h/4h")


@dataclass
class Record:
    """Every method's outcome on one trace."""

    label: Label
    outcomes: dict[str, Outcome]
    near_oom: bool
    """The project raised near_oom somewhere on the trace."""
    samples: int
    seed: int = 0
    """The seed the trace was generated from."""
    alarms: int = 0
    """How many separate leak alarms the project raised on the trace (``alarm_count``)."""
    pattern: str | None = None
    """The pattern of the project's first leak raised on the series that must report it."""


def evaluate(
    lines: list[str], label: Label, settings: DetectionSettings, generator: ModuleType
) -> Record:
    """Run the project and both baselines on one trace (and on its twin, for a leak)."""
    result = replay_lines(lines, label.name, settings)
    end = result.duration_s
    healthy = twin_alarms(label, settings, generator) if label.leak else TwinAlarms()
    intervals, near = project_intervals(result.events, label, end)
    outcome = judge(label, intervals, healthy.project)
    # Any finding that lets the policy act: leak or near_oom on the leaking series. On a
    # healthy trace either is a false alarm, but for near_oom on a job sized to its card,
    # where it is right.
    either, _ = project_intervals(result.events, label, end, ("leak", "near_oom"))
    device = list(device_series(lines, label.gpu))
    if label.leak:
        any_finding = judge(label, either, healthy.either)
    else:
        any_finding = outcome if label.near_oom_expected else judge(label, either)
    outcomes = {
        "project": outcome,
        ANY_FINDING: any_finding,
        "static >= 95%": judge(label, intervals_of(static_threshold(device), end), healthy.static),
        "predict_linear 1h/4h": judge(
            label, intervals_of(predict_linear(device), end), healthy.predicted
        ),
    }
    samples = result.device_samples + result.process_samples
    first = next(
        (
            event
            for event in result.events
            if event.kind == "leak"
            and event.state == "raised"
            and (not label.leak or label.pid is None or event.pid == label.pid)
        ),
        None,
    )
    return Record(
        label,
        outcomes,
        near,
        samples,
        alarms=alarm_count(intervals),
        pattern=first.pattern if first is not None else None,
    )


def run_seed(
    count: int, seed: int, settings: DetectionSettings, generator_name: str, verbose: bool
) -> list[Record]:
    """Evaluate the ``count`` traces of one seed."""
    generator = importlib.import_module(generator_name)
    records = []
    for lines, label in generator.generate(count, seed):
        record = evaluate(lines, label, settings, generator)
        record.seed = seed
        records.append(record)
        if verbose:
            span = (label.oom_t or 0) - (label.leak_start_t or 0)
            leads = " ".join(
                f"{name.split()[0]}={_minutes(record.outcomes[name].lead_s)}"
                for name in (METHODS[0], *METHODS[2:])
            )
            print(
                f"{seed:3d} {label.name:28s} leak={label.leak!s:5s} "
                f"caught={record.outcomes['project'].caught!s:5s} "
                f"alarm={record.outcomes['project'].alarmed!s:5s} "
                f"leak-to-oom={span / 60:.0f}min lead(min) {leads}",
                file=sys.stderr,
            )
    return records


def tally(records: list[Record], method: str) -> Tally:
    """One method's totals over ``records``."""
    total = Tally()
    for record in records:
        total.add(record.label, record.outcomes[method], f"{record.seed}:{record.label.name}")
    return total


def _lead(tally_: Tally) -> str:
    return f"{statistics.median(tally_.leads) / 60:.0f} min" if tally_.leads else "-"


def report(records: list[Record], generator: ModuleType, seeds: list[int]) -> int:
    """Print the tables; return the exit status (1 if the target is missed)."""
    tallies = {name: tally(records, name) for name in METHODS}
    print(
        "| method | leaks caught in time | false alarms (healthy traces) "
        "| early alarms (leak traces) | median lead before OOM | same, a miss as 0 |"
    )
    print("|---|---|---|---|---|---|")
    for name, each in tallies.items():
        print(
            f"| {name} | {each.caught}/{each.leaks} | {each.false_alarms}/{each.healthy} "
            f"| {each.early}/{each.leaks} | {_lead(each)} | {_median_min(each.per_leak)} |"
        )
    print("\nLead on the leaks both caught (paired with the project):\n")
    project_leads = tallies["project"].per_leak
    for name in METHODS[2:]:
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
    if len(seeds) > 1:
        _per_seed(records, seeds)
    print("\nProject by scenario:\n")
    print("| scenario | traces | caught / false alarms | median lead | patterns raised |")
    print("|---|---|---|---|---|")
    for scenario in generator.SCENARIOS:
        of_scenario = [r for r in records if r.label.scenario == scenario]
        each = tally(of_scenario, "project")
        if scenario in generator.LEAKS:
            traces, verdict, lead = each.leaks, f"caught {each.caught}/{each.leaks}", _lead(each)
        else:
            traces, verdict, lead = each.healthy, f"false alarms {each.false_alarms}", "-"
        print(f"| {scenario} | {traces} | {verdict} | {lead} | {_patterns(of_scenario)} |")
    expected = [r for r in records if r.label.near_oom_expected]
    near_healthy = [
        f"{r.seed}:{r.label.name}"
        for r in records
        if r.near_oom and not r.label.leak and not r.label.near_oom_expected
    ]
    print(
        f"\nnear_oom raised on jobs sized near the card: {sum(r.near_oom for r in expected)}"
        f"/{len(expected)}; on other healthy traces: {len(near_healthy)}"
    )
    static_full = sum(r.outcomes["static >= 95%"].alarmed for r in expected)
    print(
        f"static >= 95% false alarms on jobs sized near the card (where near_oom is right): "
        f"{static_full} of {tallies['static >= 95%'].false_alarms}"
    )
    healthy_alarms = [r.alarms for r in records if not r.label.leak and r.alarms]
    if healthy_alarms:
        print(
            f"leak alarms on healthy traces: {sum(healthy_alarms)} on {len(healthy_alarms)} "
            f"traces, at most {max(healthy_alarms)} on one"
        )
    project = tallies["project"]
    if project.missed:
        print("missed:", ", ".join(project.missed))
    if project.false:
        print("false alarms:", ", ".join(project.false))
    if near_healthy:
        print("near_oom on healthy:", ", ".join(near_healthy))
    return 0 if not project.missed and not project.false else 1


def _patterns(records: list[Record]) -> str:
    """How often each pattern was the first leak's on ``records``: ``sawtooth 22, steady 2``."""
    counts = Counter(r.pattern for r in records if r.pattern is not None)
    return ", ".join(f"{pattern} {n}" for pattern, n in counts.most_common()) or "-"


def _per_seed(records: list[Record], seeds: list[int]) -> None:
    """One row per seed: caught, false alarms and the two median leads of each method."""
    print("\nBy seed (caught, false alarms, median lead over caught / a miss as 0):\n")
    print("| seed | " + " | ".join(n for n in METHODS if n != ANY_FINDING) + " |")
    print("|---|---|---|---|")
    for seed in seeds:
        mine = [r for r in records if r.seed == seed]
        cells = []
        for name in METHODS:
            if name == ANY_FINDING:
                continue
            each = tally(mine, name)
            cells.append(
                f"{each.caught}/{each.leaks}, {each.false_alarms}/{each.healthy}, "
                f"{_lead(each)} / {_median_min(each.per_leak)}"
            )
        print(f"| {seed} | " + " | ".join(cells) + " |")


def _seeds(text: str) -> list[int]:
    """``3`` or ``1-10``."""
    first, _, last = text.partition("-")
    try:
        low, high = int(first), int(last or first)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a seed or a range of seeds: {text!r}") from None
    if high < low:
        raise argparse.ArgumentTypeError(f"empty range of seeds: {text!r}")
    return list(range(low, high + 1))


def span_type(
    example: str, unit: str, below: float = float("inf")
) -> Callable[[str], tuple[float, float]]:
    """An argparse type for a study's ``LOW-HIGH`` option: above 0, low to high, under ``below``."""

    def parse(text: str) -> tuple[float, float]:
        low, _, high = text.partition("-")
        try:
            span = float(low), float(high)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a range such as {example}: {text!r}") from None
        if not 0 < span[0] <= span[1] < below:
            raise argparse.ArgumentTypeError(f"not a range of {unit}, low to high: {text!r}")
        return span

    return parse


def study_parser(description: str, count: int, count_help: str) -> argparse.ArgumentParser:
    """The options of a study beside the scorer (``grace_leaks``, ``slow_warmups``)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--count", type=int, default=count, help=count_help)
    parser.add_argument(
        "--seed", type=_seeds, default="1-3", help="a seed, or a range such as 1-3 (pooled)"
    )
    parser.add_argument("--config", type=Path, help="score the [detection] settings of this file")
    return parser


def study_settings(parser: argparse.ArgumentParser, config: Path | None) -> DetectionSettings:
    """The detection settings of ``config`` (defaults without one); a bad file ends the run."""
    if config is None:
        return DetectionSettings()
    try:
        return load_config(config, env={}).detection
    except ConfigError as exc:
        parser.error(str(exc))


def study_records(
    build: Callable[[int, int], tuple[list[str], Label]],
    count: int,
    seeds: list[int],
    settings: DetectionSettings,
    generator: ModuleType,
) -> list[Record]:
    """Evaluate ``build(seed, i)`` for ``count`` traces per seed; ``generator`` makes twins."""
    records = []
    for seed in seeds:
        for i in range(count):
            lines, label = build(seed, i)
            record = evaluate(lines, label, settings, generator)
            record.seed = seed
            records.append(record)
    return records


def print_study(heading: str, groups: Iterable[tuple[str, list[Record]]]) -> None:
    """Per group and method, the leaks caught in time and the false alarms; then in all."""

    def rows(name: str, records: list[Record]) -> None:
        for method in METHODS:
            tally_ = tally(records, method)
            caught = f"{tally_.caught}/{tally_.leaks}" if tally_.leaks else "-"
            false = f"{tally_.false_alarms}/{tally_.healthy}" if tally_.healthy else "-"
            print(f"| {name} | {method} | {caught} | {false} |")

    print(f"| {heading} | method | leaks caught in time | false alarms |")
    print("|---|---|---|---|")
    every: list[Record] = []
    for name, records in groups:
        every += records
        rows(name, records)
    rows("all", every)


def main(argv: list[str] | None = None) -> int:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=140, help="traces per seed")
    parser.add_argument(
        "--seed", type=_seeds, default=[1], help="a seed, or a range such as 1-10 (pooled)"
    )
    parser.add_argument("--jobs", type=int, default=1, help="seeds scored in parallel")
    parser.add_argument("--verbose", action="store_true", help="one line per trace on stderr")
    parser.add_argument(
        "--generator",
        choices=GENERATORS,
        default=GENERATORS[0],
        help="scenarios: the generator the detector was developed with; "
        "field_scenarios and wild_scenarios: independent ones written without looking at "
        "the detector; blind_scenarios and sealed_scenarios: written without reading the "
        "detector or the other generators, never tuned against (sealed_scenarios: sealed, "
        "only ever reported); fresh_scenarios: shapes none of the others name; "
        "judge_scenarios: the issue's own fourteen cases, written from its text alone",
    )
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="score the [detection] settings of this configuration file (default: defaults)",
    )
    args = parser.parse_args(argv)
    generator = importlib.import_module(args.generator)
    settings = study_settings(parser, args.config)
    started = time.perf_counter()
    work = [(args.count, seed, settings, args.generator, args.verbose) for seed in args.seed]
    if args.jobs > 1:
        with multiprocessing.Pool(args.jobs) as pool:
            batches = pool.starmap(run_seed, work)
    else:
        batches = [run_seed(*item) for item in work]
    records = [record for batch in batches for record in batch]
    elapsed = time.perf_counter() - started
    samples = sum(r.samples for r in records)
    seeds = ", ".join(map(str, args.seed))
    using = f", settings from {args.config}" if args.config is not None else ""
    print(
        f"{len(records)} traces from {args.generator} (seeds {seeds}{using}), "
        f"{samples:,} samples, {elapsed:.1f} s\n"
    )
    return report(records, generator, args.seed)


if __name__ == "__main__":
    sys.exit(main())
