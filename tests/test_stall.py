"""The stall detector: stalled clients and lost ranks from heartbeats, departures and time."""

from __future__ import annotations

import pytest

from watchdog.daemon.stacks import summarize
from watchdog.detectors.stall import RANK_LOST, STALLED, StallDetector


def beat(detector: StallDetector, t: float, pid: int, step: int | None, **kw: object) -> list:
    """One heartbeat of ``pid`` in job "j" (rank and world size from ``kw``)."""
    return detector.heartbeat(t, pid, str(kw.pop("job", "j")), step, **kw)  # type: ignore[arg-type]


def steady(
    detector: StallDetector,
    pid: int,
    until: float,
    every: float = 5.0,
    step_s: float = 1.0,
    **kw: object,
) -> int:
    """Heartbeats every ``every`` s of a job stepping every ``step_s`` s, up to ``until``."""
    t, step, sent = 0.0, 0, 0
    while t <= until:
        assert beat(detector, t, pid, step, **kw) == []
        sent = step
        t += every
        step = int(t / step_s)
    return sent


def test_stall_raised_after_factor_times_step_time_and_cleared_when_it_steps_again():
    """At 1 s/step, factor 10 and floor 5 s: silent after 10 s, raised once, cleared on a step."""
    detector = StallDetector(step_factor=10, min_s=5)
    step = steady(detector, 7, until=100)
    assert detector.tick(105) == []
    assert detector.tick(110) == []  # exactly at the threshold: not yet
    events = detector.tick(110.5)
    assert [(e.kind, e.state, e.pid, e.step) for e in events] == [(STALLED, "raised", 7, step)]
    assert events[0].threshold_s == pytest.approx(10)
    assert "no step for 10 s" in events[0].message
    assert detector.tick(500) == []  # raised once, however long it lasts
    events = beat(detector, 510, 7, step + 1)
    assert [(e.kind, e.state) for e in events] == [(STALLED, "cleared")]
    assert detector.tick(515) == []


def test_floor_wins_over_a_fast_step_time():
    """A job at 0.05 s/step is judged against the floor, not 10 x 0.05 s."""
    detector = StallDetector(step_factor=10, min_s=60)
    steady(detector, 1, until=50, every=5, step_s=0.05)
    assert detector.tick(50 + 59) == []
    assert [e.kind for e in detector.tick(50 + 61)] == [STALLED]


