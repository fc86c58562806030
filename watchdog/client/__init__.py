"""The in-process library: ``wd = watchdog.attach(model, optimizer)``, then ``wd.step()``.

Importing it imports neither torch nor any framework; see docs/integrations.md.
"""

from __future__ import annotations

from watchdog.client.checkpoint import CheckpointStore, atomic_torch_save, atomic_write
from watchdog.client.handle import (
    RESTART_EXIT_CODE,
    Deferred,
    GrowthPlan,
    RestartRequested,
    Watchdog,
    attach,
)

__all__ = [
    "RESTART_EXIT_CODE",
    "CheckpointStore",
    "Deferred",
    "GrowthPlan",
    "RestartRequested",
    "Watchdog",
    "atomic_torch_save",
    "atomic_write",
    "attach",
]
