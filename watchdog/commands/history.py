"""``gpu-watchdog history``: what the watchdog found, decided and did, from the audit journal."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from watchdog.commands._common import add_config_option, load, printable
from watchdog.errors import UsageError, WatchdogError
from watchdog.policy.journal import Journal, ReadStats

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def register(subparsers: Any) -> None:
    """Add the ``history`` subcommand."""
    parser = subparsers.add_parser(
        "history",
        help="print the audit journal",
        description="Print findings, decisions and command results from the audit journal "
        "(times in UTC).",
    )
    add_config_option(parser)
    parser.add_argument("--job", help="only entries about this job")
    parser.add_argument(
        "--since",
        metavar="WHEN",
        help="only entries newer than this: a duration (30m, 12h, 7d) or an ISO date/time "
        "(UTC unless it gives an offset, like the times printed)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--state-dir", type=Path, metavar="DIR", help="override daemon.state_dir")
    parser.set_defaults(func=run)


def parse_since(text: str, now: float) -> float:
    """Epoch seconds for ``--since``: a duration back from ``now`` or an ISO 8601 time."""
    match = _DURATION.match(text.strip())
    if match:
        return now - float(match.group(1)) * _UNITS[match.group(2)]
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(
            f"--since: expected a duration like 30m, 12h, 7d or an ISO time, got {text!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def run(args: argparse.Namespace) -> int:
    """Print the matching entries, oldest first."""
    config = load(args)
    since = parse_since(args.since, time.time()) if args.since is not None else None
    directory = args.state_dir or Path(config.daemon.state_dir)
    journal = Journal(directory, config.policy.journal_max_bytes, config.policy.journal_keep)
    try:
        if directory.exists() and not directory.is_dir():
            raise UsageError(f"no journal: {directory} is not a directory")
        files = journal.files()
    except OSError as exc:  # e.g. a 0750 directory and a reader outside its group
        raise WatchdogError(
            f"cannot read the journal in {directory}: {exc.strerror or exc}"
        ) from None
    if not files:
        if not directory.exists():
            raise UsageError(
                f"no journal: {directory} does not exist (no daemon has run with "
                "daemon.state_dir there: pass the daemon's --config or --state-dir)"
            )
        print(f"no journal entries in {directory}", file=sys.stderr)
        return 0
    # Findings name a pid, not a job: a job's own are those on the pids its commands went to.
    pids = _pids_of(journal.read(), args.job) if args.job else set()
    stats = ReadStats()
    shown = 0
    for entry in journal.read(stats):
        if args.job and entry.get("job", _pid_job(entry, pids, args.job)) != args.job:
            continue
        try:
            if since is not None and float(entry.get("wall", 0)) < since:
                continue
            # A client's job name and error text are its own: escaped, each entry one line.
            line = json.dumps(entry, sort_keys=True) if args.json else printable(render(entry))
        except (TypeError, ValueError, OverflowError):
            stats.skipped_lines += 1  # JSON, but not an entry this daemon wrote (a hand edit)
            continue
        print(line)
        shown += 1
    # Notes go to stderr: with --json, stdout is JSON lines alone.
    if stats.skipped_lines:
        print(f"({stats.skipped_lines} unreadable line(s) skipped)", file=sys.stderr)
    if not shown:
        asked = (("--job", args.job), ("--since", args.since))
        filters = " ".join(f"{flag} {value}" for flag, value in asked if value is not None)
        matching = f" match {filters}" if filters else ""
        print(f"no journal entries in {directory}{matching}", file=sys.stderr)
    if stats.unreadable_files:
        # What was printed is not the whole history: say so, and fail.
        raise WatchdogError(
            f"{stats.unreadable_files} journal file(s) in {directory} could not be read"
        )
    return 0


def _pids_of(entries: Iterable[dict[str, Any]], job: str) -> set[int]:
    """The pids the journal's decisions and results about ``job`` name."""
    return {
        entry["pid"]
        for entry in entries
        if entry.get("job") == job and isinstance(entry.get("pid"), int)
    }


def _pid_job(entry: dict[str, Any], pids: set[int], job: str) -> str | None:
    """``job`` for a finding about one of its ``pids``, else None."""
    pid = entry.get("pid")
    return job if entry.get("type") == "finding" and isinstance(pid, int) and pid in pids else None


def render(entry: dict[str, Any]) -> str:
    """One journal entry as a line for a person."""
    when = datetime.fromtimestamp(float(entry.get("wall", 0)), tz=timezone.utc)
    stamp = when.strftime("%Y-%m-%d %H:%M:%S")
    kind = entry.get("type", "?")
    where = f"gpu {entry.get('gpu')}" + (f" pid {entry['pid']}" if entry.get("pid") else "")
    if kind == "decision":
        return (
            f"{stamp}  {entry.get('outcome', '?'):<10} {entry.get('action', '?'):<22} "
            f"job {entry.get('job', '?')}  {where}  ({entry.get('reason', '')})"
        )
    if kind == "result":
        verdict = "ok" if entry.get("ok") else f"error: {entry.get('error', '')}"
        if entry.get("unanswered"):
            verdict = "no answer before the daemon stopped (it may have run)"
        return (
            f"{stamp}  result     {entry.get('action', '?'):<22} "
            f"job {entry.get('job', '?')} pid {entry.get('pid')}  {verdict}"
        )
    if kind in ("request", "request_result"):
        verdict = "sent" if kind == "request" else "ok" if entry.get("ok") else "error"
        error = f": {entry.get('error', '')}" if verdict == "error" else ""
        return (
            f"{stamp}  by hand    {entry.get('command', '?'):<22} "
            f"job {entry.get('job', '?')} pid {entry.get('pid')}  {verdict}{error} "
            f"(uid {entry.get('requester_uid', '?')})"
        )
    if kind == "finding":
        state, finding = entry.get("state", "?"), entry.get("kind", "?")
        return f"{stamp}  {state:<10} {finding:<22} {where}  {entry.get('message', '')}"
    return f"{stamp}  {kind}  {json.dumps(entry, sort_keys=True)}"
