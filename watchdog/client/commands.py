"""The commands a training process carries out for the daemon.

Each returns a dict of details (JSON-ready) or raises; the handle turns that
into an ok/error result with its duration. ``dump_stacks`` and ``restart_group``
run on the background thread (they must work while training is stuck); the
others run on the training thread inside ``step()``.
"""

from __future__ import annotations

import faulthandler
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from watchdog.client.checkpoint import atomic_produce
from watchdog.client.runtime import cuda_ready, device_index

MAX_STACKS_CHARS = 256 * 1024


class CommandError(RuntimeError):
    """A command that cannot be carried out here; its message becomes the error result."""


def dump_stacks() -> dict[str, Any]:
    """Every thread's Python stack, as faulthandler prints it, with thread names."""
    with tempfile.TemporaryFile(mode="w+b") as stream:
        faulthandler.dump_traceback(stream, all_threads=True)
        stream.seek(0)
        text = stream.read().decode("utf-8", "replace")
    truncated = len(text) > MAX_STACKS_CHARS
    threads = {f"0x{t.ident:016x}": t.name for t in threading.enumerate() if t.ident}
    return {
        "stacks": text[:MAX_STACKS_CHARS],
        "truncated": truncated,
        "threads": threads,
        "training_thread": threading.main_thread().name,
    }


def group_restart_refusal(
    env: Mapping[str, str], step: int, pid: int, args: Mapping[str, Any]
) -> str:
    """Why this process must not exit for a group restart now; "" when it may.

    The exit only helps when a launcher restarts the group: torchrun sets
    TORCHELASTIC_MAX_RESTARTS and TORCHELASTIC_RESTART_COUNT in every worker,
    and restarts the whole group when one worker fails while restarts remain.
    ``args["steps"]`` maps pids to the step the daemon saw each rank stuck at:
    a rank that has moved on since is not hung, and stays.
    """
    most = env.get("TORCHELASTIC_MAX_RESTARTS", "")
    done = env.get("TORCHELASTIC_RESTART_COUNT", "0")
    # ASCII only: str.isdigit takes "²", which int() refuses
    if not (most.isascii() and most.isdigit() and done.isascii() and done.isdigit()):
        return "not started by torchrun: no launcher would restart the group, exiting ends the job"
    if int(done) >= int(most):
        return (
            f"torchrun's restarts are spent ({done} of {most}): exiting would end the job "
            "instead of restarting it"
        )
    steps = args.get("steps")
    expected = steps.get(str(pid)) if isinstance(steps, dict) else None
    if isinstance(expected, int) and not isinstance(expected, bool) and step != expected:
        return f"training moved on: at step {step}, the daemon saw this rank stuck at {expected}"
    return ""


def empty_cache(device: str) -> dict[str, Any]:
    """Return cached, unused blocks to the driver; report how much was freed."""
    torch = cuda_ready()
    index = device_index(device)
    if torch is None or index is None:
        return {"cuda": False, "freed_bytes": None, "note": "no CUDA in this process"}
    before = int(torch.cuda.memory_reserved(index))
    torch.cuda.empty_cache()
    after = int(torch.cuda.memory_reserved(index))
    return {
        "cuda": True,
        "reserved_before": before,
        "reserved_after": after,
        "freed_bytes": before - after,
    }


class SnapshotTaker:
    """Dumps CUDA memory snapshots, starting memory-history recording on first use."""

    def __init__(self, directory: Path, max_entries: int, min_free_bytes: int) -> None:
        self.directory = directory
        self.max_entries = max_entries
        self.min_free_bytes = min_free_bytes
        self.recording = False

    def __call__(self, device: str, name: str, directory: str | None = None) -> dict[str, Any]:
        torch = cuda_ready()
        if torch is None or device_index(device) is None:
            raise CommandError(
                "CUDA is not initialised in this process (CPU-only run): "
                "there is no CUDA memory to snapshot"
            )
        target_dir = Path(directory) if directory else self.directory
        target_dir.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(target_dir).free
        if free < self.min_free_bytes:
            raise CommandError(
                f"only {free} bytes free in {target_dir}, need {self.min_free_bytes}: not dumping"
            )
        started = False
        if not self.recording:
            torch.cuda.memory._record_memory_history(max_entries=self.max_entries)
            self.recording = started = True
        path = target_dir / f"{name}.pickle"
        size = atomic_produce(path, lambda tmp: torch.cuda.memory._dump_snapshot(str(tmp)))
        return {
            "path": str(path),
            "bytes": size,
            "recording_started": started,
            "note": "view at https://pytorch.org/memory_viz"
            + (
                "; history was off until now, ask again later for allocation traces"
                if started
                else ""
            ),
        }


def snapshot_name(job: str, rank: int | None, step: int) -> str:
    """A file name that sorts by time and says whose snapshot it is."""
    safe_job = "".join(c if c.isalnum() or c in "-_." else "_" for c in job)[:64]
    stamp = time.strftime("%Y%m%dT%H%M%S")
    return f"memory-{safe_job}-r{rank if rank is not None else 0}-p{os.getpid()}-s{step}-{stamp}"
