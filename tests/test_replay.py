"""``gpu-watchdog replay``: output formats, errors, the fast parser, and replay == live."""

from __future__ import annotations

import gc
import itertools
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from watchdog.cli import main
from watchdog.detectors import DetectionEngine, Event
from watchdog.detectors.replay import replay_file, replay_lines
from watchdog.samples import DeviceSample, GpuProcessSample, Reading
from watchdog.trace import TraceError, TraceWriter, group_steps, read_trace

GIB = 1 << 30
MIB = 1 << 20
TOTAL = 24 * GIB
JSON_FIELDS = {"t", "kind", "state", "gpu", "pid", "rate_bytes_per_s", "time_to_oom_s", "message"}


def write_leak_trace(path: Path, leak_from: float = 1800.0) -> None:
    """A one-GPU, one-process trace that leaks from ``leak_from`` until it runs out."""
    with path.open("w", newline="") as stream:
        writer = TraceWriter(stream)
        for step in range(0, 6 * 3600, 2):
            t = float(step)
            used = int(6 * GIB * (1 - math.exp(-t / 60)) + max(0.0, t - leak_from) * 3 * MIB)
            used += (step * 7919 % 17) * MIB
            if used >= TOTAL:
                break
            writer.device(t, 0, used + 500 * MIB, TOTAL)
            if step % 10 == 0:
                writer.process(t, 0, 321, used)


@pytest.fixture
def leak_trace(tmp_path: Path) -> Path:
    """A trace with a leak."""
    path = tmp_path / "leak.csv"
    write_leak_trace(path)
    return path


