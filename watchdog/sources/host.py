"""Host memory of GPU processes (RSS plus DataLoader children) and of the host, via psutil."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import psutil
import structlog

from watchdog.samples import NVML, HostMemory, HostProcessSample, Reading
from watchdog.sources.attribution import owner_of

log = structlog.get_logger("watchdog.sources.host")

_GONE = (psutil.NoSuchProcess, psutil.ZombieProcess, FileNotFoundError, ProcessLookupError)


class HostSource:
    """Reads host RSS for the pids ``pids()`` returns, and the host's total and available memory.

    A pid that exits between the GPU and the host query is skipped; one whose
    memory the daemon may not read is reported with unknown RSS.
    """

    name = "host"

    def __init__(
        self,
        pids: Callable[[], Iterable[int]],
        interval_s: float = 5.0,
        proc_root: Path = Path("/proc"),
        clock: Callable[[], float] = time.monotonic,
        process_factory: Callable[[int], Any] = psutil.Process,
        virtual_memory: Callable[[], Any] = psutil.virtual_memory,
        origin: str = NVML,
    ) -> None:
        self._pids = pids
        self.interval_s = interval_s
        self._proc_root = proc_root
        self._clock = clock
        self._process_factory = process_factory
        self._virtual_memory = virtual_memory
        self._origin = origin

    def poll(self) -> Reading:
        """Read host memory and each GPU process's RSS."""
        t = self._clock()
        memory = self._virtual_memory()
        samples = [s for pid in sorted(set(self._pids())) if (s := self._read(pid)) is not None]
        return Reading(
            t=t,
            origin=self._origin,
            host_processes=samples,
            host_memory=HostMemory(int(memory.total), int(memory.available)),
        )

    def close(self) -> None:
        """Nothing to release."""

    def _read(self, pid: int) -> HostProcessSample | None:
        try:
            process = self._process_factory(pid)
            with process.oneshot():
                command = _or_empty(process.name)
                username = _or_empty(process.username)
                try:
                    rss: int | None = int(process.memory_info().rss)
                except psutil.AccessDenied:
                    rss = None
            children = self._children_rss(process)
        except _GONE:
            return None
        except psutil.AccessDenied:
            return HostProcessSample(pid=pid, owner=owner_of(pid, self._proc_root))
        return HostProcessSample(
            pid=pid,
            command=command,
            username=username,
            rss_bytes=rss,
            children_rss_bytes=children,
            owner=owner_of(pid, self._proc_root),
        )

    @staticmethod
    def _children_rss(process: Any) -> int | None:
        """Summed RSS of all descendants; children that vanish or hide are left out."""
        try:
            children = process.children(recursive=True)
        except psutil.AccessDenied:
            return None
        total = 0
        for child in children:
            try:
                total += int(child.memory_info().rss)
            except (*_GONE, psutil.AccessDenied):
                continue
        return total


def _or_empty(read: Callable[[], str]) -> str:
    try:
        return read()
    except (psutil.AccessDenied, KeyError):  # KeyError: uid with no passwd entry
        return ""
