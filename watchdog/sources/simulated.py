"""A simulated GPU that plays a trace (a file or a built-in scenario) at a chosen speed.

Used only when asked for (``gpu-watchdog run --simulate``), never as a
fallback. Everything it produces carries ``origin="simulated"``, which the
exporter turns into ``source="simulated"`` and the logs into ``source=simulated``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import structlog

from watchdog.errors import UsageError
from watchdog.samples import SIMULATED, DeviceSample, GpuProcessSample, Reading
from watchdog.sources.scenarios import SCENARIOS, scenario_names, scenario_rows
from watchdog.trace import TraceStep, group_steps, read_trace

SIMULATED_GPU_NAME = "Simulated GPU"

log = structlog.get_logger("watchdog.sources.simulated")


def load_steps(trace_or_scenario: str) -> list[TraceStep]:
    """Steps of a built-in scenario name or a trace file path.

    Raises:
        UsageError: neither a known scenario nor a readable, valid trace file.
    """
    if trace_or_scenario in SCENARIOS:
        steps = list(group_steps(scenario_rows(trace_or_scenario)))
    elif Path(trace_or_scenario).exists():
        steps = list(group_steps(read_trace(trace_or_scenario)))
    else:
        raise UsageError(
            f"--simulate: {trace_or_scenario!r} is neither a trace file nor a scenario "
            f"({', '.join(scenario_names())})"
        )
    if not any(step.devices for step in steps):
        raise UsageError(f"--simulate: {trace_or_scenario!r} has no device rows")
    return steps


class SimulatedSource:
    """Plays ``steps`` against ``clock``: each poll returns the latest step due.

    With ``loop`` the trace starts again after its end; time keeps increasing
    across loops so detectors never see it go backwards.
    """

    name = "simulated"

    def __init__(
        self,
        steps: Sequence[TraceStep],
        interval_s: float = 1.0,
        speed: float = 1.0,
        loop: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not steps:
            raise ValueError("a simulated source needs at least one step")
        self._steps = steps
        self.interval_s = interval_s
        self._speed = speed
        self._loop = loop
        self._clock = clock
        self._start = clock()
        # A loop's length: the last step plus one sampling interval.
        gap = steps[-1].t - steps[-2].t if len(steps) > 1 else 1.0
        self._period = steps[-1].t - steps[0].t + gap
        self._times = [step.t - steps[0].t for step in steps]
        self._told_finished = False

    @property
    def finished(self) -> bool:
        """True once a non-looping trace has been played to its end."""
        return not self._loop and self._trace_time() >= self._times[-1]

    def poll(self) -> Reading:
        """The latest step due at the current simulated time."""
        elapsed = self._trace_time()
        cycle = 0.0
        if self._loop:
            cycle, elapsed = divmod(elapsed, self._period)
        index = _last_at_or_before(self._times, elapsed)
        step = self._steps[index]
        if not self._told_finished and self.finished:
            self._told_finished = True
            # Its figures hold the last step; its findings clear once, after forget_after_s.
            log.info("simulation_finished", trace_end_s=self._times[-1], step_t=step.t)
        return _to_reading(step, t=self._times[index] + cycle * self._period)

    def close(self) -> None:
        """Nothing to release."""

    def trace_clock(self) -> float:
        """Seconds of trace time now: the clock other sources use beside a simulated GPU."""
        return self._trace_time()

    def _trace_time(self) -> float:
        return (self._clock() - self._start) * self._speed


def _last_at_or_before(times: Sequence[float], t: float) -> int:
    low, high = 0, len(times) - 1
    while low < high:
        middle = (low + high + 1) // 2
        if times[middle] <= t:
            low = middle
        else:
            high = middle - 1
    return low


def _to_reading(step: TraceStep, t: float) -> Reading:
    devices = [
        DeviceSample(
            gpu=row.gpu,
            uuid=f"SIMULATED-GPU-{row.gpu}",
            name=SIMULATED_GPU_NAME,
            total_bytes=row.total_bytes,
            used_bytes=row.used_bytes,
            # A synthetic trace may overshoot its card at the OOM: nothing is free, not less.
            free_bytes=None
            if row.total_bytes is None
            else max(0, row.total_bytes - row.used_bytes),
        )
        for row in step.devices
    ]
    # As in replay: a step with process rows lists every process (a pid left out has
    # exited; the same pid later is a new process), a step without any did not sample
    # them (recorded traces sample processes less often than devices), so it ends none.
    processes = [
        GpuProcessSample(gpu=row.gpu, pid=row.pid, used_bytes=row.used_bytes)
        for row in step.processes
        if row.pid is not None
    ]
    return Reading(
        t=t, origin=SIMULATED, devices=devices, processes=processes if step.processes else None
    )
