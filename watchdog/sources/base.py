"""The one interface every source implements."""

from __future__ import annotations

from typing import Protocol

from watchdog.samples import Reading


class Source(Protocol):
    """Something the daemon polls on its own interval.

    ``poll`` returns what it read; a figure it could not read is left out
    (``None``), never reported as zero. It raises only when the whole source
    failed this time; the poller counts that and tries again next interval.
    """

    name: str
    """Collector name used in metrics and logs, e.g. ``nvml_devices``."""

    interval_s: float
    """Seconds between polls."""

    def poll(self) -> Reading:
        """Read the current state."""
        ...

    def close(self) -> None:
        """Release what the source holds; called once at shutdown."""
        ...
