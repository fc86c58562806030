"""Which process a pid names: the pid plus the kernel's start time of the process.

The kernel recycles pids, so a pid alone may name a new process that has
nothing to do with the one the daemon learnt about. A process's start time
(``starttime``, field 22 of ``/proc/PID/stat``, in clock ticks since boot)
is fixed for its whole life, survives ``exec`` and is not moved by changes
of the wall clock, so (pid, start time) names one process. It is compared,
never shown: its unit means nothing to a person.
"""

from __future__ import annotations

import os
from pathlib import Path

_STARTTIME_AFTER_COMM = 19
"""Index of ``starttime`` among the fields after the command name's closing parenthesis."""


def proc_file(proc_root: str | os.PathLike[str], pid: int | str, *names: str) -> str:
    """The path of ``names`` under ``proc_root/pid``, e.g. ``/proc/42/stat``, as a plain string.

    Built by joining strings, not with pathlib: pathlib (CPython 3.11 and 3.12)
    interns every path component it parses, and the pids and thread ids read
    on every poll are new strings each time. Each interned string takes a slot
    in the interpreter's table of interned strings until the table is rebuilt,
    so the daemon's polling alone grew that table from 1 MiB to 2 MiB about
    25 minutes after start (docs/performance.md), memory never given back.
    """
    return "/".join((os.fspath(proc_root), str(pid), *names))


def start_ticks(pid: int, proc_root: Path = Path("/proc")) -> int | None:
    """When process ``pid`` started, in clock ticks since boot; None if it cannot be read.

    A process that has exited, a pid from another pid namespace (0) and an
    unreadable or malformed ``stat`` all give None: identity unknown.
    """
    if pid <= 0:
        return None
    try:
        with open(proc_file(proc_root, pid, "stat"), "rb") as stream:
            data = stream.read()
    except OSError:
        return None
    # The command name is in parentheses and may itself hold spaces or parentheses.
    fields = data[data.rfind(b")") + 1 :].split()
    try:
        return int(fields[_STARTTIME_AFTER_COMM])
    except (IndexError, ValueError):
        return None
