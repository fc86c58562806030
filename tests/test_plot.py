"""``replay --plot``: a PNG when matplotlib is there, one clear line when it is not."""

from __future__ import annotations

import builtins
import math
from pathlib import Path
from typing import Any

import pytest

from watchdog.cli import main
from watchdog.trace import TraceWriter

GIB = 1 << 30
MIB = 1 << 20


def write_trace(path: Path) -> None:
    """Two processes on one GPU, one leaking until the OOM."""
    total = 16 * GIB
    with path.open("w", newline="") as stream:
        writer = TraceWriter(stream)
        for step in range(0, 4 * 3600, 5):
            t = float(step)
            a = int(3 * GIB * (1 - math.exp(-t / 60)))
            b = int(3 * GIB * (1 - math.exp(-t / 60)) + max(0.0, t - 1200) * MIB)
            if a + b >= total:
                break
            writer.device(t, 0, a + b + 300 * MIB, total)
            writer.process(t, 0, 11, a)
            writer.process(t, 0, 22, b)


def test_plot_writes_a_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--plot writes a PNG of the trace and its detections."""
    pytest.importorskip("matplotlib")
    trace, png = tmp_path / "t.csv", tmp_path / "out.png"
    write_trace(trace)
    assert main(["replay", str(trace), "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "plot written" in capsys.readouterr().out


def test_plot_with_json_keeps_stdout_pure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json --plot prints only JSON lines."""
    pytest.importorskip("matplotlib")
    trace, png = tmp_path / "t.csv", tmp_path / "out.png"
    write_trace(trace)
    assert main(["replay", str(trace), "--json", "--plot", str(png)]) == 0
    assert all(line.startswith("{") for line in capsys.readouterr().out.splitlines())
    assert png.exists()


def test_a_format_matplotlib_cannot_write_is_refused_before_the_replay(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--plot out.txt is one line naming the formats (exit 2), with nothing printed first."""
    pytest.importorskip("matplotlib")
    trace = tmp_path / "t.csv"
    write_trace(trace)
    assert main(["replay", str(trace), "--plot", str(tmp_path / "out.txt")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1
    assert "cannot write .txt files; use one of" in captured.err
    assert ".png" in captured.err
    assert main(["replay", str(trace), "--plot", str(tmp_path / "out.SVG")]) == 0


def test_missing_matplotlib_is_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without matplotlib, --plot fails with one line saying how to install it (exit 2)."""
    real_import = builtins.__import__

    def no_matplotlib(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    trace = tmp_path / "t.csv"
    write_trace(trace)
    assert main(["replay", str(trace), "--plot", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "matplotlib" in err
    assert "[plot]" in err


def test_decisions_are_marked_and_suppressed_ones_are_not() -> None:
    """Each sent or dry-run decision gets a line and a labelled marker; suppressed ones none."""
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from watchdog.plot import _draw_decisions
    from watchdog.policy.engine import Decision

    def decision(t: float, action: str, outcome: str) -> Decision:
        return Decision(t, t, action, "pid:1", 0, 1, "leak", "process", outcome, "ladder")

    figure, axis = plt.subplots()
    axis.plot([0, 100], [0, 10])
    _draw_decisions(
        axis,
        [
            decision(10, "dump_snapshot", "send"),
            decision(20, "checkpoint_and_restart", "dry_run"),
            decision(30, "empty_cache", "suppressed"),
        ],
        scale=1.0,
    )
    labels = [text.get_text() for text in axis.get_legend().get_texts()]
    assert "dump_snapshot" in labels
    assert "checkpoint_and_restart (dry run)" in labels
    assert "empty_cache" not in labels
    plt.close(figure)


@pytest.mark.parametrize("name", ["out", "", "folder", "missing/out.png"])
def test_a_plot_path_that_would_not_be_written_as_named_is_refused_first(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    name: str,
) -> None:
    """No suffix (matplotlib would add .png), a directory, a missing folder: one line, exit 2,
    before anything is printed; and no file appears elsewhere."""
    pytest.importorskip("matplotlib")
    trace = tmp_path / "t.csv"
    write_trace(trace)
    (tmp_path / "folder").mkdir()
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["replay", str(trace), "--plot", name]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1, captured.err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_predicted_oom_past_the_trace_s_end_is_on_the_plot(tmp_path: Path) -> None:
    """The x axis reaches the OOM a leak raised near the end predicts (the mark is drawn)."""
    plt = pytest.importorskip("matplotlib.pyplot")
    from watchdog.config import DetectionSettings
    from watchdog.detectors.events import LEAK, RAISED
    from watchdog.detectors.replay import replay_file
    from watchdog.plot import _draw_gpu

    full, cut = tmp_path / "full.csv", tmp_path / "cut.csv"
    write_trace(full)
    rows = full.read_text().splitlines()
    cut.write_text("\n".join(rows[: len(rows) * 3 // 5]) + "\n")  # stops well before the OOM
    result = replay_file(cut, DetectionSettings(), record=True)
    ooms = [
        e.t + e.time_to_oom_s
        for e in result.events
        if e.kind == LEAK and e.state == RAISED and e.time_to_oom_s is not None
    ]
    assert ooms
    assert max(ooms) > result.duration_s
    figure, axis = plt.subplots()
    try:
        _draw_gpu(axis, result, 0, 60.0, result.duration_s)
        assert axis.get_xlim()[1] >= min(max(ooms), 2 * result.duration_s) / 60.0
    finally:
        plt.close(figure)


def test_a_plot_that_fails_part_way_leaves_the_old_image_as_it_was(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk part-way through the new image: one line, exit 2, the old file whole."""
    matplotlib = pytest.importorskip("matplotlib")
    trace, png = tmp_path / "t.csv", tmp_path / "out.png"
    write_trace(trace)
    png.write_bytes(b"the old image")
    real_savefig = matplotlib.figure.Figure.savefig

    def full_disk(self: Any, fname: Any, **kwargs: Any) -> None:
        real_savefig(self, fname, **kwargs)
        with open(fname, "r+b") as half:  # what a write cut short leaves
            half.truncate(100)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full_disk)
    assert main(["replay", str(trace), "--plot", str(png)]) == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith(f"--plot {png}: cannot write: No space left on device")
    )
    assert png.read_bytes() == b"the old image"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png", "t.csv"]
