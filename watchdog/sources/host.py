"""Host memory of GPU processes (RSS plus DataLoader children) and of the host, via psutil."""

from __future__ import annotations

import os
import select
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import psutil
import structlog

from watchdog.identity import proc_file, start_ticks
from watchdog.samples import NVML, HostMemory, HostProcessSample, Owner, Reading
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
        parent_map: Callable[[], dict[int, int]] | None = None,
    ) -> None:
        self._pids = pids
        self.interval_s = interval_s
        self._proc_root = proc_root
        self._clock = clock
        self._process_factory = process_factory
        self._virtual_memory = virtual_memory
        self._origin = origin
        self._parent_map = parent_map or _parent_map
        # Owners only change when a process does: keyed by pid and start time against reuse.
        self._owners: dict[tuple[int, float], Owner] = {}
        self._owners_used: set[tuple[int, float]] = set()

    def poll(self) -> Reading:
        """Read host memory and each GPU process's RSS."""
        t = self._clock()
        memory = self._virtual_memory()
        pids = sorted(set(self._pids()))
        children = self._children(pids)
        self._owners_used = set()
        samples = [s for pid in pids if (s := self._read(pid, children)) is not None]
        self._owners = {k: v for k, v in self._owners.items() if k in self._owners_used}
        return Reading(
            t=t,
            origin=self._origin,
            host_processes=samples,
            host_memory=HostMemory(int(memory.total), int(memory.available)),
        )

    def close(self) -> None:
        """Nothing to release."""

    def _read(self, pid: int, children: dict[int, list[int]]) -> HostProcessSample | None:
        try:
            process = self._process_factory(pid)
            with process.oneshot():
                command = _or_empty(process.name)
                username = _or_empty(process.username)
                started = _started(process)
                try:
                    rss: int | None = int(process.memory_info().rss)
                except psutil.AccessDenied:
                    rss = None
        except psutil.ZombieProcess:
            # A zombie may still hold a GPU context (orphan detection needs it): keep the pid.
            return HostProcessSample(
                pid=pid,
                started=start_ticks(pid, self._proc_root),
                **_parent_and_state(self._proc_root, pid),
            )
        except _GONE:
            return None
        except psutil.AccessDenied:
            return HostProcessSample(
                pid=pid,
                owner=owner_of(pid, self._proc_root),
                started=start_ticks(pid, self._proc_root),
                **_parent_and_state(self._proc_root, pid),
            )
        return HostProcessSample(
            pid=pid,
            command=command,
            username=username,
            rss_bytes=rss,
            children_rss_bytes=self._descendants_rss(pid, children),
            owner=self._owner(pid, started),
            started=start_ticks(pid, self._proc_root),
            **_parent_and_state(self._proc_root, pid),
        )

    def _children(self, pids: list[int]) -> dict[int, list[int]]:
        """Children of each process under ``pids``, from the kernel's per-thread lists.

        ``/proc/PID/task/TID/children`` costs a read per thread of the processes we
        watch; without it (CONFIG_PROC_CHILDREN off) one pass over the process table.
        """
        if not pids:
            return {}
        children: dict[int, list[int]] = {}
        pending = list(pids)
        while pending:
            pid = pending.pop()
            if pid in children:
                continue
            found = _kernel_children(self._proc_root, pid)
            if found is None:
                return _children_index(self._parent_map())
            children[pid] = found
            pending.extend(found)
        return children

    def _owner(self, pid: int, started: float) -> Owner:
        key = (pid, started)
        self._owners_used.add(key)
        owner = self._owners.get(key)
        if owner is None:
            owner = self._owners[key] = owner_of(pid, self._proc_root)
        return owner

    def _descendants_rss(self, pid: int, children: dict[int, list[int]]) -> int:
        """Summed RSS of all descendants; those that vanish or hide are left out."""
        total = 0
        pending = list(children.get(pid, ()))
        seen = {pid}
        while pending:
            child = pending.pop()
            if child in seen:  # a reused pid can make the snapshot cyclic
                continue
            seen.add(child)
            pending.extend(children.get(child, ()))
            rss = _statm_rss(self._proc_root, child)
            if rss is not None:
                total += rss
        return total


