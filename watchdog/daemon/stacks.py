"""Where each thread of a training process is, in a few words, from a ``dump_stacks`` answer.

A stalled job's full faulthandler dump can run to hundreds of lines; the log
gets one short entry per thread: its name and its innermost frames
(``file.py:line function``), innermost first.
"""

from __future__ import annotations

import re
from typing import Any

FRAMES_SHOWN = 4
"""Innermost frames kept per thread: enough to see the blocking call and who made it."""
MAX_THREADS = 32
"""Threads listed at most (a DataLoader with many workers in threads)."""

_HEADER = re.compile(r"^(?:Current thread|Thread) (0x[0-9a-fA-F]+)(?: \[[^\]]*\])? \(most recent")
_FRAME = re.compile(r'^\s+File "(?P<file>.*)", line (?P<line>\d+) in (?P<function>.+)$')


def summarize(details: dict[str, Any]) -> list[str]:
    """``"name: file.py:12 inner < file.py:40 outer"`` per thread of a ``dump_stacks`` result.

    The thread that answered (the client's background thread, caught inside
    ``dump_stacks``) is left out: it is never where training is stuck.
    """
    text = details.get("stacks")
    names = details.get("threads")
    if not isinstance(text, str):
        return []
    names = names if isinstance(names, dict) else {}
    threads: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        header = _HEADER.match(line)
        if header:
            ident = header.group(1).lower()
            threads.append((str(names.get(ident, ident)), []))
            continue
        frame = _FRAME.match(line)
        if frame and threads:
            where = f"{_short(frame['file'])}:{frame['line']} {frame['function'].strip()}"
            threads[-1][1].append(where)
    lines = []
    for name, frames in threads:
        if frames and frames[0].endswith(" dump_stacks"):
            continue
        shown = " < ".join(frames[:FRAMES_SHOWN]) or "(no Python frames)"
        more = f" < ... {len(frames) - FRAMES_SHOWN} more" if len(frames) > FRAMES_SHOWN else ""
        lines.append(f"{name}: {shown}{more}")
    return lines[:MAX_THREADS]


def _short(path: str) -> str:
    """The last two parts of a path: ``distributed/distributed_c10d.py``, ``train.py``."""
    parts = path.replace("\\", "/").split("/")
    return "/".join(parts[-2:]) if len(parts) > 1 else path
