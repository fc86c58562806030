"""What the client reads about its own process: identity, allocator figures, host memory.

torch is never imported here: if the training program has not imported it,
there is nothing to report. CUDA is never initialised from the background
thread either (that would create a context and take GPU memory): a process
that has not touched CUDA reports ``None`` figures, never zeros.
"""

from __future__ import annotations

import getpass
import os
import re
import socket
import sys
from typing import Any

ALLOCATOR_FIELDS = (
    "allocated_bytes",
    "reserved_bytes",
    "peak_allocated_bytes",
    "alloc_retries",
    "ooms",
)
_STATS_KEYS = {
    "allocated_bytes": "allocated_bytes.all.current",
    "reserved_bytes": "reserved_bytes.all.current",
    "peak_allocated_bytes": "allocated_bytes.all.peak",
    "alloc_retries": "num_alloc_retries",
    "ooms": "num_ooms",
}


def _env_int(env: Any, name: str) -> int | None:
    """The non-negative integer in variable ``name``; None when unset, empty or -1.

    Raises:
        ValueError: set to anything but ASCII digits (``str.isdigit`` takes "²", which
            ``int`` refuses), naming the variable.
    """
    text = env.get(name, "")
    if not text or text == "-1":  # -1: "not distributed" to some launchers and scripts
        return None
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise ValueError(
            f"watchdog: the environment variable {name} must be a non-negative integer "
            f"(ASCII digits), got {text[:32]!r}"
        )
    return int(text)


_TORCHRUN_RUN_DIR = re.compile(r"/([^/]+)/attempt_\d+/\d+/error\.json$")
"""torchrun's per-worker error file: ``<log dir>/<run id>_<random>/attempt_<n>/<rank>/...``."""


def job_id(explicit: str | None = None, env: Any = None) -> str:
    """The job this process belongs to: the name given, torchrun's run id, Slurm's job id,
    ``<user>-torchrun-<run>`` for torchrun without ``--rdzv-id``, else ``<user>-<pid>``."""
    return job_origin(explicit, env)[0]


def job_origin(explicit: str | None = None, env: Any = None) -> tuple[str, str]:
    """``job_id`` and where it came from: ``job`` (given) or the environment variable."""
    env = os.environ if env is None else env
    if explicit:
        return explicit, "job"
    run_id = env.get("TORCHELASTIC_RUN_ID", "")
    if run_id and run_id != "none":
        return str(run_id), "TORCHELASTIC_RUN_ID"
    if env.get("SLURM_JOB_ID"):
        return str(env["SLURM_JOB_ID"]), "SLURM_JOB_ID"
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    run_dir = _TORCHRUN_RUN_DIR.search(env.get("TORCHELASTIC_ERROR_FILE", ""))
    if run_dir:
        # torchrun without --rdzv-id says "none". Its agent made this directory once,
        # with a random name, for all its ranks and every restart of them: one job under
        # one name, keeping its cooldowns and restart budget. A pid each would make every
        # rank, and every restart, a job of its own; the agent's pid is 1 in every
        # container that runs torchrun as its command.
        return (
            f"{user}-torchrun-{run_dir.group(1).removeprefix('none_')}",
            "TORCHELASTIC_ERROR_FILE",
        )
    return f"{user}-{os.getpid()}", "the user name (LOGNAME, USER)"


def ranks(env: Any = None) -> dict[str, int | None]:
    """Rank, local rank, world size and restart count from torchrun's (or Slurm's) environment.

    Raises:
        ValueError: one of these variables is set to something other than ASCII digits.
    """
    env = os.environ if env is None else env
    rank = _env_int(env, "RANK")
    local_rank = _env_int(env, "LOCAL_RANK")
    world_size = _env_int(env, "WORLD_SIZE")
    if rank is None:
        rank = _env_int(env, "SLURM_PROCID")
        local_rank = local_rank if local_rank is not None else _env_int(env, "SLURM_LOCALID")
        world_size = world_size if world_size is not None else _env_int(env, "SLURM_NTASKS")
    return {
        "rank": rank,
        "local_rank": local_rank,
        "world_size": world_size,
        "restart_count": _env_int(env, "TORCHELASTIC_RESTART_COUNT"),
    }


def cuda_ready() -> Any:
    """The torch module when this process has initialised CUDA, else None."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        return torch if torch.cuda.is_initialized() else None
    except Exception:
        return None


def device_index(device: str) -> int | None:
    """``cuda:3`` -> 3, ``cuda`` -> 0, anything else -> None."""
    if device == "cuda":
        return 0
    if device.startswith("cuda:") and device[5:].isascii() and device[5:].isdigit():
        return int(device[5:])
    return None


def device_uuid(device: str) -> str:
    """The GPU's UUID (``GPU-...``), so the daemon can match it to NVML; empty if unknown."""
    torch = cuda_ready()
    index = device_index(device)
    if torch is None or index is None:
        return ""
    try:
        uuid = str(torch.cuda.get_device_properties(index).uuid)
    except Exception:
        return ""
    return uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"


def allocator_figures(device: str) -> dict[str, int | None]:
    """The caching allocator's figures for ``device``; all None without CUDA."""
    figures: dict[str, int | None] = dict.fromkeys(ALLOCATOR_FIELDS)
    torch = cuda_ready()
    index = device_index(device)
    if torch is None or index is None:
        return figures
    try:
        stats = torch.cuda.memory_stats(index)
    except Exception:
        return figures
    for field, key in _STATS_KEYS.items():
        value = stats.get(key)
        figures[field] = int(value) if value is not None else None
    return figures


def rss_bytes() -> int | None:
    """This process's resident set size, from /proc/self/statm; None where unreadable."""
    try:
        with open("/proc/self/statm", "rb") as stream:
            fields = stream.read().split()
        return int(fields[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def hostname() -> str:
    """This machine's name, for the registration."""
    return socket.gethostname()[:256]
