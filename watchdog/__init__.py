"""gpu-job-watchdog: a watchdog for GPU training jobs.

The import name ``watchdog`` is shared with the unrelated filesystem-events
package of the same name; the two cannot live in one environment.

Importing this package is cheap and imports neither torch nor NVML: the
in-process client (``watchdog.attach``) is loaded on first use.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "attach"]


def __getattr__(name: str) -> Any:
    # Lazy, so that `import watchdog` in the daemon never pulls the client in.
    if name == "attach":
        from watchdog.client import attach

        return attach
    raise AttributeError(f"module 'watchdog' has no attribute {name!r}")
