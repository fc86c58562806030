"""The demo's pieces that need no daemon: display, leak sizing, command-line checks."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
from conftest import REPO

from watchdog.cli import build_parser
from watchdog.commands.demo import options_from
from watchdog.demo.display import Display, minutes, sparkline
from watchdog.demo.runner import (
    MAX_LEAK_RATE,
    MIN_LEAK_RATE,
    Demo,
    DemoOptions,
    leak_rate_for,
)

GIB = 1 << 30


def _demo_args(argv):
    return build_parser().parse_args(["demo", *argv])


def test_sparkline_scales_from_lowest_to_highest():
    """The lowest value is the lowest bar and the highest the highest."""
    assert sparkline([1, 2, 3, 4, 5, 6, 7, 8]) == "▁▂▃▄▅▆▇█"
    assert sparkline([]) == ""
    assert sparkline([5, 5]) == "▁▁"


def test_sparkline_keeps_the_last_values():
    """Only the newest ``width`` values are drawn."""
    assert len(sparkline(list(range(100)), width=10)) == 10


def test_leak_is_sized_to_the_host_within_bounds():
    """The leak fills available memory in ~45 minutes, clamped to 2-32 MiB/s."""
    assert leak_rate_for(20 * GIB) == pytest.approx(20 * GIB / 2700)
    assert leak_rate_for(1 * GIB) == MIN_LEAK_RATE
    assert leak_rate_for(1024 * GIB) == MAX_LEAK_RATE


def test_minutes_reads_naturally():
    """Durations are shown in seconds, minutes or hours."""
    assert minutes(30) == "30 s"
    assert minutes(2640) == "44 min"
    assert minutes(10800) == "3.0 h"


def test_plain_display_prints_status_lines_at_intervals():
    """Off a terminal the memory line is printed every few seconds, not redrawn."""
    now = [0.0]
    out = io.StringIO()
    display = Display(out, live=False, clock=lambda: now[0], plain_every_s=5)
    display.status("a")
    now[0] = 1.0
    display.status("b")
    now[0] = 6.0
    display.status("c")
    lines = out.getvalue().splitlines()
    assert [line.split()[-1] for line in lines] == ["a", "c"]
    assert "\r" not in out.getvalue()


def test_live_display_redraws_the_status_line():
    """On a terminal the memory line is redrawn in place and cleared before an event."""
    out = io.StringIO()
    display = Display(out, live=True)
    display.status("rss 1")
    display.status("rss 2")
    display.event("train", "started")
    text = out.getvalue()
    assert text.count("\r\033[K") == 3
    assert text.endswith("train    started\n")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--steps", "5"], "--steps"),
        (["--listen", "nowhere"], "--listen"),
        (["--leak-rate", "0"], "--leak-rate"),
        (["--bogus"], "unrecognized"),
    ],
)
def test_bad_demo_arguments_exit_2_with_one_line(args, message):
    """Bad input to ``gpu-watchdog demo`` is one line on stderr and exit status 2."""
    result = subprocess.run(
        [sys.executable, "-m", "watchdog", "demo", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stdout == ""


def test_a_run_dir_that_cannot_be_made_is_one_line(tmp_path):
    """--dir naming a file, a folder under a file, or a full folder: exit 2, one line."""
    pytest.importorskip("torch")  # checked first: without it no folder is made at all
    afile = tmp_path / "afile"
    afile.write_text("")
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("")
    cases = [
        (afile, f"--dir: {afile} is not a directory"),
        (afile / "sub", f"--dir: cannot create {afile / 'sub'}: a part of it is a file"),
        (full, f"--dir: {full} is not empty"),
    ]
    for run_dir, message in cases:
        result = subprocess.run(
            [sys.executable, "-m", "watchdog", "demo", "--steps", "200", "--dir", str(run_dir)],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=60,
        )
        assert result.returncode == 2
        assert result.stderr.strip().endswith(message)
        assert "Traceback" not in result.stderr
    fresh = tmp_path / "a" / "b"
    assert options_from(_demo_args(["--steps", "200", "--dir", str(fresh)])).run_dir == fresh
    assert fresh.is_dir()


@pytest.mark.parametrize(("loss", "said"), [(0.01234, "final loss 0.0123"), (None, "no step left")])
def test_the_end_of_training_is_shown_with_or_without_a_last_step(tmp_path, loss, said):
    """A job restarted on its last step resumes with no step to run and no loss to report."""
    out = io.StringIO()
    demo = Demo(DemoOptions(run_dir=tmp_path), Display(out, live=False))
    demo._show_event({"event": "done", "step": 200, "loss": loss, "out": "final.pt"})
    assert out.getvalue().rstrip().endswith(f"finished at step 200, {said}")
    assert demo.result.final_step == 200
