"""The trace format shared by ``record``, ``--simulate`` and ``replay``.

A trace is CSV with the header ``t,gpu,pid,used_bytes,total_bytes`` (more
columns are allowed and ignored, in any order). A device row has an empty
``pid`` and ``total_bytes`` set; a process row has ``pid`` set and
``total_bytes`` empty. ``t`` is seconds from the start of the trace and never
goes backwards. Figures may be written as decimals (pandas, numpy), and a
file may be gzip-compressed. docs/traces.md is the user-facing description.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any, NamedTuple, Protocol

from watchdog.errors import UsageError

COLUMNS = ("t", "gpu", "pid", "used_bytes", "total_bytes")
MAX_BYTES = (1 << 64) - 1
"""The largest memory figure a trace may hold: NVML's own are 64-bit."""
MAX_T = 1e12
"""Trace time stays under this (31,700 years): past it, adding a poll interval to a
time no longer moves it, and a replay could not step through the trace."""
BOM = "\ufeff"
"""What a spreadsheet's "CSV UTF-8" puts before the header."""


class TraceError(UsageError, ValueError):
    """A trace file that cannot be read; the message names the file and line."""


class TraceRow(NamedTuple):
    """One row of a trace: a device sample when ``pid`` is None, else a process sample."""

    t: float
    gpu: int
    pid: int | None
    used_bytes: int
    total_bytes: int | None


class TraceStep(NamedTuple):
    """All rows that share one timestamp."""

    t: float
    devices: list[TraceRow]
    processes: list[TraceRow]


def whole_number(text: str) -> int:
    """``text`` as an integer, written as one ("3") or as a decimal ("3.0", "3e0").

    pandas writes an integer column that has empty cells (``pid`` on device rows,
    ``total_bytes`` on process rows) as floats. Raise ValueError for anything else.
    """
    try:
        return int(text)
    except ValueError:
        value = float(text)
        if not value.is_integer():  # also NaN and infinities
            raise ValueError(text) from None
        return int(value)


def nearest_byte(text: str) -> int:
    """``text`` as a byte count, a decimal rounded to the nearest byte.

    A synthetic trace may compute memory as floats ("41943040000.7"). Raise
    ValueError for anything that is not a finite number.
    """
    try:
        return int(text)
    except ValueError:
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(text) from None
        return round(value)


def plain_number(text: str) -> bool:
    """Whether ``text`` may be a number of a trace: ASCII, with no ``_``.

    Python's ``int`` and ``float`` also read ``1_000`` and the digits of other
    scripts (Arabic-Indic ones, say), which no CSV writer puts in a number and
    no other reader of the file would take for one.
    """
    return text.isascii() and "_" not in text


def _parse_int(
    text: str, column: str, minimum: int, maximum: int = MAX_BYTES, *, whole: bool = False
) -> int:
    try:
        if not plain_number(text):
            raise ValueError(text)
        value = whole_number(text) if whole else nearest_byte(text)
    except ValueError:
        what = "a whole number" if whole else "a number"
        raise ValueError(f"{column} is not {what}: {text[:40]!r}") from None
    if value < minimum:
        raise ValueError(f"{column} must be >= {minimum}, got {value}")
    if value > maximum:
        raise ValueError(f"{column} must be at most {maximum}, got {text[:40]}")
    return value


def _blank_if_nan(text: str) -> str:
    # numpy writes an empty cell of a float column as "nan".
    return "" if text.lower() == "nan" else text


