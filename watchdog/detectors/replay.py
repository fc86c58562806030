"""Feed a trace through the detection engine, fast.

The trace is parsed with ``str.split`` rather than the ``csv`` module and fed
to ``DetectionEngine.observe_step``, the call ``observe`` makes for a live
``Reading``. Anything the fast parser is not sure of (quotes, odd spacing,
a bad value) sends the whole file to ``watchdog.trace``, the reference
parser, which either reads it or raises a ``TraceError`` naming the file and
line. So the fast path never accepts what the reference parser rejects.

One step is all rows with the same ``t``. A step with process rows is a full
report of the processes (a pid missing from it has exited); a step without
any is "processes not polled at this instant".
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from watchdog.config import DetectionSettings
from watchdog.detectors.engine import DetectionEngine
from watchdog.detectors.events import Event
from watchdog.trace import (
    BOM,
    COLUMNS,
    MAX_BYTES,
    MAX_T,
    READ_ERRORS,
    group_steps,
    not_text,
    open_trace,
    read_rows,
    read_trace,
    unreadable,
)

SeriesKey = tuple[int, int | None]
"""(gpu, pid); pid None for the GPU itself."""


@dataclass
class Recording:
    """The samples of a replay kept for a plot: per series, times and values."""

    times: dict[SeriesKey, list[float]] = field(default_factory=dict)
    values: dict[SeriesKey, list[int]] = field(default_factory=dict)
    totals: dict[int, int] = field(default_factory=dict)

    def add(self, t: float, key: SeriesKey, value: int) -> None:
        """Keep one sample."""
        times = self.times.get(key)
        if times is None:
            times = self.times[key] = []
            self.values[key] = []
        times.append(t)
        self.values[key].append(value)


@dataclass
class ReplayResult:
    """What a replay found."""

    events: list[Event]
    steps: int = 0
    device_samples: int = 0
    process_samples: int = 0
    duration_s: float = 0.0
    engine: DetectionEngine | None = None
    recording: Recording | None = None


class _NotFast(Exception):
    """The fast parser is unsure of this line; the reference parser decides."""


class _NotIntegers(_NotFast):
    """A value that is not an integer: perhaps a decimal, which the lenient pass reads."""


_EXACT = float(1 << 53)
"""Integers up to here are exact as floats; the reference parser reads larger ones."""


def _whole(text: str) -> int:
    """``watchdog.trace.whole_number`` for the fast path (integers under 2^53)."""
    value = float(text)
    if value.is_integer() and -_EXACT < value < _EXACT:
        return int(value)
    raise ValueError(text)


def _byte(text: str) -> int:
    """``watchdog.trace.nearest_byte`` for the fast path (figures under 2^53)."""
    value = float(text)
    if 0.0 <= value < _EXACT:  # NaN fails both
        return round(value)
    raise ValueError(text)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector for a replay.

    A replay makes a tuple per row and a list per step, and reference counting
    frees every one of them; the collector's passes, which allocations that
    many set off, cost about a twentieth of the replay and find nothing. It
    runs again afterwards, as it was. The pause is process-wide: a replay is
    a batch tool (the CLI, the scorer), never part of the daemon.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def replay_file(
    path: str | Path, settings: DetectionSettings | None = None, record: bool = False
) -> ReplayResult:
    """Replay the trace file at ``path``; raise ``TraceError`` if it is malformed."""
    try:
        with open_trace(path, newline=None) as stream:  # \r\n read as \n, for str.split
            text = stream.read()
    except UnicodeDecodeError as exc:
        raise not_text(path, exc) from None
    except READ_ERRORS as exc:
        raise unreadable(path, exc) from None
    with _collector_paused():
        try:
            _require_plain(text, text.find("\n") + 1)
            return _replay_either(text.split("\n"), str(path), settings, record, plain=True)
        except _NotFast:
            return _replay_rows(read_trace(path), settings, record)


def replay_lines(
    lines: Sequence[str],
    name: str = "<trace>",
    settings: DetectionSettings | None = None,
    record: bool = False,
) -> ReplayResult:
    """Replay a trace given as lines of text (the header first)."""
    with _collector_paused():
        try:
            return _replay_either(lines, name, settings, record)
        except _NotFast:
            import io

            stream = io.StringIO("\n".join(lines) + "\n", newline="")
            return _replay_rows(read_rows(stream, name), settings, record)


def _require_plain(text: str, body_at: int) -> None:
    """Raise ``_NotFast`` unless every figure from ``body_at`` on may be a plain number
    (``plain_number``): the fast path's ``int`` and ``float`` would read ``1_000`` and
    other scripts' digits. Checked on the whole text at once, so an ``_`` in a column
    the replay ignores sends the trace to the reference parser too (slower, as sure)."""
    if not text.isascii() or text.find("_", body_at) >= 0:
        raise _NotFast


def _replay_either(
    lines: Sequence[str],
    name: str,
    settings: DetectionSettings | None,
    record: bool,
    plain: bool = False,
) -> ReplayResult:
    """The fast path for integers, then for decimals (a trace written by pandas or a
    script computing floats); raise ``_NotFast`` if neither is sure. ``plain``: the
    caller checked the text with ``_require_plain``."""
    if not plain:
        _require_plain("\n".join(lines[1:]), 0)
    try:
        return _replay_fast(lines, name, settings, record)
    except _NotIntegers:
        return _replay_fast(lines, name, settings, record, lenient=True)


def _replay_rows(
    rows: Iterable[object], settings: DetectionSettings | None, record: bool
) -> ReplayResult:
    """The reference path: rows from ``watchdog.trace``."""
    engine = DetectionEngine(settings)
    result = ReplayResult(events=[], engine=engine, recording=Recording() if record else None)
    for step in group_steps(rows):  # type: ignore[arg-type]
        devices = [(r.gpu, r.used_bytes, r.total_bytes or 0) for r in step.devices]
        processes = [(r.gpu, r.pid or 0, r.used_bytes) for r in step.processes]
        _feed(engine, result, step.t, devices, processes or None)
    return result


def _feed(
    engine: DetectionEngine,
    result: ReplayResult,
    t: float,
    devices: list[tuple[int, int, int]],
    processes: list[tuple[int, int, int]] | None,
) -> None:
    result.events += engine.observe_step(t, devices, processes)
    result.steps += 1
    result.device_samples += len(devices)
    result.process_samples += len(processes) if processes else 0
    result.duration_s = t
    recording = result.recording
    if recording is not None:
        for gpu, used, total in devices:
            recording.add(t, (gpu, None), used)
            recording.totals[gpu] = total
        for gpu, pid, used in processes or ():
            recording.add(t, (gpu, pid), used)


def _check_processes(
    processes: list[tuple[int, int, int]],
    devices: list[tuple[int, int, int]],
    with_devices: set[int],
) -> None:
    """A second row for one pid at one instant, or a process on a GPU with no device row
    so far (``with_devices``, updated): the reference parser names the line or decides."""
    if (
        len(processes) > 1
        # Distinct pids are distinct rows; only a pid on two GPUs needs its pairs counted.
        and len({pid for _, pid, _ in processes}) != len(processes)
        and len({(gpu, pid) for gpu, pid, _ in processes}) != len(processes)
    ):
        raise _NotFast
    for gpu, _, _ in processes:
        if gpu not in with_devices:
            with_devices.update(device[0] for device in devices)
            if gpu not in with_devices:
                raise _NotFast


def _header(line: str, name: str) -> tuple[int, ...]:
    if '"' in line or line.startswith(BOM):
        raise _NotFast
    columns = [column.strip() for column in line.split(",")]
    if any(columns.count(column) != 1 for column in COLUMNS):
        raise _NotFast  # a column missing or given twice: the reference parser says which
    return tuple(columns.index(column) for column in COLUMNS)


def _replay_fast(  # noqa: PLR0912, PLR0915 - one hot loop: each call split off costs throughput
    lines: Sequence[str],
    name: str,
    settings: DetectionSettings | None,
    record: bool,
    lenient: bool = False,
) -> ReplayResult:
    if not lines or not lines[0].strip():
        raise _NotFast
    index = _header(lines[0], name)
    # The builtin int when every figure is an integer, as recordings write them.
    as_whole: Callable[[str], int] = _whole if lenient else int
    as_bytes: Callable[[str], int] = _byte if lenient else int
    engine = DetectionEngine(settings)
    observe = engine.observe_step
    result = ReplayResult(events=[], engine=engine, recording=Recording() if record else None)
    events = result.events
    plain = index == (0, 1, 2, 3, 4)
    width = max(index) + 1
    it, ig, ip, iu, itot = index
    current = t = 0.0
    current_text: str | None = None
    devices: list[tuple[int, int, int]] = []
    processes: list[tuple[int, int, int]] = []
    steps = device_count = process_count = 0
    last_gpu = -1
    with_devices: set[int] = set()
    gpu_of: dict[str, int] = {}
    pid_of: dict[str, int] = {}
    total_of: dict[str, int] = {}
    try:
        for line in lines[1:] if isinstance(lines, list) else list(lines)[1:]:
            if not line:
                continue
            if plain:
                t_text, gpu_text, pid_text, used_text, total_text = line.split(",")
            else:
                fields = line.split(",")
                if len(fields) < width or '"' in line:
                    raise _NotFast
                t_text, gpu_text, pid_text, used_text, total_text = (
                    fields[it],
                    fields[ig],
                    fields[ip],
                    fields[iu],
                    fields[itot],
                )
            if t_text != current_text:
                t = float(t_text)
                current_text = t_text
                if t != current:  # not "1.0" after "1": the same instant
                    if not current <= t < MAX_T:
                        raise _NotFast
                    if devices or processes:
                        if processes:
                            _check_processes(processes, devices, with_devices)
                        if record:
                            _feed(engine, result, current, devices, processes or None)
                        else:
                            events += observe(current, devices, processes or None)
                            steps += 1
                            device_count += len(devices)
                            process_count += len(processes)
                        devices = []
                        processes = []
                        last_gpu = -1
                    current = t
            # GPU numbers, pids and totals repeat row after row: each text is read and
            # checked once (a bad one ends the fast path, so none is ever reused).
            gpu = gpu_of.get(gpu_text)
            if gpu is None:
                gpu = gpu_of[gpu_text] = as_whole(gpu_text)
                if not 0 <= gpu <= MAX_BYTES:
                    raise _NotFast
            used = as_bytes(used_text)
            if not 0 <= used <= MAX_BYTES:
                raise _NotFast
            if pid_text:
                pid = pid_of.get(pid_text)
                if pid is None:
                    pid = pid_of[pid_text] = as_whole(pid_text)
                    if not 1 <= pid <= MAX_BYTES:
                        raise _NotFast
                if total_text:
                    raise _NotFast
                processes.append((gpu, pid, used))
            else:
                total = total_of.get(total_text)
                if total is None:
                    total = total_of[total_text] = as_bytes(total_text)
                    if not 1 <= total <= MAX_BYTES:
                        raise _NotFast
                # GPUs in rising order, as recordings write them: none twice. Any other
                # order goes to the reference parser, which checks them one by one.
                if gpu <= last_gpu:
                    raise _NotFast
                last_gpu = gpu
                devices.append((gpu, used, total))
    except (ValueError, TypeError):
        raise (_NotFast if lenient else _NotIntegers) from None
    if devices or processes:
        _check_processes(processes, devices, with_devices)
        if record:
            _feed(engine, result, current, devices, processes or None)
        else:
            events += observe(current, devices, processes or None)
            steps += 1
            device_count += len(devices)
            process_count += len(processes)
    if not record:
        result.steps = steps
        result.device_samples = device_count
        result.process_samples = process_count
        result.duration_s = max(current, 0.0)
    return result
