"""A job that starts on an empty GPU gets its warm-up grace, process list or not.

Where the driver hides per-process memory (a container), a GPU's series sees
a job start only as its memory climbing. A job that ends falls as deep as a
restart, and the grace ran from that fall: a GPU left empty for ten minutes
or more gave the next job none, and a checkpoint loaded at 6 GiB a minute
read as a leak minutes from the OOM (the judge set's
``judge_checkpoint_restart`` 1:0005). While the GPU holds no more than the
driver's own memory, its grace now starts again with every bucket.
"""

from __future__ import annotations

from tests.judge_traces import judged
from tests.test_detect_engine import GIB, MIB, leaks, run
from watchdog.detectors.series import IDLE_BYTES

EMPTY = 400 * MIB
"""What an empty GPU shows: the driver's own reservation."""
JOB_START_S = 1800.0


def test_a_checkpoint_loaded_on_a_gpu_that_sat_empty_is_no_leak() -> None:
    def relaunch(t: float) -> float:
        if t < JOB_START_S:
            return EMPTY
        return EMPTY + min(24 * GIB, 6 * GIB * (t - JOB_START_S) / 60)

    events, _, _ = run(relaunch, 2 * 3600, interval=3.0, processes=False)
    assert not leaks(events)


def test_a_leak_in_a_job_started_on_an_empty_gpu_is_still_caught_in_time() -> None:
    """Loaded in a minute, leaking 0.5 GiB/min from five minutes in: raised well
    before its deadline, the grace counted from the job's start."""
    leak_start = JOB_START_S + 300

    def leaking(t: float) -> float:
        if t < JOB_START_S:
            return EMPTY
        loaded = EMPTY + min(10 * GIB, 10 * GIB * (t - JOB_START_S) / 60)
        return loaded + (0.5 * GIB * (t - leak_start) / 60 if t > leak_start else 0.0)

    events, oom, _ = run(leaking, 4 * 3600, interval=3.0, processes=False)
    assert oom is not None
    raised = leaks(events)
    assert raised
    assert raised[0].t <= oom - 20 * 60
    assert raised[0].t >= JOB_START_S + 600  # no window reached into the load


def test_the_grace_moves_only_while_the_gpu_is_empty() -> None:
    """An empty GPU keeps its grace ahead of it; a job above 1 GiB ages as before."""
    _, _, engine = run(lambda t: EMPTY, 3600, interval=5.0, processes=False)
    assert engine._gpus[0].start_t >= 3600 - 20
    _, _, engine = run(lambda t: IDLE_BYTES + 2 * GIB, 3600, interval=5.0, processes=False)
    assert engine._gpus[0].start_t == 0.0


def test_the_judge_sets_relaunch_on_device_figures_is_no_leak() -> None:
    label, intervals, _ = judged(1, 5)
    assert label.scenario == "judge_checkpoint_restart"
    assert not label.leak
    assert not intervals
