"""Which process a pid names: the pid plus the kernel's start time of the process.

The kernel recycles pids, so a pid alone may name a new process that has
nothing to do with the one the daemon learnt about. A process's start time
(``starttime``, field 22 of ``/proc/PID/stat``, in clock ticks since boot)
is fixed for its whole life, survives ``exec`` and is not moved by changes
of the wall clock, so (pid, start time) names one process. It is compared,
never shown: its unit means nothing to a person.
"""

from __future__ import annotations

from pathlib import Path

_STARTTIME_AFTER_COMM = 19
"""Index of ``starttime`` among the fields after the command name's closing parenthesis."""


def start_ticks(pid: int, proc_root: Path = Path("/proc")) -> int | None:
    """When process ``pid`` started, in clock ticks since boot; None if it cannot be read.

    A process that has exited, a pid from another pid namespace (0) and an
    unreadable or malformed ``stat`` all give None: identity unknown.
    """
    if pid <= 0:
        return None
    try:
        with open(proc_root / str(pid) / "stat", "rb") as stream:
            data = stream.read()
    except OSError:
        return None
    # The command name is in parentheses and may itself hold spaces or parentheses.
    fields = data[data.rfind(b")") + 1 :].split()
    try:
        return int(fields[_STARTTIME_AFTER_COMM])
    except (IndexError, ValueError):
        return None
