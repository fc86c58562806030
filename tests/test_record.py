"""``gpu-watchdog record`` when the disk fills: the file ends on whole rows, one-line error."""

from __future__ import annotations

import errno
import os
import resource
import subprocess
from pathlib import Path

import pytest

from tests.conftest import PYTHON
from watchdog.commands.record import WholeRows
from watchdog.trace import TraceWriter, read_trace

LIMIT_BYTES = 4096


def _cli(
    *args: str, env: dict[str, str], limit: int | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the CLI; ``limit``: the largest file it may write (RLIMIT_FSIZE), in bytes."""

    def limit_file_size() -> None:
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run(
        [PYTHON, "-m", "watchdog", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        preexec_fn=limit_file_size,
    )


def _failing_after(budget: int) -> object:
    """An ``os.write`` that writes ``budget`` bytes in all, then fails as a full disk does."""
    real_write = os.write
    left = [budget]

    def write(fd: int, data: bytes) -> int:
        if left[0] <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written = real_write(fd, data[: left[0]])
        left[0] -= written
        return written

    return write


def test_a_write_cut_short_leaves_the_rows_written_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills part-way through a poll: the file is cut back to the poll before it."""
    path = tmp_path / "run.csv"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    sink = WholeRows(fd)
    writer = TraceWriter(sink)
    for t in range(3):
        writer.device(t, 0, 1000 + t, 10_000)
        writer.process(t, 0, 77, 500 + t)
        sink.flush()
    whole = path.read_bytes()
    monkeypatch.setattr(os, "write", _failing_after(20))  # part of the next poll's rows
    writer.device(3, 0, 1003, 10_000)
    writer.process(3, 0, 77, 503)
    with pytest.raises(OSError, match="No space left"):
        sink.flush()
    os.close(fd)
    assert path.read_bytes() == whole
    assert (sink.rows, sink.last_t) == (6, "2")
    assert [row.t for row in read_trace(path)] == [0, 0, 1, 1, 2, 2]


def test_a_recording_past_the_file_size_limit_ends_on_whole_rows(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    """A real write error (RLIMIT_FSIZE): one line, exit 1, and the file replays."""
    config = tmp_path / "fast.toml"
    config.write_text("[sources]\ndevice_interval_s = 0.05\nprocess_interval_s = 0.1\n")
    played = tmp_path / "played.csv"
    with played.open("w") as stream:  # 8 GPUs, 3 processes each: about 1 kB a second
        writer = TraceWriter(stream)
        for t in range(600):
            for gpu in range(8):
                writer.device(t, gpu, 2000 + t, 80_000)
                for k in range(3):
                    writer.process(t, gpu, 1000 + 10 * gpu + k, 500 + t)
    out = tmp_path / "run.csv"
    args = ["--out", str(out), "--duration", "30", "--config", str(config)]
    done = _cli(
        "record", *args, "--simulate", str(played), "--speed", "20", env=cli_env, limit=LIMIT_BYTES
    )
    assert done.returncode == 1, done.stderr
    message = done.stderr.strip()
    assert "\n" not in message
    assert "Traceback" not in message
    assert f"--out {out}: cannot write: File too large; the " in message
    assert "rows recorded before it (to t=" in message
    text = out.read_text()
    assert text.endswith("\n")
    assert len(text.encode()) <= LIMIT_BYTES
    rows = list(read_trace(out))
    assert f"the {len(rows)} rows" in message
    replayed = _cli("replay", str(out), env=cli_env)
    assert replayed.returncode == 0, replayed.stderr


def test_a_device_that_takes_nothing_is_one_line_and_no_row(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    """/dev/full: the first write fails; the message says nothing was recorded."""
    done = _cli(
        "record", "--out", "/dev/full", "--duration", "5", "--simulate", "leak", env=cli_env
    )
    assert done.returncode == 1
    assert done.stderr.strip().endswith(
        "--out /dev/full: cannot write: No space left on device; no row was recorded"
    )
