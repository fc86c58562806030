"""benchmarks/bench_replay.py keeps working, and its trace is what its options say."""

from __future__ import annotations

import itertools
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PYTHON, REPO

sys.path.insert(0, str(REPO / "benchmarks"))

from bench_replay import write_trace

from watchdog.detectors.replay import replay_file

BENCH = REPO / "benchmarks" / "bench_replay.py"


def test_a_short_run_prints_its_figures() -> None:
    """A few minutes of two GPUs, each run once: rows, both timings and the verdict line."""
    done = subprocess.run(
        [PYTHON, str(BENCH), "--hours", "0.05", "--gpus", "2", "--repeat", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode in (0, 1), done.stderr  # 1: under the target, on a busy machine
    assert "rows: " in done.stdout
    assert "device samples/s" in done.stdout
    assert "target 250,000 device samples/s: " in done.stdout


def test_leak_every_says_which_gpus_leak(tmp_path: Path) -> None:
    """``--leak-every 1``: the first job on every GPU leaks; by default every third GPU's."""
    for leak_every, leaking in ((1, {0, 1, 2}), (3, {0})):
        path = tmp_path / f"every{leak_every}.csv"
        write_trace(path, 3.0, 3, 5, 7, leak_every=leak_every)
        rates = {
            s.gpu: s.rate_bytes_per_s for s in replay_file(path).engine.status() if s.pid is None
        }
        assert {gpu for gpu, rate in rates.items() if rate > 0} == leaking


def test_sawtooth_saws_every_job_with_that_cycle(tmp_path: Path) -> None:
    """``--sawtooth 60``: every process's memory falls once a minute once warmed up."""
    path = tmp_path / "saw.csv"
    write_trace(path, 1.0, 2, 1, 7, sawtooth_s=60.0)
    series: dict[str, list[tuple[int, int]]] = {}
    for line in path.read_text().splitlines()[1:]:
        t, _, pid, used, _ = line.split(",")
        if pid:
            series.setdefault(pid, []).append((int(t), int(used)))
    assert len(series) == 3  # one job on GPU 0, two on GPU 1
    for samples in series.values():
        falls = [
            t for (_, before), (t, now) in itertools.pairwise(samples) if before - now > 256 << 20
        ]
        gaps = [b - a for a, b in itertools.pairwise(falls)]
        assert len(falls) >= 50
        assert statistics.median(gaps) == 60


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        (["--leak-every", "0"], "argument --leak-every: must be a finite number above 0, got 0"),
        (["--gpus", "x"], "argument --gpus: not a whole number: 'x'"),
        (["--hours", "nan"], "argument --hours: must be a finite number above 0, got nan"),
        (["--hours", "inf"], "argument --hours: must be a finite number above 0, got inf"),
        (["--trace", "/nonexistent/t.csv"], "--trace: not a file: /nonexistent/t.csv"),
        (["--sawtooth", "0"], "argument --sawtooth: must be a finite number above 0, got 0"),
    ],
)
def test_bad_arguments_are_one_line_errors(argument: list[str], message: str) -> None:
    """A bad option is a usage error naming it, not a traceback."""
    done = subprocess.run(
        [PYTHON, str(BENCH), *argument], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
