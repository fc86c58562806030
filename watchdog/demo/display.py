"""The demo's terminal output: event lines, and a memory line updated in place on a terminal.

On a terminal the memory line (a sparkline of the training process's host
RSS, the step and the rate) is redrawn in place; elsewhere (a pipe, a CI log)
it is printed as a plain line every ``plain_every_s`` seconds instead.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import TextIO

MIB = 1 << 20
GIB = 1 << 30
BARS = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float], width: int = 32) -> str:
    """The last ``width`` values as block characters, scaled from their minimum to maximum."""
    shown = list(values)[-width:]
    if not shown:
        return ""
    low, high = min(shown), max(shown)
    span = high - low or 1.0
    return "".join(BARS[min(len(BARS) - 1, int((v - low) / span * len(BARS)))] for v in shown)


def mib(value: float) -> str:
    """Bytes as MiB, or GiB from 10 GiB up."""
    return f"{value / GIB:.1f} GiB" if value >= 10 * GIB else f"{value / MIB:.0f} MiB"


def minutes(seconds: float) -> str:
    """A duration for a person: seconds, minutes or hours."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class Display:
    """Writes the demo's lines; ``live`` redraws the memory line in place (a terminal)."""

    def __init__(
        self,
        out: TextIO | None = None,
        live: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
        plain_every_s: float = 5.0,
    ) -> None:
        self.out = out or sys.stdout
        self.live = self.out.isatty() if live is None else live
        self._clock = clock
        self._start = clock()
        self._plain_every_s = plain_every_s
        self._last_plain = -plain_every_s
        self._status_shown = False

    def elapsed(self) -> float:
        """Seconds since the display was created."""
        return self._clock() - self._start

    def line(self, text: str) -> None:
        """A plain line with no time stamp (headers, the summary)."""
        self._clear_status()
        self.out.write(text + "\n")
        self.out.flush()

    def event(self, label: str, text: str) -> None:
        """A time-stamped event line that stays on screen."""
        self.line(f"[{self.elapsed():6.1f}s] {label:<8} {text}")

    def status(self, text: str) -> None:
        """The memory line: redrawn in place when live, else printed every few seconds."""
        if self.live:
            self.out.write("\r\033[K" + text)
            self.out.flush()
            self._status_shown = True
            return
        now = self.elapsed()
        if now - self._last_plain >= self._plain_every_s:
            self._last_plain = now
            self.event("memory", text)

    def _clear_status(self) -> None:
        if self._status_shown:
            self.out.write("\r\033[K")
            self._status_shown = False