_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def _kernel_children(proc_root: Path, pid: int) -> list[int] | None:
    """Children of ``pid`` from ``task/*/children``; [] if it is gone, None if unsupported."""
    try:
        tasks = os.listdir(proc_file(proc_root, pid, "task"))
    except OSError:
        return []
    found: list[int] = []
    for tid in tasks:
        try:
            with open(proc_file(proc_root, pid, "task", tid, "children"), "rb") as stream:
                found.extend(int(child) for child in stream.read().split())
        except FileNotFoundError:
            if tid != tasks[0] or not os.path.exists(proc_file(proc_root, pid, "task", tid)):
                continue  # the thread exited meanwhile: the others still list their children
            return None  # the first thread has no children file: the kernel does not keep it
        except (OSError, ValueError):
            continue
    return found


def _statm_rss(proc_root: Path, pid: int) -> int | None:
    """Resident set size of ``pid`` from ``statm`` (one small read), or None if unreadable."""
    try:
        with open(proc_file(proc_root, pid, "statm"), "rb") as stream:
            return int(stream.read().split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return None


_STATES = {
    "R": "running",
    "S": "sleeping",
    "D": "disk-sleep",
    "Z": "zombie",
    "T": "stopped",
    "t": "tracing-stop",
    "X": "dead",
    "I": "idle",
}


def _parent_and_state(proc_root: Path, pid: int) -> dict[str, Any]:
    """``ppid`` and ``state`` of ``pid`` from ``stat`` (readable for any process, zombies too).

    What cannot be read is left out, so the sample keeps "unknown" rather than a guess.
    """
    try:
        with open(proc_file(proc_root, pid, "stat"), "rb") as stream:
            data = stream.read()
    except OSError:
        return {}
    # The command name sits in parentheses and may itself hold spaces or parentheses.
    fields = data[data.rfind(b")") + 1 :].split()
    try:
        return {"state": _STATES.get(fields[0].decode(), ""), "ppid": int(fields[1])}
    except (IndexError, ValueError, UnicodeDecodeError):
        return {}


def _parent_map() -> dict[int, int]:
    """pid -> parent pid for every process on the host."""
    parents = {}
    for process in psutil.process_iter(["ppid"]):
        ppid = process.info.get("ppid")
        if ppid is not None:
            parents[process.pid] = ppid
    return parents


def _children_index(parents: dict[int, int]) -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    return children


def _started(process: Any) -> float:
    try:
        return float(process.create_time())
    except (psutil.Error, OSError):
        return 0.0


def _or_empty(read: Callable[[], str]) -> str:
    try:
        return read()
    except (psutil.AccessDenied, KeyError):  # KeyError: uid with no passwd entry
        return ""


def process_exited(pid: int, started: int | None, within_s: float = 0.25) -> bool:
    """True when process ``pid`` has exited (gone, or a zombie) or does so within ``within_s``.

    A peer's socket closes while the kernel tears the process down, a moment
    before it turns into a zombie, so a check at that instant can still see it
    running: wait on a pidfd (readable once the process exits) for a short
    while. A pid now held by another process (its start time differs from
    ``started``) counts as exited. A pid the daemon cannot see (0: another pid
    namespace) never does: nothing is claimed about it.
    """
    if pid <= 0:
        return False
    if started is not None and start_ticks(pid) not in (None, started):
        return True
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    except (OSError, AttributeError):  # no pidfds (old kernel): one look at its state
        return _parent_and_state(Path("/proc"), pid).get("state", "zombie") in ("zombie", "dead")
    try:
        # poll, not select: the daemon raises its file limit past select's 1024.
        waiter = select.poll()
        waiter.register(fd, select.POLLIN)
        return bool(waiter.poll(within_s * 1000))
    finally:
        os.close(fd)


def sees_host_pids(proc_root: Path = Path("/proc")) -> bool:
    """True when this procfs shows the host's pid namespace (kernel threads are visible).

    kthreadd (pid 2) exists only in the initial pid namespace: inside a container's
    own namespace it is absent, and so may be the processes of other containers.
    """
    try:
        with open(proc_file(proc_root, 2, "stat"), "rb") as stream:
            return b"(kthreadd)" in stream.read(64)
    except OSError:
        return False
