"""A slow leak under a tall sawtooth: the noise is measured on the troughs, not the teeth.

Periodic ``empty_cache`` makes teeth of ~1.2 GiB every ~11 minutes; a leak of
~1.2 GiB an hour lifts each trough by ~0.2 GiB. Measured bucket to bucket, the
teeth's own climbs and drops look like noise of the teeth's size and bury the
troughs' rise; measured on the troughs they do not.
"""

from __future__ import annotations

import random

from watchdog.config import DetectionSettings
from watchdog.detectors.replay import replay_lines

GIB = 1 << 30
CARD = 16 * GIB
BASE = 11.5 * GIB
TOOTH = 1.2 * GIB
CYCLE_S = 690.0
LEAK_PER_S = 0.33e6
EVAL = 1.0 * GIB
EVAL_EVERY_S = 1130
EVAL_S = 240
PID = 4242


def _trace(leak_per_s: float, duration_s: int) -> list[str]:
    """1 Hz samples of one process alone on a 16 GiB GPU, with small noise."""
    rng = random.Random(7)
    lines = ["t,gpu,pid,used_bytes,total_bytes"]
    for t in range(duration_s):
        ramp = min(1.0, t / 180.0)  # context, model load and allocator warm-up
        used = ramp * BASE + TOOTH * ((t % CYCLE_S) / CYCLE_S) + leak_per_s * t
        if t % EVAL_EVERY_S >= EVAL_EVERY_S - EVAL_S:  # an eval holds its activations a while
            used += EVAL
        used += rng.gauss(0.0, 4e6)
        used = max(0.0, min(used, CARD))
        lines.append(f"{t},0,,{int(used)},{CARD}")
        lines.append(f"{t},0,{PID},{int(used)},")
    return lines


def _oom_t(leak_per_s: float) -> float:
    """When a tooth's top with an eval on it first reaches the card's size."""
    return (CARD - BASE - TOOTH - EVAL) / leak_per_s


def test_slow_leak_under_a_tall_sawtooth_is_raised_before_the_deadline():
    """Raised at least 5 minutes before the first tooth would hit the limit."""
    oom = _oom_t(LEAK_PER_S)
    deadline = oom - min(300.0, oom / 4)
    result = replay_lines(_trace(LEAK_PER_S, int(oom)), "sawtooth-leak", DetectionSettings())
    raised = [e for e in result.events if e.kind == "leak" and e.state == "raised"]
    assert raised, "the leak under the sawtooth was never raised"
    assert raised[0].t <= deadline, f"raised at {raised[0].t:.0f} s, deadline {deadline:.0f} s"
    assert any(e.pattern == "sawtooth" for e in raised)


def test_the_same_sawtooth_without_a_leak_raises_nothing():
    """Three hours of the same teeth and evals with a flat floor: no leak."""
    result = replay_lines(_trace(0.0, 3 * 3600), "sawtooth", DetectionSettings())
    assert [e for e in result.events if e.kind == "leak"] == []