def _parse_row(fields: list[str], index: tuple[int, ...]) -> TraceRow:
    try:
        t_text, gpu_text, pid_text, used_text, total_text = (fields[i].strip() for i in index)
    except IndexError:
        raise ValueError(f"expected at least {max(index) + 1} columns, got {len(fields)}") from None
    try:
        if not plain_number(t_text):
            raise ValueError(t_text)
        t = float(t_text)
    except ValueError:
        raise ValueError(f"t is not a number: {t_text[:40]!r}") from None
    if not math.isfinite(t) or t < 0:
        raise ValueError(f"t must be a finite number >= 0, got {t_text!r}")
    if t >= MAX_T:
        raise ValueError(f"t must be under {MAX_T:g} seconds, got {t_text!r}")
    pid_text, total_text = _blank_if_nan(pid_text), _blank_if_nan(total_text)
    gpu = _parse_int(gpu_text, "gpu", 0, whole=True)
    used = _parse_int(used_text, "used_bytes", 0)
    if pid_text:
        if total_text:
            raise ValueError("a process row (pid set) must leave total_bytes empty")
        return TraceRow(t, gpu, _parse_int(pid_text, "pid", 1, whole=True), used, None)
    if not total_text:
        raise ValueError("a device row (pid empty) needs total_bytes")
    return TraceRow(t, gpu, None, used, _parse_int(total_text, "total_bytes", 1))


def _header_index(reader: Any, name: str) -> tuple[int, ...]:
    """Where each of ``COLUMNS`` is in the header, read from ``reader``."""
    try:
        header = next(reader)
    except StopIteration:
        raise TraceError(f"{name}: empty file, expected the header {','.join(COLUMNS)}") from None
    except csv.Error as exc:
        raise TraceError(f"{name}:1: {exc}") from None
    columns = [column.strip() for column in header]
    if columns:
        columns[0] = columns[0].removeprefix(BOM).strip()
    missing = [column for column in COLUMNS if column not in columns]
    if missing:
        raise TraceError(
            f"{name}:1: not a trace header (missing {', '.join(missing)}); "
            f"expected {','.join(COLUMNS)}"
        )
    twice = sorted({column for column in COLUMNS if columns.count(column) > 1})
    if twice:
        # Which of two `t` columns is the time? Guessing could replay another trace.
        raise TraceError(f"{name}:1: column {', '.join(twice)} given more than once")
    return tuple(columns.index(column) for column in COLUMNS)


def read_rows(stream: IO[str], name: str) -> Iterator[TraceRow]:
    """Yield validated rows from an open trace; raise TraceError naming ``name`` and the line."""
    reader = csv.reader(stream)
    index = _header_index(reader, name)
    previous_t = 0.0
    line = 1
    seen: set[tuple[int, int | None]] = set()  # (gpu, pid) of the rows at ``previous_t``
    with_devices: set[int] = set()
    # gpu -> the line of its first process row, while it has no device row
    without_devices: dict[int, int] = {}
    try:
        for fields in reader:
            first_line, line = line + 1, reader.line_num
            if line != first_line:
                # An unclosed quote takes every line after it into one field: those rows
                # would be lost without a word.
                line = first_line
                raise ValueError(
                    "a quoted field runs on over the next lines (an unclosed quote?); "
                    "each row of a trace is one line"
                )
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue
            row = _parse_row(fields, index)
            if row.t < previous_t:
                raise ValueError(f"t goes backwards ({row.t:g} after {previous_t:g})")
            if row.t != previous_t:
                seen.clear()
            if (row.gpu, row.pid) in seen:
                # Two figures for one thing at one instant: whichever won, the other
                # would be lost without a word (a flat copy can hide a leak).
                what = f"gpu {row.gpu}" if row.pid is None else f"pid {row.pid} on gpu {row.gpu}"
                raise ValueError(f"a second row for {what} at t={fields[index[0]].strip()}")
            seen.add((row.gpu, row.pid))
            if row.pid is None:
                with_devices.add(row.gpu)
                without_devices.pop(row.gpu, None)
            elif row.gpu not in with_devices:
                without_devices.setdefault(row.gpu, line)
            previous_t = row.t
            yield row
    except (ValueError, csv.Error) as exc:
        raise TraceError(f"{name}:{line}: {exc}") from None
    if without_devices:
        # A process's memory is judged against its GPU's: without one, a leak on it
        # would be replayed as no finding at all.
        gpu, first = min(without_devices.items(), key=lambda item: item[1])
        raise TraceError(
            f"{name}:{first}: process rows on gpu {gpu}, but no device row for gpu {gpu} "
            "anywhere in the trace"
        )


