"""GPU processes and their memory from NVML.

A process list costs milliseconds and takes the driver's lock, so this source
has its own, slower interval. The newest process-info call the driver has is
probed per device and remembered (v3, then v2, then v1). nvidia-ml-py's
unversioned wrapper calls the v3 C function, so v1 (drivers before 470) is
read here, through the binding's symbol lookup and the v1 structure.
"""

from __future__ import annotations

import ctypes
import functools
import time
from collections.abc import Callable
from typing import Any

import structlog

from watchdog.samples import NVML, GpuProcessSample, Reading
from watchdog.sources.nvml import VERSION_ERRORS, Nvml, NvmlCallError
from watchdog.sources.nvml_devices import DeviceHandles

log = structlog.get_logger("watchdog.sources.nvml_processes")

# NVML's "not available" for usedGpuMemory; newer pynvml already turns it into None.
NOT_AVAILABLE = 0xFFFFFFFFFFFFFFFF
UNREAD_GRACE_POLLS = 3
"""Polls in a row a GPU's process list may fail with its processes taken as still there;
after that, a list that stays unreadable says nothing of them any more: they are gone."""

_V1_CALLS = frozenset(
    {"nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"}
)
"""The unversioned C functions: read with ``_read_v1``, not the binding's same-named wrapper."""

_VERSIONS = {
    "compute": (
        "nvmlDeviceGetComputeRunningProcesses_v3",
        "nvmlDeviceGetComputeRunningProcesses_v2",
        "nvmlDeviceGetComputeRunningProcesses",
    ),
    "graphics": (
        "nvmlDeviceGetGraphicsRunningProcesses_v3",
        "nvmlDeviceGetGraphicsRunningProcesses_v2",
        "nvmlDeviceGetGraphicsRunningProcesses",
    ),
}


class NvmlProcessSource:
    """Lists every process on every GPU with its GPU memory (``None`` where hidden)."""

    name = "nvml_processes"

    def __init__(
        self,
        nvml: Nvml,
        handles: DeviceHandles,
        interval_s: float = 5.0,
        max_processes: int = 256,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._nvml = nvml
        self._handles = handles
        self.interval_s = interval_s
        self._max_processes = max_processes
        self._clock = clock
        self._calls: dict[tuple[int, str], str] = {}
        self._truncation_logged = False
        self._failures: dict[int, int] = {}
        """GPU -> polls in a row its process list failed."""

    def poll(self) -> Reading:
        """Read every GPU's processes.

        A GPU whose list fails is named in ``unread_gpus`` for up to
        ``UNREAD_GRACE_POLLS`` polls in a row (a transient driver error is no
        reason to think its processes exited); the device source marks a GPU
        that is lost.
        """
        t = self._clock()
        processes: list[GpuProcessSample] = []
        unread: set[int] = set()
        for index in range(self._handles.count()):
            try:
                processes.extend(self._read_device(index))
            except NvmlCallError as exc:
                self._handles.forget(index)
                failures = self._failures[index] = self._failures.get(index, 0) + 1
                if failures <= UNREAD_GRACE_POLLS:
                    unread.add(index)
                log.warning(
                    "gpu_processes_unreadable",
                    gpu=index,
                    call=exc.call,
                    error=exc.error,
                    polls_in_a_row=failures,
                )
            else:
                self._failures.pop(index, None)
        if len(processes) > self._max_processes:
            if not self._truncation_logged:
                self._truncation_logged = True
                log.warning(
                    "gpu_processes_truncated", seen=len(processes), limit=self._max_processes
                )
            processes.sort(key=lambda p: p.used_bytes or 0, reverse=True)
            processes = processes[: self._max_processes]
        return Reading(t=t, origin=NVML, processes=processes, unread_gpus=frozenset(unread))

    def close(self) -> None:
        """Nothing to release: the daemon shuts NVML down."""

    def _read_device(self, index: int) -> list[GpuProcessSample]:
        handle = self._handles.get(index)
        seen: dict[int, GpuProcessSample] = {}
        for kind in ("compute", "graphics"):
            for info in self._list(index, kind, handle):
                pid = int(info.pid)
                if pid in seen:  # a process with both contexts: one entry, compute first
                    continue
                used = info.usedGpuMemory
                used = None if used is None or used == NOT_AVAILABLE else int(used)
                seen[pid] = GpuProcessSample(gpu=index, pid=pid, used_bytes=used, kind=kind)
        return list(seen.values())

    def _list(self, index: int, kind: str, handle: Any) -> list[Any]:
        known = self._calls.get((index, kind))
        candidates = (known,) if known else _VERSIONS[kind]
        for call in candidates:
            v1 = call in _V1_CALLS
            if not self._nvml.has("_nvmlGetFunctionPointer" if v1 else call):
                continue
            try:
                if v1:
                    reader = functools.partial(_read_v1, self._nvml.module, call)
                    result = self._nvml.call_reader(call, reader, handle)
                else:
                    result = self._nvml.call(call, handle)
            except NvmlCallError as exc:
                if exc.error == "NotSupported":  # e.g. graphics processes on a compute card
                    self._calls[(index, kind)] = call
                    return []
                if exc.error in VERSION_ERRORS and call != candidates[-1]:
                    continue
                raise
            self._calls[(index, kind)] = call
            return list(result)
        return []


class _ProcessInfoV1(ctypes.Structure):
    """``nvmlProcessInfo_v1_t``, what drivers before 470 fill in."""

    _fields_ = [("pid", ctypes.c_uint), ("usedGpuMemory", ctypes.c_ulonglong)]


def _read_v1(module: Any, call: str, handle: Any) -> list[_ProcessInfoV1]:
    """The v1 process list of ``handle`` from the C function ``call``, as pynvml reads v2."""
    function = module._nvmlGetFunctionPointer(call)
    count = ctypes.c_uint(0)
    returned = function(handle, ctypes.byref(count), None)
    if returned == module.NVML_SUCCESS:
        return []
    if returned != module.NVML_ERROR_INSUFFICIENT_SIZE:
        raise module.NVMLError(returned)
    count.value = count.value * 2 + 5  # room for processes that start meanwhile
    infos = (_ProcessInfoV1 * count.value)()
    module._nvmlCheckReturn(function(handle, ctypes.byref(count), infos))
    return [infos[i] for i in range(count.value)]
