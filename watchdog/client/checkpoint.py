"""Atomic checkpoint files: a crash never leaves a half-written checkpoint that resume would load.

A checkpoint is written to a temporary name in the same directory, flushed
and fsynced, renamed to its final name (the commit), and the directory is
fsynced so the rename itself survives a power loss. Only files with the final
name pattern are ever loaded; temporaries are ignored and cleaned up.
"""

from __future__ import annotations

import contextlib
import logging
import numbers
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

log = logging.getLogger("watchdog.client")

FORMAT = "gpu-watchdog/1"
_NAME = re.compile(r"^(?P<prefix>.+)-(?P<step>[0-9]{12,})\.pt$")
"""Names are written with at least 12 digits, so they sort; a step past 10**12 (a token
count) has more, and is still found, loaded and pruned."""


def fsync_directory(directory: Path) -> None:
    """Make a rename or unlink in ``directory`` durable (ignored where the OS cannot)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> int:
    """Write ``path`` through ``write(stream)`` atomically; return its size in bytes.

    On any error the temporary file is removed and the previous file at
    ``path`` (if any) is untouched.
    """

    def produce(tmp: Path) -> None:
        with open(tmp, "wb") as stream:
            write(stream)

    return atomic_produce(path, produce)


def atomic_produce(path: Path, produce: Callable[[Path], None]) -> int:
    """Have ``produce(tmp)`` create a file beside ``path``, fsync it, rename it into place.

    Returns the size in bytes. A crash at any point leaves either the previous
    file or the complete new one at ``path``, never a half-written one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        produce(tmp)
        with open(tmp, "rb") as stream:
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_directory(path.parent)
    return path.stat().st_size


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> int:
    """``torch.save(obj)`` to ``path`` atomically; return the size in bytes."""
    import torch

    return atomic_write(Path(path), lambda stream: torch.save(obj, stream))


class CheckpointStore:
    """Numbered checkpoints ``<prefix>-<step:012d>.pt`` in one directory, newest loaded first.

    Raises:
        ValueError: ``keep`` is not an integer of at least 1.
    """

    def __init__(self, directory: str | os.PathLike[str], prefix: str = "ckpt", keep: int = 2):
        if isinstance(keep, bool) or not isinstance(keep, (int, numbers.Integral)) or keep < 1:
            raise ValueError(f"keep must be at least 1 and an integer, got {keep!r}")
        self.directory = Path(directory)
        self.prefix = prefix
        self.keep = int(keep)

    def path_for(self, step: int) -> Path:
        """Where the checkpoint of ``step`` lives."""
        return self.directory / f"{self.prefix}-{step:012d}.pt"

    def complete(self) -> list[Path]:
        """Committed checkpoints, newest first."""
        found = []
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.directory):
                match = _NAME.match(entry.name)
                if match and match["prefix"] == self.prefix and entry.is_file():
                    found.append((int(match["step"]), Path(entry.path)))
        return [path for _, path in sorted(found, reverse=True)]

    def save(self, state: dict[str, Any], step: int) -> tuple[Path, int]:
        """Write ``state`` as the checkpoint of ``step``, then prune; return (path, bytes)."""
        path = self.path_for(step)
        size = atomic_torch_save(state, path)
        later = [p for p in self.complete() if p != path and _step_of(p) > step]
        if later:
            # Another run's checkpoints (a reused directory): a resume would load the
            # highest step, theirs, and pruning by step would delete this one.
            log.warning(
                "checkpoint directory %s holds later steps than %d (%s): another run's? "
                "A resume loads the highest step",
                self.directory,
                step,
                later[0].name,
            )
        self.prune(keep_also=path)
        return path, size

    def prune(self, keep_also: Path | None = None) -> None:
        """Remove all but the newest ``keep`` checkpoints, and stale temporaries of dead writers.

        ``keep_also`` (the checkpoint just written) is never removed.
        """
        for old in self.complete()[self.keep :]:
            if old == keep_also:
                continue
            with contextlib.suppress(OSError):
                old.unlink()
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.directory):
                if entry.name.startswith(f".{self.prefix}-") and ".tmp." in entry.name:
                    pid = entry.name.rsplit(".", 1)[-1]
                    if pid.isdigit() and not _alive(int(pid)):
                        with contextlib.suppress(OSError):
                            os.unlink(entry.path)

    def load_latest(self) -> tuple[Path, dict[str, Any]] | None:
        """The newest checkpoint that loads, or None; unreadable ones are skipped with a warning."""
        import torch

        for path in self.complete():
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:  # a corrupt file must not stop the resume
                log.warning("checkpoint %s unreadable, trying an older one: %s", path, exc)
                continue
            if isinstance(state, dict):
                return path, state
            log.warning("checkpoint %s is not a dict, trying an older one", path)
        return None


def _step_of(path: Path) -> int:
    match = _NAME.match(path.name)
    return int(match["step"]) if match else -1


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
