"""Leak and near-OOM detection: a pure core that takes samples and returns events.

``DetectionEngine`` has no clock and does no I/O: the live daemon and
``gpu-watchdog replay`` feed it the same samples and get the same events.
docs/detection.md explains the algorithm and its tunables.
"""

from watchdog.detectors.engine import DetectionEngine
from watchdog.detectors.events import Event, SeriesStatus

__all__ = ["DetectionEngine", "Event", "SeriesStatus"]
