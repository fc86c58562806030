"""Acceptance under torchrun: a leak in one of two gloo ranks restarts both, and nothing is lost."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from conftest import REPO

from watchdog.demo.runner import start_daemon, stop_group

torch = pytest.importorskip("torch")
pytest.importorskip("torch.distributed")

pytest_plugins = ["control_fixtures"]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

STEPS = 1600
STEP_TIME_S = 0.05


def leak_bytes_per_step() -> int:
    """A leak that would fill this host's available memory in ~30 min (at most 32 MiB/s).

    Sooner than the demo's 45 min: the predicted OOM then fits the shortest window
    (24 s x 100), which leaves margin on a busy 2-core machine.
    """
    rate = min(32 << 20, psutil.virtual_memory().available / 1800)
    return int(rate * STEP_TIME_S)


def torchrun(run_dir: Path, *, leak: bool, socket: Path | None) -> subprocess.CompletedProcess[str]:
    """The demo's job on 2 CPU ranks under torchrun --max-restarts 1; rank 1 leaks if ``leak``."""
    launcher = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    job = [
        "--steps",
        str(STEPS),
        "--checkpoint-dir",
        str(run_dir / "checkpoints"),
        "--out",
        str(run_dir / "final.pt"),
        "--report-every",
        "400",
    ]
    if leak:
        job += [
            "--leak-bytes-per-step",
            str(leak_bytes_per_step()),
            "--leak-rank",
            "1",
            "--step-time",
            str(STEP_TIME_S),
        ]
    if socket is not None:
        job += ["--socket", str(socket)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPU_WATCHDOG_")}
    return subprocess.run(
        [
            launcher,
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
            "-m",
            "watchdog.demo.train",
            *job,
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
        check=False,
    )


def events(stdout: str) -> list[dict[str, object]]:
    """The job's JSON events, from both ranks (their lines may interleave in the shared pipe)."""
    return [json.loads(text) for text in re.findall(r'\{"event"[^{}]*\}', stdout)]


def test_leak_in_one_rank_restarts_both_and_nothing_is_lost(short_dir):
    """Rank 1 leaks; both ranks checkpoint at one step, exit 75, come back, end as a clean run."""
    run_dir = short_dir / "run"
    run_dir.mkdir()
    daemon, _url = start_daemon(run_dir)
    try:
        result = torchrun(run_dir, leak=True, socket=run_dir / "watchdog.sock")
    finally:
        stop_group(daemon)
    output = result.stdout + result.stderr[-3000:]
    assert result.returncode == 0, output
    seen = events(result.stdout)
    starts = [e for e in seen if e["event"] == "start"]
    assert sorted((e["rank"], e["resumed_from"] is None) for e in starts) == [
        (0, False),
        (0, True),
        (1, False),
        (1, True),
    ], output
    leaking_pid = next(e["pid"] for e in starts if e["rank"] == 1 and e["resumed_from"] is None)
    restarts = [e for e in seen if e["event"] == "restart"]
    assert sorted(e["rank"] for e in restarts) == [0, 1], output
    assert len({e["step"] for e in restarts}) == 1, output  # the same step on both ranks
    done = [e for e in seen if e["event"] == "done"]
    assert sorted((e["rank"], e["step"]) for e in done) == [(0, STEPS), (1, STEPS)], output
    entries = [
        json.loads(line) for line in (run_dir / "state" / "journal.jsonl").read_text().splitlines()
    ]
    raised = [e for e in entries if e["type"] == "finding" and e["state"] == "raised"]
    assert [(e["kind"], e["pid"]) for e in raised][:1] == [("leak", leaking_pid)], raised
    answered = [
        e for e in entries if e["type"] == "result" and e["action"] == "checkpoint_and_restart"
    ]
    assert len(answered) == 2, entries
    assert all(e["ok"] for e in answered), answered
    clean_dir = short_dir / "clean"
    clean = torchrun(clean_dir, leak=False, socket=None)
    assert clean.returncode == 0, clean.stderr[-3000:]
    leaky_weights = torch.load(run_dir / "final.pt")
    clean_weights = torch.load(clean_dir / "final.pt")
    assert leaky_weights["step"] == clean_weights["step"] == STEPS
    for name, tensor in clean_weights["model"].items():
        assert torch.equal(leaky_weights["model"][name], tensor), name
