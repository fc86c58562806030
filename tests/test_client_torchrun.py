"""torchrun restarts with the restart-safe process group (gloo, CPU, two ranks); its exit hook."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from control_helpers import REPO, TESTS

from watchdog.client import distributed
from watchdog.client.distributed import (
    busy_gloo_workers,
    gloo_worker_states,
    restart_prefix,
    wait_for_gloo_workers,
)

pytest.importorskip("torch.distributed")

pytest_plugins = ["control_fixtures"]


def test_restart_prefix_from_environment():
    """The store prefix follows TORCHELASTIC_RESTART_COUNT."""
    assert restart_prefix({"TORCHELASTIC_RESTART_COUNT": "3"}) == "restart3"
    assert restart_prefix({}) == "restart0"
    assert restart_prefix({"TORCHELASTIC_RESTART_COUNT": "\u00b2"}) == "restart0"  # isdigit's "2"


@pytest.mark.parametrize(
    ("timeout", "error", "message"),
    [
        (True, TypeError, "timedelta or seconds"),
        ("30", TypeError, "timedelta or seconds"),
        (0, ValueError, "above 0"),
        (float("nan"), ValueError, "above 0"),
    ],
)
def test_a_bad_timeout_is_named_before_torch_sees_it(timeout, error, message):
    """torch's TCPStore answers a wrong timeout with a pybind signature dump."""
    with pytest.raises(error, match=message):
        distributed.init_process_group("gloo", timeout=timeout)


def test_a_timeout_in_seconds_is_a_timedelta():
    assert distributed._as_timedelta(30) == timedelta(seconds=30)
    assert distributed._as_timedelta(timedelta(minutes=1)) == timedelta(minutes=1)


def fake_tasks(root: Path, threads: dict[int, tuple[str, str]]) -> Path:
    """A /proc/self/task tree: ``{tid: (comm, state)}``."""
    for tid, (comm, state) in threads.items():
        (root / str(tid)).mkdir(parents=True)
        (root / str(tid) / "comm").write_text(comm + "\n")
        (root / str(tid) / "stat").write_text(f"{tid} ({comm}) {state} 1 2 3 4\n")
    return root


def test_gloo_worker_states_reads_only_gloo_threads(tmp_path):
    """Only pt_gloo_runloop threads count; R and D are busy, S is parked."""
    tasks = fake_tasks(
        tmp_path / "task",
        {
            1: ("python3", "R"),
            2: ("pt_gloo_runloop", "S"),
            3: ("pt_gloo_runloop", "R"),
            4: ("pt_gloo_runloop", "D"),
            5: ("watchdog-client", "R"),
        },
    )
    assert sorted(gloo_worker_states(tasks) or []) == ["D", "R", "S"]
    assert busy_gloo_workers(tasks) == 2
    assert busy_gloo_workers(tmp_path / "absent") is None


class Scripted:
    """A fake clock and sleep; each sleep runs the next scripted change to the task tree."""

    def __init__(self, changes):
        self.now = 0.0
        self.changes = list(changes)

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        if self.changes:
            self.changes.pop(0)()


def test_wait_for_gloo_workers_needs_settled_quiet_polls(tmp_path):
    """A runnable worker resets the count; the wait ends after `settle` quiet polls in a row."""
    tasks = fake_tasks(tmp_path / "task", {7: ("pt_gloo_runloop", "R")})
    stat = tasks / "7" / "stat"
    script = Scripted(
        [
            lambda: stat.write_text("7 (pt_gloo_runloop) S 1\n"),
            lambda: stat.write_text("7 (pt_gloo_runloop) R 1\n"),
            lambda: stat.write_text("7 (pt_gloo_runloop) S 1\n"),
        ]
    )
    assert wait_for_gloo_workers(
        5.0, settle=3, interval_s=0.01, tasks=tasks, clock=script.clock, sleep=script.sleep
    )
    assert script.now == pytest.approx(0.05)  # R, S, R, S, S, S: five sleeps


def test_wait_for_gloo_workers_gives_up_at_the_deadline(tmp_path):
    """A worker that never parks costs at most the timeout, then exit goes on."""
    tasks = fake_tasks(tmp_path / "task", {7: ("pt_gloo_runloop", "R")})
    script = Scripted([])
    assert not wait_for_gloo_workers(
        0.1, interval_s=0.01, tasks=tasks, clock=script.clock, sleep=script.sleep
    )
    assert 0.1 <= script.now < 0.12  # the deadline plus at most one poll interval
    assert not wait_for_gloo_workers(tasks=tmp_path / "absent")  # no /proc: no wait


def test_wait_for_gloo_workers_returns_at_once_without_gloo(tmp_path):
    """A process with no gloo group (NCCL, or none) does not wait at exit."""
    tasks = fake_tasks(tmp_path / "task", {1: ("python3", "R")})
    script = Scripted([])
    assert wait_for_gloo_workers(tasks=tasks, clock=script.clock, sleep=script.sleep)
    assert script.now == 0.0


def test_exit_wait_is_registered_once(monkeypatch):
    """However many groups are built, the exit hook runs once."""
    registered: list[object] = []
    monkeypatch.setattr(distributed.atexit, "register", registered.append)
    monkeypatch.setattr(
        distributed.atexit,
        "unregister",
        lambda func: registered.remove(func) if func in registered else None,
    )
    distributed.register_exit_wait()
    distributed.register_exit_wait()
    assert registered == [wait_for_gloo_workers]


@pytest.mark.slow
def test_checkpoint_exit_and_torchrun_restart_resume(short_dir):
    """Both ranks checkpoint at one step and exit 75; torchrun restarts them; they resume.

    Every rank must also exit cleanly: without the exit hook of
    watchdog.client.distributed, about one run in four under CPU load ended with
    "terminate called without an active exception" (SIGABRT) at interpreter exit.
    """
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    result = subprocess.run(
        [
            torchrun,
            "--nproc-per-node",
            "2",
            "--max-restarts",
            "1",
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            "localhost:0",
            "--monitor-interval",
            "0.2",
            str(TESTS / "ddp_loop.py"),
            str(short_dir / "none.sock"),
            str(short_dir / "ck"),
            "10",
            "helper",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    done = sorted(re.findall(r"done \d+ \d+ \d+", result.stdout))  # ranks share one pipe
    assert done == ["done 0 5 10", "done 1 5 10"], result.stdout + result.stderr[-2000:]
    assert [p.name for p in (short_dir / "ck").iterdir()] == ["ckpt-000000000005.pt"]
    workers = re.findall(r"gloo-workers (\d+) (\d+)", result.stdout)
    assert len(workers) == 2, result.stdout  # two ranks, counted at the end of generation 1
    assert all(int(n) > 0 for _, n in workers), result.stdout  # the exit hook finds gloo's threads
    assert "terminate called" not in result.stderr
    # No --rdzv-id: still one job for both ranks and both generations (their torchrun run).
    jobs = re.findall(r"job (\d) (\d) (\S+?-torchrun-[a-z0-9_]{8})", result.stdout)  # one pipe
    assert len(jobs) == 4, result.stdout
    assert len({job for _, _, job in jobs}) == 1, jobs
