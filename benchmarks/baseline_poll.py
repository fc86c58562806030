"""The baseline of bench_footprint.py: a bare Python loop polling the simulated source.

    python benchmarks/baseline_poll.py SCENARIO_OR_TRACE INTERVAL_S

Imports only the simulated source (no daemon, exporter, scheduler or
detection), plays the same scenario as the daemon under test, calls
``poll()`` every ``INTERVAL_S`` seconds and keeps the newest figure of every
device and process: the least any Python poller of the same figures costs.
It runs until it is signalled; bench_footprint.py measures it from outside.
Kept apart from the benchmark so that nothing the benchmark imports
(urllib, prometheus_client) counts against the baseline.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from watchdog.sources.simulated import SimulatedSource, load_steps


def poll_forever(scenario: str, interval_s: float) -> None:
    """Poll ``scenario`` every ``interval_s`` seconds on a fixed schedule, until killed."""
    source = SimulatedSource(load_steps(scenario), interval_s=interval_s, loop=True)
    latest: dict[tuple[int, int | None], int | None] = {}
    due = time.monotonic()
    while True:
        reading = source.poll()
        latest = {(device.gpu, None): device.used_bytes for device in reading.devices or ()}
        latest.update({(p.gpu, p.pid): p.used_bytes for p in reading.processes or ()})
        due += interval_s  # a fixed schedule, as the daemon's scheduler keeps
        time.sleep(max(0.0, due - time.monotonic()))


if __name__ == "__main__":
    poll_forever(sys.argv[1], float(sys.argv[2]))
