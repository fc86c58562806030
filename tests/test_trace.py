"""The trace format: parsing, validation with file and line, grouping and writing."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import pytest

from watchdog.detectors.replay import replay_file
from watchdog.trace import TraceError, TraceRow, TraceWriter, group_steps, read_trace

GOOD = """t,gpu,pid,used_bytes,total_bytes,comment
0,0,,100,1000,first
0,0,42,60,,
0,1,,200,2000,
1.5,0,,110,1000,
"""


def _trace(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "trace.csv"
    path.write_text(text)
    return path


def test_reads_device_and_process_rows_ignoring_extra_columns(tmp_path: Path) -> None:
    """Device rows have no pid and a total; process rows a pid and no total; extras are ignored."""
    rows = list(read_trace(_trace(tmp_path, GOOD)))
    assert rows == [
        TraceRow(0.0, 0, None, 100, 1000),
        TraceRow(0.0, 0, 42, 60, None),
        TraceRow(0.0, 1, None, 200, 2000),
        TraceRow(1.5, 0, None, 110, 1000),
    ]


def test_columns_may_come_in_any_order(tmp_path: Path) -> None:
    """The header, not the position, says which column is which."""
    rows = list(read_trace(_trace(tmp_path, "total_bytes,used_bytes,pid,gpu,t\n1000,5,,0,2\n")))
    assert rows == [TraceRow(2.0, 0, None, 5, 1000)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "trace.csv: empty file"),
        ("0,0,,1,2\n", "trace.csv:1: not a trace header"),
        (
            "t,gpu,pid,used_bytes,total_bytes,t\n0,0,,1,2,9\n",
            "trace.csv:1: column t given more than once",
        ),
        (
            "t,gpu,pid,used_bytes,total_bytes\n0,0,,x,2\n",
            "trace.csv:2: used_bytes is not a number: 'x'",
        ),
        ("t,gpu,pid,used_bytes,total_bytes\n0,0,,inf,9\n", "trace.csv:2: used_bytes is not a"),
        ("t,gpu,pid,used_bytes,total_bytes\n0,0,,nan,9\n", "trace.csv:2: used_bytes is not a"),
        (
            "t,gpu,pid,used_bytes,total_bytes\n0,0.5,,1,9\n",
            "trace.csv:2: gpu is not a whole number: '0.5'",
        ),
        (
            "t,gpu,pid,used_bytes,total_bytes\n0,0,,1,9\n0,0,7.5,1,\n",
            "trace.csv:3: pid is not a whole number: '7.5'",
        ),
        ("t,gpu,pid,used_bytes,total_bytes\n0,0,nan,1,nan\n", "trace.csv:2: a device row"),
        ("t,gpu,pid,used_bytes,total_bytes\nnan,0,,1,2\n", "trace.csv:2: t must be a finite"),
        (
            "t,gpu,pid,used_bytes,total_bytes\n0,0,,1,2\n5,0,,1,2\n4,0,,1,2\n",
            "trace.csv:4: t goes backwards",
        ),
        (
            "t,gpu,pid,used_bytes,total_bytes\n0,0,,1,\n",
            "trace.csv:2: a device row (pid empty) needs total_bytes",
        ),
        (
            "t,gpu,pid,used_bytes,total_bytes\n0,0,7,1,9\n",
            "trace.csv:2: a process row (pid set) must leave",
        ),
        ("t,gpu,pid,used_bytes,total_bytes\n0,-1,,1,9\n", "trace.csv:2: gpu must be >= 0"),
        ("t,gpu,pid,used_bytes,total_bytes\n0,0\n", "trace.csv:2: expected at least 5 columns"),
        (
            "t,gpu,pid,used_bytes,total_bytes\n0,0,,1,9\n0,1,,1,9\n0,0,,2,9\n",
            "trace.csv:4: a second row for gpu 0 at t=0",
        ),
        (
            "t,gpu,pid,used_bytes,total_bytes\n0,0,,1,9\n0,0,7,1,\n0,0,7,1,\n",
            "trace.csv:4: a second row for pid 7 on gpu 0 at t=0",
        ),
        (
            "t,gpu,pid,used_bytes,total_bytes\n0,0,,1," + "9" * 400 + "\n",
            "trace.csv:2: total_bytes must be at most 18446744073709551615",
        ),
        ("t,gpu,pid,used_bytes,total_bytes\n1e16,0,,1,9\n", "trace.csv:2: t must be under"),
        # Python reads these as numbers; no CSV writer writes them
        ("t,gpu,pid,used_bytes,total_bytes\n0,0,,1_0,99\n", "trace.csv:2: used_bytes is not"),
        ("t,gpu,pid,used_bytes,total_bytes\n1_0,0,,1,99\n", "trace.csv:2: t is not a number"),
        ("t,gpu,pid,used_bytes,total_bytes\n0,\u0661,,1,99\n", "trace.csv:2: gpu is not"),
        (
            "t,gpu,pid,used_bytes,total_bytes\n0,0,,1,9\n0,1,7,1,\n1,0,,1,9\n1,1,7,2,\n",
            "trace.csv:3: process rows on gpu 1, but no device row for gpu 1",
        ),
        (  # an unclosed quote would take the rows after it into one field
            't,gpu,pid,used_bytes,total_bytes,note\n0,0,,1,9,a\n1,0,,2,9,"oops\n2,0,,3,9,b\n',
            "trace.csv:3: a quoted field runs on over the next lines",
        ),
    ],
)
def test_malformed_trace_names_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    """Every malformed input is one TraceError naming the file and the line."""
    with pytest.raises(TraceError) as caught:
        list(read_trace(_trace(tmp_path, text)))
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_whole_numbers_written_as_decimals_are_read(tmp_path: Path) -> None:
    """pandas writes a column with empty cells as floats, numpy an empty cell as nan, and a
    script may compute memory as floats: a byte figure is rounded to the nearest byte."""
    text = (
        "t,gpu,pid,used_bytes,total_bytes\n"
        "0.0,0.0,,41943040000.0,85899345920.0\n"
        "0.0,0.0,31337.0,4.2e10,\n"
        "1.5,1,nan,100.5,2.0E3\n"
        "1.5,1,42,99.7,NaN\n"
    )
    assert list(read_trace(_trace(tmp_path, text))) == [
        TraceRow(0.0, 0, None, 41943040000, 85899345920),
        TraceRow(0.0, 0, 31337, 42000000000, None),
        TraceRow(1.5, 1, None, 100, 2000),  # to the nearest byte, half to even
        TraceRow(1.5, 1, 42, 100, None),
    ]


def test_the_same_gpu_and_pid_at_another_time_are_fine(tmp_path: Path) -> None:
    """Only a repeat within one sample is refused; and a spreadsheet's BOM is no problem."""
    text = "\ufefft,gpu,pid,used_bytes,total_bytes\n0,0,,1,9\n0,0,7,1,\n1,0,,1,9\n1,0,7,1,\n"
    assert len(list(read_trace(_trace(tmp_path, text)))) == 4