GZIP_MAGIC = b"\x1f\x8b"
READ_ERRORS = (OSError, EOFError, zlib.error)
"""What reading a trace may raise besides its text: a disk error, or a gzip file cut short
or corrupt (``unreadable`` turns them into a TraceError)."""


def _is_gzip(path: str | Path) -> bool:
    with open(path, "rb") as probe:
        return probe.read(2) == GZIP_MAGIC


def _open_binary(path: str | Path) -> io.BufferedIOBase:
    return gzip.open(path, "rb") if _is_gzip(path) else open(path, "rb")


def open_trace(path: str | Path, newline: str | None = "") -> IO[str]:
    """Open the trace at ``path`` as text, gunzipping it if it is gzip (its first bytes say
    so, whatever its name). Raise TraceError if it cannot be opened."""
    try:
        if _is_gzip(path):
            return gzip.open(path, "rt", encoding="utf-8-sig", newline=newline)
        return open(path, encoding="utf-8-sig", newline=newline)
    except OSError as exc:
        raise TraceError(f"{path}: cannot open trace: {exc.strerror or exc}") from None


def read_trace(path: str | Path) -> Iterator[TraceRow]:
    """Yield the rows of the trace file at ``path`` (plain or gzip); errors name the file and
    line."""
    with open_trace(path) as stream:
        try:
            yield from read_rows(stream, str(path))
        except UnicodeDecodeError as exc:
            raise not_text(path, exc) from None
        except READ_ERRORS as exc:
            raise unreadable(path, exc) from None


def unreadable(path: str | Path, exc: BaseException) -> TraceError:
    """The error for a trace that failed while being read (a disk error, a gzip file cut
    short or corrupt)."""
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return TraceError(f"{path}: cannot read trace: {reason}")


def not_text(path: str | Path, exc: UnicodeDecodeError) -> TraceError:
    """The error for a trace that is not UTF-8, naming the first line that is not."""
    try:
        with _open_binary(path) as stream:
            line = next((n for n, raw in enumerate(stream, 1) if not _is_utf8(raw)), None)
    except READ_ERRORS:
        line = None
    where = f"{path}:{line}" if line is not None else str(path)
    return TraceError(f"{where}: not a text file (not UTF-8: {exc.reason})")


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def group_steps(rows: Iterable[TraceRow]) -> Iterator[TraceStep]:
    """Group consecutive rows with the same ``t`` into one step."""
    current: TraceStep | None = None
    for row in rows:
        if current is None or row.t != current.t:
            if current is not None:
                yield current
            current = TraceStep(row.t, [], [])
        (current.devices if row.pid is None else current.processes).append(row)
    if current is not None:
        yield current


class TextSink(Protocol):
    """Where a ``TraceWriter`` writes: an open text file, or anything taking text."""

    def write(self, text: str, /) -> object:
        """Take one row of text."""


class TraceWriter:
    """Writes rows in the trace format to an open text stream."""

    def __init__(self, stream: TextSink) -> None:
        self._writer = csv.writer(stream, lineterminator="\n")
        self._writer.writerow(COLUMNS)

    def device(self, t: float, gpu: int, used_bytes: int, total_bytes: int) -> None:
        """Write one device row."""
        self._writer.writerow((_format_t(t), gpu, "", used_bytes, total_bytes))

    def process(self, t: float, gpu: int, pid: int, used_bytes: int) -> None:
        """Write one process row."""
        self._writer.writerow((_format_t(t), gpu, pid, used_bytes, ""))


def _format_t(t: float) -> str:
    return f"{t:.3f}".rstrip("0").rstrip(".") if t != int(t) else str(int(t))