def test_json_prints_one_object_per_event_and_nothing_else(
    leak_trace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json: every stdout line is a JSON event with the promised fields."""
    assert main(["replay", str(leak_trace), "--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    events = [json.loads(line) for line in lines]
    assert events
    assert all(set(e) >= JSON_FIELDS for e in events)
    assert {(e["kind"], e["state"], e["pid"]) for e in events} >= {
        ("leak", "raised", None),
        ("leak", "raised", 321),
    }
    assert all(isinstance(e["gpu"], int) for e in events)


def test_summary_is_readable(leak_trace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Without --json the output names the trace, each event and what is still active."""
    assert main(["replay", str(leak_trace)]) == 0
    out = capsys.readouterr().out
    assert str(leak_trace) in out
    assert "memory leak" in out
    assert "pid 321" in out
    assert "still active" in out


def test_healthy_trace_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A flat trace reports no findings and exits 0."""
    path = tmp_path / "flat.csv"
    path.write_text(
        "t,gpu,pid,used_bytes,total_bytes\n"
        + "".join(f"{t},0,,{8 * GIB},{TOTAL}\n" for t in range(0, 3600, 5))
    )
    assert main(["replay", str(path)]) == 0
    assert "no findings" in capsys.readouterr().out


def test_summary_counts_one_sample_in_the_singular(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "one.csv"
    path.write_text(f"t,gpu,pid,used_bytes,total_bytes\n0,0,,{8 * GIB},{TOTAL}\n")
    assert main(["replay", str(path)]) == 0
    assert f"{path}: 1 sample over 0:00:00 (h:mm:ss)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("body", "line"),
    [
        ("0,0,,100,200\n5,0,,abc,200\n", 3),
        ("10,0,,100,200\n5,0,,100,200\n", 3),
        ("0,0,,100,\n", 2),
        ("0,0,7,100,200\n", 2),
        ("nan,0,,100,200\n", 2),
        (",0,,100,200\n", 2),  # an empty t, which the fast parser once read as 0
        ("0,0,,100,200\n0,0,,100,200\n", 3),
        ("0,0,,100,200\n0,0,5,100,\n0,0,5,50,\n", 4),
        # one pid on two GPUs is two rows; on one of them twice, three
        ("0,0,,1,9\n0,1,,1,9\n0,0,5,1,\n0,1,5,1,\n0,0,5,2,\n", 6),
        ("0,0,," + "9" * 400 + ",200\n", 2),
        ("0,0,,100,200\n1e16,0,,100,200\n", 3),
        ("0,0,7,100,\n5,0,7,200,\n", 2),  # processes, and no GPU to judge them against
        ('0,0,,1,9\n1,0,,2,9,"oops\n2,0,,3,9\n3,0,,4,9,"\n', 3),  # an unclosed quote
        ("0,0,,100,200\n0,1,7,100,\n5,0,,100,200\n5,1,7,150,\n", 3),
        # past the largest number the reference parser takes, which the fast one once took
        ("0,0,,1,9\n0,18446744073709551616,,1,9\n", 3),
        ("0,0,,1,9\n0,0,18446744073709551616,1,\n", 3),
        ("0,0,,100,200\n5,0,,1_000,2000\n", 3),  # Python's int reads both of these
        ("0,0,,100,200\n5,0,,\u0661\u0660,2000\n", 3),
    ],
)
def test_malformed_trace_names_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], body: str, line: int
) -> None:
    """A bad value, time going backwards or a wrong row kind exits 2 naming file:line."""
    path = tmp_path / "bad.csv"
    path.write_text("t,gpu,pid,used_bytes,total_bytes\n" + body)
    assert main(["replay", str(path), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"{path}:{line}:" in captured.err
    assert len(captured.err.strip().splitlines()) == 1


def test_a_trace_with_no_rows_is_an_error_not_a_clean_bill(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A header and nothing else: exit 2, rather than "no findings" about nothing."""
    path = tmp_path / "empty.csv"
    path.write_text("t,gpu,pid,used_bytes,total_bytes\n\n")
    assert main(["replay", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip().endswith(
        f"{path}: no device rows after the header: nothing to replay"
    )


def test_missing_and_headerless_files_are_usage_errors(tmp_path: Path) -> None:
    """No file, or no header: TraceError (a UsageError) naming the file."""
    with pytest.raises(TraceError, match=r"missing\.csv"):
        replay_file(tmp_path / "missing.csv")
    bad = tmp_path / "nohead.csv"
    bad.write_text("1,2,3\n")
    with pytest.raises(TraceError, match=r"nohead.csv:1"):
        replay_file(bad)


def test_fast_parser_agrees_with_the_reference_parser(tmp_path: Path) -> None:
    """Odd but valid files (quotes, spaces, CRLF, extra columns) replay like plain ones."""
    plain = tmp_path / "plain.csv"
    write_leak_trace(plain)
    rows = plain.read_text().splitlines()
    odd = tmp_path / "odd.csv"
    header = "note,total_bytes,used_bytes,pid,gpu,t\r\n"
    body = []
    for i, row in enumerate(rows[1:]):
        t, gpu, pid, used, total = row.split(",")
        note = '"a, quoted note"' if i % 1000 == 0 else "x"
        body.append(f"{note},{total}, {used} ,{pid},{gpu},{t}\r\n")
    odd.write_text(header + "".join(body), newline="")
    expected = replay_file(plain).events
    assert expected
    assert replay_file(odd).events == expected


def test_a_trace_written_by_pandas_replays_fast_and_like_a_recording(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pandas writes its index as a first column, and ``pid`` and ``total_bytes`` (columns
    with empty cells) as floats: the same events, without falling back to the slow
    reference parser."""
    plain = tmp_path / "plain.csv"
    write_leak_trace(plain)
    rows = plain.read_text().splitlines()
    written = tmp_path / "pandas.csv"
    body = [",t,gpu,pid,used_bytes,total_bytes"]
    for i, row in enumerate(rows[1:]):
        t, gpu, pid, used, total = row.split(",")
        body.append(f"{i},{float(t)},{gpu},{pid and pid + '.0'},{used},{total and total + '.0'}")
    written.write_text("\n".join(body) + "\n")
    expected = replay_file(plain)
    assert expected.events

    def slow(path: object) -> None:
        raise AssertionError("the fast path gave up on a trace written by pandas")

    monkeypatch.setattr("watchdog.detectors.replay.read_trace", slow)
    replayed = replay_file(written)
    assert replayed.events == expected.events
    assert replayed.device_samples == expected.device_samples


def test_gpus_in_any_order_and_a_bom_replay_like_a_recording(tmp_path: Path) -> None:
    """GPU rows in falling order (left to the reference parser) and a BOM change nothing."""
    plain = tmp_path / "plain.csv"
    write_leak_trace(plain)
    rows = plain.read_text().splitlines()
    shuffled = [rows[0]]
    for t, group in itertools.groupby(rows[1:], key=lambda row: row.split(",")[0]):
        devices = [row for row in group if row.split(",")[2] == ""]
        devices += [row.replace(f"{t},0,,", f"{t},1,,", 1) for row in devices]
        shuffled += reversed(devices)
    both = tmp_path / "both.csv"
    both.write_text("\ufeff" + "\n".join(shuffled) + "\n")
    expected = replay_lines([shuffled[0], *sorted(shuffled[1:], key=_t_then_gpu)])

    def key(event: Event) -> tuple[float, int, str, str]:  # row order orders one instant's
        return event.t, event.gpu, event.kind, event.state

    assert sorted(replay_file(both).events, key=key) == sorted(expected.events, key=key)
    assert {e.gpu for e in expected.events} == {0, 1}


def _t_then_gpu(row: str) -> tuple[float, int]:
    t, gpu = row.split(",")[:2]
    return float(t), int(gpu)


def test_replay_equals_live_readings(leak_trace: Path) -> None:
    """Replaying the file decides exactly what the engine decides on Readings of the same data."""
    engine = DetectionEngine()
    live = []
    for step in group_steps(read_trace(leak_trace)):
        reading = Reading(
            t=step.t,
            origin="simulated",
            devices=[
                DeviceSample(gpu=r.gpu, total_bytes=r.total_bytes, used_bytes=r.used_bytes)
                for r in step.devices
            ],
            processes=[
                GpuProcessSample(gpu=r.gpu, pid=r.pid or 0, used_bytes=r.used_bytes)
                for r in step.processes
            ]
            or None,
        )
        live += engine.observe(reading)
    assert live
    assert replay_file(leak_trace).events == live


def test_replay_lines_matches_replay_file(leak_trace: Path) -> None:
    """The in-memory entry point used by the scorer gives the file's events."""
    lines = leak_trace.read_text().splitlines()
    assert replay_lines(lines).events == replay_file(leak_trace).events


def test_config_file_tunes_detection(leak_trace: Path, tmp_path: Path) -> None:
    """--config reads [detection]: an impossible minimum rise silences the leak."""
    config = tmp_path / "wd.toml"
    config.write_text("[detection]\nleak_min_rise_bytes = 1099511627776\n")
    args = ["replay", str(leak_trace), "--json", "--config", str(config)]
    out = subprocess.run(
        [sys.executable, "-m", "watchdog", *args], capture_output=True, text=True, check=True
    ).stdout
    assert not [line for line in out.splitlines() if '"kind":"leak"' in line]


def test_one_pid_on_two_gpus_replays_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A process with memory on two GPUs (one pid, two rows an instant) is a valid trace: the
    fast path reads it as the reference parser does, without giving up on it."""
    rows = ["t,gpu,pid,used_bytes,total_bytes"]
    for t in range(0, 600, 5):
        rows += [f"{t},0,,{2 << 30},{16 << 30}", f"{t},1,,{3 << 30},{16 << 30}"]
        rows += [f"{t},0,7,{1 << 30},", f"{t},1,7,{2 << 30},"]
    trace = tmp_path / "two.csv"
    trace.write_text("\n".join(rows) + "\n")

    def slow(path: object) -> None:
        raise AssertionError("the fast path gave up on one pid on two GPUs")

    monkeypatch.setattr("watchdog.detectors.replay.read_trace", slow)
    replayed = replay_file(trace)
    assert replayed.process_samples == 240
    assert replayed.engine is not None
    assert [(s.gpu, s.pid) for s in replayed.engine.status()] == [
        (0, None),
        (1, None),
        (0, 7),
        (1, 7),
    ]


@pytest.mark.parametrize("enabled", [True, False])
def test_replay_pauses_the_garbage_collector_and_sets_it_back(
    tmp_path: Path, leak_trace: Path, monkeypatch: pytest.MonkeyPatch, enabled: bool
) -> None:
    """The collector is paused while a replay runs and set back after it, also when the
    trace is malformed; one disabled by the caller stays disabled."""
    collecting: set[bool] = set()

    class Watched(DetectionEngine):
        def observe_step(self, *args: Any, **kwargs: Any) -> list[Event]:
            collecting.add(gc.isenabled())
            return super().observe_step(*args, **kwargs)

    monkeypatch.setattr("watchdog.detectors.replay.DetectionEngine", Watched)
    bad = tmp_path / "bad.csv"
    bad.write_text("t,gpu,pid,used_bytes,total_bytes\n0,0,,1,9\n1,0,,x,9\n")
    was = gc.isenabled()
    try:
        (gc.enable if enabled else gc.disable)()
        replay_file(leak_trace)
        assert collecting == {False}
        assert gc.isenabled() is enabled
        with pytest.raises(TraceError):
            replay_file(bad)
        assert gc.isenabled() is enabled
    finally:
        (gc.enable if was else gc.disable)()
