"""``gpu-watchdog send PID|JOB COMMAND``: run a command in a training process, print the result."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
from typing import Any

from watchdog.commands._common import printable
from watchdog.commands.clients import add_socket_options, socket_path
from watchdog.control.protocol import COMMANDS
from watchdog.control.requests import ControlRequester
from watchdog.errors import EXIT_FAILURE, EXIT_OK, UsageError

_PID = re.compile(r"[0-9]{1,10}")
"""A target that names a pid: ASCII digits (``str.isdigit`` also takes "²", which int refuses)."""
MAX_TIMEOUT_S = 86400.0
"""Longest --timeout: a day (past about 292 years a socket's timeout overflows)."""


def register(subparsers: Any) -> None:
    """Add the ``send`` subcommand."""
    parser = subparsers.add_parser(
        "send",
        help="send a command to a training process and print the result",
        description="Send a command to one process (PID) or every rank of a job (JOB). "
        "Allowed to root and to the process's own user.",
    )
    parser.add_argument("target", metavar="PID|JOB", help="process id or job id")
    # dest "action": "command" is the subcommand's name, which error messages print.
    parser.add_argument(
        "action", choices=COMMANDS, metavar="COMMAND", help=f"one of: {', '.join(COMMANDS)}"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        metavar="S",
        help=f"seconds to wait for the result (default 600, at most {MAX_TIMEOUT_S:.0f})",
    )
    parser.add_argument(
        "--dir",
        metavar="DIR",
        help="dump_snapshot: directory for the snapshot, as the training "
        "process sees it (a relative one is taken from here)",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    add_socket_options(parser)
    parser.set_defaults(func=run)


def describe(result: dict[str, Any]) -> str:
    """A few readable lines for one result.

    What the training process sent (error, details, stacks) is escaped where not
    printable: it must not write escape sequences to the terminal of whoever asked.
    """
    rank = result.get("rank")
    who = f"pid {result['pid']} (job {printable(str(result['job']))}, "
    who += f"rank {'-' if rank is None else rank})"
    duration = result.get("duration_s")
    took = ""
    if isinstance(duration, (int, float)):
        # %g past a million seconds: the process measured it, and may have measured 1e300.
        took = f" in {duration:.3f} s" if abs(duration) < 1e6 else f" in {duration:.3g} s"
    head = f"{who}: {printable(str(result['command']))} {'ok' if result['ok'] else 'FAILED'}{took}"
    lines = [head]
    if result.get("error"):
        lines.append(f"  error: {printable(str(result['error']))}")
    details = dict(result.get("details") or {})
    stacks = details.pop("stacks", None)
    details.pop("threads", None)
    lines.extend(f"  {printable(f'{key}: {value}')}" for key, value in details.items())
    if stacks:
        lines.append(printable(str(stacks).rstrip(), keep="\n"))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Send; exit 0 when every targeted process answered ok, else 1."""
    if not (math.isfinite(args.timeout) and args.timeout > 0):
        raise UsageError(f"--timeout must be a number of seconds > 0, got {args.timeout:g}")
    if args.timeout > MAX_TIMEOUT_S:
        raise UsageError(
            f"--timeout must be at most {MAX_TIMEOUT_S:.0f} seconds (a day), got {args.timeout:g}"
        )
    target: int | str = int(args.target) if _PID.fullmatch(args.target) else args.target
    # The training process opens the path; relative to its working directory, it would
    # land wherever the job happened to start.
    command_args = {"dir": os.path.abspath(args.dir)} if args.dir else {}
    with ControlRequester(socket_path(args)) as requester:
        results = requester.send(target, args.action, command_args, timeout_s=args.timeout)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print("\n".join(describe(result) for result in results))
    return EXIT_OK if all(result["ok"] for result in results) else EXIT_FAILURE
