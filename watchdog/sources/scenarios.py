"""Built-in traces for the simulated GPU, by name, for demos and tests.

Each is deterministic (a fixed seed) and shaped like real training: a warm-up
ramp, a sawtooth from the caching allocator and periodic ``empty_cache``,
noise quantised to 2 MiB blocks, and, where named, a leak.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from watchdog.trace import TraceRow

GIB = 1 << 30
MIB = 1 << 20
CARD_BYTES = 80 * GIB
CONTEXT_BYTES = 600 * MIB
SIMULATED_PIDS = (4_000_001, 4_000_002)
"""Near the top of Linux's pid range (at most 4,194,304), so they rarely name a real process."""


def _training_memory(t: float, rng: random.Random, working_set: float) -> float:
    """Memory of one healthy training process at ``t`` seconds."""
    warm_up = min(1.0, t / 180.0)  # context, model load and allocator growth over 3 minutes
    sawtooth = (t % 300.0) / 300.0 * 2 * GIB  # caches grow, empty_cache every 5 minutes
    noise = rng.gauss(0.0, 64 * MIB)
    return CONTEXT_BYTES + warm_up * working_set + warm_up * sawtooth + noise


def _quantised(value: float) -> int:
    return max(0, int(value) // (2 * MIB) * (2 * MIB))


def _build(
    duration_s: float, leaks: tuple[Callable[[float], float], ...], working_sets: tuple[float, ...]
) -> list[TraceRow]:
    rng = random.Random(1234)
    rows: list[TraceRow] = []
    for step in range(int(duration_s) + 1):
        t = float(step)
        per_process = [
            _quantised(_training_memory(t, rng, working_set) + leak(t))
            for working_set, leak in zip(working_sets, leaks, strict=True)
        ]
        excess = sum(per_process) - CARD_BYTES
        for index in reversed(range(len(per_process))):  # the allocation that fails: the last
            taken = min(max(excess, 0), per_process[index])
            per_process[index] -= taken
            excess -= taken
        used = sum(per_process)
        rows.append(TraceRow(t, 0, None, used, CARD_BYTES))
        rows.extend(
            TraceRow(t, 0, pid, memory, None)
            for pid, memory in zip(SIMULATED_PIDS, per_process, strict=False)
        )
        if used >= CARD_BYTES:
            break
    return rows


FLEET_GPUS = 8
FLEET_PROCESSES_PER_GPU = 8
FLEET_PERIOD_S = 600
"""Two sawtooth periods: the fleet trace ends where it began, so it loops without a jump."""


def fleet_pid(gpu: int, process: int) -> int:
    """The pid of process ``process`` on GPU ``gpu`` in the fleet scenario (4_000_1GP)."""
    return 4_000_100 + 10 * gpu + process


def _build_fleet() -> list[TraceRow]:
    """A full node in steady state: every card busy with eight healthy processes.

    Trace time is shifted past the warm-up and each card gets its own sawtooth
    phase, so the 600 s trace is periodic (``simulation.loop`` plays it for
    as long as wanted) and the cards do not all empty their caches at once.
    """
    rng = random.Random(1234)
    rows: list[TraceRow] = []
    for step in range(FLEET_PERIOD_S):
        t = float(step)
        for gpu in range(FLEET_GPUS):
            steady_t = 3600.0 + t + 37.0 * gpu  # warm-up long over; phase differs per card
            per_process = [
                _quantised(_training_memory(steady_t, rng, 5 * GIB))
                for _ in range(FLEET_PROCESSES_PER_GPU)
            ]
            rows.append(TraceRow(t, gpu, None, min(CARD_BYTES, sum(per_process)), CARD_BYTES))
            rows.extend(
                TraceRow(t, gpu, fleet_pid(gpu, index), memory, None)
                for index, memory in enumerate(per_process)
            )
    return rows


def _no_leak(t: float) -> float:
    return 0.0


def _steady_leak(start_s: float, bytes_per_s: float) -> Callable[[float], float]:
    return lambda t: max(0.0, t - start_s) * bytes_per_s


SCENARIOS: dict[str, tuple[str, Callable[[], list[TraceRow]]]] = {
    "healthy": (
        "one job on an 80 GiB card: warm-up, sawtooth, noise; no leak (2 hours)",
        lambda: _build(7200, (_no_leak,), (40 * GIB,)),
    ),
    "leak": (
        "one job leaking 20 MiB/s from minute 10 on an 80 GiB card; OOM after about 40 minutes",
        lambda: _build(7200, (_steady_leak(600, 20 * MIB),), (40 * GIB,)),
    ),
    "two-jobs-one-leak": (
        "two jobs on one card, the second leaking 15 MiB/s from minute 5",
        lambda: _build(7200, (_no_leak, _steady_leak(300, 15 * MIB)), (20 * GIB, 20 * GIB)),
    ),
    "fleet": (
        "eight 80 GiB cards with eight healthy processes each, in steady state "
        "(10 minutes that loop seamlessly with simulation.loop)",
        _build_fleet,
    ),
}


def scenario_names() -> list[str]:
    """Names accepted by ``--simulate``."""
    return sorted(SCENARIOS)


def scenario_rows(name: str) -> list[TraceRow]:
    """The rows of built-in scenario ``name``; raises KeyError for an unknown one."""
    return SCENARIOS[name][1]()