def test_slow_steps_raise_the_threshold():
    """A job stepping every 60 s (slower than its heartbeats) is stalled only after 600 s."""
    detector = StallDetector(step_factor=10, min_s=30)
    t, step = 0.0, 0
    while t <= 600:
        beat(detector, t, 1, step)
        t += 5
        step = int(t // 60)
    assert detector.clients(t)[0].threshold_s == pytest.approx(600, rel=0.1)
    assert detector.tick(600 + 500) == []
    assert [e.kind for e in detector.tick(600 + 700)] == [STALLED]


def test_one_long_pause_does_not_move_the_median_step_time():
    """An eval pause of 100 s among 1 s steps leaves the step time at 1 s."""
    detector = StallDetector(step_factor=10, min_s=1)
    for t in range(0, 20):
        beat(detector, float(t), 1, t)
    beat(detector, 120.0, 1, 20)  # one step that took 100 s
    assert detector.clients(120.0)[0].threshold_s == pytest.approx(10)


def test_no_judgement_before_the_first_step():
    """A client that never advanced (loading a model) is never stalled; nor one without steps."""
    detector = StallDetector(step_factor=10, min_s=1)
    beat(detector, 0, 1, 0)
    beat(detector, 0, 2, None)
    assert detector.tick(10_000) == []
    stalls = {s.pid: s for s in detector.clients(10_000)}
    assert stalls[1].threshold_s is None
    assert stalls[1].idle_s == 10_000
    assert stalls[2].idle_s is None


def test_step_going_back_is_a_new_baseline_and_ends_a_stall():
    """Resuming from a checkpoint (lower step) clears the stall and forgets the step time."""
    detector = StallDetector(step_factor=2, min_s=1)
    for t in range(10):
        beat(detector, float(t), 1, t)
    assert [e.state for e in detector.tick(20)] == ["raised"]
    events = beat(detector, 21, 1, 3)
    assert [(e.kind, e.state) for e in events] == [(STALLED, "cleared")]
    assert "restarted at 3" in events[0].message
    assert detector.tick(100) == []  # no step time yet: not judged


def test_a_stalled_client_that_leaves_is_cleared():
    """The stall ends with the client."""
    detector = StallDetector(step_factor=2, min_s=1)
    for t in range(5):
        beat(detector, float(t), 1, t)
    detector.tick(30)
    events = detector.left(31, 1, detached=True, gone=True)
    assert [(e.kind, e.state) for e in events] == [(STALLED, "cleared")]
    assert detector.clients(31) == []


def ranks(detector: StallDetector, t: float, steps: dict[int, int]) -> None:
    """Heartbeats of a 3-rank job: pid 100 + rank."""
    for rank, step in steps.items():
        beat(detector, t, 100 + rank, step, rank=rank, world_size=3)


def test_rank_killed_is_reported_at_once_with_the_ranks_left_waiting():
    """A rank gone without a goodbye raises rank_lost at the moment it leaves."""
    detector = StallDetector()
    ranks(detector, 0, {0: 10, 1: 10, 2: 10})
    events = detector.left(1.0, 101, detached=False, gone=True)
    assert [(e.kind, e.state, e.pid, e.rank, e.waiting) for e in events] == [
        (RANK_LOST, "raised", 101, 1, (100, 102))
    ]
    assert "rank 1 (pid 101) died without detaching" in events[0].message
    assert "rank 0 (pid 100), rank 2 (pid 102) wait(s) on it" in events[0].message
    assert [(x.job, x.rank, x.pid) for x in detector.lost_ranks()] == [("j", 1, 101)]
    assert detector.job_of_lost(101) == "j"


def test_rank_dying_of_an_exception_is_lost_even_after_a_goodbye():
    """A goodbye naming an error (a CUDA OOM) is a lost rank too, and says what it died of."""
    detector = StallDetector()
    ranks(detector, 0, {0: 10, 1: 10})
    events = detector.left(
        1.0, 100, detached=True, gone=True, error="OutOfMemoryError: CUDA out of memory"
    )
    assert [(e.kind, e.how) for e in events] == [
        (RANK_LOST, "OutOfMemoryError: CUDA out of memory")
    ]
    assert "died of OutOfMemoryError" in events[0].message


@pytest.mark.parametrize(
    ("detached", "gone"),
    [(True, True), (True, False), (False, False)],
    ids=["clean-exit", "clean-close", "dropped-but-alive"],
)
def test_clean_departures_and_live_processes_are_not_lost_ranks(detached, gone):
    """A goodbye without error, or a process still alive, is no lost rank."""
    detector = StallDetector()
    ranks(detector, 0, {0: 10, 1: 10})
    assert detector.left(1.0, 101, detached=detached, gone=gone) == []


def test_single_process_jobs_and_same_rank_namesakes_are_not_lost_ranks():
    """Without rank and world size, or with no other rank left, nothing is raised."""
    detector = StallDetector()
    beat(detector, 0, 1, 5)
    beat(detector, 0, 2, 5)  # same job name, no ranks: two unrelated runs
    assert detector.left(1.0, 1, detached=False, gone=True) == []
    beat(detector, 0, 3, 5, job="k", rank=0, world_size=2)
    assert detector.left(1.0, 3, detached=False, gone=True) == []


def test_rank_lost_cleared_when_the_last_rank_leaves():
    """When torchrun (or anyone) ends the survivors, the finding ends with the job."""
    detector = StallDetector()
    ranks(detector, 0, {0: 10, 1: 10})
    detector.left(1.0, 101, detached=False, gone=True)
    events = detector.left(2.0, 100, detached=False, gone=True)
    assert [(e.kind, e.state, e.pid) for e in events] == [(RANK_LOST, "cleared", 101)]
    assert detector.lost_ranks() == []


def test_rank_lost_cleared_when_the_rank_registers_again():
    """The group restarted: the same rank number under a new pid clears the finding."""
    detector = StallDetector()
    ranks(detector, 0, {0: 10, 1: 10})
    detector.left(1.0, 101, detached=False, gone=True)
    events = beat(detector, 5.0, 201, 0, rank=1, world_size=2)
    assert [(e.kind, e.state, e.pid) for e in events] == [(RANK_LOST, "cleared", 101)]
    assert "registered again (pid 201)" in events[0].message


def test_rank_lost_cleared_when_a_survivor_keeps_stepping():
    """A survivor two steps past its first step after the loss does not wait on the dead rank."""
    detector = StallDetector()
    ranks(detector, 0, {0: 10, 1: 10})
    detector.left(1.0, 101, detached=False, gone=True)
    assert beat(detector, 2.0, 100, 12, rank=0, world_size=2) == []  # baseline after the loss
    assert beat(detector, 3.0, 100, 13, rank=0, world_size=2) == []  # one step may still finish
    events = beat(detector, 4.0, 100, 14, rank=0, world_size=2)
    assert [(e.kind, e.state) for e in events] == [(RANK_LOST, "cleared")]


def test_events_serialise_for_the_journal():
    """Job events carry what the journal, the policy and the log read."""
    detector = StallDetector(step_factor=2, min_s=1)
    for t in range(5):
        beat(detector, float(t), 9, t, rank=0, world_size=1, gpu=3)
    event = detector.tick(60)[0]
    entry = event.to_json()
    assert entry["kind"] == "stalled"
    assert entry["job"] == "j"
    assert entry["gpu"] == 3
    assert (event.series, event.cause, event.time_to_oom_s) == ("client", None, None)
    assert "t" not in event.log_fields()
    assert event.log_fields()["pid"] == 9


FAULTHANDLER = """\
Current thread 0x00007f0000000002 (most recent call first):
  File "/work/watchdog/client/commands.py", line 34 in dump_stacks
  File "/work/watchdog/client/link.py", line 190 in _serve
  File "/usr/lib/python3.11/threading.py", line 1045 in _bootstrap_inner

Thread 0x00007f0000000001 (most recent call first):
  File "/venv/torch/distributed/distributed_c10d.py", line 2806 in all_reduce
  File "/venv/torch/distributed/c10d_logger.py", line 81 in wrapper
  File "/work/tests/hang.py", line 30 in train
  File "/work/tests/hang.py", line 40 in main
  File "/work/tests/hang.py", line 44 in <module>
"""


def test_stack_summary_names_threads_and_their_innermost_frames():
    """One line per thread, innermost first, the answering thread left out."""
    lines = summarize({"stacks": FAULTHANDLER, "threads": {"0x00007f0000000001": "MainThread"}})
    assert lines == [
        "MainThread: distributed/distributed_c10d.py:2806 all_reduce < "
        "distributed/c10d_logger.py:81 wrapper < tests/hang.py:30 train < "
        "tests/hang.py:40 main < ... 1 more"
    ]
    assert summarize({"stacks": None}) == []