def test_a_gpu_s_device_rows_may_start_after_its_first_process_row(tmp_path: Path) -> None:
    """Within one sample, or a GPU whose device rows begin later: the trace is whole."""
    text = "t,gpu,pid,used_bytes,total_bytes\n0,1,7,1,\n0,0,,1,9\n1,1,7,2,\n1,1,,3,9\n"
    assert len(list(read_trace(_trace(tmp_path, text)))) == 4


def test_missing_and_binary_files_are_clear_errors(tmp_path: Path) -> None:
    """A missing file and a binary file are TraceErrors, not tracebacks."""
    with pytest.raises(TraceError, match="cannot open trace"):
        list(read_trace(tmp_path / "absent.csv"))
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\xff\xfe\x00\x01" * 100)
    with pytest.raises(TraceError, match=r"binary\.csv"):
        list(read_trace(binary))


def test_a_byte_that_is_not_utf8_is_named_by_its_line(tmp_path: Path) -> None:
    """A Latin-1 note in an extra column: the error says which line, as for any bad row."""
    path = tmp_path / "latin.csv"
    path.write_bytes(b"t,gpu,pid,used_bytes,total_bytes,note\n0,0,,1,9,ok\n1,0,,1,9,caf\xe9\n")
    for read in (lambda: list(read_trace(path)), lambda: replay_file(path)):
        with pytest.raises(TraceError) as caught:
            read()
        assert str(caught.value).startswith(f"{path}:3: not a text file (not UTF-8")


def test_a_gzip_trace_reads_like_the_plain_one_whatever_its_name(tmp_path: Path) -> None:
    """Compressed by its first bytes, not its name: a .csv.gz, or a .csv that is gzip."""
    plain = _trace(tmp_path, GOOD)
    for name in ("trace.csv.gz", "gzipped.csv"):
        packed = tmp_path / name
        packed.write_bytes(gzip.compress(GOOD.encode()))
        assert list(read_trace(packed)) == list(read_trace(plain))
        assert replay_file(packed).recording == replay_file(plain).recording


def test_a_gzip_trace_cut_short_or_not_text_is_a_clear_error(tmp_path: Path) -> None:
    """A download cut short: its rows up to the cut are not replayed as the whole trace."""
    rows = "".join(f"{t},0,,{100 + t % 7},1000\n" for t in range(5000))
    whole = gzip.compress(("t,gpu,pid,used_bytes,total_bytes\n" + rows).encode())
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    latin = tmp_path / "latin.csv.gz"
    latin.write_bytes(
        gzip.compress(b"t,gpu,pid,used_bytes,total_bytes\n0,0,,1,9\n1,0,,caf\xe9,9\n")
    )
    for read in (lambda path: list(read_trace(path)), replay_file):
        with pytest.raises(TraceError, match=r"cut\.csv\.gz: cannot read trace: Compressed file"):
            read(cut)
        with pytest.raises(TraceError, match=r"latin\.csv\.gz:3: not a text file"):
            read(latin)


def test_group_steps_splits_devices_and_processes(tmp_path: Path) -> None:
    """Rows sharing a timestamp form one step, with device and process rows apart."""
    steps = list(group_steps(read_trace(_trace(tmp_path, GOOD))))
    assert [(s.t, len(s.devices), len(s.processes)) for s in steps] == [(0.0, 2, 1), (1.5, 1, 0)]


def test_writer_output_reads_back_identically() -> None:
    """What TraceWriter writes, read_rows reads back unchanged."""
    stream = io.StringIO()
    writer = TraceWriter(stream)
    writer.device(0, 0, 100, 1000)
    writer.process(0, 0, 42, 60)
    writer.device(0.25, 0, 120, 1000)
    stream.seek(0)
    from watchdog.trace import read_rows

    assert list(read_rows(stream, "mem")) == [
        TraceRow(0.0, 0, None, 100, 1000),
        TraceRow(0.0, 0, 42, 60, None),
        TraceRow(0.25, 0, None, 120, 1000),
    ]
