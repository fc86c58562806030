"""``gpu-watchdog replay``: run a recorded trace through the detectors the daemon uses."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from watchdog.commands._common import add_config_option, load
from watchdog.detectors.events import CLEARED, PROCESS, Event
from watchdog.detectors.replay import ReplayResult, replay_file
from watchdog.policy.engine import Decision
from watchdog.policy.replay import decisions_over
from watchdog.trace import TraceError


def register(subparsers: Any) -> None:
    """Add the ``replay`` subcommand."""
    parser = subparsers.add_parser(
        "replay",
        help="replay a trace through the leak and near-OOM detectors",
        description=(
            "Feed a trace (docs/traces.md) through the same detectors as the daemon and "
            "print what they find (docs/detection.md)."
        ),
    )
    parser.add_argument(
        "trace", type=Path, metavar="TRACE.csv", help="trace file to replay (CSV, or gzip of it)"
    )
    add_config_option(parser)
    parser.add_argument(
        "--json",
        action="store_true",
        help="print JSON lines only: one object per event and per policy decision",
    )
    parser.add_argument(
        "--plot",
        type=Path,
        metavar="OUT.png",
        help="also draw the trace and its detections to an image: PNG, or SVG, PDF... by the "
        "suffix (needs the [plot] extra)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Replay, print, plot; a malformed trace raises TraceError (exit 2, file and line named)."""
    config = load(args)
    if args.plot is not None:
        from watchdog.plot import require_matplotlib

        require_matplotlib(args.plot)
    result = replay_file(args.trace, config.detection, record=args.plot is not None)
    if not result.device_samples:
        # Nothing was judged: "no findings" would read as a clean bill of health.
        raise TraceError(f"{args.trace}: no device rows after the header: nothing to replay")
    decisions = decisions_over(
        result.events,
        result.duration_s,
        config.sources.device_interval_s,
        config.policy,
        watched_gpus=watched_gpus(result),
    )
    if args.json:
        write_json(result.events, decisions, sys.stdout)
    else:
        write_summary(args.trace, result, sys.stdout)
        write_decisions(decisions, config.policy.dry_run, sys.stdout)
    if args.plot is not None:
        from watchdog.plot import plot_replay

        plot_replay(result, args.plot, title=args.trace.name, decisions=decisions)
        if not args.json:
            print(f"plot written to {args.plot}")
    return 0


def watched_gpus(result: ReplayResult) -> set[int]:
    """The GPUs whose processes' memory the trace gives, as far as the replay tells: a
    process has a finding there, or a series at the end (the live daemon asks whether one
    has a series at the moment; a trace whose processes all left early without a finding
    is taken as not watched)."""
    watched = {event.gpu for event in result.events if event.series == PROCESS}
    if result.engine is not None:
        gpus = {event.gpu for event in result.events if event.pid is None} - watched
        watched |= {gpu for gpu in gpus if result.engine.watches_processes(gpu)}
    return watched


def write_json(events: list[Event], decisions: list[Decision], out: TextIO) -> None:
    """One JSON object per line per event and per decision (``kind`` ``action``), by time."""
    items = [(e.t, 0, e.to_json()) for e in events] + [(d.t, 1, d.to_json()) for d in decisions]
    for _, _, item in sorted(items, key=lambda entry: (entry[0], entry[1])):
        out.write(json.dumps(item, separators=(",", ":")) + "\n")


def write_decisions(decisions: list[Decision], dry_run: bool, out: TextIO) -> None:
    """What the configured policy would have done, for a person."""
    if not decisions:
        out.write("policy: no action\n")
        return
    mode = " (dry run)" if dry_run else ""
    out.write(f"policy{mode}: {len(decisions)} decisions:\n")
    for decision in decisions:
        tto = (
            ""
            if decision.time_to_oom_s is None
            else f", OOM in {decision.time_to_oom_s / 60:.0f} min"
        )
        out.write(
            f"  {_clock(decision.t)}  {decision.outcome:10s} {decision.action:22s} "
            f"{decision.job}  ({decision.reason}{tto})\n"
        )


def _clock(t: float) -> str:
    seconds = int(t)
    return f"{seconds // 3600:3d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def write_summary(path: Path, result: ReplayResult, out: TextIO) -> None:
    """A readable account: the trace, each event, and what is still active at the end."""
    out.write(
        f"{path}: {_count(result.steps, 'sample')} over {_clock(result.duration_s).strip()} "
        f"(h:mm:ss), {result.device_samples:,} GPU and {result.process_samples:,} "
        f"process readings\n"
    )
    leaks = [e for e in result.events if e.kind == "leak" and e.state != CLEARED]
    if not result.events:
        out.write("no findings: no leak, never near OOM\n")
        return
    out.write(f"{_count(len(result.events), 'event')} ({len(leaks)} leak raised/updated):\n")
    for event in result.events:
        out.write(f"  {_clock(event.t)}  {event.kind:8s} {event.state:8s} {event.message}\n")
    active = [s for s in (result.engine.status() if result.engine else []) if s.state != "ok"]
    if active:
        out.write("still active at the end of the trace:\n")
        for status in active:
            where = f"GPU {status.gpu}" + (f" pid {status.pid}" if status.pid is not None else "")
            out.write(f"  {where} ({status.series}): {status.state}\n")
