"""The audit journal: findings, decisions and command results as JSON lines, rotated by size.

Every entry is appended with one ``write`` and fsynced, so a crash loses at
most the line being written; a torn last line is skipped when the journal is
read back, and ended with a newline before the next entry is appended, so
that entry starts a line of its own instead of being glued to the torn one
(and lost with it). A journal that cannot be written (disk full, read-only)
is reported and counted, and the daemon carries on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from watchdog.policy.engine import SUPPRESSED, Decision, Ledger

log = structlog.get_logger("watchdog.journal")

FILE_NAME = "journal.jsonl"


@dataclass
class ReadStats:
    """What reading the journal back found."""

    entries: int = 0
    skipped_lines: int = 0
    unreadable_files: int = 0
    """Journal files (or the directory) that exist but could not be read, e.g. EACCES."""


class Journal:
    """Appends entries to ``directory/journal.jsonl``, rotating at ``max_bytes``.

    Args:
        directory: The state directory (created if missing).
        max_bytes: Size at which the file is rotated.
        keep: Rotated files kept (``journal.jsonl.1`` is the newest).
    """

    def __init__(self, directory: Path, max_bytes: int = 16 << 20, keep: int = 3) -> None:
        self.path = directory / FILE_NAME
        self._directory = directory
        self._max_bytes = max_bytes
        self._keep = keep
        self._lock = threading.Lock()
        self.write_errors = 0
        self._tail_ok = False
        """The file is known to end with a whole line (checked once, and after any error)."""

    def set_limits(self, max_bytes: int, keep: int) -> None:
        """Rotate at ``max_bytes`` and keep ``keep`` old files from the next entry on (SIGHUP)."""
        with self._lock:
            self._max_bytes, self._keep = max_bytes, keep

    def append(self, entry: dict[str, Any]) -> bool:
        """Append one entry; False (logged and counted) if it could not be written."""
        line = (json.dumps(entry, separators=(",", ":"), sort_keys=True) + "\n").encode()
        with self._lock:
            try:
                self._directory.mkdir(parents=True, exist_ok=True)
                self._rotate_if_needed(len(line))
                fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
                try:
                    if not self._tail_ok:
                        _end_torn_line(fd)
                        self._tail_ok = True
                    written = os.write(fd, line)
                    if written != len(line):
                        raise OSError(f"short write ({written} of {len(line)} bytes)")
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                self._tail_ok = False  # a failed write may have left part of a line
                self.write_errors += 1
                log.error("journal_write_failed", path=str(self.path), error=str(exc))
                return False
        return True

    def _rotate_if_needed(self, incoming: int) -> None:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return
        if size + incoming <= self._max_bytes:
            return
        for index in range(self._keep - 1, 0, -1):
            older = self.path.with_name(f"{FILE_NAME}.{index}")
            if older.exists():
                older.rename(self.path.with_name(f"{FILE_NAME}.{index + 1}"))
        self.path.rename(self.path.with_name(f"{FILE_NAME}.1"))
        _fsync_directory(self._directory)

    def files(self) -> list[Path]:
        """The journal's files, oldest first.

        Raises OSError where one cannot be looked at (a directory the reader may not
        search): that is not a journal without files.
        """
        rotated = [self.path.with_name(f"{FILE_NAME}.{i}") for i in range(self._keep, 0, -1)]
        return [path for path in [*rotated, self.path] if _exists(path)]

    def read(self, stats: ReadStats | None = None) -> Iterator[dict[str, Any]]:
        """Every readable entry, oldest first; torn or corrupt lines are skipped and counted.

        A file (or directory) that cannot be read is logged and counted in
        ``stats.unreadable_files``, and the rest is read: the daemon starts with
        what it can read rather than not at all.
        """
        stats = stats if stats is not None else ReadStats()
        try:
            paths = self.files()
        except OSError as exc:
            stats.unreadable_files += 1
            log.error("journal_read_failed", path=str(self._directory), error=str(exc))
            return
        for path in paths:
            try:
                data = path.read_bytes()
            except OSError as exc:
                stats.unreadable_files += 1
                log.error("journal_read_failed", path=str(path), error=str(exc))
                continue
            for raw in data.split(b"\n"):
                if not raw.strip():
                    continue
                try:
                    entry = json.loads(raw)
                except (ValueError, UnicodeDecodeError, RecursionError):  # nested too deep
                    stats.skipped_lines += 1
                    continue
                if isinstance(entry, dict):
                    stats.entries += 1
                    yield entry
                else:
                    stats.skipped_lines += 1


def _exists(path: Path) -> bool:
    """Whether ``path`` exists; OSError where that cannot be known. ``Path.exists``
    raises on EACCES before Python 3.12 and says False from 3.12 on, which would
    read a directory the reader may not search as a journal without files."""
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    return True


def _end_torn_line(fd: int) -> None:
    """End the last line if it is torn (its writer killed mid-line), so the next starts anew."""
    size = os.fstat(fd).st_size
    if size and os.pread(fd, 1, size - 1) != b"\n":
        os.write(fd, b"\n")


def _fsync_directory(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def decision_entry(decision: Decision) -> dict[str, Any]:
    """A decision as a journal entry."""
    return {"type": "decision", "wall": decision.wall, **decision.to_json()}


def ledger_from(
    entries: Iterator[dict[str, Any]], unanswered_for_s: float = 0.0, now: float = math.inf
) -> Ledger:
    """Rebuild the guards' memory from journal entries.

    Cooldowns and restart budgets come back as they were. A command sent with no
    result journalled after it (the daemon died first) is never resent: it
    counts for its cooldown and budget, and it keeps its job in flight until
    ``unanswered_for_s`` after it was sent (the command timeout: how long the
    old daemon would have waited), since the process may still be running it.
    A decision dated after ``now`` (written while the clock was wrong) is taken
    as made ``now``: dated years ahead, it would hold its job's cooldown as long.
    """
    ledger = Ledger()
    for entry in entries:
        if entry.get("type") == "result" and isinstance(entry.get("job"), str):
            if entry.get("unanswered") is True and isinstance(entry.get("action"), str):
                # Cut by the daemon's stop: on that rank the command may still be running.
                ledger.still_running(entry["job"], entry["action"])
            else:
                ledger.finished(entry["job"])
            continue
        if entry.get("type") != "decision" or entry.get("outcome") == SUPPRESSED:
            continue
        try:
            decision = Decision(
                t=float(entry["t"]),
                wall=float(entry["wall"]),
                action=str(entry["action"]),
                job=str(entry["job"]),
                gpu=int(entry["gpu"]),
                pid=None if entry.get("pid") is None else int(entry["pid"]),
                finding=str(entry.get("finding", "")),
                series=str(entry.get("series", "")),
                outcome=str(entry["outcome"]),
                reason=str(entry.get("reason", "")),
            )
        except (KeyError, TypeError, ValueError, OverflowError):  # a hand-edited line
            continue
        if not (math.isfinite(decision.t) and math.isfinite(decision.wall)):
            continue  # NaN or Infinity (json.loads takes both): no time to hold a guard to
        if decision.wall > now:
            log.warning("journal_entry_in_future", job=decision.job, wall=decision.wall, now=now)
            decision = dataclasses.replace(decision, wall=now)
        ledger.record(decision)
    ledger.unanswered(unanswered_for_s)
    return ledger
