"""``gpu-watchdog record``: write live samples to a trace file."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import structlog

from watchdog.commands._common import (
    DriverHung,
    add_config_option,
    add_simulate_option,
    build_sources,
    call_within,
    load,
)
from watchdog.errors import UsageError, WatchdogError
from watchdog.samples import Reading
from watchdog.sources.base import Source
from watchdog.trace import TraceWriter

log = structlog.get_logger("watchdog.record")


def register(subparsers: Any) -> None:
    """Add the ``record`` subcommand."""
    parser = subparsers.add_parser(
        "record",
        help="record GPU memory to a trace file",
        description="Record device and process memory in the trace format (docs/traces.md).",
    )
    parser.add_argument(
        "--out", type=Path, required=True, metavar="FILE", help="trace file to write"
    )
    parser.add_argument(
        "--duration", type=float, metavar="S", help="seconds to record (default: until Ctrl-C)"
    )
    parser.add_argument(
        "--force", action="store_true", help="overwrite --out if it already holds a trace"
    )
    add_config_option(parser)
    add_simulate_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Record until ``--duration`` has passed or SIGINT/SIGTERM."""
    if args.duration is not None and not args.duration > 0:
        raise UsageError(f"--duration must be > 0, got {args.duration:g}")
    if args.out.suffix == ".gz":
        # A gzip stream cut short (a crash, a full disk) loses its readable rows too.
        raise UsageError(
            f"--out {args.out}: record writes plain CSV; name it .csv and gzip it afterwards"
        )
    if not args.force and args.out.is_file() and args.out.stat().st_size > 0:
        # A recording is often the only copy of what a job did: never replace one unasked.
        raise UsageError(f"--out {args.out}: file exists; remove it or pass --force to overwrite")
    config = load(args)
    # A hung driver call must not hang `record` too: three times what makes a poll stalled.
    deadline_s = 3 * config.sources.stall_after_s
    sources = call_within(
        lambda: build_sources(config, args.simulate, list), deadline_s, "the GPUs"
    )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the name
        sources.close()
        reason = getattr(exc, "strerror", None) or exc
        raise UsageError(f"--out {args.out}: cannot write: {reason}") from None
    sink = WholeRows(fd)
    try:
        writer = TraceWriter(sink)
        sink.flush()  # the header: a file that holds only it is still a trace
        rows = record(
            [s for s in sources.sources if s.name != "host"],
            writer,
            sink.flush,
            stop,
            args.duration,
            deadline_s=deadline_s,
        )
    except DriverHung as exc:  # not closed: NVML's shutdown would wait for the stuck call
        raise DriverHung(f"{exc}; the rows recorded before it are in {args.out}") from None
    except OSError as exc:
        sources.close()
        kept = (
            f"the {sink.rows} rows recorded before it (to t={sink.last_t}) are in {args.out}"
            if sink.rows
            else "no row was recorded"
        )
        reason = exc.strerror or exc
        raise WatchdogError(f"--out {args.out}: cannot write: {reason}; {kept}") from None
    except BaseException:
        sources.close()
        raise
    finally:
        # Rows of the sources polled before a hang or an interruption, still waiting.
        with contextlib.suppress(OSError):
            sink.flush()
        os.close(fd)
    sources.close()
    print(f"recorded {rows} rows to {args.out}")
    return 0


def record(
    sources: list[Source],
    writer: TraceWriter,
    flush: Any,
    stop: threading.Event,
    duration_s: float | None,
    clock: Any = time.monotonic,
    deadline_s: float | None = None,
) -> int:
    """Poll ``sources`` on their intervals into ``writer``; return the number of rows written.

    Raises:
        DriverHung: a poll took longer than ``deadline_s`` (None: wait for ever).
    """
    started = clock()
    due = dict.fromkeys(range(len(sources)), started)
    written_t: dict[int, float] = {}
    first_t: float | None = None
    last_t = 0.0
    rows = 0
    while not stop.is_set():
        now = clock()
        if duration_s is not None and now - started >= duration_s:
            break
        for index, source in enumerate(sources):
            if now < due[index]:
                continue
            due[index] = now + source.interval_s
            try:
                if deadline_s is None:
                    reading = source.poll()
                else:
                    reading = call_within(source.poll, deadline_s, source.name)
            except DriverHung:
                raise
            except Exception as exc:  # a failed poll is a gap in the trace, as in the daemon
                log.warning("poll_failed", source=source.name, error=str(exc))
                continue
            if first_t is None:
                first_t = reading.t
            # Trace time never goes backwards, even if two sources' clocks interleave.
            last_t = max(last_t, reading.t - first_t)
            if written_t.get(index, -1.0) >= last_t:
                continue  # nothing new (a simulated trace that ended): a row again is no sample
            written_t[index] = last_t
            rows += _write(writer, reading, last_t)
        flush()
        stop.wait(max(0.0, min(due.values()) - clock()))
    return rows


class WholeRows:
    """The text sink of a recording: it reaches the file a whole poll at a time.

    A full disk or a file size limit fails a write part-way through a row,
    and a file that ends in half a row is no trace. Rows wait here until
    ``flush`` (once a poll), which writes them or, failing, cuts the file
    back to the last poll written whole and raises the ``OSError``: a
    recording cut short still reads up to its last row.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._pending: list[str] = []
        self._size = 0
        self._lines = 0
        self.last_t = ""
        """The ``t`` of the newest row in the file, as written."""

    def write(self, text: str) -> int:
        """Take a row (``csv.writer`` calls this once per row)."""
        self._pending.append(text)
        return len(text)

    def flush(self) -> None:
        """Write the rows taken since the last flush, all of them or none."""
        if not self._pending:
            return
        data = "".join(self._pending).encode("utf-8")
        written = 0
        try:
            while written < len(data):
                written += os.write(self._fd, data[written:])
        except OSError:
            with contextlib.suppress(OSError):  # not a regular file (/dev/full): nothing to cut
                os.ftruncate(self._fd, self._size)
            raise
        finally:
            pending, self._pending = self._pending, []
        self._size += len(data)
        self._lines += len(pending)
        if self._lines > 1:  # more than the header
            self.last_t = pending[-1].split(",", 1)[0]

    @property
    def rows(self) -> int:
        """Rows in the file, the header not counted."""
        return max(0, self._lines - 1)


def _write(writer: TraceWriter, reading: Reading, t: float) -> int:
    rows = 0
    for device in reading.devices or ():
        if device.used_bytes is not None and device.total_bytes:
            writer.device(t, device.gpu, device.used_bytes, device.total_bytes)
            rows += 1
    for process in reading.processes or ():
        if process.used_bytes is not None:
            writer.process(t, process.gpu, process.pid, process.used_bytes)
            rows += 1
    return rows
