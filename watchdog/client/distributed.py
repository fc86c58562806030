"""Process groups that survive torchrun restarts, and exit cleanly.

torchrun keeps one TCPStore for the whole run and restarts workers into it.
``init_process_group("env://")`` puts every generation's keys under the same
prefix (``default_pg``), so after a restart the new workers can read the
previous generation's rendezvous data: with gloo on torch 2.13 that shows up as
"Gloo connectFullMesh failed ... Connection refused" (the dead workers'
addresses). Prefixing the store with the restart count gives each generation
its own keys.

A gloo process can also abort at exit ("terminate called without an active
exception", SIGABRT) when the machine is busy: a ``pt_gloo_runloop`` worker
thread drops its last reference to a finished collective after the interpreter
has started finalizing. A collective issued inside ``backward()`` (every DDP
gradient all-reduce) carries a Python object in its saved thread-local state;
releasing it needs the GIL, a non-main thread asking for the GIL during
finalization is ended with ``pthread_exit``, and that unwinds through a
``noexcept`` destructor: ``std::terminate``. ``destroy_process_group()`` does not
help (gloo's ``shutdown()`` is a no-op and DDP still holds the group), so the
helpers here register an ``atexit`` hook that waits, with the GIL released,
until the gloo worker threads are parked (pytorch/pytorch#190489).
docs/integrations.md has the whole restart recipe.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

log = logging.getLogger("watchdog.client")

GLOO_WORKER_THREAD = "pt_gloo_runloop"
"""The name torch gives ProcessGroupGloo's worker threads (``/proc/self/task/*/comm``)."""

BUSY_STATES = ("R", "D")
"""Scheduler states of a thread that may still be finishing a collective (running or runnable,
uninterruptible wait); a parked worker sleeps (``S``) on its work queue."""


def restart_prefix(env: Any = None) -> str:
    """``restart<N>`` from TORCHELASTIC_RESTART_COUNT (``restart0`` outside torchrun)."""
    env = os.environ if env is None else env
    count = str(env.get("TORCHELASTIC_RESTART_COUNT", "0"))
    # ASCII digits: str.isdigit also takes "²", which would name a prefix no peer uses.
    return f"restart{count if count.isascii() and count.isdigit() else 0}"


def gloo_worker_states(tasks: Path = Path("/proc/self/task")) -> list[str] | None:
    """The scheduler state (``R``, ``S``, ``D``...) of each gloo worker thread of this process.

    Returns:
        One letter per ``pt_gloo_runloop`` thread (empty when there are none),
        None when ``tasks`` cannot be read (not Linux).
    """
    try:
        threads = list(tasks.iterdir())
    except OSError:
        return None
    states = []
    for thread in threads:
        try:
            if (thread / "comm").read_text().strip() != GLOO_WORKER_THREAD:
                continue
            stat = (thread / "stat").read_text()
        except OSError:  # the thread ended between the listing and the read
            continue
        states.append(stat[stat.rfind(")") + 2 :][:1])  # the field after "(comm)"
    return states


def busy_gloo_workers(tasks: Path = Path("/proc/self/task")) -> int | None:
    """How many gloo worker threads are running or runnable (``R``) or in disk wait (``D``).

    Returns:
        The count (0 when all are parked or there are none), None when
        ``tasks`` cannot be read.
    """
    states = gloo_worker_states(tasks)
    return None if states is None else sum(state in BUSY_STATES for state in states)


def wait_for_gloo_workers(
    timeout_s: float = 2.0,
    *,
    settle: int = 3,
    interval_s: float = 0.01,
    tasks: Path = Path("/proc/self/task"),
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """Wait until no gloo worker thread has been runnable for ``settle`` polls in a row.

    Each poll is followed by a ``sleep`` (the GIL is free then), so a worker
    that still has to drop a finished collective can take the GIL and do it
    while the interpreter is whole. Registered with ``atexit`` by
    ``init_process_group`` and ``restart_safe_store``; call it yourself before
    exiting if you build gloo groups another way.

    Returns:
        True when the workers are parked (or there are none), False when
        ``timeout_s`` ran out or ``tasks`` cannot be read.
    """
    deadline = clock() + timeout_s
    quiet = 0
    while True:
        states = gloo_worker_states(tasks)
        if states is None:
            return False
        if not states:  # no gloo group in this process (or its threads have ended)
            return True
        quiet = 0 if any(state in BUSY_STATES for state in states) else quiet + 1
        if quiet >= settle:
            return True
        if clock() >= deadline:
            log.warning("gpu-watchdog: gloo worker threads still busy after %.1f s", timeout_s)
            return False
        sleep(interval_s)


def register_exit_wait() -> None:
    """Run ``wait_for_gloo_workers`` at interpreter exit (once, however often called)."""
    atexit.unregister(wait_for_gloo_workers)
    atexit.register(wait_for_gloo_workers)


def _as_timedelta(timeout: timedelta | float | None) -> timedelta | None:
    """``timeout`` as torch wants it: a timedelta, from seconds too; else TypeError or
    ValueError naming it (torch's own error is a pybind signature dump)."""
    if timeout is None or isinstance(timeout, timedelta):
        return timeout
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a datetime.timedelta or seconds, got {timeout!r}")
    if not 0 < timeout < math.inf:
        raise ValueError(f"timeout must be a finite number of seconds above 0, got {timeout!r}")
    return timedelta(seconds=timeout)


def restart_safe_store(timeout: timedelta | float | None = None) -> tuple[Any, int, int]:
    """The launcher's store (``env://``) wrapped in ``PrefixStore("restart<N>")``.

    Also registers the exit hook (``register_exit_wait``).

    Returns:
        ``(store, rank, world_size)`` for ``dist.init_process_group(store=...)``.
    """
    import torch.distributed as dist

    # torch.distributed re-exports these without listing them in __all__
    rendezvous = dist.rendezvous  # type: ignore[attr-defined]
    prefix_store = dist.PrefixStore  # type: ignore[attr-defined]
    timeout = _as_timedelta(timeout)
    store, rank, world_size = next(rendezvous("env://", timeout=timeout or timedelta(minutes=10)))
    register_exit_wait()
    return prefix_store(restart_prefix(), store), rank, world_size


def init_process_group(
    backend: str | None = None, timeout: timedelta | float | None = None, **kwargs: Any
) -> None:
    """``torch.distributed.init_process_group`` on a restart-safe store.

    Use it in place of ``dist.init_process_group(backend)`` in a script run by
    ``torchrun --max-restarts=N``; extra keyword arguments pass through. The
    process also waits for gloo's worker threads at exit (``wait_for_gloo_workers``).
    """
    import torch.distributed as dist

    timeout = _as_timedelta(timeout)
    store, rank, world_size = restart_safe_store(timeout)
    options: dict[str, Any] = {"store": store, "rank": rank, "world_size": world_size}
    if timeout is not None:
        options["timeout"] = timeout
    dist.init_process_group(backend, **options, **kwargs)
